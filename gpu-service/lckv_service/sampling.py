"""Per-request sampling: validated SamplingParams and logits -> next token, for a whole batch at once.

Greedy rows (temperature 0) take the argmax; the others draw by inverse CDF over their top_p-truncated
softmax(logits / temperature) (see `sample`). Randomness is counter-based: a request keeps
(seed, counter), and draw number `counter` is the uniform made from output number `counter` of
SplitMix64 seeded with `seed` (see `splitmix64`). That is a pure function of the request's own state,
so a seeded request yields the same tokens whatever else shares its batch and at any batch position.
The uniforms are computed on the host (numpy's uint64 arithmetic, which wraps mod 2^64 by definition)
and uploaded with the step's other sampling inputs: the same bits whatever the device, and no device
launches for the hash (a host step's fixed cost is its launches, not the arithmetic).

Why inverse CDF and not Gumbel-max: it needs one hashed uniform per row and step instead of one per
vocabulary entry (8k-150k integer hashes per row and step).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import numpy as np
import torch

from .device import to_device
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
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -2**63 <= seed < 2**63):
            raise _invalid("seed", "sampling.seed must be a 64-bit signed integer")
        if seed is not None:
            seed &= 2**64 - 1  # OpenAI takes any int64; the stream's state is its 64-bit pattern
        stop = d.get("stop", [])
        if isinstance(stop, str):  # OpenAI accepts a single string
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS:
            raise _invalid("stop", f"sampling.stop must be a list of at most {MAX_STOP_STRINGS} strings")
        for s in stop:
            if not isinstance(s, str) or not 1 <= len(s) <= MAX_STOP_CHARS:
                raise _invalid("stop", f"each stop string must have 1..{MAX_STOP_CHARS} characters")
        return cls(max_tokens=mt, temperature=temperature, top_p=top_p, seed=seed, stop=tuple(stop))


@dataclass(slots=True)
class SampleStream:
    """A sampled request's random stream: draw n uses SplitMix64 output n of `seed`."""
    seed: int                 # [0, 2^64)
    counter: int = 0          # draws taken so far

    def __repr__(self) -> str:   # unseeded requests get a secret random seed: keep it out of logs
        return f"SampleStream(counter={self.counter})"


def make_stream(params: SamplingParams) -> SampleStream | None:
    """The request's private random stream (None for greedy, which needs none). Unseeded requests get
    a fresh random 63-bit seed from the OS (like the wire's seed range)."""
    if params.greedy:
        return None
    return SampleStream(secrets.randbits(63) if params.seed is None else params.seed)


# ---- SplitMix64 (Steele, Lea, Flood 2014; Vigna's splitmix64.c), all mod 2^64 ---------------------
# Output n (0-based) of the sequential generator started from state `seed`. The uniform is
# u = (out >> 11) * 2^-53, in [0, 1) with 53 bits (exact in float64).
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(seeds: np.ndarray, n: np.ndarray) -> np.ndarray:
    """SplitMix64 output number n of `seed`, elementwise over uint64 arrays."""
    z = seeds + (n + np.uint64(1)) * GOLDEN
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


def uniforms(seeds, counters) -> np.ndarray:
    """u[i] in [0, 1) (float64, 53 bits) for stream seeds[i] at draw counters[i] (ints in [0, 2^64))."""
    out = splitmix64(np.asarray(seeds, np.uint64).reshape(-1), np.asarray(counters, np.uint64).reshape(-1))
    return (out >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


NUCLEUS_TOPK = (64, 1024)   # nucleus search: top-k stages before a full sort of the vocabulary


def nucleus_floor(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """probs [R, V], top_p [R] -> the smallest kept probability [R, 1] of each row's nucleus: the
    smallest prefix of the descending probabilities whose mass reaches top_p (a token is in it when
    the mass before it is < top_p, so the top token always is). Only sorted *values* are used, which
    do not depend on how ties are ordered. Rows whose nucleus outgrows a top-k stage go on to the
    next stage, then to a full sort (on CPU an 8k-vocabulary sort costs ~15x a top-64 and ~4x a
    top-1024); which stage finishes a row depends on that row alone."""
    def floor(vals, tp):  # vals: the largest probabilities, descending
        cum = vals.cumsum(-1)
        kept = (cum - vals < tp[:, None]).sum(-1, keepdim=True)              # >= 1
        return vals.gather(1, kept - 1), cum[:, -1] >= tp                   # complete: the next one is out

    V = probs.shape[-1]
    out = probs.new_empty(probs.shape[0], 1)
    todo = torch.arange(probs.shape[0], device=probs.device)
    for k in NUCLEUS_TOPK + (V,):
        k = min(k, V)
        p = probs[todo]
        vals = p.sort(dim=-1, descending=True).values if k == V else p.topk(k, dim=-1).values
        f, complete = floor(vals, top_p[todo])
        if k == V:
            complete = torch.ones_like(complete)
        out[todo[complete]] = f[complete]
        todo = todo[~complete]
        if todo.numel() == 0:     # a host sync per stage; the caller syncs on the tokens anyway
            break
    return out


_TEMPERATURE, _SEED, _COUNTER = attrgetter("temperature"), attrgetter("seed"), attrgetter("counter")


def sample(logits: torch.Tensor, params: list[SamplingParams],
           streams: list[SampleStream | None]) -> torch.Tensor:
    """logits [B, V] -> token ids [B] (on logits' device). Each sampled row takes one draw from its
    stream (advancing its counter); rows are independent of each other. An all-greedy batch costs
    one argmax launch and no host sync.

    A sampled row keeps the tokens of probability >= its nucleus floor (all tokens at top_p = 1; ties
    at the floor all stay) and picks by inverse CDF in vocabulary order: the first token whose
    cumulative kept probability exceeds u * (kept mass). Any fixed order gives the same distribution;
    vocabulary order needs no sort."""
    if not any(map(_TEMPERATURE, params)):          # every row greedy (SamplingParams.greedy)
        return logits.argmax(dim=-1)
    dev = logits.device
    rows, u, temp, top_p = sampled_rows(params, streams)
    n, nucleus = rows.size, np.flatnonzero(top_p < 1.0)
    every = n == logits.shape[0]                     # no greedy row: no argmax, gather or scatter
    # two host->device copies for the step: the integers and the floats
    ints = to_device(np.concatenate([rows, nucleus]), dev)
    floats = to_device(np.concatenate([u, temp, top_p[nucleus]]), dev, torch.float64)
    row_t, sub, u, temp = ints[:n], ints[n:], floats[:n], floats[n:2 * n]
    # float64: the inverse CDF then resolves every token whose probability exceeds ~1e-16
    probs = torch.softmax((logits if every else logits[row_t]).double() / temp[:, None], dim=-1)
    if nucleus.size:
        floor = nucleus_floor(probs[sub], floats[2 * n:])
        probs[sub] = probs[sub].masked_fill(probs[sub] < floor, 0.0)
    cdf = probs.cumsum(-1)
    j = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)   # never a zero-probability token
    # u * total can round up to total (no cdf exceeds it): take the last token of nonzero probability
    last = torch.where(probs > 0, torch.arange(probs.shape[-1], device=dev), 0).amax(-1, keepdim=True)
    drawn = torch.minimum(j, last).squeeze(1)
    if every:
        return drawn
    out = logits.argmax(dim=-1)
    out[row_t] = drawn
    return out


def sampled_rows(params: list[SamplingParams], streams: list[SampleStream | None]):
    """The host side of `sample`: the non-greedy rows, their uniforms (advancing each stream by one
    draw), temperatures and top_p, as numpy arrays."""
    temps = np.fromiter(map(_TEMPERATURE, params), np.float64, len(params))
    rows = np.flatnonzero(temps)                     # temperature > 0: not greedy
    picked = rows.tolist()
    drawn = [streams[i] for i in picked]
    if None in drawn:
        i = picked[drawn.index(None)]
        raise ValueError(f"row {i} samples (temperature {params[i].temperature}) but has no stream")
    n = len(drawn)
    u = uniforms(np.fromiter(map(_SEED, drawn), np.uint64, n), np.fromiter(map(_COUNTER, drawn), np.uint64, n))
    for st in drawn:
        st.counter += 1
    top_p = np.fromiter((params[i].top_p for i in picked), np.float64, n)
    return rows, u, temps[rows], top_p
