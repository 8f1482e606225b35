"""Do merged projection GEMMs pay at serving batch sizes? (kernels/fused.py's merge_qkv decision)

    python bench/gemm_merge.py --out $OUT/gemm_merge.jsonl          # GPU, ~10 s on an H100
    python bench/gemm_merge.py --device cpu --shapes tiny --batches 4,16   # CPU check

For each shape (bench/lckv_bench/shapes.py) and batch M (rows of one step: decode rows, or prompt
tokens of a prefill chunk), the µs per call, bf16 on CUDA (float32 on CPU), of:
- `qkv_sep`: x @ W_Q, x @ W_K, x @ W_V as three GEMMs (a layer owning K/V, unmerged);
- `qkv_merged`: one GEMM over [W_Q; W_K; W_V];
- `q_only`: x @ W_Q (an LCKV middle layer, which has no W_K/W_V), the floor for the merged one;
- `gate_up_sep` / `gate_up_merged`: the MLP's W_gate and W_up as two GEMMs / one;
- `down`, `o`: the other two projections, for scale.
On CUDA each figure is a CUDA graph of 20 calls replayed `--reps` times (launch gaps out, as in
serving's graphed decode step), timed with events; on CPU the median of `--reps` calls.
One JSON object per line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from lckv_bench.common import BenchError, parse_ints, parse_list, timed  # noqa: E402
from lckv_bench.shapes import SHAPES  # noqa: E402

CALLS_PER_GRAPH = 20


def time_us(fn, device: torch.device, reps: int) -> float:
    """µs per call of fn()."""
    if device.type != "cuda":
        return timed(fn, device, repeat=reps) * 1e6
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):   # warm-up outside the capture (cuBLAS workspaces, heuristics)
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS_PER_GRAPH):
            fn()
    graph.replay()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) * 1e3 / (reps * CALLS_PER_GRAPH)


def rows_for(shape: str, M: int, device: torch.device, dtype: torch.dtype, reps: int) -> dict:
    s = SHAPES[shape]
    C, F, H, Hkv = s["hidden_size"], s["intermediate_size"], s["num_heads"], s["num_kv_heads"]
    D = C // H
    g = torch.Generator(device=device).manual_seed(0)

    def w(n, k):
        return torch.randn(n, k, device=device, dtype=dtype, generator=g) * 0.02
    x, h = w(M, C), w(M, F)
    wq, wk, wv, wo, wg, wu, wd = w(H * D, C), w(Hkv * D, C), w(Hkv * D, C), w(C, H * D), w(F, C), w(F, C), w(C, F)
    wqkv, wgu = torch.cat([wq, wk, wv]), torch.cat([wg, wu])
    cases = {
        "qkv_sep": lambda: (x @ wq.t(), x @ wk.t(), x @ wv.t()),
        "qkv_merged": lambda: x @ wqkv.t(),
        "q_only": lambda: x @ wq.t(),
        "gate_up_sep": lambda: (x @ wg.t(), x @ wu.t()),
        "gate_up_merged": lambda: x @ wgu.t(),
        "down": lambda: h @ wd.t(),
        "o": lambda: x @ wo.t(),
    }
    row = {"suite": "gemm_merge", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "dtype": str(dtype).removeprefix("torch."), "shape": shape, "M": M, "unit": "us"}
    row.update({name: round(time_us(fn, device, reps), 2) for name, fn in cases.items()})
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", default="tinyllama-1.1b,llama2-7b", help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--batches", default="64,256,512,1024,2048", help="comma list of rows per GEMM")
    ap.add_argument("--reps", type=int, default=10, help="graph replays (CUDA) or calls (CPU) timed")
    ap.add_argument("--out", default=None, help="JSONL file to append the rows to (default: print only)")
    a = ap.parse_args(argv)
    try:
        shapes = parse_list(a.shapes, tuple(SHAPES), "shape")
    except BenchError as e:
        ap.error(f"--shapes: {e}")
    try:
        batches = parse_ints(a.batches, "batches")
    except BenchError as e:
        ap.error(str(e))
    if not shapes or not batches or a.reps < 1:
        ap.error("--shapes and --batches must be non-empty and --reps >= 1")
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda needs a CUDA device")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for shape in shapes:
        for M in batches:
            row = rows_for(shape, M, device, dtype, a.reps)
            print(json.dumps(row), flush=True)
            if a.out:
                with open(a.out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
