"""The Triton decode-attention kernel (keys rotated in-kernel) against plain PyTorch attention and
against model.decode. Runs on a GPU, or on CPU under Triton's interpreter:

    TRITON_INTERPRET=1 python -m pytest tests/test_bench_triton.py   # needs triton (and numpy < 2.3)
"""
from __future__ import annotations

import pytest
import torch

from conftest import make_model, tiny_cfg
from lckv_service.cache import KVCache
from lckv_service.kernels import FastDecode, triton_decode
from lckv_service.model import apply_rope, rope_table

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(
    not triton_decode.available(DEV, 64),
    reason="needs Triton with a CUDA device, or TRITON_INTERPRET=1 (Triton's CPU interpreter)")


def _reference(q, k_buf, v_buf, slots, limits, cos, sin):
    """Per row: rotate the visible keys, softmax attention (GQA by repetition), zero if none visible."""
    B, H, D = q.shape
    g = H // k_buf.shape[2]
    out = torch.zeros_like(q)
    for b in range(B):
        n = int(limits[b])
        if n == 0:
            continue
        k = apply_rope(k_buf[slots[b], :n][None], cos[None, :n], sin[None, :n])[0]   # [n, Hkv, D]
        k, v = k.repeat_interleave(g, 1), v_buf[slots[b], :n].repeat_interleave(g, 1)
        att = torch.softmax(torch.einsum("hd,nhd->hn", q[b], k) * D ** -0.5, -1)
        out[b] = torch.einsum("hn,nhd->hd", att, v)
    return out


@pytest.mark.parametrize("hkv,h,D", [(2, 8, 64), (4, 4, 64), (2, 2, 128)])   # GQA, MHA; TinyLlama/7B heads
@pytest.mark.parametrize("sms", [1, 64])        # one split per row, or many merged splits
@pytest.mark.parametrize("block_n", [16, None])  # None: the default tile, as FastDecode uses it (must fit on Hopper)
def test_kernel_matches_reference(hkv, h, D, sms, block_n):
    torch.manual_seed(0)
    cap = 80
    k_buf = torch.randn(5, cap, hkv, D, device=DEV)
    v_buf = torch.randn(5, cap, hkv, D, device=DEV)
    q = torch.randn(4, h, D, device=DEV)
    slots = torch.tensor([3, 0, 4, 1], device=DEV)
    limits = torch.tensor([80, 0, 17, 1], device=DEV)   # full, empty (output 0), partial blocks, one key
    cos, sin = rope_table(cap, D, 10000.0, DEV, torch.float32)
    got = triton_decode.decode_attention(q, k_buf, v_buf, slots, limits, cos, sin, keys=cap, block_n=block_n, sms=sms)
    want = _reference(q, k_buf, v_buf, slots.tolist(), limits.tolist(), cos, sin)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(got[1], torch.zeros_like(got[1]))


@pytest.mark.parametrize("w,gqa", [(None, True), (None, False), (2, True), (0, False)])
def test_fast_decode_triton_matches_model_decode(w, gqa):
    cfg = tiny_cfg(w, gqa=gqa, hidden_size=256, layers=6 if w == 2 else 4)       # head_dim 64
    model = make_model(cfg, dtype=torch.float32, device=DEV)
    caches = [KVCache(cfg, 4, 96, DEV, torch.float32) for _ in range(2)]
    g = torch.Generator().manual_seed(1)
    for s, n in enumerate([0, 5, 70, 1]):
        if n:
            t = torch.randint(0, cfg.vocab_size, (n,), generator=g).to(DEV)
            for c in caches:
                model.prefill(c, [s], [t])
    fd = FastDecode(model, caches[1], bucket=32, attention="triton")
    for slots in ([0, 1, 2, 3], [3, 1]):
        for _ in range(2):
            tok = torch.randint(0, cfg.vocab_size, (len(slots),), generator=g).to(DEV)
            want = model.decode(caches[0], torch.tensor(slots), tok)
            got = fd(torch.tensor(slots), tok)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(caches[0].lengths, caches[1].lengths)
