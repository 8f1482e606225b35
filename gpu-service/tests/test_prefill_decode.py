"""Inference (prefill modes + decode into a KVCache) against the sequential reference."""
import pytest
import torch

from conftest import DEVICES, make_model, tiny_cfg
from lckv_service.cache import KVCache
from lckv_service.config import ModelConfig
from lckv_service.errors import ConfigError
from lckv_service.model import PrefillMode
from lckv_service.reference import ReferenceLCKV

LENGTHS = (13, 5, 9)


def _seqs(vocab, lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in lengths]


def _max_dev(outs, refs):
    return max((o - r).abs().max().item() for o, r in zip(outs, refs))


@pytest.mark.parametrize("w", [0, 2, 4])
@pytest.mark.parametrize("nodiag", [False, True])
def test_exact_prefill_then_decode_matches_reference(w, nodiag):
    model = make_model(tiny_cfg(w, nodiag=nodiag), seed=w + 10)
    seqs = _seqs(model.cfg.vocab_size, seed=w)
    refs = [ReferenceLCKV(model) for _ in seqs]
    ref_logits = [r.run(s) for r, s in zip(refs, seqs)]
    cache = KVCache(model.cfg, num_slots=4, capacity=32, dtype=torch.float64)
    slots = [3, 0, 1]  # not in order: slots are indices, not batch rows
    outs = model.prefill(cache, slots, seqs, PrefillMode("exact", chunk=4), all_logits=True)
    assert [o.shape[0] for o in outs] == list(LENGTHS)
    assert _max_dev(outs, ref_logits) <= 1e-9
    g = torch.Generator().manual_seed(99)
    for step in range(3):  # batched decode of different-length sequences
        tok = torch.randint(0, model.cfg.vocab_size, (3,), generator=g)
        logits = model.decode(cache, torch.tensor(slots), tok)
        expect = torch.stack([r.step(int(t)) for r, t in zip(refs, tok)])
        assert (logits - expect).abs().max().item() <= 1e-9
    assert [cache.length(s) for s in slots] == [n + 3 for n in LENGTHS]


@pytest.mark.parametrize("w", [0, 2])
def test_default_mode_and_last_logits(w):
    model = make_model(tiny_cfg(w), seed=1)
    seqs = _seqs(model.cfg.vocab_size, lengths=(21, 3), seed=1)
    cache = KVCache(model.cfg, 2, 32, dtype=torch.float64)
    assert PrefillMode() == PrefillMode("exact", chunk=8)
    out = model.prefill(cache, [0, 1], seqs)
    assert out.shape == (2, model.cfg.vocab_size)
    for o, s in zip(out, seqs):
        assert (o - ReferenceLCKV(model).run(s)[-1]).abs().max().item() <= 1e-9


def test_iterative_mode_deviation():
    model = make_model(tiny_cfg(0), seed=2)
    seqs = _seqs(model.cfg.vocab_size, lengths=(12, 7), seed=2)
    refs = [ReferenceLCKV(model).run(s) for s in seqs]
    dev = {}
    for it in (1, 3, 9, 12):
        cache = KVCache(model.cfg, 2, 16, dtype=torch.float64)
        dev[it] = _max_dev(model.prefill(cache, [0, 1], seqs, PrefillMode("iterative", iterations=it),
                                         all_logits=True), refs)
    print(f"iterative prefill max |logit - reference| by passes: {dev}")
    assert dev[12] <= 1e-9                 # passes >= tokens: exact (Theorem 1)
    assert dev[9] < dev[3] < dev[1]        # and the error shrinks with the number of passes
    assert dev[1] > 1e-3                   # (the case is non-trivial)


def test_iterative_default_passes_is_m_plus_b():
    model = make_model(tiny_cfg(2), seed=3)
    seq = _seqs(model.cfg.vocab_size, lengths=(20,), seed=3)
    cache = KVCache(model.cfg, 1, 32, dtype=torch.float64)
    model.prefill(cache, [0], seq, PrefillMode("iterative"))
    assert model.last_prefill_passes == model.cfg.forward_passes + model.cfg.backward_passes


def test_adaptive_mode():
    model = make_model(tiny_cfg(0), std=0.02, seed=4)
    seqs = _seqs(model.cfg.vocab_size, lengths=(16, 11), seed=4)
    refs = [ReferenceLCKV(model).run(s) for s in seqs]
    cache = KVCache(model.cfg, 2, 32, dtype=torch.float64)
    exact = model.prefill(cache, [0, 1], seqs, PrefillMode("adaptive", tol=0.0, max_iterations=32), all_logits=True)
    assert _max_dev(exact, refs) <= 1e-9 and model.last_prefill_passes == 16  # tol 0: up to Theorem 1
    for tol, bound in ((1e-8, 1e-2), (1e-14, 1e-5)):
        cache = KVCache(model.cfg, 2, 32, dtype=torch.float64)
        out = model.prefill(cache, [0, 1], seqs, PrefillMode("adaptive", tol=tol), all_logits=True)
        dev, passes = _max_dev(out, refs), model.last_prefill_passes
        print(f"adaptive tol={tol}: {passes} passes, max |logit - reference| = {dev:.2e}")
        assert passes < 16 and dev < bound


@pytest.mark.parametrize("mode", [PrefillMode("exact", chunk=4), PrefillMode("iterative", iterations=6)])
def test_mixed_batch_equals_alone(mode):
    model = make_model(tiny_cfg(2), seed=5)
    seqs = _seqs(model.cfg.vocab_size, seed=5)
    cache = KVCache(model.cfg, 3, 16, dtype=torch.float64)
    together = model.prefill(cache, [0, 1, 2], seqs, mode, all_logits=True)
    for s, t in zip(seqs, together):
        alone = model.prefill(KVCache(model.cfg, 1, 16, dtype=torch.float64), [0], [s], mode, all_logits=True)[0]
        assert (alone - t).abs().max().item() <= 1e-9


@pytest.mark.parametrize("w", [0, 2])
def test_prefill_after_existing_cache_equals_whole(w):
    model = make_model(tiny_cfg(w), seed=6)
    (seq,) = _seqs(model.cfg.vocab_size, lengths=(19,), seed=6)
    whole_cache = KVCache(model.cfg, 1, 32, dtype=torch.float64)
    whole = model.prefill(whole_cache, [0], [seq], all_logits=True)[0]
    cache = KVCache(model.cfg, 2, 32, dtype=torch.float64)
    first = model.prefill(cache, [1], [seq[:7]], all_logits=True)[0]
    second = model.prefill(cache, [1], [seq[7:]], PrefillMode("exact", chunk=5), all_logits=True)[0]
    assert (torch.cat([first, second]) - whole).abs().max().item() <= 1e-9
    a, b = whole_cache.export(0), cache.export(1)
    assert a.token_ids == b.token_ids == seq.tolist() and (a.k - b.k).abs().max() <= 1e-9


def test_streaming_eviction_then_decode_uses_in_cache_positions():
    model = make_model(tiny_cfg(2), seed=7)
    (seq,) = _seqs(model.cfg.vocab_size, lengths=(20,), seed=7)
    cache = KVCache(model.cfg, 2, 24, dtype=torch.float64)
    model.prefill(cache, [1], [seq])
    cache.evict(1, sinks=4, keep_recent=8)
    state = cache.export(1)
    assert state.token_ids == seq[:4].tolist() + seq[-8:].tolist() and state.tokens_seen == 20
    ref = ReferenceLCKV(model, state)  # continues at position 12 = index inside the cache
    g = torch.Generator().manual_seed(7)
    for _ in range(4):
        tok = torch.randint(0, model.cfg.vocab_size, (1,), generator=g)
        got = model.decode(cache, torch.tensor([1]), tok)[0]
        assert (got - ref.step(int(tok))).abs().max().item() <= 1e-9
    # and a prefill after eviction too
    more = torch.randint(0, model.cfg.vocab_size, (5,), generator=g)
    got = model.prefill(cache, [1], [more], all_logits=True)[0]
    assert (got - ref.run(more)).abs().max().item() <= 1e-9
    assert cache.length(1) == 12 + 4 + 5 and cache.tokens_seen(1) == 29


def test_prefill_rejects_bad_input_and_changes_nothing():
    model = make_model(tiny_cfg(2), seed=8)
    cache = KVCache(model.cfg, 2, 8, dtype=torch.float64)
    model.prefill(cache, [0], [torch.arange(5)])
    before = cache.export(0)
    for slots, toks in (([0], [torch.arange(4)]),            # overflow: 5 + 4 > 8
                        ([2], [torch.arange(2)]),            # no such slot
                        ([1, 1], [torch.arange(2)] * 2),     # duplicate slot
                        ([1], [torch.tensor([3, 256])]),     # id outside the vocabulary
                        ([1], [torch.tensor([], dtype=torch.long)]),
                        ([1], [torch.zeros(2, 2, dtype=torch.long)])):
        with pytest.raises(ValueError):
            model.prefill(cache, slots, toks)
    after = cache.export(0)
    assert cache.length(1) == 0 and after.token_ids == before.token_ids and torch.equal(after.k, before.k)
    with pytest.raises(ValueError):
        model.decode(_full(model), torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError):  # cache dtype must match the model's
        model.prefill(KVCache(model.cfg, 1, 8, dtype=torch.float32), [0], [torch.arange(2)])


def _full(model):
    cache = KVCache(model.cfg, 1, 3, dtype=torch.float64)
    model.prefill(cache, [0], [torch.arange(3)])
    return cache


@pytest.mark.parametrize("kw, param", [({"kind": "fast"}, "kind"), ({"chunk": 0}, "chunk"),
                                       ({"iterations": 0}, "iterations"), ({"tol": -1.0}, "tol"),
                                       ({"max_iterations": 1.5}, "max_iterations")])
def test_prefill_mode_validation(kw, param):
    with pytest.raises(ConfigError) as e:
        PrefillMode(**kw)
    assert e.value.param == param


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_prefill_decode_agrees_with_float32(device):
    cfg = tiny_cfg(2)
    m32 = make_model(cfg, dtype=torch.float32, device=device)
    m16 = make_model(cfg, dtype=torch.bfloat16, device=device)
    seqs = [s.to(device) for s in _seqs(cfg.vocab_size, lengths=(40, 17), seed=9)]
    outs = []
    for m, dt in ((m32, torch.float32), (m16, torch.bfloat16)):
        cache = KVCache(cfg, 2, 64, device=device, dtype=dt)
        p = m.prefill(cache, [0, 1], seqs)
        d = m.decode(cache, torch.tensor([0, 1]), torch.tensor([5, 6], device=device))
        outs.append((p.float(), d.float()))
    for a, b in zip(*outs):
        assert torch.isfinite(b).all()
        rel = (a - b).abs().max().item() / a.abs().max().item()
        assert rel < 0.05, rel
        assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("w", [0, 2])
def test_float32_on_device_matches_reference(device, w):
    """The device code path (CUDA: expanded GQA heads, masked SDPA kernels) in float32 against the
    float64 reference: prefill (exact and iterative with passes >= tokens), decode, training forward."""
    cfg = tiny_cfg(w)
    m64 = make_model(cfg, seed=12)
    m32 = make_model(cfg, dtype=torch.float32, seed=12, device=device)
    seqs = _seqs(cfg.vocab_size, lengths=(14, 6), seed=12)
    refs = [ReferenceLCKV(m64) for _ in seqs]
    ref_logits = [r.run(s) for r, s in zip(refs, seqs)]
    for mode in (PrefillMode("exact", chunk=4), PrefillMode("iterative", iterations=14)):
        cache = KVCache(cfg, 2, 32, device=device, dtype=torch.float32)
        outs = m32.prefill(cache, [0, 1], [s.to(device) for s in seqs], mode, all_logits=True)
        assert _max_dev([o.double().cpu() for o in outs], ref_logits) < 1e-4
    tok = torch.tensor([7, 9])
    got = m32.decode(cache, torch.tensor([0, 1]), tok.to(device)).double().cpu()
    assert (got - torch.stack([r.step(int(t)) for r, t in zip(refs, tok)])).abs().max().item() < 1e-4
    logits, _ = m32(seqs[0][None].to(device), iterations=14)
    assert (logits[0].double().cpu() - ref_logits[0]).abs().max().item() < 1e-4


@pytest.mark.parametrize("variant", ["llama", "lckv-w2"])
def test_a_prefill_step_holds_one_sources_gathered_keys_at_a_time(variant, monkeypatch):
    """Prefill gathers and rotates each source's cached K/V once per pass and frees them after the
    source's last reader, so a step's transient memory does not grow with the number of layers."""
    from lckv_service import model as M
    cfg = ModelConfig.preset("tiny-test", variant)
    model = make_model(cfg)
    held = []
    attend = M.CachedKV.attend

    def counted(self, layer, source, q, nodiag):
        y = attend(self, layer, source, q, nodiag)
        held.append(len(self.gathered))
        return y
    monkeypatch.setattr(M.CachedKV, "attend", counted)
    cache = KVCache(cfg, 2, 64, dtype=torch.float64)
    model.prefill(cache, [0, 1], [torch.arange(20), torch.arange(13) + 5], PrefillMode("exact", chunk=8))
    assert held and max(held) <= 1
