"""Prometheus metrics (one registry per app) and the /healthz, /readyz, /ping, /metrics handlers."""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class AppState:
    service: Any = None                     # the ModelService once loaded
    ready: bool = False                     # loaded and warmed up with a real generation
    load_task: asyncio.Task | None = None
    failure: BaseException | None = None     # the load failed, or the engine process died


class StepHistogram:
    """A Prometheus histogram fed many observations at once: the engine observes one inter-token gap
    per running stream per step, which as single Histogram.observe calls cost the engine thread ~0.2 ms
    a step at 256 streams; here one bucket count per step (numpy), exposed by a custom collector."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry):
        self.name, self.documentation = name, documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)    # the last: above every bound (+Inf)
        self.total = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Sequence[float]) -> None:
        if not len(values):
            return
        a = np.asarray(values, dtype=np.float64)
        add = np.bincount(np.searchsorted(self.bounds, a, side="left"), minlength=len(self.counts))
        with self._lock:
            self.counts += add
            self.total += float(a.sum())

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self):
        with self._lock:
            cumulative, total = np.cumsum(self.counts), self.total
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=list(zip(les, cumulative.tolist())),
                                    sum_value=total)


class ServiceMetrics:
    """Counters the engine and the HTTP layer update; gauges read the engine's state at scrape time."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.tokens = Counter("lckv_generated_tokens", "Tokens sampled (rate() gives tokens/s)", registry=r)
        self.requests = Counter("lckv_requests", "Generate requests by outcome", ["outcome"], registry=r)
        self.ttft = Histogram("lckv_time_to_first_token_seconds", "Arrival to first sampled token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = StepHistogram("lckv_inter_token_latency_seconds", "Time between a request's tokens",
                                 _LATENCY_BUCKETS, r)
        self.queue_depth = Gauge("lckv_queue_depth", "Requests waiting for a cache slot", registry=r)
        self.running = Gauge("lckv_running_requests", "Requests in the running batch", registry=r)
        self.kv_used = Gauge("lckv_kv_pool_used_bytes", "K/V bytes held by live sequences", registry=r)
        self.kv_total = Gauge("lckv_kv_pool_bytes", "K/V pool size in bytes", registry=r)
        self.slots_total = Gauge("lckv_kv_pool_slots", "Sequence slots in the K/V pool", registry=r)
        # where a step's time goes (rate() of each over rate(steps) gives seconds per step)
        self.steps = Counter("lckv_engine_steps", "Engine steps that ran the model", registry=r)
        self.step_seconds = Counter("lckv_engine_step_seconds", "Wall time of engine steps by phase "
                                    "(schedule, run: model + sampling + host sync, update: tokens to events)",
                                    ["phase"], registry=r)
        self.device_seconds = Counter("lckv_engine_device_seconds", "CUDA: device time span of the steps' "
                                      "model and sampling work", registry=r)

    # EngineMetrics protocol (called on the engine thread; prometheus_client is thread-safe)
    def observe_ttft(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def observe_itls(self, seconds: Sequence[float]) -> None:
        self.itl.observe_many(seconds)

    def count_tokens(self, n: int) -> None:
        self.tokens.inc(n)

    def observe_step(self, schedule_s: float, run_s: float, update_s: float, device_s: float | None) -> None:
        self.steps.inc()
        for phase, s in (("schedule", schedule_s), ("run", run_s), ("update", update_s)):
            self.step_seconds.labels(phase=phase).inc(s)
        if device_s is not None:
            self.device_seconds.inc(device_s)

    def bind_engine(self, engine) -> None:
        """Gauges follow the engine's live state, read when scraped."""
        for gauge, key in ((self.queue_depth, "waiting"), (self.running, "running"),
                           (self.kv_used, "kv_bytes_used"), (self.kv_total, "kv_bytes_total"),
                           (self.slots_total, "slots_total")):
            gauge.set_function(lambda key=key: engine.stats()[key])

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[STATE].ready:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "loading"}, status=503)


async def ping(request: web.Request) -> web.Response:
    # RunPod load-balancing health check: 200 ready, 204 still initializing
    return web.Response(status=200 if request.app[STATE].ready else 204)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


STATE = web.AppKey("state", AppState)
METRICS = web.AppKey("metrics", ServiceMetrics)
