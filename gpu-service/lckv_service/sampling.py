"""Per-request sampling: validated SamplingParams and logits -> next token.

Greedy at temperature 0; otherwise temperature + nucleus (top_p) sampling drawn from the request's own
torch.Generator, so a seeded request yields the same tokens whatever else shares its batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import RequestError

DEFAULT_MAX_TOKENS = 256
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64
_FIELDS = ("max_tokens", "temperature", "top_p", "seed", "stop")


def _invalid(name: str, message: str) -> RequestError:
    return RequestError(message, param=f"sampling.{name}", code="invalid_value")


def _number(d: dict, name: str, default: float) -> float:
    v = d.get(name, default)
    # bool is an int subclass: reject it explicitly so `true` is not read as 1.0
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise _invalid(name, f"sampling.{name} must be a number")
    return float(v)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_dict(cls, d: Any, max_tokens_limit: int) -> "SamplingParams":
        """Validate the wire's `sampling` object; unknown fields and bad values raise RequestError."""
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise RequestError("sampling must be an object", param="sampling", code="invalid_value")
        for k in d:
            if k not in _FIELDS:
                raise _invalid(str(k)[:64], f"unknown field sampling.{str(k)[:64]}")
        mt = d.get("max_tokens", min(DEFAULT_MAX_TOKENS, max_tokens_limit))
        if isinstance(mt, bool) or not isinstance(mt, int) or not 1 <= mt <= max_tokens_limit:
            raise _invalid("max_tokens", f"sampling.max_tokens must be an integer in 1..{max_tokens_limit}")
        temperature = _number(d, "temperature", 0.0)
        if not 0.0 <= temperature <= 2.0:
            raise _invalid("temperature", "sampling.temperature must be in [0, 2]")
        top_p = _number(d, "top_p", 1.0)
        if not 0.0 < top_p <= 1.0:
            raise _invalid("top_p", "sampling.top_p must be in (0, 1]")
        seed = d.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise _invalid("seed", "sampling.seed must be an integer in [0, 2^63)")
        stop = d.get("stop", [])
        if isinstance(stop, str):  # OpenAI accepts a single string
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS:
            raise _invalid("stop", f"sampling.stop must be a list of at most {MAX_STOP_STRINGS} strings")
        for s in stop:
            if not isinstance(s, str) or not 1 <= len(s) <= MAX_STOP_CHARS:
                raise _invalid("stop", f"each stop string must have 1..{MAX_STOP_CHARS} characters")
        return cls(max_tokens=mt, temperature=temperature, top_p=top_p, seed=seed, stop=tuple(stop))


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """The request's private random stream (None for greedy, which needs none)."""
    if params.greedy:
        return None
    g = torch.Generator(device=device)
    if params.seed is None:
        g.seed()
    else:
        g.manual_seed(params.seed)
    return g


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> torch.Tensor:
    """logits [B, V] -> token ids [B] (on logits' device). Rows are independent of each other."""
    out = logits.argmax(dim=-1)
    for i, p in enumerate(params):
        if p.greedy:
            continue
        probs = torch.softmax(logits[i].float() / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_p, idx = probs.sort(descending=True)
            # keep the smallest prefix whose mass reaches top_p (the top token always survives)
            drop = sorted_p.cumsum(0) - sorted_p >= p.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            choice = torch.multinomial(sorted_p, 1, generator=generators[i])
            out[i] = idx[choice[0]]
        else:
            out[i] = torch.multinomial(probs, 1, generator=generators[i])[0]
    return out
