"""SamplingParams validation and logits -> token sampling.

The counter-based stream is checked against SplitMix64 written independently with Python ints (and
the published test vectors of splitmix64.c); the sampler against an inverse CDF computed in pure
Python from the same uniforms, and statistically against softmax(logits / T).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lckv_service import sampling as S
from lckv_service.errors import RequestError
from lckv_service.sampling import SampleStream, SamplingParams, make_stream, sample

LIMIT = 1000


def test_defaults():
    p = SamplingParams.from_dict(None, LIMIT)
    assert (p.max_tokens, p.temperature, p.top_p, p.seed, p.stop) == (256, 0.0, 1.0, None, ())
    assert p.greedy
    assert SamplingParams.from_dict({}, 100).max_tokens == 100   # default capped by the service limit


def test_valid_values_round_trip():
    p = SamplingParams.from_dict({"max_tokens": 7, "temperature": 1.5, "top_p": 0.5, "seed": 3,
                                  "stop": ["\n\n", "END"]}, LIMIT)
    assert p == SamplingParams(7, 1.5, 0.5, 3, ("\n\n", "END"))
    assert SamplingParams.from_dict({"stop": "x"}, LIMIT).stop == ("x",)


@pytest.mark.parametrize("field,value", [
    ("max_tokens", 0), ("max_tokens", LIMIT + 1), ("max_tokens", 1.5), ("max_tokens", True), ("max_tokens", "5"),
    ("temperature", -0.1), ("temperature", 2.01), ("temperature", "hot"), ("temperature", True),
    ("temperature", float("nan")), ("top_p", 0), ("top_p", 1.01), ("top_p", None),
    ("seed", -2**63 - 1), ("seed", 2**63), ("seed", 1.0), ("seed", False),
    ("stop", ["a"] * 5), ("stop", [""]), ("stop", ["x" * 65]), ("stop", [1]), ("stop", {"a": 1}),
    ("frequency_penalty", 0.5),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(RequestError) as e:
        SamplingParams.from_dict({field: value}, LIMIT)
    assert e.value.param == f"sampling.{field}" and e.value.code == "invalid_value"


def test_sampling_must_be_an_object():
    with pytest.raises(RequestError) as e:
        SamplingParams.from_dict([1], LIMIT)
    assert e.value.param == "sampling"



M64 = (1 << 64) - 1


def py_splitmix64(seed: int, n: int) -> int:
    """Output n (0-based) of SplitMix64 from state `seed`, in Python ints (the definition, mod 2^64)."""
    z = (seed + (n + 1) * 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def py_uniform(seed: int, n: int) -> float:
    return (py_splitmix64(seed, n) >> 11) * 2.0 ** -53


def py_sample(logits: list[float], temperature: float, top_p: float, u: float) -> int:
    """The documented rule in plain Python floats: nucleus floor from the descending probabilities,
    keep every token at or above it, inverse CDF in vocabulary order."""
    m = max(logits)
    w = [math.exp((x - m) / temperature) for x in logits]
    z = sum(w)
    p = [x / z for x in w]
    keep = [True] * len(p)
    if top_p < 1.0:
        desc, mass, floor = sorted(p, reverse=True), 0.0, None
        for x in desc:
            if mass >= top_p:
                break
            floor, mass = x, mass + x
        keep = [x >= floor for x in p]
    total = sum(x for x, k in zip(p, keep) if k)
    acc = 0.0
    for i, (x, k) in enumerate(zip(p, keep)):
        if k:
            acc += x
            if acc > u * total:
                return i
    return max(i for i, k in enumerate(keep) if k)


def _u64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def test_splitmix64_known_answers():
    # splitmix64.c seeded with 1234567: its first five outputs (the reference implementation's vectors)
    want = [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431,
            16408922859458223821]
    assert [py_splitmix64(1234567, n) for n in range(5)] == want
    assert S.splitmix64(_u64([1234567] * 5), _u64(list(range(5)))).tolist() == want


def test_splitmix64_array_arithmetic_equals_python_ints():
    g = torch.Generator().manual_seed(3)
    edge = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, M64 - 1, M64]
    seeds = edge + [int(x) for x in torch.randint(0, 2**62, (500,), generator=g)] * 2
    counters = edge + [int(x) for x in torch.randint(0, 2**62, (1000,), generator=g)]
    seeds = [(s * 4 + 3 if i % 3 == 0 else s) & M64 for i, s in enumerate(seeds)]   # top bits set, too
    with np.errstate(all="raise"):                  # wrapping is the arithmetic, never a warning
        got = S.splitmix64(_u64(seeds), _u64(counters))
    assert got.dtype == np.uint64 and got.tolist() == [py_splitmix64(s, n) for s, n in zip(seeds, counters)]
    u = S.uniforms(seeds, counters)
    assert u.dtype == np.float64 and u.tolist() == [py_uniform(s, n) for s, n in zip(seeds, counters)]
    assert 0.0 <= u.min() and u.max() < 1.0


def test_greedy_is_argmax():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    p = [SamplingParams()] * 5
    assert torch.equal(sample(logits, p, [None] * 5), logits.argmax(-1))
    assert make_stream(p[0]) is None
    # greedy rows inside a sampled batch are still the argmax, and take no draw
    mixed = [SamplingParams(), SamplingParams(temperature=1.0, seed=1)] * 2 + [SamplingParams()]
    streams = [make_stream(q) for q in mixed]
    out = sample(logits, mixed, streams)
    assert all(out[i] == logits[i].argmax() for i in (0, 2, 4))
    assert [s.counter for s in streams if s] == [1, 1]


def test_unseeded_streams_get_private_random_seeds():
    a, b = (make_stream(SamplingParams(temperature=1.0)) for _ in range(2))
    assert a.seed != b.seed and 0 <= a.seed < 2**63 and a.counter == 0
    assert str(a.seed) not in repr(a)          # the seed never reaches logs through repr
    assert make_stream(SamplingParams(temperature=0.5, seed=9)) == SampleStream(9, 0)


def test_seeded_rows_are_independent_of_the_batch():
    """One seeded request alone, then at every position of a batch of 7 mixed greedy/sampled rows."""
    V, steps = 64, 25
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(7, V, generator=g) * 2 for _ in range(steps)]   # row 0's logits: logits[t][0]
    target = SamplingParams(temperature=0.9, top_p=0.95, seed=42)
    others = [SamplingParams(), SamplingParams(temperature=1.0, seed=42), SamplingParams(temperature=0.7, seed=7),
              SamplingParams(), SamplingParams(temperature=1.3, top_p=0.5, seed=1), SamplingParams(temperature=1.0)]
    st = make_stream(target)
    alone = [int(sample(logits[t][:1], [target], [st])[0]) for t in range(steps)]
    assert len(set(alone)) > 5                                           # it really samples
    for pos in range(7):
        params = others[:pos] + [target] + others[pos:]
        streams = [make_stream(q) for q in params]
        for s in streams[:pos] + streams[pos + 1:]:                      # neighbours at other counters
            if s is not None:
                s.counter = 1000 + pos
        seq = []
        for t in range(steps):
            rows = torch.cat([logits[t][1:pos + 1], logits[t][:1], logits[t][pos + 1:]])
            seq.append(int(sample(rows, params, streams)[pos]))
        assert seq == alone, pos
    # a different seed gives a different sequence
    other = make_stream(SamplingParams(temperature=0.9, top_p=0.95, seed=43))
    assert [int(sample(logits[t][:1], [target], [other])[0]) for t in range(steps)] != alone


def test_sampler_equals_a_pure_python_inverse_cdf():
    g = torch.Generator().manual_seed(4)
    V, n = 40, 300
    logits = torch.randn(n, V, generator=g, dtype=torch.float64) * 3
    params = [SamplingParams(temperature=[0.3, 1.0, 1.7][i % 3], top_p=[1.0, 0.9, 0.4, 0.05][i % 4], seed=i * 7919)
              for i in range(n)]
    streams = [make_stream(p) for p in params]
    for s in streams:
        s.counter = s.seed % 1000
    u = [py_uniform(s.seed, s.counter) for s in streams]
    got = sample(logits, params, streams).tolist()
    want = [py_sample(logits[i].tolist(), p.temperature, p.top_p, u[i]) for i, p in enumerate(params)]
    assert got == want
    assert all(s.counter == s.seed % 1000 + 1 for s in streams)          # one draw each


def test_large_vocabulary_nuclei_at_every_search_stage():
    """Nuclei smaller than the first top-k, between the stages, and larger than the last (full sort)."""
    g = torch.Generator().manual_seed(6)
    V = 3000
    base = torch.randn(V, generator=g, dtype=torch.float64)
    scales = [12.0, 6.0, 3.0, 1.5, 0.5, 0.1]                 # peaked ... nearly flat
    logits = torch.stack([base * sc for sc in scales for _ in range(4)])
    params = [SamplingParams(temperature=1.0, top_p=[0.5, 0.8, 0.9, 0.99][i % 4], seed=100 + i)
              for i in range(len(logits))]
    streams = [make_stream(p) for p in params]
    u = [py_uniform(s.seed, s.counter) for s in streams]
    probs = torch.softmax(logits, -1)
    desc = probs.sort(-1, descending=True).values
    sizes = ((desc.cumsum(-1) - desc) < torch.tensor([p.top_p for p in params], dtype=torch.float64)[:, None]).sum(-1)
    stages = S.NUCLEUS_TOPK
    assert (sizes <= stages[0]).any() and ((sizes > stages[0]) & (sizes <= stages[1])).any()
    assert (sizes > stages[1]).any()
    got = sample(logits, params, streams).tolist()
    want = [py_sample(logits[i].tolist(), 1.0, p.top_p, u[i]) for i, p in enumerate(params)]
    assert got == want
    # the floor is exactly the smallest probability of the sorted-prefix nucleus
    floor = S.nucleus_floor(probs, torch.tensor([p.top_p for p in params], dtype=torch.float64))
    assert torch.equal(floor[:, 0], desc.gather(1, (sizes - 1)[:, None])[:, 0])


def _frequencies(logits: torch.Tensor, params: SamplingParams, n: int) -> torch.Tensor:
    """Draws 0..n-1 of one stream, as a single batch of n rows (the counter makes that the same)."""
    streams = [SampleStream(params.seed, c) for c in range(n)]
    out = sample(logits[None].expand(n, -1), [params] * n, streams)
    return torch.bincount(out, minlength=logits.numel()).double()


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = counts.sum()
    keep = probs > 0
    expected = probs[keep] * n
    stat = ((counts[keep] - expected) ** 2 / expected).sum()
    df = torch.tensor(float(keep.sum() - 1), dtype=torch.float64)
    return float(torch.special.gammaincc(df / 2, stat / 2))             # chi-square survival function


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.8])
def test_frequencies_follow_the_softmax(temperature):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], dtype=torch.float64)
    counts = _frequencies(logits, SamplingParams(temperature=temperature, seed=2024), 20000)
    probs = torch.softmax(logits / temperature, -1)
    assert _chi2_pvalue(counts, probs) > 1e-3
    assert torch.allclose(counts / counts.sum(), probs, atol=0.015)


def test_top_p_removes_exactly_the_tail():
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], dtype=torch.float64)
    logits = probs.log()
    for top_p, kept in [(0.39, 1), (0.41, 2), (0.64, 2), (0.66, 3), (0.79, 3), (0.81, 4), (0.95, 5),
                        (0.97, 6), (1.0, 6)]:
        counts = _frequencies(logits, SamplingParams(temperature=1.0, top_p=top_p, seed=11), 8000)
        assert (counts[kept:] == 0).all() and (counts[:kept] > 0).all(), top_p
        renorm = torch.zeros_like(probs)
        renorm[:kept] = probs[:kept] / probs[:kept].sum()
        assert kept == 1 or _chi2_pvalue(counts, renorm) > 1e-3, top_p
    # low temperature sharpens towards the argmax
    cold = _frequencies(logits, SamplingParams(temperature=0.05, seed=3), 500)
    assert cold[0] >= 495


def test_sampling_without_a_stream_is_an_error():
    with pytest.raises(ValueError, match="no stream"):
        sample(torch.zeros(1, 4), [SamplingParams(temperature=1.0)], [None])
    params = [SamplingParams(), SamplingParams(temperature=0.5, seed=1), SamplingParams(temperature=1.0)]
    streams = [None, make_stream(params[1]), None]
    with pytest.raises(ValueError, match=r"row 2 samples \(temperature 1.0\) but has no stream"):
        sample(torch.zeros(3, 4), params, streams)
    assert streams[1].counter == 0                    # refused before any stream advanced


def test_negative_seeds_are_their_64_bit_pattern():
    """OpenAI accepts any int64 seed: -1 is the stream of 2^64 - 1, and distinct seeds stay distinct."""
    assert SamplingParams.from_dict({"seed": -1, "temperature": 1.0}, 64).seed == 2**64 - 1
    assert SamplingParams.from_dict({"seed": -2**63, "temperature": 1.0}, 64).seed == 2**63
    assert SamplingParams.from_dict({"seed": 2**63 - 1, "temperature": 1.0}, 64).seed == 2**63 - 1
