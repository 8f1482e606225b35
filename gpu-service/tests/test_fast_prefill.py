"""kernels.FastPrefill against the model's own prefill (the independent reference here), in float64:
logits and the whole cache (K, V, token ids, lengths, tokens seen) must agree."""
from __future__ import annotations

import pytest
import torch

from conftest import LAYOUTS, cache_pair, make_model, tiny_cfg
from lckv_service.cache import KVCache
from lckv_service.kernels.fast_prefill import FastPrefill, PrefillInputError
from lckv_service.model import PrefillMode

CFGS = LAYOUTS
ITERATIVE = PrefillMode(kind="iterative")


def _cfg(name):
    kw = dict(CFGS[name])
    return tiny_cfg(kw.pop("w"), **kw)


def _pair(cfg, model, lens, capacity=40, seed=1):
    return cache_pair(cfg, model, lens, capacity, seed, junk=True)


def _same_state(a: KVCache, b: KVCache):
    """The WHOLE buffers, not just the valid prefix: padding must not have written anywhere."""
    assert torch.equal(a.lengths, b.lengths)
    assert [a.length(s) for s in range(a.num_slots)] == [b.length(s) for s in range(b.num_slots)]
    assert [a.tokens_seen(s) for s in range(a.num_slots)] == [b.tokens_seen(s) for s in range(b.num_slots)]
    torch.testing.assert_close(a.k, b.k, rtol=0, atol=1e-10)
    torch.testing.assert_close(a.v, b.v, rtol=0, atol=1e-10)
    assert torch.equal(a.tokens, b.tokens)


def _rows(cfg, ns, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in ns]


@pytest.mark.parametrize("name", list(CFGS))
@pytest.mark.parametrize("passes", [None, "exact", 3])
def test_fast_prefill_matches_model_prefill(name, passes):
    cfg = _cfg(name)
    model = make_model(cfg)
    ref, fast = _pair(cfg, model, lens=[0, 5, 11, 2])          # slot 0 empty: LCKV's zero-attention row
    fp = FastPrefill(model, fast, bucket=8, token_buckets=(4, 8, 16))
    # all slots (contiguous, rows of different n: padding), then a gather of non-contiguous slots,
    # then a single short row (longest < m+b: the pass count is capped at the row length)
    for call, (slots, ns) in enumerate((([0, 1, 2, 3], [7, 1, 13, 4]), ([3, 0], [9, 2]), ([2], [3]))):
        toks = _rows(cfg, ns, seed=10 + call)
        longest = max(ns)
        iters = {None: None, "exact": longest, 3: 3}[passes]
        want = model.prefill(ref, slots, toks, mode=PrefillMode(kind="iterative", iterations=iters))
        got = fp(slots, toks, passes=passes)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
        assert fp.last_passes == (model.last_prefill_passes if cfg.is_cyclic else 1)
        _same_state(ref, fast)


def test_exact_passes_equal_the_chunked_exact_prefill():
    """Theorem 1 end to end: passes='exact' equals the model's exact (chunk-by-chunk) prefill."""
    cfg = _cfg("lckv-w2")
    model = make_model(cfg)
    ref, fast = _pair(cfg, model, lens=[6, 0])
    fp = FastPrefill(model, fast, bucket=16, token_buckets=(16,))
    toks = _rows(cfg, [12, 5], seed=3)
    want = model.prefill(ref, [0, 1], toks, mode=PrefillMode(kind="exact", chunk=4))
    got = fp([0, 1], toks, passes="exact")
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)
    for s in (0, 1):
        n = ref.length(s)
        torch.testing.assert_close(fast.k[:, s, :n], ref.k[:, s, :n], rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(fast.v[:, s, :n], ref.v[:, s, :n], rtol=1e-8, atol=1e-8)


def test_fast_prefill_after_streaming_eviction():
    cfg = _cfg("lckv-w2")
    model = make_model(cfg)
    ref, fast = _pair(cfg, model, lens=[14, 10], capacity=16)
    for c in (ref, fast):
        c.evict(0, sinks=4, keep_recent=6)      # slot 0 holds 10 tokens, seen 14: positions in-cache
    fp = FastPrefill(model, fast, bucket=4, token_buckets=(8,))
    toks = _rows(cfg, [5, 6], seed=4)   # slot 0's new positions 10..14 still hold evicted K/V
    want = model.prefill(ref, [0, 1], toks, mode=PrefillMode(kind="iterative", iterations=2))
    torch.testing.assert_close(fp(torch.tensor([0, 1]), toks, passes=2), want, rtol=1e-9, atol=1e-9)
    _same_state(ref, fast)
    assert fast.tokens_seen(0) == 19 and fast.length(0) == 15


@pytest.mark.parametrize("name", ["lckv-w2", "llama-gqa"])
def test_capacity_exactly_full(name):
    """Rows fill their slots to the last position while the token bucket (16) exceeds the room
    left: padding positions wrap into the cached history and must leave it untouched."""
    cfg = _cfg(name)
    model = make_model(cfg)
    ref, fast = _pair(cfg, model, lens=[9, 0, 15], capacity=16)
    fp = FastPrefill(model, fast, bucket=64, token_buckets=(16, 32))   # both buckets clamp to 16
    toks = _rows(cfg, [7, 16, 1], seed=5)
    want = model.prefill(ref, [0, 1, 2], toks, mode=ITERATIVE)
    got = fp([0, 1, 2], toks)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    _same_state(ref, fast)
    assert [fast.length(s) for s in range(3)] == [16, 16, 16]


def test_two_d_tensor_input_repeated_calls_and_all_logits():
    cfg = _cfg("lckv-w0")
    model = make_model(cfg)
    ref, fast = _pair(cfg, model, lens=[3, 4, 0])
    fp = FastPrefill(model, fast, bucket=8, token_buckets=(8,))
    for seed in range(3):   # a conversation: turn after turn on the same slots
        toks = torch.randint(0, cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(seed))
        all_rows = seed == 1   # every position's logits, as model.prefill(all_logits=True)
        want = model.prefill(ref, [1, 2], list(toks), mode=ITERATIVE, all_logits=all_rows)
        got = fp([1, 2], toks, all_logits=all_rows)
        if all_rows:
            assert [g.shape for g in got] == [w.shape for w in want] == [(6, cfg.vocab_size)] * 2
            got, want = torch.stack(got), torch.stack(want)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    _same_state(ref, fast)


def test_bad_input_is_refused_and_changes_nothing():
    cfg = _cfg("lckv-w2")
    model = make_model(cfg)
    cache = _pair(cfg, model, lens=[5, 0], capacity=12)[0]
    fp = FastPrefill(model, cache, bucket=4, token_buckets=(4, 8))
    before = (cache.k.clone(), cache.v.clone(), cache.tokens.clone(), cache.lengths.clone(),
              [cache.length(s) for s in range(2)], [cache.tokens_seen(s) for s in range(2)])
    ok = torch.tensor([1, 2, 3])
    bad = [
        ("tokens", [0], [torch.tensor([1, cfg.vocab_size])]),         # id outside the vocabulary
        ("tokens", [0], [torch.tensor([-1])]),
        ("tokens", [0], [torch.arange(8)]),                           # 5 + 8 > capacity 12
        ("tokens", [1], [torch.arange(9)]),                           # longer than the largest bucket
        ("tokens", [0], [torch.tensor([], dtype=torch.long)]),
        ("tokens", [0], [torch.tensor([1.0, 2.0])]),
        ("tokens", [0, 1], [ok]),                                     # one row for two slots
        ("tokens", [0], torch.tensor([1, 2])),                        # 1-D tensor, not [B, n]
        ("tokens", [0], ["abc"]),
        ("tokens", [0], 7),
        ("slots", [2], [ok]),                                         # out of range
        ("slots", [-1], [ok]),
        ("slots", [0, 0], [ok, ok]),                                  # duplicate
        ("slots", [], []),
        ("slots", ["a"], [ok]),
    ]
    for param, slots, toks in bad:
        with pytest.raises(PrefillInputError, match=f"param: {param}") as e:
            fp(slots, toks)
        assert e.value.param == param and isinstance(e.value, ValueError)
    for passes in (0, -1, 1.5, True, "fast"):
        with pytest.raises(PrefillInputError, match="param: passes"):
            fp([0], [ok], passes=passes)
    after = (cache.k, cache.v, cache.tokens, cache.lengths)
    assert all(torch.equal(a, b) for a, b in zip(before[:4], after))
    assert [cache.length(s) for s in range(2)] == before[4] and [cache.tokens_seen(s) for s in range(2)] == before[5]


def test_constructor_refuses_bad_arguments():
    cfg = _cfg("lckv-w2")
    model = make_model(cfg)
    cache = KVCache(cfg, 1, 8, dtype=torch.float64)
    for kw, param in ((dict(bucket=0), "bucket"), (dict(token_buckets=()), "token_buckets"),
                      (dict(token_buckets=(8, 0)), "token_buckets"), (dict(max_graphs=-1), "max_graphs"),
                      (dict(graphs=True), "graphs")):
        with pytest.raises(PrefillInputError, match=f"param: {param}"):
            FastPrefill(model, cache, **kw)
    with pytest.raises(PrefillInputError, match="param: cache"):
        FastPrefill(model, KVCache(cfg, 1, 8, dtype=torch.float32))
    with pytest.raises(PrefillInputError, match="param: cache"):
        FastPrefill(model, KVCache(_cfg("lckv-w0"), 1, 8, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("name", ["lckv-w2", "llama-gqa"])
def test_fast_prefill_graphs_match_model_on_cuda(name):
    cfg = _cfg(name)
    model = make_model(cfg, dtype=torch.float32, device="cuda")
    caches = [KVCache(cfg, 4, 48, device="cuda", dtype=torch.float32) for _ in range(2)]
    g = torch.Generator().manual_seed(0)
    hist = [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in (5, 1, 20, 3)]
    for c in caches:
        model.prefill(c, [0, 1, 2, 3], hist)
    fp = FastPrefill(model, caches[1], bucket=16, token_buckets=(4, 8), graphs=True)
    for turn in range(3):   # the second and third turns replay the same graphs (same buckets)
        for slots in ([1, 2], [0, 1, 2, 3]):
            ns = [3, 7] if len(slots) == 2 else [2, 5, 1, 4]
            toks = [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in ns]
            want = model.prefill(caches[0], slots, toks, mode=ITERATIVE)
            got = fp(slots, toks)
            # fill freed small blocks with out-of-range ids: an input the graph did not own would read them
            junk = [torch.full((n,), 10**6, dtype=torch.long, device="cuda") for n in (1, 2, 4, 8, 16, 64) * 8]
            torch.cuda.synchronize()
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            del junk
    assert len(fp._graphs) >= 2
    assert torch.equal(caches[0].lengths, caches[1].lengths) and torch.equal(caches[0].tokens, caches[1].tokens)
    torch.testing.assert_close(caches[1].k, caches[0].k, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(caches[1].v, caches[0].v, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["lckv-w2", "llama-gqa"])
def test_step_with_no_real_tokens_writes_nothing(name):
    """What a CUDA-graph capture relies on: its warm-up runs the step with n = 0 in every row (and
    start 0, so padding targets the slots' first positions, all holding history)."""
    cfg = _cfg(name)
    model = make_model(cfg)
    cache = _pair(cfg, model, lens=[6, 9], capacity=12)[0]
    before = (cache.k.clone(), cache.v.clone(), cache.tokens.clone(), cache.lengths.clone())
    fp = FastPrefill(model, cache, bucket=4, token_buckets=(8,))
    zeros = torch.zeros(2, dtype=torch.long)
    fp._step(torch.zeros(2, 8, dtype=torch.long), zeros, zeros, torch.arange(2), 0, 12, 3)
    assert all(torch.equal(a, b) for a, b in zip(before, (cache.k, cache.v, cache.tokens, cache.lengths)))
