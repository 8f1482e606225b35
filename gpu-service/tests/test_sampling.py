"""SamplingParams validation and logits -> token sampling."""
from __future__ import annotations

import pytest
import torch

from lckv_service.errors import RequestError
from lckv_service.sampling import SamplingParams, make_generator, sample

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
    ("seed", -1), ("seed", 2**63), ("seed", 1.0), ("seed", False),
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


def test_greedy_is_argmax():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    p = [SamplingParams()] * 5
    assert torch.equal(sample(logits, p, [None] * 5), logits.argmax(-1))
    assert make_generator(p[0], torch.device("cpu")) is None


def test_seeded_rows_are_reproducible_and_independent_of_the_batch():
    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(temperature=1.0, seed=42), SamplingParams(),
              SamplingParams(temperature=0.7, top_p=0.9, seed=7),
              SamplingParams(temperature=1.0, seed=42)]
    cpu = torch.device("cpu")

    seqs = []
    for rows in ([0, 1, 2, 3], [2, 0], [0]):
        gens = [make_generator(params[i], cpu) for i in rows]
        out = [sample(logits[rows], [params[i] for i in rows], gens).tolist() for _ in range(20)]
        seqs.append({i: [o[j] for o in out] for j, i in enumerate(rows)})
    assert seqs[0][0] == seqs[1][0] == seqs[2][0]   # same seed, same stream, whatever the batch
    assert seqs[0][2] == seqs[1][2]
    assert len(set(seqs[0][0])) > 1                                # it really samples


def test_top_p_keeps_the_smallest_sufficient_prefix():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample(logits, [SamplingParams(temperature=1.0, top_p=0.75)], [g])[0]) for _ in range(300)}
    assert draws == {0, 1}                   # 0.5 + 0.3 >= 0.75; tokens 2 and 3 are cut
    draws = {int(sample(logits, [SamplingParams(temperature=1.0, top_p=0.01)], [g])[0]) for _ in range(50)}
    assert draws == {0}


def test_temperature_sampling_follows_the_softmax():
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = torch.log(probs)[None]
    g = torch.Generator().manual_seed(5)
    n = 4000
    counts = torch.bincount(torch.tensor([int(sample(logits, [SamplingParams(temperature=1.0)], [g])[0])
                                          for _ in range(n)]), minlength=3).float() / n
    assert torch.allclose(counts, probs, atol=0.03)
    # low temperature sharpens towards the argmax
    cold = [int(sample(logits, [SamplingParams(temperature=0.05)], [g])[0]) for _ in range(200)]
    assert cold.count(0) >= 195
