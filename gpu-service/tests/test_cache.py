"""KVCache: sizes, eviction, export/restore, slot validation."""
import numpy as np
import pytest
import torch

from conftest import make_model, tiny_cfg
from lckv_service.cache import CacheState, KVCache
from lckv_service.device import to_device
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


def test_truncate_drops_the_tail_as_if_it_was_never_fed():
    cfg = tiny_cfg(2)
    model = make_model(cfg)
    cache = KVCache(cfg, 2, 32, dtype=torch.float64)
    model.prefill(cache, [0, 1], [torch.arange(12) + 100, torch.arange(9) + 100])
    cache.truncate(0, 3)
    a, b = cache.export(0), cache.export(1)
    assert a.token_ids == b.token_ids and a.tokens_seen == 9 and cache.lengths.tolist() == [9, 9]
    assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
    la = model.decode(cache, torch.tensor([0, 1]), torch.tensor([7, 7]))   # decodes as if never fed
    assert torch.equal(la[0], la[1])
    for bad in (-1, 11, 1.0, True):
        with pytest.raises(ValueError, match="drop"):
            cache.truncate(0, bad)
    assert cache.length(0) == 10 and cache.tokens_seen(0) == 10   # a refused truncate changes nothing


def test_export_start_hands_back_the_slot_as_it_was_when_queued():
    cfg = tiny_cfg(2)
    model = make_model(cfg)
    cache = KVCache(cfg, 1, 32, dtype=torch.float64)
    model.prefill(cache, [0], [torch.arange(6) + 100])
    before = cache.export(0)
    pending = cache.export_start(0)
    cache.reset(0)
    model.prefill(cache, [0], [torch.arange(6) + 200])   # the slot's next user overwrites it
    while not pending.ready():
        pass
    got = pending.result()
    assert got.token_ids == before.token_ids and got.tokens_seen == 6
    assert torch.equal(got.k, before.k) and torch.equal(got.v, before.v)


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


@pytest.mark.parametrize("slots, match", [
    (torch.tensor([0, 2, 0]), r"distinct slot indices, got \[0, 2, 0\]"),
    (torch.tensor([1, 3]), r"slot 3 is not in \[0, 3\)"),
    (torch.tensor([1, -1, 5]), r"slot -1 is not in \[0, 3\)"),
    (torch.tensor([], dtype=torch.long), "non-empty"),
    (torch.tensor([0.0]), r"slot 0\.0 is not in"),
    (torch.tensor([True]), "slot True is not in"),
    (torch.tensor([[0, 1]]), r"slot \[0, 1\] is not in"),
    ([0, "1"], "slot '1' is not in"),
])
def test_slot_array_refuses_what_check_slots_refuses(slots, match):
    cache = KVCache(tiny_cfg(2), 3, 4)
    with pytest.raises(ValueError, match=match):
        cache.slot_array(slots)


def test_slot_array_takes_any_integer_dtype():
    cache = KVCache(tiny_cfg(2), 300, 4)
    for dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        a = cache.slot_array(torch.tensor([2, 0, 255], dtype=dtype))
        assert a.dtype == np.int64 and a.tolist() == [2, 0, 255]
    assert cache.slot_array([4, 1]).tolist() == [4, 1]


def test_commit_keeps_both_mirrors_exact():
    cache = KVCache(tiny_cfg(2), 4, 8)
    cache.commit([3, 1], [5, 2], [5, 2])                          # lists, no device tensors
    cache.commit(np.array([1]), np.array([6]), 4)                 # arrays, one `added` for all
    cache.commit([3], [7], [2], torch.tensor([3]), torch.tensor([7]))
    assert [cache.length(s) for s in range(4)] == [0, 6, 0, 7] == cache.lengths.tolist()
    assert [cache.tokens_seen(s) for s in range(4)] == [0, 6, 0, 7]
    assert all(type(cache.length(s)) is int and type(cache.tokens_seen(s)) is int for s in range(4))
    cache.evict(3, sinks=1, keep_recent=2)
    assert cache.length(3) == 3 and cache.tokens_seen(3) == 7 and cache.lengths.tolist() == [0, 6, 0, 3]
    st = cache.export(3)
    assert type(st.tokens_seen) is int and st.tokens_seen == 7


@pytest.mark.parametrize("seen", [2, True, 1.5 + 4, 2 ** 63, "9"])
def test_restore_refuses_a_bad_tokens_seen_and_changes_nothing(seen):
    cfg = tiny_cfg(0)
    cache = KVCache(cfg, 2, 8)
    shape = (len(cfg.kv_layers), 3, cfg.num_kv_heads, cfg.head_dim)
    before = (cache.k.clone(), cache.tokens.clone(), cache.lengths.clone())
    with pytest.raises(ValueError, match="tokens_seen"):
        cache.restore(1, CacheState(k=torch.ones(shape), v=torch.ones(shape), token_ids=[1, 2, 3], tokens_seen=seen))
    assert torch.equal(cache.k, before[0]) and torch.equal(cache.tokens, before[1])
    assert torch.equal(cache.lengths, before[2]) and cache.length(1) == 0 and cache.tokens_seen(1) == 0


def test_restore_converts_dtype_and_keeps_tokens_seen():
    cfg = tiny_cfg(0)
    cache = KVCache(cfg, 2, 8, dtype=torch.float64)
    shape = (len(cfg.kv_layers), 3, cfg.num_kv_heads, cfg.head_dim)
    k = torch.randn(shape, dtype=torch.float32)
    cache.restore(1, CacheState(k=k, v=-k, token_ids=[4, 5, 6], tokens_seen=2 ** 53 - 1))
    assert torch.equal(cache.k[:, 1, :3], k.double()) and torch.equal(cache.v[:, 1, :3], -k.double())
    assert cache.tokens[1, :3].tolist() == [4, 5, 6] and cache.tokens_seen(1) == 2 ** 53 - 1
    assert cache.lengths.tolist() == [0, 3]


def test_to_device_takes_lists_arrays_and_tensors():
    for values in ([[1, 2], [3, 4]], np.array([[1, 2], [3, 4]], np.int32), torch.tensor([[1, 2], [3, 4]])):
        t = to_device(values, "cpu")
        assert t.dtype == torch.long and t.tolist() == [[1, 2], [3, 4]]
    t = to_device(np.array([0.5, 2.0]), "cpu", torch.float64)
    assert t.dtype == torch.float64 and t.tolist() == [0.5, 2.0]
