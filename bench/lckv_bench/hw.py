"""Measure the device's copy bandwidth and bf16 matmul rate (the roofline's two ceilings)."""
from __future__ import annotations

import torch

from .common import timed


def copy_bandwidth_gbps(device: torch.device, nbytes: int) -> float:
    """Device-to-device copy; counts read + write bytes (what a decode step's HBM traffic is)."""
    a = torch.empty(nbytes, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    t = timed(lambda: b.copy_(a), device, repeat=5, warmup=2)
    return 2 * nbytes / t / 1e9


def matmul_tflops(device: torch.device, n: int, dtype=torch.bfloat16) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = timed(lambda: a @ b, device, repeat=5, warmup=2)
    return 2 * n**3 / t / 1e12


def measure(device: torch.device, tiny: bool) -> dict[str, float]:
    nbytes, n = (1 << 22, 256) if tiny else (1 << 31, 8192)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    return {"copy_gbps": round(copy_bandwidth_gbps(device, nbytes), 2),
            "matmul_tflops": round(matmul_tflops(device, n, dtype), 3),
            "copy_bytes": nbytes, "matmul_n": n, "matmul_dtype": str(dtype).removeprefix("torch.")}
