"""Decode attention over the pre-RoPE key cache in one Triton kernel (flash-decoding).

Keys are cached before RoPE (so eviction is a slice); a plain attention call would first have to
write a rotated copy of every key it reads. This kernel rotates each key block in registers as it
streams K and V once from the pool, so a decode step reads exactly the K/V bytes of the context.

Grid: (sequence, kv head, split of the keys). The g = H/Hkv query heads that share a kv head ride
as the rows of one tile. Each split keeps an online softmax and writes its partial output, max and
sum; `decode_attention` merges the splits. A row with no visible key (position 0 of a no-diagonal
layer) comes out exactly zero. Only the sequence's slot index and key limit are read from device
memory, so shapes depend on (batch, key bucket) alone and the call can live in a CUDA graph.
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: FastDecode falls back to its PyTorch path
    triton = None


def available(device: torch.device, head_dim: int) -> bool:
    """Triton present, a CUDA device (or Triton's CPU interpreter, for tests), tl.dot-sized heads."""
    on_device = device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    return triton is not None and on_device and head_dim % 2 == 0 and head_dim // 2 >= 16


if triton is not None:
    @triton.jit
    def _attn_split_kernel(Q, K, V, COS, SIN, SLOT, LIMIT, O, M, L,
                           stride_qb, stride_qh, stride_ks, stride_kn, stride_kh,
                           stride_vs, stride_vn, stride_vh, stride_cn,
                           stride_ob, stride_oh, stride_os, stride_og,
                           keys_per_split, sm_scale,
                           G: tl.constexpr, G_PAD: tl.constexpr, HALF: tl.constexpr, BLOCK_N: tl.constexpr,
                           PREC: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        sp = tl.program_id(2)
        DT = K.dtype.element_ty
        slot = tl.load(SLOT + b)
        limit = tl.load(LIMIT + b)
        offs_g = tl.arange(0, G_PAD)
        offs_d = tl.arange(0, HALF)
        gmask = offs_g < G
        q_ptr = Q + b * stride_qb + (h * G + offs_g)[:, None] * stride_qh + offs_d[None, :]
        q1 = tl.load(q_ptr, mask=gmask[:, None], other=0.0).to(DT)          # [G_PAD, HALF]
        q2 = tl.load(q_ptr + HALF, mask=gmask[:, None], other=0.0).to(DT)
        start = sp * keys_per_split
        end = tl.minimum(start + keys_per_split, limit)
        m_i = tl.full([G_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([G_PAD], tl.float32)
        acc1 = tl.zeros([G_PAD, HALF], tl.float32)
        acc2 = tl.zeros([G_PAD, HALF], tl.float32)
        k_base = K + slot * stride_ks + h * stride_kh
        v_base = V + slot * stride_vs + h * stride_vh
        for n0 in range(start, end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            nmask = offs_n < end
            kp = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
            k1 = tl.load(kp, mask=nmask[:, None], other=0.0).to(tl.float32)     # [BLOCK_N, HALF]
            k2 = tl.load(kp + HALF, mask=nmask[:, None], other=0.0).to(tl.float32)
            cp = offs_n[:, None] * stride_cn + offs_d[None, :]                  # HF RoPE: halves share angles
            c = tl.load(COS + cp, mask=nmask[:, None], other=0.0).to(tl.float32)
            s = tl.load(SIN + cp, mask=nmask[:, None], other=0.0).to(tl.float32)
            r1 = (k1 * c - k2 * s).to(DT)                                        # rotated key, rounded like
            r2 = (k2 * c + k1 * s).to(DT)                                        # the stored-then-rotated path
            qk = tl.dot(q1, tl.trans(r1), input_precision=PREC) + tl.dot(q2, tl.trans(r2), input_precision=PREC)
            qk = tl.where(nmask[None, :], qk * sm_scale, float("-inf"))        # [G_PAD, BLOCK_N]
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(qk - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            vp = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
            v1 = tl.load(vp, mask=nmask[:, None], other=0.0)
            v2 = tl.load(vp + HALF, mask=nmask[:, None], other=0.0)
            acc1 = acc1 * alpha[:, None] + tl.dot(p.to(DT), v1, input_precision=PREC)
            acc2 = acc2 * alpha[:, None] + tl.dot(p.to(DT), v2, input_precision=PREC)
            m_i = m_new
        o_ptr = O + b * stride_ob + h * stride_oh + sp * stride_os + offs_g[:, None] * stride_og + offs_d[None, :]
        tl.store(o_ptr, acc1)
        tl.store(o_ptr + HALF, acc2)
        idx = ((b * tl.num_programs(1) + h) * tl.num_programs(2) + sp) * G_PAD + offs_g   # M, L contiguous
        tl.store(M + idx, m_i)
        tl.store(L + idx, l_i)


def pick_block_n(head_dim: int, elt_bytes: int) -> int:
    """Keys per tile, so the pipelined K/V/cos/sin tiles fit in shared memory (227 KiB on Hopper).
    Compiled for sm_90 (3 stages, 8 warps, head_dim 128): 64 keys take 22,528 B in bf16 but
    237,568 B in fp32 (over the limit: the H200 run's OutOfResources, hit by the fp32 check
    model), 32 keys in fp32 take 122,880 B."""
    return 64 if head_dim * elt_bytes <= 256 else 32


def plan_splits(batch: int, kv_heads: int, keys: int, block_n: int, sms: int) -> tuple[int, int]:
    """(splits, keys per split): enough programs to fill the device twice over, blocks whole."""
    blocks = max(1, -(-keys // block_n))
    splits = max(1, min(blocks, -(-2 * sms // max(1, batch * kv_heads))))
    per = -(-blocks // splits) * block_n
    return -(-keys // per), per


def decode_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, slot_idx: torch.Tensor,
                     limit: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: int,
                     block_n: int | None = None, sms: int | None = None) -> torch.Tensor:
    """q: [B, H, D] (rotated); k_buf, v_buf: [slots, cap, Hkv, D] (keys before RoPE); slot_idx,
    limit: [B] (row b sees keys 0..limit[b]-1 of its slot; at most `keys`); cos, sin: [>= keys, D].
    Returns [B, H, D] in q's dtype."""
    B, H, D = q.shape
    Hkv = k_buf.shape[2]
    g = H // Hkv
    g_pad = max(16, triton.next_power_of_2(g))
    block_n = block_n or pick_block_n(D, k_buf.element_size())
    if sms is None:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 4
    splits, per = plan_splits(B, Hkv, keys, block_n, sms)
    o = torch.empty(B, Hkv, splits, g_pad, D, device=q.device, dtype=torch.float32)
    m = torch.empty(B, Hkv, splits, g_pad, device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)
    prec = "ieee" if k_buf.dtype == torch.float32 else "tf32"
    for t in (k_buf, v_buf, cos, sin):
        assert t.stride(-1) == 1, "last dim must be contiguous"
    _attn_split_kernel[(B, Hkv, splits)](
        q, k_buf, v_buf, cos, sin, slot_idx, limit, o, m, l,
        q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), k_buf.stride(2),
        v_buf.stride(0), v_buf.stride(1), v_buf.stride(2), cos.stride(0),
        o.stride(0), o.stride(1), o.stride(2), o.stride(3),
        per, D ** -0.5, G=g, G_PAD=g_pad, HALF=D // 2, BLOCK_N=block_n, PREC=prec,
        num_warps=4 if D <= 64 else 8)   # D=128: four [BLOCK_N, 64] fp32 tiles live at once
    # merge the splits' online softmaxes; a row with no key at all (every m = -inf) gives 0
    m_max = m.amax(2, keepdim=True)
    m_max = torch.where(torch.isinf(m_max), torch.zeros_like(m_max), m_max)
    w = torch.exp(m - m_max)                                              # [B, Hkv, splits, g_pad]
    den = (w * l).sum(2)                                                  # [B, Hkv, g_pad]
    num = (w[..., None] * o).sum(2)                                       # [B, Hkv, g_pad, D]
    out = torch.where(den[..., None] > 0, num / den.clamp_min(1e-30)[..., None], torch.zeros_like(num))
    return out[:, :, :g].reshape(B, H, D).to(q.dtype)
