"""Optional fast paths the runner and the benchmarks can opt into; each is checked against the
model's own methods by a CPU test (tests/test_bench_kernels.py)."""
from . import fused, triton_decode
from .fast_decode import FastDecode

__all__ = ["FastDecode", "fused", "triton_decode"]
