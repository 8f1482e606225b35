"""KVCache: sizes, eviction, export/restore, slot validation."""
import pytest
import torch

from conftest import make_model, tiny_cfg
from lckv_service.cache import CacheState, KVCache
from lckv_service.config import ModelConfig


@pytest.mark.parametrize("preset", ["tinyllama-1.1b", "llama2-7b"])
@pytest.mark.parametrize("w", [0, 2, 10])
def test_bytes_per_token_scales_with_condensed_layers(preset, w):
    llama = ModelConfig.preset(preset, "llama")
    lckv = ModelConfig.preset(preset, f"lckv-w{w}")
    b_llama = KVCache.bytes_for(llama, 1, 1, torch.bfloat16)
    b_lckv = KVCache.bytes_for(lckv, 1, 1, torch.bfloat16)
    assert b_lckv * llama.num_layers == b_llama * (w + 1)
    assert b_llama == 2 * llama.num_layers * llama.num_kv_heads * llama.head_dim * 2


def test_paper_numbers():
    kib = 1024
    assert KVCache.bytes_for(ModelConfig.preset("tinyllama-1.1b", "llama"), 1, 1) == 22 * kib
    assert KVCache.bytes_for(ModelConfig.preset("tinyllama-1.1b", "lckv-w2"), 1, 1) == 3 * kib
    assert KVCache.bytes_for(ModelConfig.preset("llama2-7b", "llama"), 1, 1) == 512 * kib
    assert KVCache.bytes_for(ModelConfig.preset("llama2-7b", "lckv-w2"), 1, 1) == 48 * kib


def test_buffers_sizes_and_usage():
    cfg = tiny_cfg(2)
    cache = KVCache(cfg, num_slots=3, capacity=16, dtype=torch.float32)
    assert cache.k.shape == (3, 3, 16, cfg.num_kv_heads, cfg.head_dim)
    assert cache.k.numel() * 4 * 2 == KVCache.bytes_for(cfg, 3, 16, torch.float32)
    assert cache.bytes_per_token() == 2 * 3 * cfg.num_kv_heads * cfg.head_dim * 4
    model = make_model(cfg, dtype=torch.float32)
    model.prefill(cache, [2], [torch.arange(5)])
    assert cache.length(2) == 5 and cache.nbytes_used(2) == 5 * cache.bytes_per_token()
    assert cache.lengths.tolist() == [0, 0, 5]
    cache.reset(2)
    assert cache.length(2) == 0 and cache.tokens_seen(2) == 0 and cache.lengths.tolist() == [0, 0, 0]


def test_evict_keeps_sinks_and_recent():
    cfg = tiny_cfg(2)
    cache = KVCache(cfg, 1, 32, dtype=torch.float64)
    model = make_model(cfg)
    model.prefill(cache, [0], [torch.arange(20) + 100])
    full = cache.export(0)
    cache.evict(0, sinks=4, keep_recent=6)
    kept = cache.export(0)
    idx = list(range(4)) + list(range(14, 20))
    assert kept.token_ids == [100 + i for i in idx] and kept.tokens_seen == 20
    assert torch.equal(kept.k, full.k[:, idx]) and torch.equal(kept.v, full.v[:, idx])
    cache.evict(0, sinks=4, keep_recent=6)  # nothing to drop: a no-op
    assert cache.export(0).token_ids == kept.token_ids
    cache.evict(0, sinks=0, keep_recent=3)   # overlapping ranges are copied correctly
    assert cache.export(0).token_ids == kept.token_ids[-3:]
    for bad in ({"sinks": -1, "keep_recent": 2}, {"sinks": 1, "keep_recent": 1.5}):
        with pytest.raises(ValueError):
            cache.evict(0, **bad)


def test_export_restore_round_trip():
    cfg = tiny_cfg(0)
    model = make_model(cfg)
    a = KVCache(cfg, 2, 16, dtype=torch.float64)
    model.prefill(a, [1], [torch.arange(9)])
    st = a.export(1)
    assert st.k.device.type == "cpu" and st.k.shape == (1, 9, cfg.num_kv_heads, cfg.head_dim)
    b = KVCache(cfg, 3, 16, dtype=torch.float64)
    b.restore(0, st)
    assert b.length(0) == 9 and b.tokens_seen(0) == 9
    la = model.decode(a, torch.tensor([1]), torch.tensor([7]))
    lb = model.decode(b, torch.tensor([0]), torch.tensor([7]))
    assert torch.equal(la, lb)
    with pytest.raises(ValueError):   # too many tokens for the slot
        KVCache(cfg, 1, 4, dtype=torch.float64).restore(0, st)
    with pytest.raises(ValueError):   # wrong layer count
        b.restore(1, CacheState(k=st.k.repeat(2, 1, 1, 1), v=st.v.repeat(2, 1, 1, 1),
                                token_ids=st.token_ids, tokens_seen=9))


@pytest.mark.parametrize("bad", [-1, 3, 1.0, True, "0"])
def test_bad_slots(bad):
    cache = KVCache(tiny_cfg(2), 3, 4)
    with pytest.raises(ValueError):
        cache.length(bad)


@pytest.mark.parametrize("kw", [{"num_slots": 0, "capacity": 4}, {"num_slots": 2, "capacity": -1}])
def test_bad_pool(kw):
    with pytest.raises(ValueError):
        KVCache(tiny_cfg(2), **kw)
