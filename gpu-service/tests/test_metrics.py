"""StepHistogram against prometheus_client's own Histogram: the same exposition for the same values."""
from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from lckv_service.server.metrics import StepHistogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _samples(registry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#") and "_created" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_step_histogram_exposes_what_a_prometheus_histogram_would():
    rng = random.Random(0)
    # bucket edges exactly, values past the last bound, zero, and many steps of several values
    steps = [[0.005, 0.01, 30.0, 31.0, 0.0]] + [[rng.expovariate(50) for _ in range(rng.randint(0, 40))]
                                                for _ in range(30)]
    ours, ref = CollectorRegistry(), CollectorRegistry()
    h = StepHistogram("lckv_test_seconds", "test", BUCKETS, ours)
    p = Histogram("lckv_test_seconds", "test", buckets=BUCKETS, registry=ref)
    for values in steps:
        h.observe_many(values)
        for v in values:
            p.observe(v)
    got, want = _samples(ours), _samples(ref)
    assert got.keys() == want.keys()
    for k in want:
        assert abs(got[k] - want[k]) <= 1e-9 * max(1.0, abs(want[k])), k
    assert want['lckv_test_seconds_bucket{le="+Inf"}'] == sum(map(len, steps))
