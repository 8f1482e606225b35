"""Serving: the product as clients see it. Starts the real GPU service (`python -m lckv_service serve`,
the code `npm start` and the container run) on a random-weight model of the shape, opens N concurrent
streams over its HTTP protocol (all at once, and Poisson arrivals), and in the same run measures the
engine alone (bench/lckv_bench/ours.generate: the same model folder, batch, prompt and generation
lengths, no HTTP, no scheduler) as the baseline.

One row per (shape, variant, prompt+gen, streams, arrival, requests): `requests` is completion (stateless)
or session (a chat turn that returns its cache blob, as the Worker's sessions do; blob_bytes_mean);
- tokens_per_s: completion tokens delivered / (last stream's end - first request sent);
- ttft_*: request sent -> first token frame received; itl_*: gaps between a stream's token frames,
  a frame of k tokens counting as k gaps of 1/k of its interval each;
- all_tokens_delivered_once: every stream received exactly the ids its `usage` counts;
- engine_tokens_per_s, engine_step_s: the engine alone, all prompts prefilled then decoded together;
- profile (from the service's /metrics over the burst run): steps, wall seconds per step and per
  phase (schedule, run, update), device span per step (CUDA), gpu_busy_frac (device span / wall);
  server_cpu_ms_per_step and engine_cpu_ms_per_step (Linux: CPU time of the server process and of its
  engine process, per engine step);
  gpu_util_mean_pct from nvidia-smi sampling.

The model folder, the server process and the request client are bench/lckv_bench/service.py's;
prompts are plain words cut to exactly `prompt_len` tokens.
"""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from lckv_service.checkpoint import load_model
from lckv_service.model import PrefillMode

from .. import ours
from ..common import Context, release
from ..service import (MODEL_ID, SERVICE_SRC, ServerProcess, free_port, generate, make_model_folder, make_prompts,
                       request_body)

STREAMS, TINY_STREAMS = (64, 128, 256), (4, 8)
SETTINGS, TINY_SETTINGS = ((512, 512),), ((24, 12),)
VARIANTS = ("llama", "lckv-w2")
ARRIVALS = ("burst", "poisson")
REQUESTS = ("completion",)   # `session` rows (blob returned) on request: --requests


def _pyspy(server: "ServerProcess", base: dict, n: int):
    """Optional sampling profile of the server under the largest burst: env LCKV_BENCH_PYSPY names a
    py-spy binary, LCKV_BENCH_PYSPY_OUT the folder for its raw (collapsed-stack) output."""
    exe, out = os.environ.get("LCKV_BENCH_PYSPY"), os.environ.get("LCKV_BENCH_PYSPY_OUT")
    if not exe or not out or not os.access(exe, os.X_OK):   # not installed here: no profile, same rows
        return None
    name = f"pyspy-{base['shape']}-{base['variant']}-{'baseline' if base['server_src'] != 'this tree' else 'now'}-{n}.txt"
    # --subprocesses: the engine runs in a child of the server process (engine_process)
    return subprocess.Popen([exe, "record", "--pid", str(server.proc.pid), "--rate", "100", "--duration", "15",
                             "--format", "raw", "--threads", "--subprocesses", "--nonblocking",
                             "-o", str(Path(out) / name)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---- the client --------------------------------------------------------------------------------
def _body(i: int, prompt: str, gen: int, requests: str) -> bytes:
    """completion: stateless, no blob. session: the first turn of a session, as the Worker sends it
    (a chat message, the turn's cache blob returned)."""
    sampling = {"max_tokens": gen, "temperature": 0.0}
    if requests == "session":
        return request_body({"request_id": f"bench-{i}", "model": MODEL_ID, "kind": "chat",
                             "messages": [{"role": "user", "content": prompt}], "sampling": sampling,
                             "return_blob": True})
    return request_body({"request_id": f"bench-{i}", "model": MODEL_ID, "kind": "completion", "prompt": prompt,
                         "sampling": sampling, "return_blob": False})


async def _one(session, url: str, body: bytes, delay: float, t_start: float, progress: dict) -> dict:
    await asyncio.sleep(max(0.0, t_start + delay - time.perf_counter()))
    return await generate(session, url, body, progress)


CUT = "cut: the suite's time budget was spent"


async def drive(url: str, prompts: list[str], gen: int, delays: list[float], requests: str = "completion",
                timeout: float | None = None) -> list[dict]:
    """One stream per prompt, each sent at its delay. Streams still open after `timeout` seconds are
    cancelled and come back as {error: CUT, cut_at, sent, frames so far}."""
    import aiohttp
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=3600)) as s:
        t0 = time.perf_counter() + 0.05
        progress = [{} for _ in prompts]
        tasks = [asyncio.ensure_future(_one(s, url, _body(i, p, gen, requests), d, t0, progress[i]))
                 for i, (p, d) in enumerate(zip(prompts, delays))]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        cut_at = time.perf_counter()
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return [t.result() if t in done else dict(pr, error=CUT, cut_at=cut_at) for t, pr in zip(tasks, progress)]


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))], 5)


def delivered(r: dict) -> bool:
    """Every sampled id reached the client exactly once: usage counts them all, and an end-of-turn
    token that stopped the stream is counted but not sent as text."""
    got, usage = sum(len(ids) for _, ids in r["frames"]), r["done"]["usage"]["completion_tokens"]
    return got == usage or (r["done"]["finish_reason"] == "stop" and got == usage - 1)


def summarize(results: list[dict]) -> dict:
    ok = [r for r in results if r.get("done") is not None and "error" not in r]
    errors = [r for r in results if r not in ok]
    delivered_once = bool(ok) and not errors and all(delivered(r) for r in ok)
    tokens = sum(r["done"]["usage"]["completion_tokens"] for r in ok)
    wall = (max(r["end"] for r in ok) - min(r["sent"] for r in ok)) if ok else 0.0
    measured = ok
    cut_all = [r for r in errors if r.get("error") == CUT]
    cut = [r for r in cut_all if "sent" in r]   # the ones sent before the cut
    if cut:   # the time box ended the run: throughput and TTFT over what arrived until then
        measured = ok + cut
        tokens += sum(len(ids) for r in cut for _, ids in r["frames"])
        wall = max(r["cut_at"] for r in cut) - min(r["sent"] for r in measured)
    ttft = [r["frames"][0][0] - r["sent"] for r in measured if r["frames"]]
    itl = []
    for r in measured:
        for (ta, _), (tb, ids) in zip(r["frames"], r["frames"][1:]):
            itl += [(tb - ta) / len(ids)] * len(ids)
    prompt_tokens = [r["done"]["usage"]["prompt_tokens"] for r in ok]
    blobs = [len(r["blob"]) for r in ok]
    return {"completed": len(ok), "failed": len(errors), "error_sample": str(errors[0].get("error"))[:300] if errors else None,
            **({"cut_streams": len(cut_all), "cut_after_s": round(wall, 3)}
               if cut else {}),
            "all_tokens_delivered_once": delivered_once, "generated_tokens": tokens, "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 1) if wall else None,
            "prompt_tokens_mean": round(statistics.mean(prompt_tokens), 1) if prompt_tokens else None,
            "blob_bytes_mean": round(statistics.mean(blobs)) if blobs else None,
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p95_s": pct(ttft, 0.95),
            "ttft_max_s": round(max(ttft), 5) if ttft else None,   # a burst's stragglers
            "itl_p50_s": pct(itl, 0.5), "itl_p95_s": pct(itl, 0.95)}


def profile(before: dict, after: dict, gpu_util: list[float], cpu: tuple[dict, dict] = ({}, {})) -> dict:
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    steps = d.get("lckv_engine_steps_total", 0.0)
    if not steps:
        return {"profile_steps": 0, "gpu_util_mean_pct": round(statistics.mean(gpu_util), 1) if gpu_util else None}
    # CPU per step of each process: the server's is its host work (requests, frames); the engine's also
    # counts the CUDA driver spinning while it waits for the device
    cpu_ms = {f"{name}_cpu_ms_per_step": round(1000 * (cpu[1][name] - cpu[0][name]) / steps, 3)
              for name in ("server", "engine") if cpu[0].get(name) is not None and cpu[1].get(name) is not None}
    phase = {p: d.get(f'lckv_engine_step_seconds_total{{phase="{p}"}}', 0.0) for p in ("schedule", "run", "update")}
    wall = sum(phase.values())
    dev = d.get("lckv_engine_device_seconds_total", 0.0)
    return {"profile_steps": int(steps), "step_ms": round(1000 * wall / steps, 3),
            **{f"step_{p}_ms": round(1000 * s / steps, 3) for p, s in phase.items()},
            "step_device_ms": round(1000 * dev / steps, 3) if dev else None,
            "gpu_busy_frac": round(dev / wall, 3) if dev and wall else None,
            "gpu_util_mean_pct": round(statistics.mean(gpu_util), 1) if gpu_util else None, **cpu_ms}


class GpuUtil:
    """nvidia-smi utilization samples while a run goes (empty where there is no nvidia-smi)."""

    def __enter__(self):
        self.samples: list[float] = []
        exe = shutil.which("nvidia-smi")
        self.proc = subprocess.Popen([exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-lms", "200"], stdout=subprocess.PIPE, text=True) if exe else None
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=10)
            self.samples = [float(x) for x in out.split() if x.strip().replace(".", "", 1).isdigit()]


# ---- the suite ---------------------------------------------------------------------------------
def engine_baseline(folder: Path, device, dtype, batch: int, prompt: int, gen: int, decoder: str,
                    deadline: float) -> dict:
    model = load_model(folder, device=device, dtype=dtype).eval()
    cfg = model.cfg
    tokenwise = cfg.iter_block is not None   # what the service's auto prefill runs
    group = max(1, min(batch, 65536 // prompt))
    try:
        r = ours.generate(model, cfg, batch, prompt, gen, device, dtype, decoder=decoder,
                          mode=PrefillMode(kind="exact"), group=group, deadline=deadline, tokenwise=tokenwise)
    finally:
        del model
        release(device)
    return {"engine_tokens_per_s": round(batch * gen / r.total_s, 1),
            "engine_step_s": round(r.decode_s / max(1, r.steps_done), 6),
            "engine_prefill_s": round(r.prefill_s, 4), "engine_extrapolated": r.extrapolated,
            "engine_decoder": decoder, "engine_prefill": "tokenwise" if tokenwise else "one pass"}


def run(ctx: Context) -> None:
    settings = ctx.settings or (TINY_SETTINGS if ctx.tiny else SETTINGS)
    streams = ctx.streams or (TINY_STREAMS if ctx.tiny else STREAMS)
    arrivals = ctx.arrivals or ARRIVALS
    requests = ctx.requests or REQUESTS
    variants = [v for v in (ctx.variants or VARIANTS) if v != "hf-llama"]
    dtype = torch.float32 if ctx.device.type == "cpu" else torch.bfloat16
    src = Path(ctx.server_src) if ctx.server_src else SERVICE_SRC
    extra = ctx.server_args.split() if ctx.server_args else []
    decoder = ctx.preferred_decoder()
    for shape in ctx.shapes:
        for variant in variants:
            for prompt, gen in settings:
                base = dict(shape=shape, variant=variant, prompt_len=prompt, gen_len=gen,
                            server_src=str(ctx.server_src) if ctx.server_src else "this tree",
                            server_args=" ".join(extra))
                if ctx.budget.left() < 10:
                    ctx.rec.write("serving", status="skipped", reason="suite time budget spent", **base)
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    folder = make_model_folder(Path(tmp) / "model", shape, variant, prompt + gen + 8, dtype,
                                               ctx.device)
                    base["model_folder_s"] = round(time.perf_counter() - t0, 1)   # setup, for planning calls
                    rows = _serve_rows(ctx, folder, src, extra, streams, arrivals, requests, prompt, gen, base)
                    engine: dict[int, dict] = {}   # streams -> the engine alone's figures, measured once
                    for row in rows:   # the engine alone, same folder, batch and lengths, after the server is gone
                        if row.get("status") != "ok" or ctx.server_src:   # another tree: its rows compare
                            continue                                     # with this tree's, engine included
                        try:
                            n = row["streams"]
                            # its prefill is about the burst's TTFT; its decode stops at a deadline
                            # (the rest extrapolated); loading and capturing the graphs about 30 s
                            need = 30 + (row["ttft_p95_s"] or 0) + 10
                            if n not in engine and ctx.budget.left() < need:
                                row["engine_error"] = f"not run: the suite's time budget left {ctx.budget.left():.0f} s"
                                continue
                            if n not in engine:
                                t0 = time.perf_counter()
                                engine[n] = engine_baseline(folder, ctx.device, dtype, n, prompt, gen, decoder,
                                                            time.perf_counter() + min(60, ctx.budget.left() / 4))
                                engine[n]["engine_baseline_s"] = round(time.perf_counter() - t0, 1)
                            row.update(engine[n])
                            if row["arrival"] == "burst":   # Poisson throughput is the offered load
                                row["service_vs_engine"] = round(row["tokens_per_s"] / row["engine_tokens_per_s"], 3)
                            row["itl_p50_vs_engine_step"] = round(row["itl_p50_s"] / row["engine_step_s"], 3)
                        except Exception as e:   # an engine failure keeps the service's numbers
                            row["engine_error"] = f"{type(e).__name__}: {e}"[:300]
                    for row in rows:
                        ctx.rec.write("serving", **row)


MAX_BATCH_SLOTS = 4096   # `--streams max`: the pool is sized from free memory up to this many slots


def _serve_rows(ctx, folder, src, extra, streams, arrivals, requests, prompt, gen, base) -> list[dict]:
    n_max = MAX_BATCH_SLOTS if 0 in streams else max(streams)
    flags = ["--max-slots", str(n_max), "--window", str(prompt + gen + 4), "--max-waiting", str(n_max),
             "--max-tokens", str(gen), "--log-level", "WARNING", *extra]
    log = Path(tempfile.gettempdir()) / f"serving-{base['shape']}-{base['variant']}.log"
    server = ServerProcess(folder, ctx.device.type, free_port(), flags, src, log)
    rows = []
    try:
        t0 = time.perf_counter()
        server.wait_ready(timeout=min(600, ctx.budget.left()))
        slots = int(server.metrics().get("lckv_kv_pool_slots", 0))   # sessions the pool holds at once
        base = dict(base, slots_total=slots, server_start_s=round(time.perf_counter() - t0, 1))
        streams = sorted({n if n else slots for n in streams})
        n_max = max(streams)
        t0 = time.perf_counter()
        warm = make_prompts(folder, 4, prompt, seed=99)
        asyncio.run(drive(server.url, warm, min(gen, 8), [0.0] * 4))
        base["warm_s"] = round(time.perf_counter() - t0, 1)
        for n in streams:
            t0 = time.perf_counter()
            prompts = make_prompts(folder, n, prompt, seed=n)
            prompts_s = round(time.perf_counter() - t0, 1)
            for arrival in arrivals:
                for kind in requests:
                    if ctx.budget.left() < 5:
                        rows.append(dict(base, streams=n, arrival=arrival, requests=kind, status="skipped",
                                         reason="suite time budget spent"))
                        continue
                    rate = ctx.rate or (n / (1.0 if ctx.tiny else 10.0))
                    rng = random.Random(n)
                    delays, t = [], 0.0
                    for _ in range(n):
                        delays.append(t if arrival == "poisson" else 0.0)
                        t += rng.expovariate(rate)
                    before, cpu_before = server.metrics(), server.cpu_seconds()
                    profiled = n == n_max and arrival == "burst" and kind == requests[0]
                    spy = _pyspy(server, base, n) if profiled else None
                    with GpuUtil() as util:
                        results = asyncio.run(drive(server.url, prompts, gen, delays, kind,
                                                    timeout=max(1.0, ctx.budget.left() - 5)))
                    if spy is not None:
                        spy.wait(timeout=120)
                    after, cpu_after = server.metrics(), server.cpu_seconds()
                    summary = summarize(results)
                    rows.append(dict(base, streams=n, arrival=arrival, requests=kind, prompts_s=prompts_s,
                                     rate_per_s=round(rate, 3) if arrival == "poisson" else None,
                                     status="ok" if summary["completed"] == n else "error",
                                     **summary, **profile(before, after, util.samples, (cpu_before, cpu_after))))
    except Exception as e:
        rows.append(dict(base, status="error", error=f"{type(e).__name__}: {e}"[:300],
                         server_log_tail=log.read_text(errors="replace")[-1500:] if log.exists() else None))
    finally:
        server.stop()
    # the service's warnings (a pool retried smaller and what held the memory, ...) go with its rows
    text = log.read_text(errors="replace") if log.exists() else ""
    warnings = [ln[:600] for ln in text.splitlines() if " WARNING " in ln or " CRITICAL " in ln][:10]
    return [dict(r, server_warnings=warnings) if warnings else r for r in rows]
