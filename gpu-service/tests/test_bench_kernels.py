"""kernels.FastDecode against the model's own decode (the independent reference here), in float64."""
from __future__ import annotations

import pytest
import torch

from conftest import LAYOUTS, cache_pair, make_model, tiny_cfg
from lckv_service.cache import KVCache
from lckv_service.checkpoint import load_model, save_model
from lckv_service.kernels import FastDecode
from lckv_service.kernels.triton_decode import pick_block_n

CFGS = LAYOUTS


def _same_state(a: KVCache, b: KVCache):
    assert torch.equal(a.lengths, b.lengths)
    assert [a.length(s) for s in range(a.num_slots)] == [b.length(s) for s in range(b.num_slots)]
    assert [a.tokens_seen(s) for s in range(a.num_slots)] == [b.tokens_seen(s) for s in range(b.num_slots)]
    for s in range(a.num_slots):
        n = a.length(s)
        torch.testing.assert_close(a.k[:, s, :n], b.k[:, s, :n], rtol=0, atol=1e-12)
        torch.testing.assert_close(a.v[:, s, :n], b.v[:, s, :n], rtol=0, atol=1e-12)
        assert torch.equal(a.tokens[s, :n], b.tokens[s, :n])


@pytest.mark.parametrize("name", list(CFGS))
@pytest.mark.parametrize("bucket", [1, 8, 64])
def test_fast_decode_matches_model_decode(name, bucket):
    kw = dict(CFGS[name])
    cfg = tiny_cfg(kw.pop("w"), **kw)
    model = make_model(cfg)
    ref, fast = cache_pair(cfg, model, lens=[0, 3, 9, 1, 17])   # slot 0 empty: LCKV's zero-attention row
    fd = FastDecode(model, fast, bucket=bucket)
    g = torch.Generator().manual_seed(2)
    for slots in ([0, 1, 2, 3, 4], [4, 1, 3], [1, 2, 3], [2]):   # contiguous and gathered slots
        for _ in range(3):
            tok = torch.randint(0, cfg.vocab_size, (len(slots),), generator=g)
            want = model.decode(ref, torch.tensor(slots), tok)
            got = fd(torch.tensor(slots), tok)
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    _same_state(ref, fast)


def test_fast_decode_after_streaming_eviction():
    cfg = tiny_cfg(2, layers=6)
    model = make_model(cfg)
    ref, fast = cache_pair(cfg, model, lens=[12, 12], capacity=16)
    fd = FastDecode(model, fast, bucket=4)
    tok = torch.tensor([5, 7])
    for step in range(10):
        for c in (ref, fast):
            if c.length(0) == c.capacity:
                for s in (0, 1):
                    c.evict(s, sinks=4, keep_recent=8)
        want = model.decode(ref, torch.arange(2), tok)
        got = fd(torch.arange(2), tok)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
        tok = want.argmax(-1)
    _same_state(ref, fast)


def test_fast_decode_refuses_bad_input_and_changes_nothing():
    cfg = tiny_cfg(2)
    model = make_model(cfg)
    cache = KVCache(cfg, 2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="bucket"):
        FastDecode(model, cache, bucket=0)
    with pytest.raises(ValueError, match="CUDA"):
        FastDecode(model, cache, graphs=True)
    fd = FastDecode(model, cache)
    model.prefill(cache, [0], [torch.tensor([1, 2, 3, 4])])
    before = cache.lengths.clone()
    with pytest.raises(ValueError, match="full"):
        fd(torch.tensor([1, 0]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="slot"):
        fd(torch.tensor([2]), torch.tensor([1]))
    assert torch.equal(cache.lengths, before) and cache.length(1) == 0


def test_fast_decode_checks_indices_on_host():
    """Everything a step indexes with is validated on the host before any launch: on CUDA an
    out-of-range index is a device-side assert that poisons the process, not a catchable error."""
    cfg = tiny_cfg(2)
    model = make_model(cfg)
    cache = KVCache(cfg, 3, 8, dtype=torch.float64)
    model.prefill(cache, [0], [torch.tensor([1, 2, 3])])
    fd = FastDecode(model, cache, bucket=16)          # the bucket rounds past capacity: clamped to 8
    before = (cache.lengths.clone(), cache.k.clone())
    with pytest.raises(ValueError, match="tokens"):
        fd(torch.tensor([0]), torch.tensor([cfg.vocab_size]))
    with pytest.raises(ValueError, match="tokens"):
        fd(torch.tensor([0, 1]), torch.tensor([1]))
    with pytest.raises(ValueError, match="slot"):
        fd(torch.tensor([-1]), torch.tensor([1]))
    assert torch.equal(cache.lengths, before[0]) and torch.equal(cache.k, before[1])
    for n in range(4, 9):                              # up to the last free position, bucket clamped
        fd(torch.tensor([0, 2]), torch.tensor([1, 2]))
    assert cache.length(0) == 8 and cache.length(2) == 5
    with pytest.raises(ValueError, match="full"):
        fd(torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="bucket"):
        fd._check_bounds((0, 0), (3, 3), 9)                  # a bucket beyond the pool would read past it
    with pytest.raises(ValueError, match="lengths"):
        fd._check_bounds((0, 0), (8, 8), 8)


@pytest.mark.parametrize("slots, match", [
    ([1, 1], "distinct"), ([4], r"slot 4 is not in \[0, 4\)"), ([0, -2], "slot -2 is not in"),
    ([], "non-empty"), ([3, 2], "slot 3 is the padding slot"), ([2, 0, 1], "slot 0 is full"),
])
def test_fast_decode_refuses_bad_slots_and_changes_nothing(slots, match):
    cfg = tiny_cfg(2)
    model = make_model(cfg)
    cache = KVCache(cfg, 4, 4, dtype=torch.float64)
    fd = FastDecode(model, cache, pad_slot=3)
    model.prefill(cache, [0, 1], [torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 4])])   # both full
    model.prefill(cache, [2], [torch.tensor([5])])
    before = (cache.lengths.clone(), cache.k.clone(), cache.tokens.clone())
    with pytest.raises(ValueError, match=match):
        fd(torch.tensor(slots, dtype=torch.long), torch.ones(len(slots), dtype=torch.long))
    assert torch.equal(cache.lengths, before[0]) and torch.equal(cache.k, before[1])
    assert torch.equal(cache.tokens, before[2])
    assert [cache.length(s) for s in range(4)] == [4, 4, 1, 0] == [cache.tokens_seen(s) for s in range(4)]


def test_fast_decode_permuted_ranges_are_gathered():
    """Slot orders whose ends look like a range ([1, 3, 2, 4]: last - first = B - 1) but are not one
    must be gathered, not read through a view of the pool; int32 slots are the same slots."""
    cfg = tiny_cfg(2, layers=6)
    model = make_model(cfg)
    ref, fast = cache_pair(cfg, model, lens=[2, 7, 0, 5, 11])
    fd = FastDecode(model, fast, bucket=8)
    g = torch.Generator().manual_seed(3)
    for slots in ([1, 3, 2, 4], [3, 2, 1], [0, 4, 2, 3, 1], [4, 3]):
        tok = torch.randint(0, cfg.vocab_size, (len(slots),), generator=g)
        want = model.decode(ref, torch.tensor(slots), tok)
        got = fd(torch.tensor(slots, dtype=torch.int32), tok)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    _same_state(ref, fast)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("attention", ["sdpa", "triton"])
def test_fast_decode_graphs_match_eager_on_cuda(attention):
    from lckv_service.kernels import triton_decode
    cfg = tiny_cfg(2, layers=6, hidden_size=128)        # head_dim 32: the Triton kernel's minimum
    if attention == "triton" and not triton_decode.available(torch.device("cuda"), cfg.head_dim):
        pytest.skip("no Triton")
    model = make_model(cfg, dtype=torch.float32, device="cuda")
    caches = [KVCache(cfg, 3, 64, device="cuda", dtype=torch.float32) for _ in range(2)]
    toks = torch.randint(0, cfg.vocab_size, (3, 10), device="cuda")
    for c in caches:
        model.prefill(c, [0, 1, 2], [toks[0], toks[1, :4], toks[2, :1]])
    eager = FastDecode(model, caches[0], bucket=16, attention=attention)
    graphed = FastDecode(model, caches[1], bucket=16, graphs=True, attention=attention)
    tok = toks[:, -1]
    for _ in range(12):   # crosses a bucket edge: a second graph is captured
        a, b = eager(torch.arange(3), tok), graphed(torch.arange(3), tok)
        # fill every free small block with out-of-range ids and hold them through the next replay:
        # a graph input the entry did not own would now read 10**6 (an out-of-bounds index)
        junk = [torch.full((n,), 10**6, dtype=torch.long, device="cuda") for n in (1, 3, 6, 64, 512) * 8]
        torch.cuda.synchronize()
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        tok = a.argmax(-1)
        del junk   # held through the replay above, released before the next fill
    assert torch.equal(caches[0].lengths, caches[1].lengths)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("attention", ["sdpa", "triton"])
def test_fast_decode_padded_graphs_serve_any_slots_on_cuda(attention):
    """Serving graphs: slots are a graph input and batches pad into a scratch slot. Any slot set of
    any size matches the eager step, and the scratch slot's length never moves."""
    from lckv_service.kernels import triton_decode
    from lckv_service.kernels.fast_decode import batch_bucket
    cfg = tiny_cfg(2, layers=6, hidden_size=128)
    if attention == "triton" and not triton_decode.available(torch.device("cuda"), cfg.head_dim):
        pytest.skip("no Triton")
    model = make_model(cfg, dtype=torch.float32, device="cuda")
    n = 7                                                 # slots 0..6 serve, slot 7 pads
    caches = [KVCache(cfg, n + 1, 64, device="cuda", dtype=torch.float32) for _ in range(2)]
    toks = torch.randint(0, cfg.vocab_size, (n, 9), device="cuda")
    for c in caches:
        model.prefill(c, list(range(n)), [toks[i, : 1 + i % 5] for i in range(n)])
    eager = FastDecode(model, caches[0], bucket=16, attention=attention)
    graphed = FastDecode(model, caches[1], bucket=16, graphs=True, attention=attention, pad_slot=n)
    g = torch.Generator().manual_seed(1)
    for step in range(14):                               # batch sizes 1..7, slots shuffled, two key buckets
        size = 1 + step % n
        slots = torch.randperm(n, generator=g)[:size]
        tok = torch.randint(0, cfg.vocab_size, (size,), generator=g).cuda()
        a, b = eager(slots, tok), graphed(slots, tok)
        torch.cuda.synchronize()
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        assert b.shape[0] == size and batch_bucket(size) >= size
    assert torch.equal(caches[0].lengths[:n], caches[1].lengths[:n]) and caches[1].length(n) == 0
    assert int(caches[1].lengths[n]) == 0
    with pytest.raises(ValueError, match="padding slot"):
        graphed(torch.tensor([n]), torch.tensor([1], device="cuda"))


def test_batch_buckets_cover_every_batch():
    from lckv_service.kernels.fast_decode import batch_bucket
    for b in range(1, 3000):
        assert batch_bucket(b) >= b and batch_bucket(batch_bucket(b)) == batch_bucket(b)
    assert batch_bucket(256) == 256 and batch_bucket(257) == 320 and batch_bucket(1025) == 1280


def test_block_n_keeps_fp32_head_128_tiles_in_shared_memory():
    """Regression for the H200 run: fp32 keys with head_dim 128 in 64-key tiles needed 237,568 B
    of shared memory (limit 232,448 B), so the fp32 check model rejected the kernel for Llama-2-7B."""
    assert pick_block_n(128, 4) == 32
    assert pick_block_n(128, 2) == 64 and pick_block_n(64, 4) == 64


@pytest.mark.parametrize("name", ["lckv-w2", "lckv-w0", "lckv-nodiag-everywhere", "llama-gqa"])
def test_tokenwise_prefill_is_exact(name):
    """The throughput suite's tokenwise prefill (prompts through the decode step) equals the exact
    prefill (chunks of c tokens with c passes, Theorem 1): same first tokens, same cache."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from lckv_bench.ours import prefill_tokenwise
    from lckv_service.model import PrefillMode
    cfg = tiny_cfg(**CFGS[name])
    model = make_model(cfg)
    B, P = 3, 13
    prompts = torch.randint(0, cfg.vocab_size, (B, P), generator=torch.Generator().manual_seed(3))
    ref, got = (KVCache(cfg, B, 20, dtype=torch.float64) for _ in range(2))
    logits = model.prefill(ref, list(range(B)), list(prompts), mode=PrefillMode(kind="exact", chunk=4))
    first = prefill_tokenwise(FastDecode(model, got, bucket=8, compile=False), torch.arange(B), prompts)
    assert torch.equal(first, logits.argmax(-1))
    _same_state(ref, got)


def test_fused_modules_run_their_kernel_and_stay_the_reference_off_cuda():
    """Norms, MLPs and query rotations compute through their swappable function; fuse swaps compiled
    ones in on CUDA only, and a CPU model keeps the reference (the float64 equivalence tests run it)."""
    from lckv_service.kernels import fused
    from lckv_service.model import MLP, Attention, RMSNorm, apply_rope, rms_norm, swiglu
    model = make_model(tiny_cfg(2))
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    mlps = [m for m in model.modules() if isinstance(m, MLP)]
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(norms) == 2 * model.cfg.num_layers + 1 and len(mlps) == len(attns) == model.cfg.num_layers
    assert fused.fuse(model) == 0
    assert all(m.kernel is rms_norm for m in norms) and all(m.kernel is swiglu for m in mlps)
    assert all(m.rope is apply_rope for m in attns)
    calls = []
    norms[0].kernel = lambda x, w, eps: calls.append("norm") or rms_norm(x, w, eps)
    mlps[0].kernel = lambda g, u: calls.append("mlp") or swiglu(g, u)
    x = torch.randn(3, 2, model.cfg.hidden_size, dtype=torch.float64)
    assert torch.equal(norms[0](x), rms_norm(x, norms[0].weight, norms[0].eps))
    m = mlps[0]
    assert torch.equal(m(x), m.down_proj(torch.nn.functional.silu(m.gate_proj(x)) * m.up_proj(x)))
    assert calls == ["norm", "mlp"]
    idx = torch.arange(6)[None]
    want = model(idx)[0]
    calls.clear()
    for a in attns:
        a.rope = lambda x, cos, sin: calls.append("rope") or apply_rope(x, cos, sin)
    assert torch.equal(model(idx)[0], want) and calls.count("rope") >= len(attns)
    kv_layers = sum(a.has_kv for a in attns)
    assert fused.fuse(model, on=False) == kv_layers + len(norms) + len(mlps) + len(attns)
    assert norms[0].kernel is rms_norm


@pytest.mark.parametrize("layout", ["llama-gqa", "lckv-w2", "lckv-w4-mha"])
def test_merged_qkv_is_the_three_weights(layout, tmp_path):
    """merge_qkv (what fuse does on CUDA): each layer owning W_K/W_V projects with one GEMM over a tensor
    whose slices are the three weights, so no memory is added, state_dict is unchanged, loading weights
    keeps it current, and every path (prefill, decode, forward) gives the separate GEMMs' logits; with
    grad on the three weights are used, so training still reaches them."""
    from lckv_service.kernels import fused
    from lckv_service.model import Attention
    kw = dict(LAYOUTS[layout])
    cfg = tiny_cfg(kw.pop("w"), **kw)
    ref, model = make_model(cfg), make_model(cfg)
    keys = list(model.state_dict())
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    owners = [a for a in attns if a.has_kv]
    assert fused.merge_qkv(model) == len(owners) == sum(s == i for i, s in enumerate(cfg.kv_source))
    assert list(model.state_dict()) == keys and all(a.qkv is None for a in attns if not a.has_kv)
    for a in owners:
        base = a.qkv.data_ptr()
        assert [w.data_ptr() for w in (a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)] == [
            base + a.qkv.element_size() * cfg.hidden_size * rows
            for rows in (0, a.H * a.D, (a.H + a.Hkv) * a.D)]
    calls = []
    gemm = torch.nn.functional.linear
    torch.nn.functional.linear = lambda x, w, *b: calls.append(w.shape[0]) or gemm(x, w, *b)
    try:
        idx = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            torch.testing.assert_close(model(idx)[0], ref(idx)[0], rtol=1e-12, atol=1e-12)
        caches = [KVCache(cfg, 2, 32, dtype=torch.float64) for _ in range(2)]
        for m, c in zip((ref, model), caches):
            m.prefill(c, [0, 1], [idx[0], idx[1, :5]])
        torch.testing.assert_close(caches[1].k, caches[0].k, rtol=1e-12, atol=1e-12)
        tok, fast = idx[:, -1], FastDecode(model, caches[1], bucket=16)
        merged = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        for _ in range(3):
            a = ref.decode(caches[0], torch.arange(2), tok)
            calls.clear()
            b = fast(torch.arange(2), tok)
            # per layer one q (or q/k/v) GEMM, o, gate, up, down; then the LM head
            assert calls.count(merged) == len(owners) and len(calls) == 5 * cfg.num_layers + 1
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
            tok = a.argmax(-1)
    finally:
        torch.nn.functional.linear = gemm
    loss = model(idx, targets=idx)[1]                       # grad on: the three weights, each gets a grad
    loss.backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0
               for a in owners for w in (a.q_proj.weight, a.k_proj.weight, a.v_proj.weight))
    other = make_model(cfg, seed=5)
    model.load_state_dict(other.state_dict())               # into the slices: the merged GEMM follows
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], other(idx)[0], rtol=1e-12, atol=1e-12)
    save_model(model, tmp_path, dtype=torch.float64)         # shared storage saved as separate tensors
    assert all(torch.equal(a, b) for a, b in zip(load_model(tmp_path).state_dict().values(),
                                                 other.state_dict().values()))
    model.to(torch.float32)                                  # moved: new weights, the stale qkv left behind
    assert all(a.q_proj.weight.data_ptr() != a.qkv.data_ptr() for a in owners)
    assert fused.merge_qkv(model) == len(owners)              # merged again around the new weights
    assert all(a.q_proj.weight.data_ptr() == a.qkv.data_ptr() and a.qkv.dtype == torch.float32 for a in owners)
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], other.to(torch.float32)(idx)[0], rtol=1e-5, atol=1e-5)
    assert fused.merge_qkv(model, on=False) == len(owners) and all(a.qkv is None for a in attns)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_merged_qkv_gives_the_replaced_weights_memory_back_on_cuda():
    """The serving pool is sized from mem_get_info after the merge (graph_memory's probe merges): the
    replaced weights must not stay cached, or the pool loses their size (3 GiB on the 7B shape, whose
    32 MiB projections, like these 16 MiB ones, each have a segment of their own)."""
    from lckv_service.kernels import fused
    cfg = tiny_cfg(None, layers=3, hidden_size=2048, intermediate_size=256, num_heads=16, num_kv_heads=16)
    model = make_model(cfg, dtype=torch.float32, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, allocated = torch.cuda.mem_get_info()[0], torch.cuda.memory_allocated()
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                  if any(x in n for x in ("q_proj", "k_proj", "v_proj")))
    assert fused.merge_qkv(model) == cfg.num_layers
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == allocated                  # same bytes, one tensor per layer
    assert free - torch.cuda.mem_get_info()[0] < weights // 4          # not kept as a second copy


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled kernels need a GPU")
def test_fused_kernels_match_the_reference_on_cuda():
    """One compiled kernel per norm, SwiGLU and rotation: float32 agrees with eager to rounding, bf16 to its
    last bit; a graphed decode step of a fused model matches the reference model's eager step."""
    from lckv_service.kernels import fused
    from lckv_service.model import apply_rope, rms_norm, swiglu
    if not fused.available("cuda"):
        pytest.skip("no Triton")
    norm, act, rope = fused.compiled(rms_norm), fused.compiled(swiglu), fused.compiled(apply_rope)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        for shape in ((5, 1, 256), (300, 256), (2, 17, 256)):   # decode, the final norm, prefill
            x = torch.randn(shape, device="cuda", dtype=dtype) * 3
            w = torch.rand(256, device="cuda", dtype=dtype) + 0.5
            torch.testing.assert_close(norm(x, w, 1e-5), rms_norm(x, w, 1e-5), rtol=tol, atol=tol)
            torch.testing.assert_close(act(x, w * x), swiglu(x, w * x), rtol=tol, atol=tol)
        q = torch.randn(4, 3, 2, 64, device="cuda", dtype=dtype)               # [B, T, H, D]
        cos, sin = torch.rand(2, 4, 3, 64, device="cuda", dtype=dtype)         # per row and position
        torch.testing.assert_close(rope(q, cos, sin), apply_rope(q, cos, sin), rtol=tol, atol=tol)
    cfg = tiny_cfg(2, layers=6, hidden_size=128)
    ref_model = make_model(cfg, dtype=torch.float32, device="cuda")
    model = make_model(cfg, dtype=torch.float32, device="cuda")
    model.load_state_dict(ref_model.state_dict())
    kv_layers = sum(s == i for i, s in enumerate(cfg.kv_source))   # merged q/k/v GEMMs
    assert fused.fuse(model) == 4 * cfg.num_layers + 1 + kv_layers
    caches = [KVCache(cfg, 4, 64, device="cuda", dtype=torch.float32) for _ in range(2)]
    toks = torch.randint(0, cfg.vocab_size, (3, 6), device="cuda")
    for m, c in zip((ref_model, model), caches):
        m.prefill(c, [0, 1, 2], [toks[0], toks[1, :4], toks[2, :1]])
    eager = FastDecode(ref_model, caches[0], bucket=16, compile=False)   # the eager reference kernels
    graphed = FastDecode(model, caches[1], bucket=16, graphs=True, pad_slot=3)
    assert ref_model.model.norm.kernel is rms_norm and model.model.norm.kernel is not rms_norm
    tok = toks[:, -1]
    for _ in range(4):
        a, b = eager(torch.arange(3), tok), graphed(torch.arange(3), tok)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        tok = a.argmax(-1)
