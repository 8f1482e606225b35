"""ModelConfig: Llama hyperparameters plus, per layer, which layer's K/V it attends to.

kv_source[i] = i      layer i computes and attends to its own K/V (standard Llama layer)
kv_source[i] = t > i  layer i attends to the K/V of a layer above it: t is a *cyclic target*
                      (needs the iterative computation; diagonal masked)
kv_source[i] = s < i  layer i reuses a lower layer's K/V (cross-layer sharing, no iteration)

The LCKV sandwich with w warmup layers: bottom w/2 and top w/2 layers standard, the L-w middle
layers all attend to the target t = L - w/2 - 1 (the topmost middle layer), which alone among
them has W_K/W_V. w = L is Llama; w = 0 makes every layer read the last layer's K/V.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

_POSITIVE_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                  "num_kv_heads", "max_position_embeddings")
# Fields that fix the K/V a model produces and their layout (training-only knobs excluded).
_FINGERPRINT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                       "num_kv_heads", "rope_theta", "rms_norm_eps", "kv_source", "nodiag_everywhere")
# Fingerprinted only when set away from their default, so older models keep their identity.
_OPTIONAL_FINGERPRINT_FIELDS = {"explicit_head_dim": None, "rope_scaling": None, "tie_word_embeddings": False,
                                "nodiag_rule": "reads_target"}
# Which layers mask the diagonal (besides nodiag_everywhere):
#   reads_target   every layer that reads a cyclic target's K/V, the target included (this project's rule)
#   attends_above  only layers that read a layer above themselves (the authors' lckv-llama code, whose
#                  target and layers reading a lower layer keep their own token)
NODIAG_RULES = ("reads_target", "attends_above")


@dataclass(frozen=True)
class RopeScaling:
    """Hugging Face RoPE scaling that depends on the config only (not on the sequence length):
    "linear" divides every frequency by `factor`; "llama3" (Llama 3.1+) divides the low frequencies
    by `factor` and blends the band between the two wavelength bounds."""
    rope_type: str
    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    def __post_init__(self):
        if self.rope_type not in ("linear", "llama3"):
            raise ConfigError(f"rope_type {self.rope_type!r} is not supported (default, linear or llama3)",
                              param="rope_scaling.rope_type")
        names = ("factor",) if self.rope_type == "linear" else \
            ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        for name in names:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"rope_scaling.{name} must be a positive number, got {v!r}",
                                  param=f"rope_scaling.{name}")
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ConfigError("rope_scaling.high_freq_factor must exceed low_freq_factor",
                              param="rope_scaling.high_freq_factor")

    def scale(self, inv_freq: list[float]) -> list[float]:
        if self.rope_type == "linear":
            return [f / self.factor for f in inv_freq]
        old, lo, hi, factor = (self.original_max_position_embeddings, self.low_freq_factor,
                               self.high_freq_factor, self.factor)
        out = []
        for f in inv_freq:
            wavelen = 2 * math.pi / f
            if wavelen < old / hi:          # high frequencies: unchanged
                out.append(f)
            elif wavelen > old / lo:        # low frequencies: interpolated by the factor
                out.append(f / factor)
            else:                           # in between: a smooth blend of the two
                smooth = (old / wavelen - lo) / (hi - lo)
                out.append((1 - smooth) * f / factor + smooth * f)
        return out


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    kv_source: tuple[int, ...] | None = None   # None -> Llama (every layer its own K/V)
    forward_passes: int = 7                    # m: passes without gradient
    backward_passes: int = 2                   # b: passes with gradient
    nodiag_everywhere: bool = False            # authors' ACL checkpoints: no diagonal in any layer
    nodiag_rule: str = "reads_target"          # see NODIAG_RULES
    explicit_head_dim: int | None = None       # HF `head_dim` when it is not hidden_size / num_heads
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False          # lm_head shares the embedding matrix

    def __post_init__(self):
        for name in _POSITIVE_INTS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}", param=name)
        for name in ("rope_theta", "rms_norm_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{name} must be a positive finite number, got {v!r}", param=name)
        hd = self.explicit_head_dim
        if hd is not None and (isinstance(hd, bool) or not isinstance(hd, int) or hd <= 0):
            raise ConfigError(f"head_dim must be a positive integer, got {hd!r}", param="head_dim")
        if hd is None and self.hidden_size % self.num_heads:
            raise ConfigError(f"num_heads={self.num_heads} does not divide hidden_size={self.hidden_size}",
                              param="num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_kv_heads={self.num_kv_heads} does not divide num_heads={self.num_heads}",
                              param="num_kv_heads")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for RoPE", param="num_heads")
        for name in ("nodiag_everywhere", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a boolean", param=name)
        if self.nodiag_rule not in NODIAG_RULES:
            raise ConfigError(f"nodiag_rule must be one of {NODIAG_RULES}, got {self.nodiag_rule!r}",
                              param="nodiag_rule")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ConfigError("rope_scaling must be a RopeScaling", param="rope_scaling")
        src = tuple(range(self.num_layers)) if self.kv_source is None else self.kv_source
        if isinstance(src, (str, bytes)) or not hasattr(src, "__len__"):
            raise ConfigError("kv_source must be a list of layer indices", param="kv_source")
        src = tuple(src)
        if len(src) != self.num_layers:
            raise ConfigError(f"kv_source has {len(src)} entries for {self.num_layers} layers", param="kv_source")
        for i, s in enumerate(src):
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < self.num_layers:
                raise ConfigError(f"kv_source[{i}]={s!r} is not a layer index in [0, {self.num_layers})",
                                  param="kv_source")
        for i, s in enumerate(src):
            if src[s] != s:
                raise ConfigError(f"layer {i} attends to layer {s}, which computes no K/V "
                                  f"(kv_source[{s}]={src[s]})", param="kv_source")
        object.__setattr__(self, "kv_source", src)
        for name, lo in (("forward_passes", 0), ("backward_passes", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}", param=name)
        if self.is_cyclic and self.backward_passes < 2:
            # with b = 1 the target's W_K/W_V would never receive a gradient
            raise ConfigError("backward_passes must be >= 2 for a model with a cyclic K/V target",
                              param="backward_passes")

    # ---- derived ------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden_size // self.num_heads

    def rope_inv_freq(self) -> list[float]:
        """RoPE's D/2 inverse frequencies (float64), scaled as rope_scaling says."""
        D = self.head_dim
        inv = [1.0 / float(self.rope_theta) ** (i / D) for i in range(0, D, 2)]
        return inv if self.rope_scaling is None else self.rope_scaling.scale(inv)

    @property
    def kv_layers(self) -> tuple[int, ...]:
        """Layers that compute (and cache) K/V, ascending."""
        return tuple(i for i, s in enumerate(self.kv_source) if s == i)

    @property
    def cyclic_targets(self) -> tuple[int, ...]:
        """Layers whose K/V some lower layer reads (they need the iterative computation)."""
        return tuple(sorted({s for i, s in enumerate(self.kv_source) if s > i}))

    @property
    def is_cyclic(self) -> bool:
        return bool(self.cyclic_targets)

    @property
    def target_layer(self) -> int | None:
        t = self.cyclic_targets
        return t[0] if len(t) == 1 else None

    @property
    def iter_block(self) -> tuple[int, int] | None:
        """(first, last) layer of the block iterated m+b times; None for an acyclic model."""
        if not self.is_cyclic:
            return None
        return min(i for i, s in enumerate(self.kv_source) if s > i), max(self.cyclic_targets)

    def nodiag(self, layer: int) -> bool:
        """Whether `layer` masks the diagonal (token i attends to tokens < i only)."""
        if self.nodiag_everywhere:
            return True
        if self.nodiag_rule == "attends_above":
            return self.kv_source[layer] > layer
        return self.kv_source[layer] in self.cyclic_targets

    @property
    def last_reader(self) -> dict[int, int]:
        """Each K/V source layer -> the highest layer that attends to it (after it, a step may free
        that source's gathered or rotated keys)."""
        src = self.kv_source
        return {s: max(i for i in range(len(src)) if src[i] == s) for s in set(src)}

    @property
    def deferred_targets(self) -> tuple[int, ...]:
        """Cyclic targets whose new K/V become visible only when a pass over the iterated block ends.
        A target that sees its own token (no diagonal mask; the authors' force_nodiag=false) publishes
        them at once instead: the target itself, and any later reader in that pass, read them."""
        return tuple(t for t in self.cyclic_targets if self.nodiag(t))

    @property
    def warmup_layers(self) -> int | None:
        """w if kv_source is an LCKV sandwich (w = L for Llama), else None."""
        L = self.num_layers
        for w in range(0, L + 1, 2):
            if self.kv_source == _sandwich(L, w):
                return w
        return None

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def llama(cls, **shape) -> "ModelConfig":
        shape.pop("kv_source", None)
        return cls(**shape)

    @classmethod
    def lckv(cls, warmup_layers: int, **shape) -> "ModelConfig":
        L = shape.get("num_layers")
        if isinstance(L, bool) or not isinstance(L, int) or L <= 0:
            raise ConfigError(f"num_layers must be a positive integer, got {L!r}", param="num_layers")
        w = warmup_layers
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ConfigError(f"warmup_layers must be a non-negative integer, got {w!r}", param="warmup_layers")
        if w % 2:
            raise ConfigError(f"warmup_layers must be even (a sandwich of w/2 + w/2), got {w}",
                              param="warmup_layers")
        if w > L:
            raise ConfigError(f"warmup_layers={w} exceeds num_layers={L}", param="warmup_layers")
        shape.pop("kv_source", None)
        return cls(kv_source=_sandwich(L, w), **shape)

    @classmethod
    def preset(cls, name: str, variant: str = "lckv-w2") -> "ModelConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}", param="preset")
        shape = dict(PRESETS[name])
        if variant == "llama":
            return cls.llama(**shape)
        m = re.fullmatch(r"lckv-w(\d+)", variant or "")
        if not m:
            raise ConfigError(f"unknown variant {variant!r}; use 'llama' or 'lckv-w<N>'", param="variant")
        return cls.lckv(int(m.group(1)), **shape)

    # ---- identity and serialisation -----------------------------------------------------------
    def fingerprint(self) -> str:
        d = {k: getattr(self, k) for k in _FINGERPRINT_FIELDS}
        d["kv_source"] = list(self.kv_source)
        d["rope_theta"] = float(self.rope_theta)
        d["rms_norm_eps"] = float(self.rms_norm_eps)
        for name, default in _OPTIONAL_FINGERPRINT_FIELDS.items():
            v = getattr(self, name)
            if v != default:
                d[name] = v.__dict__ if isinstance(v, RopeScaling) else v
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """config.json in Hugging Face style (our own model_type "lckv")."""
        out = {
            "architectures": ["LCKVForCausalLM"], "model_type": "lckv",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "rope_theta": float(self.rope_theta), "rms_norm_eps": float(self.rms_norm_eps),
            "max_position_embeddings": self.max_position_embeddings, "hidden_act": "silu",
            "tie_word_embeddings": self.tie_word_embeddings, "kv_source": list(self.kv_source),
            "forward_passes": self.forward_passes, "backward_passes": self.backward_passes,
            "nodiag_everywhere": self.nodiag_everywhere, "nodiag_rule": self.nodiag_rule,
        }
        if self.explicit_head_dim is not None:
            out["head_dim"] = self.explicit_head_dim
        if self.rope_scaling is not None:
            out["rope_scaling"] = {k: v for k, v in self.rope_scaling.__dict__.items() if v is not None}
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Parse our config.json, a Hugging Face Llama config, or the authors' lckv-llama config."""
        from .hf_config import parse_config_dict
        return parse_config_dict(d)


def _sandwich(L: int, w: int) -> tuple[int, ...]:
    if w >= L:
        return tuple(range(L))
    t = L - w // 2 - 1
    return tuple(i if (i < w // 2 or i > t) else t for i in range(L))


PRESETS: dict[str, dict[str, Any]] = {
    "tiny-test": dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_layers=4, num_heads=4,
                      num_kv_heads=2, max_position_embeddings=512),
    "tinyllama-1.1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22,
                           num_heads=32, num_kv_heads=4, max_position_embeddings=2048),
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                      num_heads=32, num_kv_heads=32, max_position_embeddings=4096),
}

