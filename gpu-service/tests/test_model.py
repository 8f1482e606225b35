"""Model forward: Theorem 1 vs the sequential reference, Llama == transformers, token-0 zero,
gradient schedule, parameter counts."""
import pytest
import torch

from conftest import DEVICES, make_model, replace, tiny_cfg
from lckv_service.model import LCKVModel, attention_masks
from lckv_service.reference import reference_logits


@pytest.mark.parametrize("w", [0, 2, 4])
@pytest.mark.parametrize("nodiag", [False, True])
@pytest.mark.parametrize("gqa", [True, False])
def test_theorem1_parallel_equals_sequential(w, nodiag, gqa):
    model = make_model(tiny_cfg(w, nodiag=nodiag, gqa=gqa), seed=w)
    idx = torch.randint(0, model.cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(w))
    ref = torch.stack([reference_logits(model, row) for row in idx])
    logits, _ = model(idx, iterations=idx.shape[1])
    assert (logits - ref).abs().max().item() <= 1e-9
    if model.cfg.is_cyclic:  # and fewer passes are NOT exact on this random model
        short, _ = model(idx, iterations=2)
        assert (short - ref).abs().max().item() > 1e-4


def test_theorem1_two_cyclic_targets():
    cfg = tiny_cfg(None, layers=5)
    cfg = replace(cfg, kv_source=(0, 2, 2, 4, 4))
    model = make_model(cfg, seed=3)
    idx = torch.randint(0, cfg.vocab_size, (1, 8), generator=torch.Generator().manual_seed(3))
    assert (model(idx, iterations=8)[0][0] - reference_logits(model, idx[0])).abs().max() <= 1e-9


def test_iterations_converge_towards_reference():
    # small init (like a freshly initialised model): the K/V fixed point is approached geometrically
    model = make_model(tiny_cfg(0), std=0.02, seed=5)
    idx = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(5))
    ref = reference_logits(model, idx[0])
    dev = {n: (model(idx, iterations=n)[0][0] - ref).abs().max().item() for n in (1, 4, 8, 16)}
    assert dev[16] < dev[8] < dev[4] < dev[1] and dev[16] < 1e-6


def test_llama_equals_transformers():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = tiny_cfg(None, rope_theta=500.0, rms_norm_eps=1e-6)
    model = make_model(cfg, dtype=torch.float32, seed=7)
    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                         intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                         num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                         rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
                         max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=False,
                         attn_implementation="eager")
    hf = LlamaForCausalLM(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    idx = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    assert theirs.abs().max().item() > 0.1  # a non-trivial comparison


def test_token0_attention_output_is_exactly_zero():
    # w=0: every layer masks the diagonal, so token 0 attends to nothing in every layer and its
    # logits are those of the MLP-only network, independent of the other tokens.
    model = make_model(tiny_cfg(0), seed=11)
    idx = torch.randint(0, 256, (3, 6), generator=torch.Generator().manual_seed(11))
    seen = []
    for blk in model.model.layers:  # the attention output (o_proj's input) of token 0
        blk.self_attn.o_proj.register_forward_hook(lambda mod, inp, out: seen.append(inp[0][:, 0]))
    logits, _ = model(idx)
    assert len(seen) == 4 * 9 and all(torch.equal(y, torch.zeros_like(y)) for y in seen)
    x = model.model.embed_tokens(idx[:, 0])
    for blk in model.model.layers:
        x = x + blk.mlp(blk.post_attention_layernorm(x))
    expect = model.lm_head(model.model.norm(x))
    assert (logits[:, 0] - expect).abs().max().item() < 1e-12
    assert torch.isfinite(logits).all()


def test_masks_never_fully_masked():
    q_pos = torch.tensor([[0, 1, 2], [5, 6, 7]])
    masks = attention_masks(q_pos, torch.tensor([3, 8]), 8)
    strict, empty = masks[True]
    assert strict.any(-1).all()                            # SDPA never sees an all-masked row
    assert empty[:, 0, :, 0].tolist() == [[True, False, False], [False, False, False]]
    diag, none = masks[False]
    assert none is None and diag[0, 0, 2].tolist() == [True, True, True, False, False, False, False, False]
    assert strict[1, 0, 0].tolist() == [True] * 5 + [False] * 3


def test_gradient_schedule():
    cfg = replace(tiny_cfg(2), forward_passes=3, backward_passes=2)
    model = make_model(cfg, dtype=torch.float32).train()
    t = cfg.target_layer
    calls = []
    model.model.layers[t].self_attn.k_proj.register_forward_hook(lambda *a: calls.append(torch.is_grad_enabled()))
    idx = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    _, loss = model(idx, targets=idx.roll(-1, 1))
    assert calls == [False, False, False, True, True]      # m passes without grad, then b with
    loss.backward()
    attn = model.model.layers[t].self_attn
    assert attn.k_proj.weight.grad.abs().sum() > 0 and attn.v_proj.weight.grad.abs().sum() > 0
    assert not hasattr(model.model.layers[1].self_attn, "k_proj")   # middle layers own no W_K/W_V
    # one pass with grad (b = 1): the target's K/V is only consumed by the next pass -> no gradient
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.model.layers[t].self_attn.k_proj.weight.grad = None
    _, loss = model(idx, targets=idx.roll(-1, 1), iterations=1)
    loss.backward()
    assert attn.k_proj.weight.grad is None and attn.v_proj.weight.grad is None
    assert model.model.layers[0].self_attn.k_proj.weight.grad.abs().sum() > 0


def test_loss_matches_cross_entropy_and_ignores_minus_one():
    model = make_model(tiny_cfg(2), dtype=torch.float32)
    idx = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(2))
    tgt = idx.roll(-1, 1).clone()
    tgt[:, -1] = -1
    logits, loss = model(idx, targets=tgt)
    expect = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 256), tgt[:, :-1].reshape(-1))
    assert torch.allclose(loss, expect, atol=1e-6)


@pytest.mark.parametrize("w", [0, 2, 4, None])
def test_parameter_count_formula(w):
    cfg = tiny_cfg(w, layers=6)
    C, F, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
    kv = cfg.num_kv_heads * cfg.head_dim
    n_kv = L if w is None else w + 1
    expect = 2 * V * C + C + L * (2 * C + 2 * C * C + 3 * C * F) + n_kv * 2 * C * kv
    with torch.device("meta"):
        n = sum(p.numel() for p in LCKVModel(cfg).parameters())
    assert n == expect and len(cfg.kv_layers) == n_kv


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_training_forward(device):
    cfg = tiny_cfg(2)
    ref = make_model(cfg, dtype=torch.float32, device=device).train()
    bf = make_model(cfg, dtype=torch.bfloat16, device=device).train()
    idx = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(4)).to(device)
    l32, loss32 = ref(idx, targets=idx.roll(-1, 1))
    l16, loss16 = bf(idx, targets=idx.roll(-1, 1))
    loss16.backward()
    assert torch.isfinite(loss16) and abs(loss16.item() - loss32.item()) < 0.05 * loss32.item()
    assert all(torch.isfinite(p.grad).all() for p in bf.parameters() if p.grad is not None)
    assert (l16.float() - l32).abs().max().item() < 0.1 * l32.abs().max().item()
