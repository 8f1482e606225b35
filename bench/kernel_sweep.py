"""Sweep the Triton decode-attention kernel's configs against the HBM roofline (issue 7).

    python bench/kernel_sweep.py --out $OUT/kernel_sweep.jsonl     # GPU, < 90 s on an H200
    TRITON_INTERPRET=1 python bench/kernel_sweep.py --dry-run --out /tmp/sweep.jsonl   # CPU check

For each shape (Llama-2-7B MHA at batch 144 x 1,024 keys and 32 x 4,096; TinyLlama GQA at
1,024 x 1,024; bf16, fp16 in the dry run; every row at full length) it times `decode_attention`
once per candidate config, once autotuned (the pick FastDecode gets), once with the pre-issue
split target (2 programs per SM instead of 8) and, with --baseline, once with another version of
the module, with CUDA events (warm-up, median of --reps). Each row: achieved GB/s = K/V bytes read
/ time, against the device copy bandwidth (read + write bytes of a 2 GiB copy, as
bench/lckv_bench/hw.py counts it), plus the largest difference from a float32 PyTorch reference on
the first rows, so a fast config that is wrong shows up. One JSON object per line, flushed; a
summary per shape (best config, autotuned pick, baseline) is printed at the end.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gpu-service"))

import torch  # noqa: E402

from lckv_service.kernels import triton_decode  # noqa: E402
from lckv_service.model import apply_rope, rope_table  # noqa: E402

# name, q heads, kv heads, head_dim, batch, keys
SHAPES = [("llama2-7b", 32, 32, 128, 144, 1024), ("llama2-7b", 32, 32, 128, 32, 4096),
          ("tinyllama-1.1b", 32, 4, 64, 1024, 1024)]
DRY_SHAPES = [("tiny-mha", 2, 2, 64, 3, 160), ("tiny-gqa", 16, 2, 64, 3, 160)]
CHECK_ROWS = 4


def copy_gbps(device: torch.device, nbytes: int, reps: int) -> float:
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    b = torch.empty_like(a)
    ms = timed(lambda: b.copy_(a), device, reps)
    return 2 * nbytes / ms / 1e6


def timed(fn, device: torch.device, reps: int, warmup: int = 3) -> float:
    """Median milliseconds of fn over `reps` calls (CUDA events per call; wall clock on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def reference(q, k_buf, v_buf, cos, sin, rows: int, keys: int) -> torch.Tensor:
    """float32 attention over every key for the first `rows` rows (slot b = row b), keys rotated
    and rounded to the pool dtype as the model path stores them."""
    B, H, D = q.shape
    g = H // k_buf.shape[2]
    k = apply_rope(k_buf[:rows, :keys], cos[None, :keys], sin[None, :keys]).float()   # [r, S, Hkv, D]
    k, v = k.repeat_interleave(g, 2), v_buf[:rows, :keys].float().repeat_interleave(g, 2)
    att = torch.softmax(torch.einsum("bhd,bnhd->bhn", q[:rows].float(), k) * D ** -0.5, -1)
    return torch.einsum("bhn,bnhd->bhd", att, v)


def label(c) -> str:
    return (f"BLOCK_N={c.kwargs['BLOCK_N']} warps={c.num_warps} stages={c.num_stages} "
            f"{'dot' if c.kwargs['DOT'] else 'rows'}")


def sweep_shape(name, H, Hkv, D, B, S, device, reps, copy, write, baseline=None):
    # bf16 as served; the dry run uses fp16, because Triton's interpreter mis-computes bf16 tl.dot
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float16
    g = torch.Generator(device=device).manual_seed(0)
    k_buf = torch.randn(B, S, Hkv, D, generator=g, device=device, dtype=dtype)
    v_buf = torch.randn(B, S, Hkv, D, generator=g, device=device, dtype=dtype)
    q = torch.randn(B, H, D, generator=g, device=device, dtype=dtype)
    cos, sin = rope_table(S, D, 10000.0, device, dtype)
    slots = torch.arange(B, device=device)
    limits = torch.full((B,), S, device=device, dtype=torch.long)
    kv_bytes = 2 * B * S * Hkv * D * k_buf.element_size()
    want = reference(q, k_buf, v_buf, cos, sin, min(CHECK_ROWS, B), S)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    elt = k_buf.element_size()
    attn = triton_decode.decode_attention
    cands = [(label(c), attn, dict(config=c)) for c in triton_decode.configs(H // Hkv)
             if triton_decode.smem_estimate(c.kwargs["BLOCK_N"], D, elt, c.num_stages, c.kwargs["DOT"])
             <= triton_decode.SMEM_LIMIT]
    if device.type == "cuda":
        cands += [("autotuned", attn, {}), ("autotuned, 2 programs/SM split target", attn, dict(sms=max(1, sms // 4)))]
    else:
        cands += [("default", attn, {})]
    if baseline is not None:
        cands += [(f"baseline {baseline.__file__}", baseline.decode_attention, {})]
    for name_, fn, kw in cands:
        kw.setdefault("sms", sms)
        run = lambda: fn(q, k_buf, v_buf, slots, limits, cos, sin, S, **kw)  # noqa: E731
        row = dict(suite="kernel_sweep", shape=name, heads=H, kv_heads=Hkv, head_dim=D, batch=B, keys=S,
                   dtype=str(dtype).removeprefix("torch."), config=name_, device=torch.cuda.get_device_name(device)
                   if device.type == "cuda" else "cpu (interpreter)")
        try:
            out = run()                                   # compiles (and, autotuned, tunes) first
            if "autotuned" in name_:
                row["picked"] = label(triton_decode.tuned_config(H // Hkv))
            diff = (out[:want.shape[0]].float() - want).abs().max().item()
            ms = timed(run, device, reps)
        except Exception as e:                            # one bad config must not cost the sweep
            row.update(status="error", error=f"{type(e).__name__}: {str(e)[:300]}")
            write(row)
            continue
        splits = (triton_decode.plan_splits(B, Hkv, S, triton_decode.SPLIT_BLOCK, kw["sms"])[0]
                  if fn is attn else None)
        gbps = kv_bytes / ms / 1e6
        row.update(status="ok", ms=round(ms, 4), kv_bytes=kv_bytes, kv_gbps=round(gbps, 1),
                   copy_gbps=round(copy, 1), fraction_of_copy=round(gbps / copy, 4), splits=splits,
                   max_abs_diff_vs_fp32_ref=round(diff, 5))
        write(row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSONL file to append rows to")
    ap.add_argument("--reps", type=int, default=25, help="timed calls per config (median); >= 20 on a GPU")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (needs TRITON_INTERPRET=1)")
    ap.add_argument("--baseline", type=Path, help="another triton_decode.py (e.g. the committed one, from "
                    "`git show HEAD:gpu-service/lckv_service/kernels/triton_decode.py`) timed alongside")
    args = ap.parse_args()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        ap.error("--dry-run runs under Triton's interpreter: set TRITON_INTERPRET=1")
    if not args.dry_run and not torch.cuda.is_available():
        ap.error("no CUDA device: use --dry-run with TRITON_INTERPRET=1 on CPU")
    if not args.dry_run and args.reps < 20:
        ap.error(f"--reps must be >= 20 on a GPU, got {args.reps}")
    baseline = None
    if args.baseline is not None:
        if not args.baseline.is_file():
            ap.error(f"--baseline {args.baseline} is not a file")
        spec = importlib.util.spec_from_file_location("baseline_triton_decode", args.baseline)
        baseline = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(baseline)
    t0 = time.time()
    out = open(args.out, "a")

    rows = []

    def write(row):
        row["elapsed_s"] = round(time.time() - t0, 1)
        rows.append(row)
        out.write(json.dumps(row) + "\n")
        out.flush()
        fields = ("shape", "batch", "keys", "config", "ms", "kv_gbps", "fraction_of_copy", "splits",
                  "max_abs_diff_vs_fp32_ref", "picked", "error")
        print(" ".join(f"{k}={row[k]}" for k in fields if k in row), flush=True)

    reps = 1 if args.dry_run else args.reps
    copy = copy_gbps(device, 2 << 20 if args.dry_run else 2 << 30, reps)
    write(dict(suite="kernel_sweep", config="device copy", copy_gbps=round(copy, 1), status="ok",
               copy_bytes=2 << 20 if args.dry_run else 2 << 30,
               device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)"))
    with torch.no_grad():
        for shape in DRY_SHAPES if args.dry_run else SHAPES:
            sweep_shape(*shape, device, reps, copy, write, baseline)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    out.close()
    print("\nsummary (fraction of copy bandwidth):")
    for shape in DRY_SHAPES if args.dry_run else SHAPES:
        ok = [r for r in rows if r.get("status") == "ok" and (r.get("shape"), r.get("batch"), r.get("keys"))
              == (shape[0], shape[4], shape[5])]
        if not ok:
            continue
        best = max(ok, key=lambda r: r["kv_gbps"])
        named = {r["config"].split(" ")[0]: r for r in ok if not r["config"].startswith("BLOCK_N")}
        extra = " ".join(f"{k}={r['fraction_of_copy']}" for k, r in named.items())
        print(f"  {shape[0]} B={shape[4]} S={shape[5]}: best {best['fraction_of_copy']} ({best['config']}); {extra}")


if __name__ == "__main__":
    main()
