"""The model's own elementwise functions compiled into single kernels on CUDA (torch.compile: Inductor
generates one Triton kernel per function), for the decode step, where a batch's activations are small
and each eager kernel costs about as much in launch and memory passes as in work.

- `rms_norm`: eager runs six kernels per norm (cast, square, mean, rsqrt and scale, cast, weight),
  each reading or writing the whole activation; compiled: one (read x, write y). A decode step has
  2 per layer + 1 (45 on the TinyLlama shape).
- `swiglu`: silu(gate) * up, two kernels and an intermediate [B, T, F] in eager; one compiled.
- `apply_rope`: the queries' rotation in every layer, and the keys' in FastDecode's sdpa path; one
  kernel instead of five (chunk, negate, concatenate, two products and a sum).

Functions compile once per process (dynamic shapes: one kernel serves every batch and bucket) and run
inside captured CUDA graphs like any kernel. bf16 results may differ from eager's in the last bit (one
rounding instead of one per op). Past torch.compile's recompile limit a function runs eagerly: slower,
never wrong. On CPU, or without Triton, nothing is compiled.
"""
from __future__ import annotations

import torch

from ..model import MLP, Attention, LCKVModel, RMSNorm, apply_rope, rms_norm, swiglu
from . import triton_decode

_compiled: dict = {}
# (module class, its attribute fuse swaps, the reference function it holds by default)
KERNELS = ((RMSNorm, "kernel", rms_norm), (MLP, "kernel", swiglu), (Attention, "rope", apply_rope))


def available(device: torch.device | str) -> bool:
    """Compiled kernels on this device: CUDA with Triton (Inductor's GPU code generator)."""
    return torch.device(device).type == "cuda" and triton_decode.triton is not None


def compiled(fn):
    """torch.compile(fn), once per process."""
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=True)
    return _compiled[fn]


def kernel(fn, device: torch.device | str, on: bool = True):
    """compiled(fn) where `on` and available on `device`, else fn itself (the eager reference)."""
    return compiled(fn) if on and available(device) else fn


def fuse(model: LCKVModel, on: bool = True) -> int:
    """Every norm, MLP and query rotation of `model` computes with its compiled kernel (`on`) or the
    eager reference. Returns the modules changed: none when `on` off CUDA (the reference stays)."""
    device = next(model.parameters()).device
    if on and not available(device):
        return 0
    changed = 0
    for cls, attr, fn in KERNELS:
        k = kernel(fn, device, on)
        for m in model.modules():
            if isinstance(m, cls):
                setattr(m, attr, k)
                changed += 1
    return changed
