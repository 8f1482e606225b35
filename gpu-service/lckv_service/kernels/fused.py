"""The model's own elementwise functions compiled into single kernels on CUDA (torch.compile: Inductor
generates one Triton kernel per function), for the decode step where a batch's activations are small
and each eager kernel launch costs about as much as its work.

- `rms_norm`: eager runs six kernels per norm (cast, square, mean, rsqrt, scale, cast and weight),
  each reading or writing the whole activation; compiled: one (read x, write y). A decode step has
  2 per layer + 1 (45 on the TinyLlama shape).
- `apply_rope` on the keys (FastDecode's sdpa path): one pass over the keys instead of four.

Functions compile once per process (dynamic shapes: one kernel serves every batch and bucket) and run
inside captured CUDA graphs like any kernel. Past torch.compile's recompile limit a function runs
eagerly: slower, never wrong. On CPU, or without Triton, nothing is compiled.
"""
from __future__ import annotations

import torch

from ..model import LCKVModel, RMSNorm, rms_norm
from . import triton_decode

_compiled: dict = {}


def available(device: torch.device | str) -> bool:
    """Compiled kernels on this device: CUDA with Triton (Inductor's GPU code generator)."""
    return torch.device(device).type == "cuda" and triton_decode.triton is not None


def compiled(fn):
    """torch.compile(fn), once per process."""
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=True)
    return _compiled[fn]


def fuse_norms(model: LCKVModel, fused: bool = True) -> int:
    """Every RMSNorm of `model` runs compiled(rms_norm) (`fused`) or the eager reference. Returns the
    norms changed: none off CUDA (the reference stays)."""
    if fused and not available(next(model.parameters()).device):
        return 0
    kernel = compiled(rms_norm) if fused else rms_norm
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    for m in norms:
        m.kernel = kernel
    return len(norms)
