"""Run the GPU benchmark suites and append one JSON object per measurement to a JSONL file.

    python bench/run.py --suite throughput:420,roofline:5 --shapes llama2-7b --out $OUT/part1.jsonl
    python bench/run.py --tiny --suite throughput,prefill,streaming,sessions,roofline   # CPU smoke run

Every suite is time-boxed (`name:seconds`; suites without seconds share what is left of
--budget-s) and results are flushed line by line, so a killed run keeps what it measured.

On CUDA every suite, and every (shape, variant) of the throughput suite, runs in its own worker
process (`--isolate`, default on CUDA): a device-side assert or a crash poisons only that process,
so one failure costs its rows (written as `error` rows with the worker's exit code and stderr
tail), not the run, and each case starts with an empty device.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))                       # lckv_bench
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gpu-service"))  # lckv_service

import torch  # noqa: E402

from lckv_bench import hw  # noqa: E402
from lckv_bench.common import BenchError, Budget, Context, Recorder, device_info, parse_ints, parse_list  # noqa: E402
from lckv_bench.shapes import SHAPES, VARIANTS  # noqa: E402
from lckv_bench.suites.throughput import SETTINGS, TINY_SETTINGS, _weight  # noqa: E402

SUITES = ("throughput", "roofline", "prefill", "streaming", "sessions", "serving", "responses")
DEFAULT_SHAPES = {"throughput": ("llama2-7b", "tinyllama-1.1b"), "roofline": (), "prefill": ("tinyllama-1.1b",),
                  "streaming": ("tinyllama-1.1b",), "sessions": ("tinyllama-1.1b",), "serving": ("tinyllama-1.1b",),
                  "responses": ("tinyllama-1.1b",)}


def parse_suites(spec: str, total: float) -> list[tuple[str, float]]:
    """'throughput:300,prefill' -> [(name, seconds)], unspecified suites sharing the rest of `total`."""
    items = []
    for part in spec.split(","):
        name, _, secs = part.strip().partition(":")
        if name not in SUITES:
            raise BenchError(f"unknown suite {name!r}; known: {', '.join(SUITES)}", param="suite")
        if any(n == name for n, _ in items):
            raise BenchError(f"suite {name!r} listed twice", param="suite")
        try:
            s = float(secs) if secs else None
        except ValueError:
            raise BenchError(f"bad seconds {secs!r} for suite {name!r}", param="suite") from None
        if s is not None and s <= 0:
            raise BenchError(f"seconds for suite {name!r} must be positive", param="suite")
        items.append((name, s))
    fixed = sum(s for _, s in items if s is not None)
    free = [n for n, s in items if s is None]
    share = max(0.0, total - fixed) / len(free) if free else 0.0
    return [(n, s if s is not None else share) for n, s in items]


def parse_settings(spec: str | None) -> tuple[tuple[int, int], ...] | None:
    if not spec:
        return None
    out = []
    for part in spec.split(","):
        p, _, g = part.partition("+")
        try:
            pi, gi = int(p), int(g)
        except ValueError:
            raise BenchError(f"bad setting {part!r}: use PROMPT+GEN, e.g. 2048+2048", param="settings") from None
        if pi < 1 or gi < 2:
            raise BenchError(f"bad setting {part!r}: prompt >= 1 and gen >= 2", param="settings")
        out.append((pi, gi))
    return tuple(out)


def parse_streams(spec: str | None) -> tuple[int, ...] | None:
    """Serving's stream counts; `max` (0 here) is as many as the service's K/V pool holds."""
    if spec and "max" in [x.strip() for x in spec.split(",")]:
        rest = ",".join(x for x in spec.split(",") if x.strip() not in ("max", ""))
        return (parse_ints(rest, "streams") or ()) + (0,)
    return parse_ints(spec, "streams")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="throughput,roofline", help="comma list of suite[:seconds]")
    ap.add_argument("--budget-s", type=float, default=480.0, help="total seconds for suites without their own")
    ap.add_argument("--shapes", help=f"comma list of {', '.join(SHAPES)} (default per suite)")
    ap.add_argument("--variants", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--settings", help="throughput PROMPT+GEN list, e.g. 2048+2048,512+1024")
    ap.add_argument("--max-run-batch", type=int, help="cap the batch of each throughput run (the max batch is "
                    "still searched and, where larger, projected from measured step times)")
    ap.add_argument("--out", help="JSONL file to append to (default: bench/results/<device>-<time>.jsonl)")
    ap.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--tiny", action="store_true", help="CPU-sized shapes and lengths (tests, dry runs)")
    ap.add_argument("--isolate", choices=("auto", "on", "off"), default="auto",
                    help="run each suite / throughput (shape, variant) in a worker process (auto: on CUDA)")
    ap.add_argument("--worker-startup-s", type=float,
                    help="seconds a worker needs to start (imports, CUDA init), taken off its time box "
                         "(default 20, --tiny 3)")
    ap.add_argument("--graphs", choices=("on", "off"), default="on",
                    help="let our decoders replay CUDA graphs (off: the same kernels launched eagerly)")
    ap.add_argument("--lckv-prefill", choices=("auto", "tokenwise", "iterative"), default="auto",
                    help="throughput suite, LCKV variants: prompts as batched decode steps (exact, 1x the "
                         "FLOPs), the paper's m+b parallel iterations, or auto: both measured at the run's "
                         "batch, the cheaper runs")
    ap.add_argument("--streams", help="serving: comma list of concurrent streams (default 64,128,256); `max`: as "
                                      "many as the service's K/V pool holds in the device's free memory")
    ap.add_argument("--arrivals", help="serving: comma list of burst, poisson (default both)")
    ap.add_argument("--rate", type=float, help="serving: Poisson arrivals per second (default streams/10s)")
    ap.add_argument("--requests", help="serving: comma list of completion (stateless), session (chat turns that "
                                       "return the session's cache blob, as the Worker's sessions and Responses "
                                       "API send them) (default completion)")
    ap.add_argument("--server-src", help="serving: another tree's gpu-service folder to serve from (a baseline)")
    ap.add_argument("--server-args", help="serving, responses: extra flags for `lckv_service serve`, one string")
    ap.add_argument("--history", help="responses: comma list of history sizes in tokens (default 1000,4000,16000)")
    ap.add_argument("--repeats", type=int, help="responses: timed turns per history size (default 3)")
    ap.add_argument("--label", help="responses: names the table responses-ttft-<label>.md next to --out "
                    "(default gpu on CUDA, cpu-service on CPU; cpu is the Worker path's table)")
    ap.add_argument("--model-folder", help="responses: serve this model folder instead of a random-weight one "
                    "of each shape (e.g. gpu-service/models/lckv-tiny)")
    ap.add_argument("--hw-json", help="a previous run's hw row (JSON): reuse its ceilings instead of measuring")
    ap.add_argument("--quiet", action="store_true")
    # internal: how a parent hands a worker its share of the run
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run-id", help=argparse.SUPPRESS)
    ap.add_argument("--hw-only", action="store_true", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        suites = parse_suites(args.suite, args.budget_s)
        shapes = parse_list(args.shapes, tuple(SHAPES), "shape")
        variants = parse_list(args.variants, VARIANTS, "variant")
        settings = parse_settings(args.settings)
        args.streams_list = parse_streams(args.streams)
        args.arrivals_list = parse_list(args.arrivals, ("burst", "poisson"), "arrival")
        args.requests_list = parse_list(args.requests, ("completion", "session"), "requests")
        if args.rate is not None and not args.rate > 0:
            raise BenchError("--rate must be positive", param="rate")
        if args.server_src and not (Path(args.server_src) / "lckv_service").is_dir():
            raise BenchError("--server-src must be a gpu-service folder (holding lckv_service/)", param="server_src")
        args.history_list = parse_ints(args.history, "history")
        if args.repeats is not None and args.repeats < 1:
            raise BenchError("--repeats must be >= 1", param="repeats")
        if args.label is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", args.label):
            raise BenchError("--label must be 1-64 letters, digits, '.', '_' or '-'", param="label")
        if args.model_folder and not (Path(args.model_folder) / "config.json").is_file():
            raise BenchError("--model-folder must be a model folder (holding config.json)", param="model_folder")
        if args.max_run_batch is not None and args.max_run_batch < 1:
            raise BenchError("--max-run-batch must be >= 1", param="max_run_batch")
        if args.worker_startup_s is None:
            args.worker_startup_s = 3.0 if args.tiny else 20.0
        if args.worker_startup_s < 0:
            raise BenchError("--worker-startup-s must be >= 0", param="worker_startup_s")
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BenchError("--device cuda but no CUDA device is available", param="device")
    except BenchError as e:
        print(f"error: {e} (param: {e.param})", file=sys.stderr)
        return 2
    isolate = not args.worker and (args.isolate == "on" or (args.isolate == "auto" and device.type == "cuda"))
    run_id = args.run_id or time.strftime("%Y%m%dT%H%M%S")
    if isolate:   # the parent never touches the device: workers start on an empty one
        return _parent(args, suites, device, run_id, settings, shapes, variants)
    prev_threads = torch.get_num_threads()
    if device.type == "cpu" and args.tiny:
        torch.set_num_threads(1)   # tiny shapes: threads only contend (2-core CI machines)
    info = device_info(device)
    out = Path(args.out) if args.out else _default_out(info["device"])
    out.parent.mkdir(parents=True, exist_ok=True)
    rec = Recorder(out, base={"device": info["device"], "run_id": run_id},
                   echo=None if args.quiet else sys.stdout)
    try:
        torch.manual_seed(0)
        if args.hw_json:
            hw_row = json.loads(args.hw_json)
        else:
            hw_row = hw.measure(device, args.tiny)
            rec.write("hw", status="ok", **info, **hw_row)
        if not args.hw_only:
            for name, secs in suites:
                _run_suite(name, secs, device, rec, args, shapes, settings, variants, hw_row)
    finally:
        rec.close()
        torch.set_num_threads(prev_threads)
    if not args.quiet and not args.worker:
        print(json.dumps({"results": str(out), "rows": len(rec.rows)}))
    return 0


def _default_out(device_name: str) -> Path:
    return Path(__file__).parent / "results" / f"{device_name.split()[0].lower()}-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"


def _run_suite(name, secs, device, rec, args, shapes, settings, variants, hw_row) -> None:
    ctx = Context(device=device, rec=rec, budget=Budget(secs), tiny=args.tiny,
                  shapes=("tiny",) if args.tiny else (shapes or DEFAULT_SHAPES[name]),
                  settings=settings, variants=variants, hw=hw_row, max_run_batch=args.max_run_batch,
                  graphs=args.graphs == "on", lckv_prefill=args.lckv_prefill,
                  streams=getattr(args, "streams_list", None), arrivals=getattr(args, "arrivals_list", None),
                  requests=getattr(args, "requests_list", None),
                  rate=args.rate, server_src=args.server_src, server_args=args.server_args,
                  history=getattr(args, "history_list", None), repeats=args.repeats, label=args.label,
                  model_folder=args.model_folder)
    t = time.perf_counter()
    importlib.import_module(f"lckv_bench.suites.{name}").run(ctx)
    if not args.worker:   # a worker runs a share of a suite: its parent records the suite's end
        rec.write("suite_done", status="ok", name=name, seconds=round(time.perf_counter() - t, 2), budget_s=secs)


# ---- process isolation ---------------------------------------------------------------------------
def _parent(args, suites, device, run_id, settings, shapes, variants) -> int:
    """Run every unit of work in a worker process; write `error` rows for what a dead worker left."""
    out = Path(args.out) if args.out else _default_out(device.type)
    out.parent.mkdir(parents=True, exist_ok=True)
    common = ["--out", str(out), "--run-id", run_id, "--device", device.type, "--worker", "--isolate", "off"]
    common += ["--tiny"] if args.tiny else []
    common += ["--quiet"] if args.quiet else []
    common += ["--max-run-batch", str(args.max_run_batch)] if args.max_run_batch else []
    common += ["--settings", args.settings] if args.settings else []
    common += ["--graphs", args.graphs, "--lckv-prefill", args.lckv_prefill]
    for flag, v in (("--streams", args.streams), ("--arrivals", args.arrivals), ("--rate", args.rate),
                    ("--requests", args.requests),
                    ("--server-src", args.server_src), ("--server-args", args.server_args),
                    ("--history", args.history), ("--repeats", args.repeats), ("--label", args.label),
                    ("--model-folder", args.model_folder)):
        common += [flag, str(v)] if v is not None else []
    if args.hw_json:   # ceilings measured earlier on this machine: recorded again under this run_id
        hw_full = {"device": device.type, **json.loads(args.hw_json)}
        Recorder(out, base={"device": hw_full["device"], "run_id": run_id}).write(
            "hw", **{k: v for k, v in hw_full.items() if k not in ("device", "run_id", "suite", "time_unix")},
            reused=True)
    else:
        rc, tail = _worker(common + ["--hw-only"], timeout=300)
        hw_rows = [r for r in _rows(out, run_id) if r["suite"] == "hw" and r.get("status") == "ok"]
        if not hw_rows:
            print(f"error: hardware measurement failed (worker exit {rc}): {tail}", file=sys.stderr)
            return 1
        hw_full = hw_rows[-1]
    hw_row = {k: hw_full[k] for k in ("copy_gbps", "matmul_tflops", "copy_bytes", "matmul_n", "matmul_dtype")}
    rec = Recorder(out, base={"device": hw_full["device"], "run_id": run_id}, echo=None if args.quiet else sys.stdout)
    startup = args.worker_startup_s
    try:
        for name, secs in suites:
            budget = Budget(secs)
            names = ("tiny",) if args.tiny else (shapes or DEFAULT_SHAPES[name])
            if name == "roofline":   # pure arithmetic over this run's rows: no device, no worker
                rec.rows = _rows(out, run_id)
                _run_suite(name, secs, device, rec, args, shapes, settings, variants, hw_row)
                continue
            if name != "throughput":
                unit = common + ["--suite", f"{name}:{max(1.0, secs - startup):.1f}", "--hw-json", json.dumps(hw_row)]
                unit += ["--variants", ",".join(variants)] if variants else []
                unit += ["--shapes", ",".join(names)] if not args.tiny else []
                rc, tail = _worker(unit, timeout=secs + 90)
                if rc != 0:
                    rec.write(name, status="error", error=f"worker exited with {rc}", stderr_tail=tail)
                rec.write("suite_done", status="ok" if rc == 0 else "error", name=name,
                          seconds=round(secs - budget.left(), 2), budget_s=secs)
                continue
            sets = settings or (TINY_SETTINGS if args.tiny else SETTINGS)
            groups = [(s, v) for s in names for v in (variants or VARIANTS)]
            weight = {gv: sum(_weight(gv[1], p, g) for p, g in sets) for gv in groups}
            for i, (shape, variant) in enumerate(groups):
                share = budget.left() * weight[(shape, variant)] / sum(weight[x] for x in groups[i:])
                unit = common + ["--suite", f"throughput:{max(1.0, share - startup):.1f}", "--shapes", shape,
                                 "--variants", variant, "--hw-json", json.dumps(hw_row)]
                if share - startup < (0.2 if args.tiny else 3.0):
                    for p, g in sets:
                        rec.write("throughput", status="skipped", shape=shape, variant=variant, prompt_len=p,
                                  gen_len=g, reason="suite time budget spent")
                    continue
                rc, tail = _worker(unit, timeout=share + 90)
                have = {(r.get("prompt_len"), r.get("gen_len")) for r in _rows(out, run_id)
                        if r["suite"] == "throughput" and r.get("shape") == shape and r.get("variant") == variant}
                for p, g in sets:
                    if (p, g) not in have:
                        rec.write("throughput", status="error", shape=shape, variant=variant, prompt_len=p,
                                  gen_len=g, error=f"worker exited with {rc} before this case finished",
                                  stderr_tail=tail)
            rec.write("suite_done", status="ok", name=name, seconds=round(secs - budget.left(), 2), budget_s=secs)
        rec.rows = _rows(out, run_id)
    finally:
        rec.close()
    if not args.quiet:
        print(json.dumps({"results": str(out), "rows": len(rec.rows)}))
    return 0


def _worker(extra: list[str], timeout: float) -> tuple[int, str]:
    """Run this script as a worker; returns (exit code, last 2000 chars of its stderr). A worker past
    its timeout gets SIGINT, then SIGKILL: its rows are on disk already."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        err = (err or "") + f"\n[worker killed after {timeout:.0f}s]"
    err = err or ""
    if proc.returncode != 0:
        sys.stderr.write(err[-4000:])
    return proc.returncode, err[-2000:]


def _rows(path: Path, run_id: str) -> list[dict]:
    """Rows of one run from the JSONL file (workers append to it; a torn last line is skipped)."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("run_id") == run_id:
                rows.append(r)
    return rows


if __name__ == "__main__":
    sys.exit(main())
