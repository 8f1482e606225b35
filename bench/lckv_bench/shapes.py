"""Model shapes and the analytic cost model: parameters, cache bytes, bytes and FLOPs per step.

All counts follow the config's layer layout (`kv_source`, `kv_layers`), so Llama and LCKV differ
exactly where the method says: cached bytes per token scale with len(kv_layers), while every layer
still *reads* a full K/V over the context at each decode step.
"""
from __future__ import annotations

from dataclasses import dataclass

from lckv_service.config import ModelConfig

from .common import BenchError

# Published shapes (random weights: only the shapes matter for speed and memory).
SHAPES: dict[str, dict] = {
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                      num_heads=32, num_kv_heads=32, rope_theta=10000.0, rms_norm_eps=1e-5),
    "tinyllama-1.1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22,
                           num_heads=32, num_kv_heads=4, rope_theta=10000.0, rms_norm_eps=1e-5),
    # CPU test shape: deep enough for w=10, small enough for a unit test.
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=12,
                 num_heads=4, num_kv_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5),
}
VARIANTS = ("llama", "lckv-w2", "lckv-w10", "hf-llama")
OUR_VARIANTS = ("llama", "lckv-w2", "lckv-w10")


def make_config(shape: str, variant: str, max_positions: int) -> ModelConfig:
    """The ModelConfig of `shape` for one of our variants; hf-llama uses the `llama` layout."""
    if shape not in SHAPES:
        raise BenchError(f"unknown shape {shape!r}; known: {sorted(SHAPES)}", param="shape")
    kw = dict(SHAPES[shape], max_position_embeddings=max(int(max_positions), 128))
    if variant in ("llama", "hf-llama"):
        return ModelConfig.llama(**kw)
    if variant.startswith("lckv-w"):
        try:
            w = int(variant[len("lckv-w"):])
        except ValueError:
            raise BenchError(f"bad variant {variant!r}", param="variant") from None
        return ModelConfig.lckv(w, **kw)
    raise BenchError(f"unknown variant {variant!r}; known: {VARIANTS}", param="variant")


@dataclass(frozen=True)
class Cost:
    """Per-shape constants of the cost model (bytes for bf16 unless `elt` says otherwise)."""

    params: int                 # all weights
    params_nonembed: int        # weights touched by every token's matmuls (layers + lm_head)
    layer_params: tuple[int, ...]
    kv_bytes_per_token: int     # cached: 2 (K,V) * kv_layers * kv_heads * head_dim * elt
    kv_read_per_token: int      # read per decode step per context token: every layer reads its source
    attn_flops_per_ctx: int     # decode FLOPs per context token per sequence (QK^T and PV, all layers)
    num_layers: int
    middle_layers: int          # layers inside the cyclic block (re-run by iterative prefill)
    elt: int

    @property
    def weight_bytes(self) -> int:
        return self.params * self.elt


def cost_model(cfg: ModelConfig, elt: int = 2) -> Cost:
    H, I, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q = H * cfg.num_heads * hd
    kv = 2 * H * cfg.num_kv_heads * hd
    kv_layers = set(cfg.kv_layers)
    layer = tuple(2 * q + (kv if i in kv_layers else 0) + 3 * H * I + 2 * H for i in range(cfg.num_layers))
    embed = cfg.vocab_size * H
    params = sum(layer) + 2 * embed + H
    per_tok_kv = 2 * cfg.num_kv_heads * hd * elt
    w = cfg.warmup_layers
    middle = 0 if (w is None or not cfg.is_cyclic) else cfg.num_layers - w
    return Cost(params=params, params_nonembed=sum(layer) + embed, layer_params=layer,
                kv_bytes_per_token=per_tok_kv * len(kv_layers),
                kv_read_per_token=per_tok_kv * cfg.num_layers,
                attn_flops_per_ctx=4 * cfg.num_heads * hd * cfg.num_layers,
                num_layers=cfg.num_layers, middle_layers=middle, elt=elt)


def decode_step_bytes(c: Cost, batch: int, ctx: float) -> float:
    """HBM bytes one decode step must move: weights once, each sequence's K/V over `ctx` tokens
    per layer, the new K/V written. Activations are negligible at these shapes."""
    return c.params_nonembed * c.elt + batch * (ctx * c.kv_read_per_token + c.kv_bytes_per_token)


def decode_step_flops(c: Cost, batch: int, ctx: float) -> float:
    return batch * (2 * c.params_nonembed + ctx * c.attn_flops_per_ctx)


def decode_totals(c: Cost, batch: int, start_ctx: int, steps: int) -> tuple[float, float]:
    """Bytes and FLOPs summed over `steps` decode steps whose context grows from `start_ctx`."""
    mean_ctx = start_ctx + (steps - 1) / 2 if steps > 0 else start_ctx
    return steps * decode_step_bytes(c, batch, mean_ctx), steps * decode_step_flops(c, batch, mean_ctx)


def prefill_flops(c: Cost, prompt: int, passes: float = 1.0) -> float:
    """FLOPs of prefilling one prompt; the middle block runs `passes` times (iterative LCKV)."""
    frac_mid = c.middle_layers / c.num_layers
    layer_passes = 1 + frac_mid * (passes - 1)
    linear = 2 * (c.params_nonembed - 0) * prompt
    attn = c.attn_flops_per_ctx * prompt * prompt / 2
    return (linear + attn) * layer_passes


def max_batch_by_memory(c: Cost, capacity: int, free_bytes: int, reserve_bytes: int) -> int:
    """Sequences whose full-length cache fits in `free_bytes - reserve_bytes`."""
    per_seq = c.kv_bytes_per_token * capacity
    return max(0, int((free_bytes - reserve_bytes) // per_seq))
