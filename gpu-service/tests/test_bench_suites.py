"""The benchmark suite (bench/) on CPU with tiny shapes: every suite runs end to end and writes
well-formed JSON lines; the cost model matches real parameter and cache sizes; plot.py renders."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))


def _load(name: str):
    """bench/<name>.py under a unique module name (plain `run`/`plot` would shadow other modules)."""
    spec = importlib.util.spec_from_file_location(f"lckv_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


plot = _load("plot")
bench_run = _load("run")
from lckv_bench import hf, ours  # noqa: E402
from lckv_bench.shapes import SHAPES, cost_model, decode_step_bytes, make_config  # noqa: E402
from lckv_service.cache import KVCache  # noqa: E402


def _run(tmp_path, *args) -> list[dict]:
    out = tmp_path / "r.jsonl"
    assert bench_run.main(["--tiny", "--device", "cpu", "--quiet", "--out", str(out), *args]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def _ok(rows, suite):
    got = [r for r in rows if r["suite"] == suite]
    assert got, f"no {suite} rows"
    bad = [r for r in got if r["status"] != "ok"]
    assert not bad, bad
    return got


def test_throughput_and_roofline_rows(tmp_path):
    rows = _run(tmp_path, "--suite", "throughput:120,roofline:5", "--settings", "6+10",
                "--variants", "llama,lckv-w2,hf-llama", "--max-run-batch", "2")
    hw = _ok(rows, "hw")[0]
    assert hw["copy_gbps"] > 0 and hw["matmul_tflops"] > 0 and hw["device"].startswith("cpu")
    tp = _ok(rows, "throughput")
    assert sorted(r["variant"] for r in tp) == ["hf-llama", "lckv-w2", "llama"]
    for r in tp:
        for key in ("device", "shape", "variant", "prompt_len", "gen_len", "batch", "tokens_per_s", "peak_mem_gib"):
            assert key in r
        assert (r["prompt_len"], r["gen_len"]) == (6, 10) and r["batch"] >= 1
        assert r["steps_done"] == r["steps_total"] == 9 and not r["extrapolated"]
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * r["gen_len"] / r["total_s"])
        assert r["total_s"] == pytest.approx(r["prefill_s"] + r["decode_s"])
    ours_rows = [r for r in tp if r["variant"] != "hf-llama"]
    assert all(r["decoder"] == "fast" for r in ours_rows), [r["decoder_note"] for r in ours_rows]
    # the run used batch 2 of a max batch of 4: the max batch is projected from measured step times
    for r in ours_rows:
        assert r["batch"] == 2 and r["max_batch"] == 4 and r["batch_limited_by"] == "max_run_batch option"
        pr = r["projected_at_max_batch"]
        assert pr["batch"] == 4 and pr["tokens_per_s"] == pytest.approx(4 * 10 / pr["total_s"])
        if r["prefill_mode"].startswith("tokenwise"):   # LCKV: prompt steps probed at the max batch
            assert pr["prefill_s_projected"] > 0 and len(pr["probe_step_s"]) == 5
        else:                                           # a parallel prefill scales with the batch
            assert pr["prefill_s_projected"] == pytest.approx(2 * r["prefill_s"])
    modes = {r["variant"]: r["prefill_mode"].split("(")[0].strip() for r in ours_rows}
    assert modes["llama"] == "parallel" and next(r for r in ours_rows if r["variant"] == "llama").get("prefill_choice_s") is None
    # LCKV, --lckv-prefill auto: both ways measured at the run's batch, the cheaper one ran
    w2 = next(r for r in ours_rows if r["variant"] == "lckv-w2")
    est = w2["prefill_choice_s"]
    assert set(est) == {"iterative", "tokenwise"} and all(v > 0 for v in est.values())
    assert modes["lckv-w2"] == min(est, key=est.get)
    rl = _ok(rows, "roofline")
    assert {r["variant"] for r in rl} == {"llama", "lckv-w2"}
    for r in rl:
        assert 0 < r["frac_copy_bw"] and r["step_ms"] > 0 and r["step_bytes"] > 0


@pytest.mark.parametrize("suite", ["prefill", "streaming", "sessions"])
def test_other_suites_write_rows(tmp_path, suite):
    rows = _run(tmp_path, "--suite", f"{suite}:120", "--variants", "llama,lckv-w2")
    got = _ok(rows, suite)
    assert {r["variant"] for r in got} == {"llama", "lckv-w2"}
    if suite == "prefill":
        iters = [r for r in got if r["mode"] != "exact"]
        assert iters and all(0 <= r["top1_agree"] <= 1 and r["max_abs_diff_rel"] >= 0 for r in iters)
        # with as many passes as tokens the iterative prefill is exact (Theorem 1): 8 tokens < m+b
        short = [r for r in iters if r["mode"] == "iterative" and r["prompt_len"] <= 9]
        assert short and all(r["top1_agree"] == 1.0 for r in short)
    if suite == "streaming":
        assert all(r["evictions"] > 0 and r["ms_per_token"] > 0 for r in got)
        w2, base = ([r for r in got if r["variant"] == v and r["cache_size"] == 32][0] for v in ("lckv-w2", "llama"))
        assert w2["kv_cache_mib"] * 12 == pytest.approx(base["kv_cache_mib"] * 3)   # (w+1)/L of the layers
    if suite == "sessions":
        by = {(r["variant"], r["history_len"]): r for r in got}
        cfg = make_config("tiny", "lckv-w2", 64)
        r = by[("lckv-w2", 16)]
        assert r["blob_bytes"] > KVCache.bytes_for(cfg, 1, 16, torch.float32)   # K/V plus header and ids
        assert r["resume_ttft_s"] > 0 and r["speedup"] == pytest.approx(r["reprefill_ttft_s"] / r["resume_ttft_s"])
        for r in got:   # the turn runs through FastPrefill, checked against model.prefill on the device
            assert r["turn_prefill_path"].startswith("fast") and r["fast_vs_model_argmax_agree"] is True
            assert r["fast_vs_model_max_abs_diff_rel"] < 1e-4 and r["reprefill_path"]
    if suite == "prefill":
        fast = [r for r in got if r.get("path", "").startswith("fast")]
        assert {r["variant"] for r in fast} == {"llama", "lckv-w2"}
        assert all(r["vs_model_max_abs_diff_rel"] < 1e-4 for r in fast)


def test_cost_model_matches_real_sizes():
    for variant in ("llama", "lckv-w2", "lckv-w10"):
        cfg = make_config("tiny", variant, 64)
        model = ours.build_model(cfg, torch.device("cpu"), torch.float32)
        c = cost_model(cfg, elt=4)
        assert c.params == sum(p.numel() for p in model.parameters())
        assert c.kv_bytes_per_token == KVCache.bytes_for(cfg, 1, 1, torch.float32)
        # every layer reads a full K/V at decode, LCKV or not
        assert c.kv_read_per_token == 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
        assert decode_step_bytes(c, 2, 10) - decode_step_bytes(c, 1, 10) == 10 * c.kv_read_per_token + c.kv_bytes_per_token
    hf_model = hf.build_hf(SHAPES["tiny"], 64, torch.device("cpu"), torch.float32)
    assert cost_model(make_config("tiny", "hf-llama", 64)).params == sum(p.numel() for p in hf_model.parameters())


def test_extrapolation_is_exact_for_linear_step_times():
    a, b, ctx0, total = 0.01, 1e-5, 100, 500
    step = [a + b * (ctx0 + i + 0.5) for i in range(total)]   # step i sees context ctx0+i .. (mid-point)
    marks, t = [], 0.0
    for i in range(200):
        t += step[i]
        if (i + 1) % 20 == 0:
            marks.append((i + 1, t))
    assert ours.extrapolate(marks, total, ctx0) == pytest.approx(sum(step), rel=1e-9)


def test_bad_arguments_are_refused_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    for args in (["--suite", "nope"], ["--suite", "prefill:-1"], ["--settings", "12x4"], ["--variants", "gpt"],
                 ["--shapes", "llama3"]):
        assert bench_run.main(["--tiny", "--device", "cpu", "--out", str(out), *args]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "param: suite" in err and "param: settings" in err and "param: variant" in err and "param: shape" in err
    for args in (["--lckv-prefill", "fast"], ["--graphs", "maybe"]):   # argparse choices: usage error, exit 2
        with pytest.raises(SystemExit) as e:
            bench_run.main(["--tiny", "--device", "cpu", "--out", str(out), *args])
        assert e.value.code == 2
    assert not out.exists() and "--lckv-prefill" in capsys.readouterr().err


def test_plot_renders_pngs_and_keeps_readme_text(tmp_path):
    rows = _run(tmp_path, "--suite", "throughput:60,roofline:5,sessions:60", "--settings", "6+10",
                "--variants", "llama,lckv-w2,hf-llama")
    assert rows
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\nkept\n\n{plot.BEGIN}\nold\n{plot.END}\ntail kept\n")
    assert plot.main([str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "png"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\nkept") and text.rstrip().endswith("tail kept") and "\nold\n" not in text
    assert "| tiny | 6+10 | lckv-w2 |" in text and "lckv-w2 not slower than llama" in text
    for png in ("throughput.png", "roofline.png", "sessions.png"):
        assert (tmp_path / "png" / png).stat().st_size > 1000
        assert f"(png/{png})" in text


def test_max_batch_probe_interpolates_between_its_measurements():
    cfg = make_config("tiny", "lckv-w2", 64)
    model = ours.build_model(cfg, torch.device("cpu"), torch.float32)
    pr = ours.probe_max_batch(model, cfg, 3, 8, 24, torch.device("cpu"), torch.float32, decoder="fast", bucket=8,
                              steps=2)
    ctxs = [c for c, _ in pr["probe_step_s"]]
    times = [t for _, t in pr["probe_step_s"]]
    assert ctxs == sorted(ctxs) and len(ctxs) == 3 and ctxs[0] >= 8 and ctxs[-1] <= 8 + 24
    assert 23 * min(times) <= pr["decode_s_projected"] <= 23 * max(times)


def test_serving_suite_drives_the_real_server(tmp_path):
    """The serving suite on CPU: the real `lckv_service serve` process, concurrent streams in both
    arrival patterns, the engine alone as the baseline in the same row, every token delivered once;
    `max` streams as many as the pool holds (capped here by a server flag), overlapped steps on;
    stateless completions and session turns that return their cache blob."""
    rows = _run(tmp_path, "--suite", "serving:240", "--variants", "lckv-w2", "--settings", "12+6",
                "--streams", "3,max", "--arrivals", "burst,poisson", "--rate", "20",
                "--requests", "completion,session", "--server-args", "--max-slots 4 --overlap on")
    sv = _ok(rows, "serving")
    assert sorted((r["streams"], r["arrival"], r["requests"]) for r in sv) == [
        (n, a, k) for n in (3, 4) for a in ("burst", "poisson") for k in ("completion", "session")]
    assert all(r["slots_total"] == 4 and r["server_args"] == "--max-slots 4 --overlap on" for r in sv)
    for r in sv:
        for key in ("suite", "device", "variant", "shape", "streams", "prompt_len", "gen_len", "tokens_per_s",
                    "engine_tokens_per_s", "ttft_p50_s", "ttft_p95_s", "itl_p50_s", "itl_p95_s",
                    "all_tokens_delivered_once", "step_ms", "step_run_ms"):
            assert r.get(key) is not None, key
        # host CPU of both processes, per step: the server's (requests, frames) and the engine's, in clock
        # ticks (10 ms): a tiny row's server may round to 0
        assert r["server_cpu_ms_per_step"] >= 0 and r["engine_cpu_ms_per_step"] >= 0
        assert r["all_tokens_delivered_once"] and r["completed"] == r["streams"]
        assert r["generated_tokens"] <= 6 * r["streams"]
        if r["requests"] == "session":   # the chat template's tokens around the prompt; a blob each
            assert r["prompt_tokens_mean"] > 12 and r["blob_bytes_mean"] > 0
        else:
            assert r["prompt_tokens_mean"] == 12 and r["blob_bytes_mean"] == 0
        assert r["ttft_p50_s"] <= r["ttft_p95_s"] <= r["ttft_max_s"]
        assert r["tokens_per_s"] > 0 and r["engine_tokens_per_s"] > 0
        # where a row's setup time went, for planning a device call
        assert all(r[k] >= 0 for k in ("model_folder_s", "server_start_s", "warm_s", "prompts_s", "engine_baseline_s"))
    assert "service_vs_engine" in next(r for r in sv if r["arrival"] == "burst")
    assert max(r["engine_cpu_ms_per_step"] for r in sv) > 0
    md = plot.serving_md(rows)
    assert "lckv-w2" in md and "burst" in md


def test_a_serving_run_cut_by_the_time_budget_reports_what_arrived_until_then():
    """A stream cancelled at the suite's deadline counts its tokens and first token up to the cut; the
    row says it was cut and is not a clean run."""
    from lckv_bench.suites.serving import CUT, summarize
    usage = {"completion_tokens": 3, "prompt_tokens": 5}
    done = {"sent": 0.0, "frames": [(1.0, [7]), (1.5, [8, 9])], "done": {"usage": usage, "finish_reason": "length"},
            "blob": b"", "end": 2.0}
    cut = {"sent": 0.5, "frames": [(3.0, [4]), (3.5, [5])], "error": CUT, "cut_at": 4.0}
    unsent = {"error": CUT, "cut_at": 4.0}   # a Poisson arrival not yet due
    s = summarize([done, cut, unsent])
    assert s["completed"] == 1 and s["failed"] == 2 and s["cut_streams"] == 2 and s["cut_after_s"] == 4.0
    assert s["generated_tokens"] == 5 and s["tokens_per_s"] == 1.2 and not s["all_tokens_delivered_once"]
    assert s["ttft_p50_s"] in (1.0, 2.5) and s["ttft_p95_s"] == 2.5 and s["ttft_max_s"] == 2.5
    clean = summarize([done])
    assert "cut_streams" not in clean and clean["tokens_per_s"] == 1.5 and clean["all_tokens_delivered_once"]


def test_a_driven_run_past_its_timeout_comes_back_cut_with_what_it_received(tmp_path):
    """drive() against the real server: streams still open at the timeout are cancelled and come back
    marked cut with their send time and the frames so far; one not yet due was never sent."""
    import asyncio

    from lckv_bench.service import MODEL_ID, SECRET
    from lckv_bench.suites.serving import CUT, drive, summarize
    from service_fixtures import ServerThread, model_folder, serve_config
    with ServerThread(serve_config(model_folder(tmp_path), secret=SECRET, model_id=MODEL_ID)) as srv:
        prompts = ["Hello there, little fox!"] * 3
        results = asyncio.run(drive(srv.url, prompts, 500, [0.0, 0.0, 60.0], timeout=0.5))
    assert [r["error"] for r in results] == [CUT] * 3
    assert all("sent" in r and "cut_at" in r for r in results[:2]) and "sent" not in results[2]
    s = summarize(results)
    assert s["cut_streams"] == 3 and s["completed"] == 0 and s["generated_tokens"] < 1000


def test_serving_cli_refuses_bad_values(tmp_path, capsys):
    for args, param in ((["--streams", "0"], "streams"), (["--streams", "a,b"], "streams"),
                        (["--streams", "max,-2"], "streams"),
                        (["--arrivals", "storm"], "arrival"), (["--rate", "-1"], "rate"),
                        (["--requests", "batch"], "requests"),
                        (["--server-src", str(tmp_path)], "server_src")):
        assert bench_run.main(["--tiny", "--device", "cpu", "--quiet", "--suite", "serving",
                               "--out", str(tmp_path / "x.jsonl"), *args]) == 2
        assert f"param: {param}" in capsys.readouterr().err
        assert not (tmp_path / "x.jsonl").exists()


LCKV_TINY = Path(__file__).resolve().parents[1] / "models" / "lckv-tiny"


def test_responses_suite_drives_the_real_server_with_the_workers_upstream_requests(tmp_path):
    """Issue 16's GPU row, on CPU: the real `lckv_service serve` process with the trained demo model
    (its greedy tokens depend on the context, so agreement means something). The chain's turn sends
    only its new input with the head's blob; the stateless one the whole history without one."""
    rows = _run(tmp_path, "--suite", "responses:120", "--model-folder", str(LCKV_TINY), "--history", "40,120",
                "--repeats", "2", "--label", "test")
    got = _ok(rows, "responses")
    assert [r["target_tokens"] for r in got] == [40, 120]
    for r in got:
        assert r["device"].startswith("cpu") and r["model"] == "lckv-tiny" and r["label"] == "test"
        assert r["history_tokens"] >= r["target_tokens"] and r["evicted_tokens"] == 0 and r["blob_bytes"] > 0
        # the continuation reuses the whole history and prefills only the question
        assert r["chain_cached_tokens"] == r["history_tokens"]
        assert 0 < r["chain_new_tokens"] < 32 and r["chain_prompt_tokens"] == r["history_tokens"] + r["chain_new_tokens"]
        # the stateless request carries the same conversation as tokens, none of it cached
        assert r["stateless_prompt_tokens"] == r["chain_prompt_tokens"] and r["stateless_cached_tokens"] == 0
        assert r["stateless_repeats"] == 2 and r["stateless_over_ms"] is None and r["stateless_refused"] is None
        assert len(r["chain_ttft_ms_runs"]) == 2 and min(r["chain_ttft_ms_runs"] + r["stateless_ttft_ms_runs"]) > 0
        # a blob holds exactly the conversation's canonical tokens: same greedy continuation
        assert len(r["chain_token_ids"]) == 4 and r["chain_token_ids"] == r["stateless_token_ids"] and r["same_tokens"]
    assert got[0]["chain_token_ids"] != got[1]["chain_token_ids"]   # the history matters to this model
    assert got[1]["build_turns"] > got[0]["build_turns"]            # the chain grew turn by turn
    md = (tmp_path / "responses-ttft-test.md").read_text()
    assert md.startswith("| device | history tokens | TTFT by previous_response_id (ms) | TTFT, whole history stateless")
    assert md.count("| cpu") == 2 and "same greedy tokens" in md and "No Worker, Durable Object or SSE" in md


def test_responses_cli_refuses_bad_values(tmp_path, capsys):
    for args, param in ((["--history", "0"], "history"), (["--history", "1k"], "history"), (["--repeats", "0"], "repeats"),
                        (["--label", "../x"], "label"), (["--model-folder", str(tmp_path)], "model_folder")):
        assert bench_run.main(["--tiny", "--device", "cpu", "--quiet", "--suite", "responses",
                               "--out", str(tmp_path / "x.jsonl"), *args]) == 2
        assert f"param: {param}" in capsys.readouterr().err
        assert not (tmp_path / "x.jsonl").exists()


def test_step_profile_breaks_a_decode_step_down_by_category(tmp_path, capsys):
    """bench/step_profile.py on CPU (its numbers only mean something on CUDA): one row per variant
    whose categories add up to the profiled time, and the eager step really ran the model."""
    sp = _load("step_profile")
    out = tmp_path / "s.jsonl"
    assert sp.main(["--shape", "tiny-test", "--batch", "3", "--context", "8", "--steps", "2", "--device", "cpu",
                    "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["llama", "lckv-w2"] and rows[1]["kv_layers"] < rows[0]["kv_layers"]
    for r in rows:
        assert r["suite"] == "step_profile" and r["batch"] == 3 and r["eager_step_ms"] > 0
        assert r["kernels"] == "reference"   # nothing is compiled on a CPU
        assert abs(sum(r["by_category_ms"].values()) - r["kernel_ms"]) < 0.01 + 1e-3 * r["kernel_ms"]
        assert r["by_category_ms"].get("gemm", 0) > 0 and r["top_kernels_us"]
    assert "| llama |" in capsys.readouterr().out
    assert sp.category("sm90_xmma_gemm_bf16") == "gemm" and sp.category("_attn_split_kernel") == "attention"
    for bad in (["--batch", "0"], ["--steps", "-1"], ["--context", "0"], ["--kernels", "turbo"],
                ["--kernels", ","]):   # refused, nothing written
        with pytest.raises(SystemExit) as e:
            sp.main(["--shape", "tiny-test", "--device", "cpu", "--out", str(tmp_path / "bad.jsonl"), *bad])
        assert e.value.code == 2 and bad[0] in capsys.readouterr().err.split("error:")[-1]   # not the usage line
    assert not (tmp_path / "bad.jsonl").exists()


def test_graph_memory_refuses_bad_flags_and_a_machine_without_cuda(tmp_path, capsys):
    """bench/graph_memory.py measures CUDA graph memory only: here it refuses, naming why, and writes nothing."""
    gm = _load("graph_memory")
    out = tmp_path / "g.jsonl"
    cases = [["--slots", "0"], ["--capacity", "-1"], ["--order", "sideways"]]
    if not torch.cuda.is_available():
        cases.append([])
    for bad in cases:
        with pytest.raises(SystemExit) as e:
            gm.main(["--out", str(out), *bad])
        err = capsys.readouterr().err
        assert e.value.code == 2 and (bad[0] if bad else "needs a CUDA device") in err
    assert not out.exists()


def test_connect_burst_measures_the_real_server_per_backlog(tmp_path, capsys):
    """bench/connect_burst.py starts the real server per listen backlog and times bursts of new
    connections: one row per (backlog, burst size), every request answered; bad flags are refused."""
    cb = _load("connect_burst")
    out = tmp_path / "c.jsonl"
    assert cb.main(["--bursts", "12", "--repeats", "2", "--backlogs", "4,default", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["listen_backlog"], r["connections"], r["bursts"]) for r in rows] == [("4", 12, 2), ("default", 12, 2)]
    for r in rows:
        assert r["suite"] == "connect_burst" and 0 < r["p50_s"] <= r["p95_s"] <= r["max_s"]
        assert 0 <= r["bursts_with_a_retransmit"] <= 2 and r["over_0_9_s"] <= 24
    for bad in (["--bursts", "0"], ["--bursts", "ten"], ["--backlogs", "-1"], ["--repeats", "0"]):
        with pytest.raises(SystemExit) as e:
            cb.main([*bad, "--out", str(tmp_path / "bad.jsonl")])
        assert e.value.code == 2 and bad[0] in capsys.readouterr().err.split("error:")[-1]   # not the usage line
    assert not (tmp_path / "bad.jsonl").exists()


def test_gemm_merge_times_every_projection_per_shape_and_batch(tmp_path, capsys):
    """bench/gemm_merge.py (CPU here): one row per (shape, batch) with every projection timed; bad flags
    are refused naming the flag, and nothing is written."""
    gm = _load("gemm_merge")
    out = tmp_path / "g.jsonl"
    assert gm.main(["--device", "cpu", "--shapes", "tiny", "--batches", "2,8", "--reps", "2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["suite"], r["shape"], r["M"]) for r in rows] == [("gemm_merge", "tiny", 2), ("gemm_merge", "tiny", 8)]
    for r in rows:
        assert all(r[k] > 0 for k in ("qkv_sep", "qkv_merged", "q_only", "gate_up_sep", "gate_up_merged", "down", "o"))
    capsys.readouterr()
    for bad, flag in ((["--batches", "0"], "--batches"), (["--shapes", "tiny,huge"], "--shapes"),
                      (["--reps", "0"], "--reps")):
        with pytest.raises(SystemExit) as e:
            gm.main(["--device", "cpu", *bad, "--out", str(tmp_path / "bad.jsonl")])
        assert e.value.code == 2 and flag in capsys.readouterr().err.split("error:")[-1]   # not the usage line
    assert not (tmp_path / "bad.jsonl").exists()


def test_fits_in_memory_is_false_only_on_out_of_memory():
    """The max-batch searches' one rule: an attempt that runs fits, one that runs out of memory does not,
    and any other failure is a bug that propagates."""
    from lckv_bench.common import fits_in_memory
    cpu = torch.device("cpu")
    ran = []
    assert fits_in_memory(lambda: ran.append(torch.zeros(4)), cpu) and len(ran) == 1

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not fits_in_memory(oom, cpu)

    def bug():
        raise ValueError("shape mismatch")
    with pytest.raises(ValueError):
        fits_in_memory(bug, cpu)


def test_model_cases_share_the_time_left_and_record_the_cases_it_cannot_run():
    """Context.model_cases: each (shape, variant) gets an equal share of what is left; once the suite's
    time is spent, every remaining case is a skipped row, not a silent gap."""
    from lckv_bench.common import Budget, Context, Recorder
    rec = Recorder(None, {})
    ctx = Context(device=torch.device("cpu"), rec=rec, budget=Budget(100.0), tiny=True, shapes=("a", "b"))
    cases = [(s, v, round(share.seconds)) for s, v, share in ctx.model_cases("x", ["llama", "lckv-w2"])]
    assert [(s, v) for s, v, _ in cases] == [("a", "llama"), ("a", "lckv-w2"), ("b", "llama"), ("b", "lckv-w2")]
    assert cases[0][2] == 50 and cases[1][2] == 100 and not rec.rows
    ctx.budget = Budget(1.0)
    assert list(ctx.model_cases("x", ["llama", "lckv-w2"])) == []
    assert [(r["suite"], r["status"], r["shape"], r["variant"]) for r in rec.rows] == [
        ("x", "skipped", "a", "llama"), ("x", "skipped", "a", "lckv-w2"),
        ("x", "skipped", "b", "llama"), ("x", "skipped", "b", "lckv-w2")]


def test_a_failing_case_becomes_an_error_row_and_the_suite_goes_on():
    from lckv_bench.common import Budget, Context, Recorder
    rec = Recorder(None, {})
    ctx = Context(device=torch.device("cpu"), rec=rec, budget=Budget(100.0), tiny=True, shapes=("a",))
    done = []
    for shape, variant, _ in ctx.model_cases("x", ["llama", "lckv-w2"]):
        with ctx.errors_as_rows("x", shape=shape, variant=variant):
            if variant == "llama":
                raise RuntimeError("kernel refused")
            done.append(variant)
    assert done == ["lckv-w2"]
    (row,) = rec.rows
    assert (row["status"], row["variant"]) == ("error", "llama") and "kernel refused" in row["error"]
    assert "RuntimeError" in row["trace"]
