"""config.json -> ModelConfig for the three layouts a model folder may hold.

- "lckv": ours (`kv_source`, `nodiag_everywhere`, `nodiag_rule`), written by ModelConfig.to_dict.
- "llama": a Hugging Face LlamaForCausalLM (Llama-2/TinyLlama, Llama-3.x with llama3 RoPE scaling,
  tied embeddings as in the small Llama-3.2 and SmolLM models, an explicit `head_dim`). Both the
  transformers >= 5 form (`rope_parameters` holding `rope_theta` and the scaling) and the older one
  (top-level `rope_theta`, `rope_scaling` with `type` or `rope_type`) are read.
- "lckv-llama": the authors' code (Wu & Tu): `layer_types` ("0_4_4_4_4_5": per layer, the layer whose
  K/V it attends to), `forward_passes`, `backward_passes`, `force_nodiag`. Their rule for the diagonal
  is kept exactly: only a layer reading a layer above itself masks it, every layer with force_nodiag.

A config this project cannot run exactly -- another architecture, a RoPE type whose frequencies depend
on the sequence length, biases, another activation -- is refused with a ConfigError naming the field,
never served approximately.
"""
from __future__ import annotations

import re
from typing import Any

from .config import ModelConfig, RopeScaling
from .errors import ConfigError

LAYOUTS = ("lckv", "llama", "lckv-llama")
_ARCHITECTURES = {"lckv": ("LCKVForCausalLM",), "llama": ("LlamaForCausalLM", "LLaMAForCausalLM"),  # 2023 spelling
                  "lckv-llama": ("LCKVLlamaForCausalLM",)}


def detect_layout(d: dict[str, Any]) -> str:
    mt = d.get("model_type")
    if "kv_source" in d or mt == "lckv":
        layout = "lckv"
    elif mt in ("llama", "lckv-llama"):
        layout = mt
    else:
        raise ConfigError(f"unsupported model_type {str(mt)[:60]!r} (expected llama, lckv-llama or lckv)",
                          param="model_type")
    arch = d.get("architectures")
    if arch is not None and (not isinstance(arch, list) or any(a not in _ARCHITECTURES[layout] for a in arch)):
        raise ConfigError(f"architectures {str(arch)[:100]} is not {_ARCHITECTURES[layout][0]!r} "
                          f"(model_type {layout!r})", param="architectures")
    return layout


def parse_config_dict(d: Any) -> ModelConfig:
    if not isinstance(d, dict):
        raise ConfigError("config must be a JSON object", param="config")
    layout = detect_layout(d)
    _check_llama_compatible(d)
    kw: dict[str, Any] = {}
    for key, name in (("vocab_size", "vocab_size"), ("hidden_size", "hidden_size"),
                      ("intermediate_size", "intermediate_size"), ("num_hidden_layers", "num_layers"),
                      ("num_attention_heads", "num_heads")):
        if key not in d:
            raise ConfigError(f"config.json lacks {key!r}", param=key)
        kw[name] = d[key]
    kw["num_kv_heads"] = d.get("num_key_value_heads") or kw["num_heads"]
    for key in ("rms_norm_eps", "max_position_embeddings", "forward_passes", "backward_passes"):
        if d.get(key) is not None:
            kw[key] = d[key]
    kw["rope_theta"], kw["rope_scaling"] = _rope(d)
    kw["explicit_head_dim"] = _head_dim(d)
    tie = d.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise ConfigError(f"tie_word_embeddings must be a boolean, got {tie!r}", param="tie_word_embeddings")
    kw["tie_word_embeddings"] = tie
    if layout == "lckv":
        kw["kv_source"] = d.get("kv_source")
        kw["nodiag_everywhere"] = d.get("nodiag_everywhere", False)
        kw["nodiag_rule"] = d.get("nodiag_rule", "reads_target")
    elif layout == "lckv-llama":
        kw["kv_source"] = _parse_layer_types(d.get("layer_types"), kw["num_layers"])
        force = d.get("force_nodiag", False)
        if not isinstance(force, bool):
            raise ConfigError(f"force_nodiag must be a boolean, got {force!r}", param="force_nodiag")
        kw["nodiag_everywhere"], kw["nodiag_rule"] = force, "attends_above"
    try:
        return ModelConfig(**kw)
    except TypeError as e:  # wrong value types surface as TypeError inside the checks
        raise ConfigError(f"invalid config value: {e}", param="config") from e


def _rope(d: dict[str, Any]) -> tuple[Any, RopeScaling | None]:
    """(rope_theta, scaling) from `rope_parameters` (transformers >= 5) or `rope_theta` + `rope_scaling`."""
    field = "rope_parameters" if d.get("rope_parameters") is not None else "rope_scaling"
    rp = d.get(field)
    if rp is not None and not isinstance(rp, dict):
        raise ConfigError(f"{field} must be an object or null", param=field)
    rp = rp or {}
    theta = rp.get("rope_theta", d.get("rope_theta"))
    theta = 10000.0 if theta is None else theta
    prf = rp.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
    if prf not in (None, 1, 1.0):
        raise ConfigError(f"partial_rotary_factor={prf!r} is not supported (RoPE over the whole head only)",
                          param="partial_rotary_factor")
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in ("linear", "llama3"):
        raise ConfigError(f"{field}.rope_type {str(kind)[:40]!r} is not supported (default, linear or llama3; "
                          f"'dynamic', 'yarn' and 'longrope' are not served)", param=f"{field}.rope_type")
    for key in ("attention_factor", "mscale", "mscale_all_dim"):
        if rp.get(key) not in (None, 1, 1.0):
            raise ConfigError(f"{field}.{key} is not supported", param=f"{field}.{key}")
    names = ("factor",) if kind == "linear" else \
        ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    for name in names:
        if rp.get(name) is None:
            raise ConfigError(f"{field} of type {kind} lacks {name!r}", param=f"{field}.{name}")
    try:
        return theta, RopeScaling(kind, **{n: rp[n] for n in names})
    except ConfigError as e:  # name the field the way the file spells it
        raise ConfigError(e.message, param=e.param.replace("rope_scaling", field)) from e


def _head_dim(d: dict[str, Any]) -> int | None:
    hd = d.get("head_dim")
    if hd is None:
        return None
    if isinstance(hd, bool) or not isinstance(hd, int) or hd <= 0 or hd % 2:
        raise ConfigError(f"head_dim must be a positive even integer, got {hd!r}", param="head_dim")
    H, C = d.get("num_attention_heads"), d.get("hidden_size")
    derived = C // H if isinstance(C, int) and isinstance(H, int) and H > 0 and C % H == 0 else None
    return None if hd == derived else hd


def _parse_layer_types(s: Any, num_layers: Any) -> list[int]:
    """Authors' `layer_types`: "0_1_7_7_7_7_7_7" = per-layer K/V source index, '_'-separated."""
    if s is None:  # their default: every layer its own K/V (a plain Llama)
        return list(range(num_layers)) if isinstance(num_layers, int) and num_layers > 0 else []
    if not isinstance(s, str) or not re.fullmatch(r"\d+(_\d+)*", s):
        raise ConfigError(f"layer_types must be '_'-separated layer indices (sliding-window 's' layers "
                          f"are not supported), got {str(s)[:100]!r}", param="layer_types")
    src = [int(x) for x in s.split("_")]
    if isinstance(num_layers, int) and len(src) != num_layers:
        raise ConfigError(f"layer_types has {len(src)} entries for {num_layers} layers", param="layer_types")
    return src


def _check_llama_compatible(d: dict[str, Any]) -> None:
    """Refuse options transformers' Llama honours and this model does not implement."""
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"hidden_act {str(act)[:40]!r} is not supported (silu only)", param="hidden_act")
    for key in ("attention_bias", "mlp_bias"):
        if d.get(key):
            raise ConfigError(f"{key}=true is not supported", param=key)
