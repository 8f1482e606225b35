"""Decode attention over the pre-RoPE key cache in one Triton kernel (flash-decoding).

Keys are cached before RoPE (so eviction is a slice); a plain attention call would first have to
write a rotated copy of every key it reads. This kernel rotates each key block in registers as it
streams K and V once from the pool, so a decode step reads exactly the K/V bytes of the context.

Grid: (sequence, kv head, split of the keys). Two inner loops:
- tl.dot (GQA, g = H/Hkv > 1): the g query heads of a kv head ride as the rows of one tile,
  padded to 16 rows (the MMA minimum);
- rows (MHA, g = 1): q.k is a row reduction and P.V is accumulated per key row in a [BLOCK_N, D]
  register tile, reduced once after the loop, so no 16-row tile that is 15/16 padding and no
  cross-warp reduction per block. For MHA the autotuner also tries the padded tl.dot loop.
Either loop is software-pipelined (`tl.range(num_stages=...)`: K, V, cos and sin staged through
shared memory by async copies) or not, as the config says.
With one split (large batches) the kernel normalises and writes the final [B, H, D] output in q's
dtype; with several, each split writes its partial output, max and sum for only the g real rows,
and a small merge kernel combines them. A row with no visible key (position 0 of a no-diagonal
layer) comes out exactly zero. Only each row's slot index and key limit are read from device
memory, so shapes depend on (batch, key bucket) alone and the call can live in a CUDA graph.

Tile size, warps, pipeline depth (and the MHA loop) are autotuned on CUDA (`tuner`). The key is
(g, head_dim, one split or several, power-of-two buckets of keys per split and of programs, the
tensors' dtypes): all fixed by shapes, never by data. So the first call for a shape tunes
(FastDecode runs every step eagerly once before capturing it in a CUDA graph, `_capture`) and
every later call, captures and replays included, reuses the cached pick without benchmarking.
Configs differ only in summation order and, in the tl.dot loop, in p being rounded to the input
dtype before P.V (as in any flash kernel): within the tests' tolerances.
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: FastDecode falls back to its PyTorch path
    triton = None

SMEM_LIMIT = 232_448   # bytes of shared memory one block may use on Hopper (sm_90)


def available(device: torch.device, head_dim: int) -> bool:
    """Triton present, a CUDA device (or Triton's CPU interpreter, for tests), tl.dot-sized
    power-of-two half heads (tl.arange needs a power of two)."""
    on_device = device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    half = head_dim // 2
    return (triton is not None and on_device and head_dim % 2 == 0 and half >= 16
            and half & (half - 1) == 0)


if triton is not None:
    @triton.jit
    def _attn_split_kernel(Q, K, V, COS, SIN, SLOT, LIMIT, O, M, L,
                           stride_qb, stride_qh, stride_ks, stride_kn, stride_kh,
                           stride_vs, stride_vn, stride_vh, stride_cn,
                           stride_ob, stride_oh, stride_os,
                           keys_per_split, sm_scale, keys_bucket, programs_bucket,
                           G: tl.constexpr, G_PAD: tl.constexpr, HALF: tl.constexpr, SPLIT: tl.constexpr,
                           DOT: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr,
                           STAGES: tl.constexpr):
        # keys_bucket, programs_bucket: unused here, autotune keys only (see the module docstring)
        b = tl.program_id(0)
        h = tl.program_id(1)
        sp = tl.program_id(2)
        DT = K.dtype.element_ty
        # 64-bit slot offset: one layer's pool can exceed 2**31 elements (slots x cap x Hkv x D)
        slot = tl.load(SLOT + b).to(tl.int64)
        limit = tl.load(LIMIT + b).to(tl.int32)
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
        if DOT:
            acc1 = tl.zeros([G_PAD, HALF], tl.float32)
            acc2 = tl.zeros([G_PAD, HALF], tl.float32)
        else:   # G == 1: each tile row j runs its own online softmax over keys j, j+BLOCK_N, ...;
            # the rows merge once after the loop, so the loop has no cross-warp reduction. The max
            # starts finite: a row that never sees a key keeps m = -1e30, p = exp(-inf) = 0, alpha = 1
            m_r = tl.full([BLOCK_N, 1], -1.0e30, tl.float32)
            l_r = tl.zeros([BLOCK_N, 1], tl.float32)
            acc1 = tl.zeros([BLOCK_N, HALF], tl.float32)
            acc2 = tl.zeros([BLOCK_N, HALF], tl.float32)
            qf1 = q1.to(tl.float32)                                              # [1, HALF]
            qf2 = q2.to(tl.float32)
        k_base = K + slot * stride_ks + h * stride_kh
        v_base = V + slot * stride_vs + h * stride_vh
        for n0 in tl.range(start, end, BLOCK_N, num_stages=STAGES):   # STAGES = the config's num_stages
            offs_n = n0 + tl.arange(0, BLOCK_N)
            nmask = offs_n < end
            kp = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
            # K/V are read once per step: evict_first keeps L2 for the cos/sin rows all programs share
            k1 = tl.load(kp, mask=nmask[:, None], other=0.0, eviction_policy="evict_first").to(tl.float32)
            k2 = tl.load(kp + HALF, mask=nmask[:, None], other=0.0, eviction_policy="evict_first").to(tl.float32)
            # V before any math: unpipelined (stages = 1), every load of the block is in flight at once
            vp = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
            v1 = tl.load(vp, mask=nmask[:, None], other=0.0, eviction_policy="evict_first")
            v2 = tl.load(vp + HALF, mask=nmask[:, None], other=0.0, eviction_policy="evict_first")
            cp = offs_n[:, None] * stride_cn + offs_d[None, :]                  # HF RoPE: halves share angles
            c = tl.load(COS + cp, mask=nmask[:, None], other=0.0, eviction_policy="evict_last").to(tl.float32)
            s = tl.load(SIN + cp, mask=nmask[:, None], other=0.0, eviction_policy="evict_last").to(tl.float32)
            r1 = (k1 * c - k2 * s).to(DT)                                        # rotated key, rounded like
            r2 = (k2 * c + k1 * s).to(DT)                                        # the stored-then-rotated path
            if DOT:
                qk = (tl.dot(q1, tl.trans(r1), input_precision=PREC)
                      + tl.dot(q2, tl.trans(r2), input_precision=PREC))          # [G_PAD, BLOCK_N]
                qk = tl.where(nmask[None, :], qk * sm_scale, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(qk, 1))
                alpha = tl.exp(m_i - m_new)
                p = tl.exp(qk - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc1 = acc1 * alpha[:, None] + tl.dot(p.to(DT), v1, input_precision=PREC)
                acc2 = acc2 * alpha[:, None] + tl.dot(p.to(DT), v2, input_precision=PREC)
                m_i = m_new
            else:
                qk = tl.sum(qf1 * r1.to(tl.float32) + qf2 * r2.to(tl.float32), 1)[:, None]   # [BLOCK_N, 1]
                qk = tl.where(nmask[:, None], qk * sm_scale, float("-inf"))
                m_new = tl.maximum(m_r, qk)
                alpha = tl.exp(m_r - m_new)
                p = tl.exp(qk - m_new)
                l_r = l_r * alpha + p
                acc1 = acc1 * alpha + p * v1.to(tl.float32)
                acc2 = acc2 * alpha + p * v2.to(tl.float32)
                m_r = m_new
        if not DOT:   # merge the tile rows' softmaxes: [BLOCK_N, .] -> [1, .]
            m_i = tl.max(m_r, 0)                                                 # [1]
            w = tl.exp(m_r - m_i[None, :])                                       # [BLOCK_N, 1]
            l_i = tl.sum(w * l_r, 0)
            acc1 = tl.sum(w * acc1, 0)[None, :]                                  # [1, HALF]
            acc2 = tl.sum(w * acc2, 0)[None, :]
        heads = h * G + offs_g                                                   # query heads of the rows
        o_ptr = O + b * stride_ob + heads[:, None] * stride_oh + sp * stride_os + offs_d[None, :]
        if SPLIT:   # partials: the merge kernel combines the splits
            tl.store(o_ptr, acc1, mask=gmask[:, None])
            tl.store(o_ptr + HALF, acc2, mask=gmask[:, None])
            idx = (b * tl.num_programs(1) * G + heads) * tl.num_programs(2) + sp    # M, L: [B, H, splits]
            tl.store(M + idx, m_i, mask=gmask)
            tl.store(L + idx, l_i, mask=gmask)
        else:       # one split: final output; l = 0 (no visible key) gives exactly 0
            inv = tl.where(l_i > 0, 1.0 / tl.maximum(l_i, 1e-30), 0.0)[:, None]
            out_t = O.dtype.element_ty
            tl.store(o_ptr, (acc1 * inv).to(out_t), mask=gmask[:, None])
            tl.store(o_ptr + HALF, (acc2 * inv).to(out_t), mask=gmask[:, None])

    @triton.jit
    def _merge_kernel(O, M, L, OUT, splits, stride_ob, stride_oh, stride_os, stride_outb, stride_outh,
                      SPLITS_PAD: tl.constexpr, D: tl.constexpr):
        """One program per (sequence, query head): combine the splits' online softmaxes."""
        b = tl.program_id(0)
        h = tl.program_id(1)
        offs_s = tl.arange(0, SPLITS_PAD)
        offs_d = tl.arange(0, D)
        smask = offs_s < splits
        ml = (b * tl.num_programs(1) + h) * splits + offs_s
        m = tl.load(M + ml, mask=smask, other=float("-inf"))
        l = tl.load(L + ml, mask=smask, other=0.0)
        m_max = tl.max(m, 0)
        m_max = tl.where(m_max == float("-inf"), 0.0, m_max)     # no key anywhere: every weight 0
        w = tl.exp(m - m_max)                                    # a split without keys: exp(-inf) = 0
        den = tl.sum(w * l, 0)
        o = tl.load(O + b * stride_ob + h * stride_oh + offs_s[:, None] * stride_os + offs_d[None, :],
                    mask=smask[:, None], other=0.0)
        num = tl.sum(w[:, None] * o, 0)
        out = tl.where(den > 0, num / tl.maximum(den, 1e-30), 0.0)
        tl.store(OUT + b * stride_outb + h * stride_outh + offs_d, out.to(OUT.dtype.element_ty))


def pick_block_n(head_dim: int, elt_bytes: int) -> int:
    """Keys per tile of the default (untuned) config, so the pipelined K/V/cos/sin tiles fit in
    shared memory (227 KiB on Hopper). Compiled for sm_90 (3 stages, 8 warps, head_dim 128): 64 keys
    in fp32 went over the limit (the H200 run's OutOfResources, hit by the fp32 check model)."""
    return 64 if head_dim * elt_bytes <= 256 else 32


def smem_estimate(block_n: int, head_dim: int, elt_bytes: int, num_stages: int, dot: bool) -> int:
    """Upper bound on one config's shared memory (bytes). A pipelined loop (tl.dot in it, or
    num_stages > 1) buffers num_stages - 1 stages of K, V, cos and sin ([block_n, D] + [block_n, D]
    + 2 x [block_n, D/2], pool dtype) plus scratch under one stage: bounded by num_stages stages.
    The unpipelined row loop holds only the final cross-row reduction's scratch. Checked against
    sm_90 compiles (tests/test_bench_triton.py::test_configs_fit_hopper_shared_memory)."""
    stage = 3 * block_n * head_dim * elt_bytes
    if dot and elt_bytes == 4:
        # fp32 tl.dot operands are staged again in the MMA layout: measured on an H100 (sm_90),
        # (BLOCK_N 32, 4 warps, 3 stages, head_dim 64, 16-row MHA tile) needed 233,472 B, 3.2x the
        # stage count above; fp32 runs only in the decoder checks on a float32 proxy model
        return 4 * num_stages * stage
    return num_stages * stage if dot or num_stages > 1 else block_n * head_dim * 4


def plan_splits(batch: int, kv_heads: int, keys: int, block_n: int, sms: int,
                programs_per_sm: int = 8) -> tuple[int, int]:
    """(splits, keys per split), blocks whole: split the keys until there are `programs_per_sm`
    programs per SM (several resident per SM, and enough waves that the last, partial one costs
    little: 1,024 programs at 5 resident per SM on 132 SMs are 1.55 waves, i.e. 2 at 78%). Each
    extra split costs only a [D] fp32 partial per row and head, against its keys' K/V bytes."""
    blocks = max(1, -(-keys // block_n))
    splits = max(1, min(blocks, -(-programs_per_sm * sms // max(1, batch * kv_heads))))
    per = -(-blocks // splits) * block_n
    return -(-keys // per), per


SPLIT_BLOCK = 128   # keys per split are a multiple of this, so every tuned BLOCK_N tiles a split exactly

# (BLOCK_N, warps, stages). Stages > 1 make Triton's pipeliner stage every load of the loop (K, V,
# cos, sin) through shared memory with async copies (checked in the sm_90 TTGIR); stages = 1 leaves
# the latency to occupancy (small register footprint, many programs per SM). MHA tries both the
# row loop and the 16-row-padded tl.dot loop.
_DOT_GRID = [(32, 4, 2), (32, 4, 3), (64, 4, 2), (64, 4, 3), (64, 8, 3), (128, 4, 2), (128, 8, 2), (128, 8, 3)]
_ROW_GRID = [(32, 4, 1), (64, 8, 1), (128, 8, 1), (32, 4, 3), (64, 4, 2), (64, 4, 3), (64, 8, 3)]
_MHA_DOT_GRID = [(32, 4, 3), (64, 8, 3)]


def configs(g: int) -> list:
    """Candidate configs for g query heads per kv head; pruned per call by shared memory."""
    def cfg(n, w, s, dot):
        g_pad = max(16, triton.next_power_of_2(g)) if dot else 1
        return triton.Config({"BLOCK_N": n, "DOT": dot, "G_PAD": g_pad, "STAGES": s}, num_warps=w, num_stages=s)
    if g > 1:
        return [cfg(*c, True) for c in _DOT_GRID]
    return [cfg(*c, False) for c in _ROW_GRID] + [cfg(*c, True) for c in _MHA_DOT_GRID]


def _fits(cfgs, named_args, **kwargs):
    elt = named_args["K"].element_size()
    d = 2 * kwargs["HALF"]
    ok = [c for c in cfgs
          if smem_estimate(c.kwargs["BLOCK_N"], d, elt, c.num_stages, c.kwargs["DOT"]) <= SMEM_LIMIT]
    return ok or cfgs[:1]


def _bench(fn, quantiles):
    # short: a decode kernel runs for microseconds to a few ms; tuning is once per key per process
    return triton.testing.do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


_TUNERS: dict = {}


def tuner(g: int):
    """The autotuned kernel for g query heads per kv head (one Autotuner per config list)."""
    if g not in _TUNERS:
        _TUNERS[g] = triton.autotune(configs(g), key=["G", "HALF", "SPLIT", "keys_bucket", "programs_bucket"],
                                     prune_configs_by={"early_config_prune": _fits}, do_bench=_bench,
                                     cache_results=True)(_attn_split_kernel)
    return _TUNERS[g]


def default_config(g: int, head_dim: int, elt_bytes: int, block_n: int | None = None):
    """The untuned config (CPU interpreter, or `block_n` pinned): row loop for MHA, tl.dot for GQA."""
    dot = g > 1
    stages = 3 if dot else 1
    return triton.Config({"BLOCK_N": block_n or pick_block_n(head_dim, elt_bytes), "DOT": dot,
                          "G_PAD": max(16, triton.next_power_of_2(g)) if dot else 1, "STAGES": stages},
                         num_warps=4 if head_dim <= 64 else 8, num_stages=stages)


def decode_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, slot_idx: torch.Tensor,
                     limit: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: int,
                     block_n: int | None = None, sms: int | None = None, config=None) -> torch.Tensor:
    """q: [B, H, D] (rotated); k_buf, v_buf: [slots, cap, Hkv, D] (keys before RoPE); slot_idx,
    limit: [B] (row b sees keys 0..limit[b]-1 of its slot; at most `keys`); cos, sin: [>= keys, D].
    `config` (one of `configs(g)`) or `block_n` pins the kernel config; otherwise CUDA autotunes
    and the interpreter uses `default_config`. Returns [B, H, D] in q's dtype."""
    B, H, D = q.shape
    Hkv = k_buf.shape[2]
    g = H // Hkv
    for t in (q, k_buf, v_buf, cos, sin):
        if t.stride(-1) != 1:
            raise ValueError("q, k_buf, v_buf, cos and sin need a contiguous last dimension")
    if block_n is not None or (config is None and not q.is_cuda):
        config = default_config(g, D, k_buf.element_size(), block_n)
    if sms is None:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 4
    # split sizes are whole multiples of every tile a config may pick, so the plan (and with it
    # the autotune key) does not depend on the config
    unit = max(SPLIT_BLOCK, config.kwargs["BLOCK_N"]) if config is not None else SPLIT_BLOCK
    splits, per = plan_splits(B, Hkv, keys, unit, sms)
    split = splits > 1
    out = torch.empty(B, H, D, device=q.device, dtype=q.dtype)
    if split:
        o = torch.empty(B, H, splits, D, device=q.device, dtype=torch.float32)
        m = torch.empty(B, H, splits, device=q.device, dtype=torch.float32)
        l = torch.empty_like(m)
    else:
        o, m, l = out, out, out   # the kernel writes the final output; M, L unused
    args = (q, k_buf, v_buf, cos, sin, slot_idx, limit, o, m, l,
            q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), k_buf.stride(2),
            v_buf.stride(0), v_buf.stride(1), v_buf.stride(2), cos.stride(0),
            o.stride(0), o.stride(1), o.stride(2) if split else 0,
            per, D ** -0.5, triton.next_power_of_2(per), min(max(triton.next_power_of_2(B * Hkv * splits), 256), 16384))
    meta = dict(G=g, HALF=D // 2, SPLIT=split, PREC="ieee" if k_buf.dtype == torch.float32 else "tf32")
    grid = (B, Hkv, splits)
    if config is None:
        tuner(g)[grid](*args, **meta)
    else:
        _attn_split_kernel[grid](*args, **meta, **config.all_kwargs())
    if split:
        _merge_kernel[(B, H)](o, m, l, out, splits, o.stride(0), o.stride(1), o.stride(2),
                              out.stride(0), out.stride(1),
                              SPLITS_PAD=triton.next_power_of_2(splits), D=D, num_warps=4)
    return out


def tuned_config(g: int):
    """The config the autotuner picked last for g query heads per kv head (None before a CUDA call)."""
    return getattr(_TUNERS.get(g), "best_config", None)
