"""The model's own elementwise functions compiled into single kernels on CUDA (torch.compile: Inductor
generates one Triton kernel per function), for the decode step, where a batch's activations are small
and each eager kernel costs about as much in launch and memory passes as in work.

- `rms_norm`: eager runs six kernels per norm (cast, square, mean, rsqrt and scale, cast, weight),
  each reading or writing the whole activation; compiled: one (read x, write y). A decode step has
  2 per layer + 1 (45 on the TinyLlama shape).
- `swiglu`: silu(gate) * up, two kernels and an intermediate [B, T, F] in eager; one compiled.
- `apply_rope`: the queries' rotation in every layer, and the keys' in FastDecode's sdpa path; one
  kernel instead of five (chunk, negate, concatenate, two products and a sum).

- `merge_qkv`: a layer that owns W_K/W_V computes q, k and v with one GEMM over [W_Q; W_K; W_V] instead of
  three. With few kv heads, k and v are tiny GEMMs that cost as much as q's (H100, TinyLlama shape, batch
  256: 16.8 µs for the three, 7.4 µs merged, 6.6 µs for q alone; `bench/gemm_merge.py`). W_gate and W_up
  stay two GEMMs: merged they are slower from batch 512 up on the 7B shape (bench/README.md, run k).

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
    """Every norm, MLP and query rotation of `model` computes with its compiled kernel, and every layer
    owning K/V with one q/k/v GEMM (`on`), or the eager reference. Returns the modules changed: none when
    `on` off CUDA (the reference stays)."""
    device = next(model.parameters()).device
    if on and not available(device):
        return 0
    changed = merge_qkv(model, on)
    for cls, attr, fn in KERNELS:
        k = kernel(fn, device, on)
        for m in model.modules():
            if isinstance(m, cls):
                setattr(m, attr, k)
                changed += 1
    return changed


@torch.no_grad()
def merge_qkv(model: LCKVModel, on: bool = True) -> int:
    """Each layer owning W_K/W_V gets `qkv` = [W_Q; W_K; W_V] (`on`; off: dropped), its three weights
    re-pointed at the slices so no memory is added and loading weights into them keeps it current (a
    model moved since is merged again). Any device. Returns the layers changed."""
    changed, merged_on_cuda = 0, False
    for m in model.modules():
        if not isinstance(m, Attention) or not m.has_kv:
            continue
        if on and (m.qkv is None or m.q_proj.weight.data_ptr() != m.qkv.data_ptr()):
            ws = (m.q_proj.weight, m.k_proj.weight, m.v_proj.weight)
            m.qkv = torch.cat([w.detach() for w in ws])
            rows = 0
            for w in ws:
                w.data = m.qkv[rows: rows + w.shape[0]]
                rows += w.shape[0]
            merged_on_cuda = merged_on_cuda or m.qkv.is_cuda
        elif not on:
            m.qkv = None
        changed += 1
    if merged_on_cuda:
        # the replaced weights' memory goes back to the device now: the allocator would keep it cached,
        # where mem_get_info counts it as used and the serving pool (sized from it) would lose it. Weights
        # of 10 MB and up have segments of their own and all go back (the 7B shape: 3 GiB for llama);
        # smaller ones can stay cached beside live tensors (at most ~0.2 GiB on the TinyLlama shape)
        torch.cuda.empty_cache()
    return changed
