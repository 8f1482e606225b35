"""Device memory of the serving decode graphs (CUDA only): where the memory beyond weights + K/V pool goes.

    python bench/graph_memory.py --shape llama2-7b --variant lckv-w2 --slots 600 --capacity 1032

Builds a random-weight model of the shape on the GPU, the serving runner (K/V pool of `--slots` slots,
FastDecode with a padding slot, as `serve` makes it) and captures the decode graphs one by one, in
`--order` (warm_buckets captures largest first), writing one JSONL row per graph: batch bucket, key bucket, allocated and reserved
bytes after it, and the live bytes inside graph pools vs outside them. A last row sums it up.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gpu-service"))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from lckv_bench.shapes import make_config  # noqa: E402
from lckv_service.engine.runner import ModelRunner  # noqa: E402
from lckv_service.model import LCKVModel, PrefillMode  # noqa: E402


def live_by_pool() -> tuple[int, int]:
    """(bytes of live blocks in graph pools, bytes of live blocks elsewhere)."""
    graph = other = 0
    for seg in torch.cuda.memory_snapshot():
        pooled = tuple(seg.get("segment_pool_id", (0, 0))) != (0, 0)
        for b in seg.get("blocks", []):
            if b.get("state") == "active_allocated":
                if pooled:
                    graph += b["size"]
                else:
                    other += b["size"]
    return graph, other


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama2-7b")
    ap.add_argument("--variant", default="lckv-w2")
    ap.add_argument("--slots", type=int, default=600)
    ap.add_argument("--capacity", type=int, default=1032)
    ap.add_argument("--order", choices=("descending", "ascending"), default="descending",
                    help="capture order of the (batch, keys) buckets; descending is warm_buckets'")
    ap.add_argument("--out", help="JSONL file (default: stdout)")
    a = ap.parse_args(argv)
    for name in ("slots", "capacity"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA device")
    out = open(a.out, "a") if a.out else sys.stdout
    cfg = make_config(a.shape, a.variant, a.capacity)
    with torch.device("cuda"):
        model = LCKVModel(cfg).to(torch.bfloat16).eval()
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated()
    runner = ModelRunner(model, a.slots, a.capacity, 4, PrefillMode(kind="exact"), torch.bfloat16,
                         decode="fast", decode_graphs=True)
    pool = torch.cuda.memory_allocated() - weights
    fd = runner.decode
    base = {"order": a.order, "shape": a.shape, "variant": a.variant, "slots": a.slots, "capacity": a.capacity,
            "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""), "device": torch.cuda.get_device_name(),
            "weights_bytes": weights, "pool_bytes": pool}
    t0 = time.monotonic()
    pairs = fd.bucket_pairs(a.slots)   # warm_buckets' graphs, in its order
    for B, S in (pairs if a.order == "descending" else reversed(pairs)):
        try:
            fd._graphs[(None, B, S)] = fd._capture(None, B, S)
        except torch.OutOfMemoryError as e:
            out.write(json.dumps({**base, "batch": B, "keys": S, "error": str(e)[:300]}) + "\n")
            out.flush()
            return 1
        torch.cuda.synchronize()
        graph, other = live_by_pool()
        out.write(json.dumps({**base, "batch": B, "keys": S, "allocated": torch.cuda.memory_allocated(),
                              "reserved": torch.cuda.memory_reserved(), "live_in_graph_pools": graph,
                              "live_outside": other - weights - pool}) + "\n")
        out.flush()
    graph, other = live_by_pool()
    out.write(json.dumps({**base, "summary": True, "graphs": len(fd._graphs), "seconds": round(time.monotonic() - t0, 1),
                          "allocated": torch.cuda.memory_allocated(), "live_in_graph_pools": graph,
                          "live_outside": other - weights - pool}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
