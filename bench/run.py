"""Run the GPU benchmark suites and append one JSON object per measurement to a JSONL file.

    python bench/run.py --suite throughput:420,roofline:5 --shapes llama2-7b --out $OUT/part1.jsonl
    python bench/run.py --tiny --suite throughput,prefill,streaming,sessions,roofline   # CPU smoke run

Every suite is time-boxed (`name:seconds`; suites without seconds share what is left of
--budget-s) and results are flushed line by line, so a killed run keeps what it measured.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))                       # lckv_bench
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gpu-service"))  # lckv_service

import torch  # noqa: E402

from lckv_bench import hw  # noqa: E402
from lckv_bench.common import BenchError, Budget, Context, Recorder, device_info  # noqa: E402
from lckv_bench.shapes import SHAPES, VARIANTS  # noqa: E402

SUITES = ("throughput", "roofline", "prefill", "streaming", "sessions")
DEFAULT_SHAPES = {"throughput": ("llama2-7b", "tinyllama-1.1b"), "roofline": (), "prefill": ("tinyllama-1.1b",),
                  "streaming": ("tinyllama-1.1b",), "sessions": ("tinyllama-1.1b",)}


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


def parse_list(spec: str | None, known, param: str) -> tuple[str, ...] | None:
    if not spec:
        return None
    out = tuple(x.strip() for x in spec.split(",") if x.strip())
    for x in out:
        if x not in known:
            raise BenchError(f"unknown {param} {x!r}; known: {', '.join(known)}", param=param)
    return out


def main(argv: list[str] | None = None) -> int:
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
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        suites = parse_suites(args.suite, args.budget_s)
        shapes = parse_list(args.shapes, tuple(SHAPES), "shape")
        variants = parse_list(args.variants, VARIANTS, "variant")
        settings = parse_settings(args.settings)
        if args.max_run_batch is not None and args.max_run_batch < 1:
            raise BenchError("--max-run-batch must be >= 1", param="max_run_batch")
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BenchError("--device cuda but no CUDA device is available", param="device")
    except BenchError as e:
        print(f"error: {e} (param: {e.param})", file=sys.stderr)
        return 2
    prev_threads = torch.get_num_threads()
    if device.type == "cpu" and args.tiny:
        torch.set_num_threads(1)   # tiny shapes: threads only contend (2-core CI machines)
    info = device_info(device)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / \
        f"{info['device'].split()[0].lower()}-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rec = Recorder(out, base={"device": info["device"], "run_id": time.strftime("%Y%m%dT%H%M%S")},
                   echo=None if args.quiet else sys.stdout)
    try:
        torch.manual_seed(0)
        hw_row = hw.measure(device, args.tiny)
        rec.write("hw", status="ok", **info, **hw_row)
        for name, secs in suites:
            ctx = Context(device=device, rec=rec, budget=Budget(secs), tiny=args.tiny,
                          shapes=("tiny",) if args.tiny else (shapes or DEFAULT_SHAPES[name]),
                          settings=settings, variants=variants, hw=hw_row, max_run_batch=args.max_run_batch)
            t = time.perf_counter()
            importlib.import_module(f"lckv_bench.suites.{name}").run(ctx)
            rec.write("suite_done", status="ok", name=name, seconds=round(time.perf_counter() - t, 2),
                      budget_s=secs)
    finally:
        rec.close()
        torch.set_num_threads(prev_threads)
    if not args.quiet:
        print(json.dumps({"results": str(out), "rows": len(rec.rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
