"""Where a decode step's device time goes, kernel by kernel (the engine alone, issue 14).

    python bench/step_profile.py --shape tinyllama-1.1b --batch 256 --context 768 --out $OUT/step.jsonl

Per variant, on a random-weight model of the shape with every one of `batch` slots holding `context`
cached tokens (the pool filled with random K/V: attention's cost depends on lengths, not values):
- `graph_step_ms`: one serving decode step as the service runs it (FastDecode with its CUDA graphs,
  slots as a graph input, Triton attention where available), median of `--steps` replays;
- `kernels`: torch.profiler over the same step run eagerly (the kernels the graph holds, plus launch
  gaps the graph removes), device time per step by kernel name and by category (GEMMs, attention,
  normalisation, RoPE, sampling-free elementwise rest). On CPU the same table comes from the CPU ops'
  self time, so CI runs the script (with `--shape tiny-test`); only CUDA numbers mean anything.
One JSONL row per variant (`suite: "step_profile"`) and a table on stdout.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gpu-service"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from lckv_bench.ours import build_model  # noqa: E402
from lckv_service.cache import KVCache  # noqa: E402
from lckv_service.config import ModelConfig  # noqa: E402
from lckv_service.engine.runner import make_decoder  # noqa: E402
from lckv_service.kernels import fused  # noqa: E402

# kernel-name fragments -> category, first match wins (CUDA kernel names and CPU aten op names)
CATEGORIES = (("attention", ("attn", "flash", "scaled_dot_product", "_merge")),
              ("gemm", ("gemm", "cutlass", "nvjet", "sm90_xmma", "cublas", "aten::mm", "aten::addmm",
                        "aten::matmul", "aten::bmm", "aten::linear")),
              ("norm", ("rms", "norm", "rsqrt", "aten::pow", "aten::mean", "meanops", "pow_tensor_scalar")),
              ("rope", ("rope", "aten::cat", "aten::neg")),
              ("copy/index", ("copy", "index", "gather", "scatter", "fill", "aten::to", "memcpy", "memset")))


def category(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "elementwise/other"


def fill_pool(cache: KVCache, batch: int, context: int, vocab: int) -> None:
    """Every slot 0..batch-1 holds `context` tokens of random K/V (the pool is never read past lengths)."""
    g = torch.Generator(device=cache.device).manual_seed(0)
    for buf in (cache.k, cache.v):
        buf.normal_(generator=g)
    cache.tokens.random_(0, vocab, generator=g)
    slots = np.arange(batch, dtype=np.int64)
    cache.commit(slots, np.full(batch, context, np.int64), context)


def kernel_times(prof, cuda: bool, steps: int) -> dict[str, float]:
    """Device (CUDA) or self CPU time per step by name, in µs."""
    out: dict[str, float] = defaultdict(float)
    if cuda:
        for ev in prof.events():
            if ev.device_type == torch.autograd.DeviceType.CUDA:
                out[ev.name] += ev.time_range.elapsed_us() / steps
    else:
        for ev in prof.key_averages():
            if ev.self_cpu_time_total > 0:
                out[ev.key] += ev.self_cpu_time_total / steps
    return dict(out)


def serving_decoder(model, cache: KVCache, kernels: str, **kw):
    """The service's decode step (make_decoder), its compiled kernels swapped back out for "reference"."""
    fd = make_decoder(model, cache, "fast", **kw)
    if kernels == "reference":
        fused.fuse(model, on=False)
    return fd


def profile_variant(shape: str, variant: str, batch: int, context: int, steps: int, device, dtype,
                    kernels: str = "fused") -> dict:
    cfg = ModelConfig.preset(shape, variant)
    model = build_model(cfg, device, dtype)
    cuda = device.type == "cuda"
    cache = KVCache(cfg, batch + 1, context + 2 * steps + 8, device, dtype)   # + the graphs' padding slot
    slots = torch.arange(batch, dtype=torch.long)
    tokens = torch.randint(0, cfg.vocab_size, (batch,), device=device)
    row = dict(suite="step_profile", device=torch.cuda.get_device_name(device) if cuda else "cpu", shape=shape,
               variant=variant, batch=batch, context=context, kv_layers=len(cfg.kv_layers), steps=steps,
               kernels=kernels if fused.available(device) else "reference")
    with torch.inference_mode():
        fill_pool(cache, batch, context, cfg.vocab_size)
        if cuda:   # the serving step: graphs replayed, slots a graph input
            fd = serving_decoder(model, cache, kernels, graphs=True, pad_slot=batch)
            fd(slots, tokens)                    # tunes, captures
            times = []
            for _ in range(steps):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fd(slots, tokens)
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            row["graph_step_ms"] = round(statistics.median(times), 3)
            fill_pool(cache, batch, context, cfg.vocab_size)
        eager = serving_decoder(model, cache, kernels, graphs=False, pad_slot=batch if cuda else None)
        eager(slots, tokens)                     # warm: tuning and compilation stay out of the profile
        fill_pool(cache, batch, context, cfg.vocab_size)
        acts = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
        t = time.perf_counter()
        with profile(activities=acts) as prof:
            for _ in range(steps):
                eager(slots, tokens)
            if cuda:
                torch.cuda.synchronize(device)
        row["eager_step_ms"] = round(1e3 * (time.perf_counter() - t) / steps, 3)
    by_name = kernel_times(prof, cuda, steps)
    by_cat: dict[str, float] = defaultdict(float)
    for name, us in by_name.items():
        by_cat[category(name)] += us
    row["kernel_ms"] = round(sum(by_name.values()) / 1e3, 3)
    row["by_category_ms"] = {k: round(v / 1e3, 3) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])}
    row["top_kernels_us"] = [[n[:120], round(us, 1)] for n, us in sorted(by_name.items(), key=lambda kv: -kv[1])[:12]]
    del model, cache
    if cuda:
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="tinyllama-1.1b")
    ap.add_argument("--variants", default="llama,lckv-w2")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--context", type=int, default=768, help="cached tokens per slot (512+512 averages 768)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--kernels", default="fused", help="comma list of fused (norms, SwiGLU and query rotation compiled, "
                    "as served on CUDA: kernels/fused.py) and reference (eager)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", help="append the rows to this JSONL file")
    args = ap.parse_args(argv)
    for name in ("batch", "context", "steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    if not kernels or set(kernels) - {"fused", "reference"}:
        ap.error(f"--kernels takes fused and/or reference, got {args.kernels!r}")
    rows = [profile_variant(args.shape, v.strip(), args.batch, args.context, args.steps, device, dtype, k)
            for v in args.variants.split(",") if v.strip() for k in kernels]
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    cats = sorted({c for r in rows for c in r["by_category_ms"]})
    print("| variant | kernels | graph step ms | eager step ms | kernels ms | " + " | ".join(cats) + " |")
    print("|---" * (5 + len(cats)) + "|")
    for r in rows:
        print(f"| {r['variant']} | {r['kernels']} | {r.get('graph_step_ms', '—')} | {r['eager_step_ms']} | {r['kernel_ms']} | "
              + " | ".join(str(r["by_category_ms"].get(c, 0)) for c in cats) + " |")
    for r in rows:
        print(f"\n{r['variant']}, {r['kernels']} kernels: top kernels (µs per step)")
        for n, us in r["top_kernels_us"]:
            print(f"  {us:9.1f}  {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
