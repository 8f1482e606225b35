"""Engine.step = schedule -> run -> update; EngineLoop runs it in a background thread, AsyncEngine
serves it to asyncio callers in this process.

Aborts are applied at one fixed point, the start of a step, never while the model runs. At the end of
a session turn the slot is brought to the turn's canonical tokens (what a stateless request over the
whole conversation would tokenize it to) and exported for the blob: the copy is queued on the device
and the slot freed at once; the turn's done event goes out when the copy has landed.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Callable, Protocol

from ..cache import PendingExport
from ..tokenizer import ChatTokenizer
from .request import Event, Phase, Request, RequestStatus
from .runner import ModelRunner, StepHandle
from .scheduler import Scheduler

log = logging.getLogger(__name__)


class EngineMetrics(Protocol):
    def observe_ttft(self, seconds: float) -> None: ...
    def observe_itls(self, seconds: list[float]) -> None: ...   # one step's inter-token gaps
    def count_tokens(self, n: int) -> None: ...
    def observe_step(self, schedule_s: float, run_s: float, update_s: float, device_s: float | None) -> None: ...


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Engine:
    def __init__(self, scheduler: Scheduler, runner: ModelRunner, tokenizer: ChatTokenizer,
                 metrics: EngineMetrics | None = None, overlap: bool = False):
        self.scheduler = scheduler
        self.overlap = overlap
        self._in_flight: StepHandle | None = None     # overlap: the launched step not yet collected
        # finished session turns whose blob state is still being copied to the host, in launch order
        self._exports: deque[tuple[Request, PendingExport]] = deque()
        self.runner = runner
        self.tokenizer = tokenizer
        self.metrics = metrics
        # guards the scheduler's queues and the request table against add/abort from other threads;
        # per-request update work (detokenizing, re-encoding, export) runs on the engine thread only,
        # outside it, so an arriving request never waits for a step's update
        self._lock = threading.RLock()
        self._requests: dict[str, Request] = {}
        self._aborts: set[str] = set()
        self._itls: list[float] = []          # this step's inter-token gaps, observed together
        self._finalizing: dict[Request, None] = {}   # session turns feeding their canonical tail, in order

    # ---- called from any thread ---------------------------------------------------------------
    def add(self, req: Request) -> None:
        """Queue a request; raises OverloadedError when the admission queue is full."""
        req.text_stream = self.tokenizer.text_stream(req.params.stop)
        with self._lock:
            if req.request_id in self._requests:
                raise ValueError(f"duplicate request id {req.request_id!r}")
            self.scheduler.add(req)
            self._requests[req.request_id] = req

    def abort(self, request_id: str) -> None:
        with self._lock:
            if request_id in self._requests:
                self._aborts.add(request_id)

    def has_work(self) -> bool:
        with self._lock:
            return (self.scheduler.has_work() or bool(self._aborts) or self._in_flight is not None
                    or bool(self._exports))

    def stats(self) -> dict[str, int]:
        with self._lock:
            running = [r.slot for r in self.scheduler.running]
            return {"waiting": len(self.scheduler.waiting), "running": len(running),
                    "slots_total": self.scheduler.cfg.num_slots,
                    "kv_bytes_used": self.runner.bytes_in_use(running),
                    "kv_bytes_total": self.runner.bytes_total}

    # ---- the engine thread ----------------------------------------------------------------------
    def step(self) -> bool:
        """One step; returns False when there was nothing to do.

        Without overlap: schedule -> launch -> wait for the tokens -> update. With overlap, step N is
        launched before step N-1's tokens are waited for and handled, so the host's update of N-1 and
        scheduling of N+1 run while the device computes N; decodes in N feed N-1's sampled ids on the
        device. A request that N-1 ends was fed one lookahead token in N: its sampled token is dropped,
        and for a session turn the canonical-tokens rule (below) truncates the fed lookahead."""
        t0 = time.perf_counter()
        with self._lock:
            for rid in self._aborts:
                req = self._requests.pop(rid, None)
                if req is not None and not req.status.finished:
                    self.scheduler.finish(req, RequestStatus.FINISHED_ABORTED)
            self._aborts.clear()
            plan = self.scheduler.schedule()
        prev, launched = self._in_flight, None
        if plan.empty and prev is None:
            if not self._exports:
                return False
            self._deliver_exports(wait=True)   # nothing else to do: wait for the copies
            return True
        t1 = time.perf_counter()
        if not plan.empty:
            try:
                launched = self.runner.launch(plan, prev)
            except Exception as e:  # a model failure fails this step's requests, not the process
                log.exception("engine step failed")
                self._fail_many(plan.requests(), e)
        if self.overlap:
            self._in_flight = launched
        else:
            prev = launched
        sampled = []
        if prev is not None:
            try:
                sampled = self.runner.collect(prev)
            except Exception as e:
                log.exception("engine step failed")
                self._fail_many(prev.touched, e)
                if launched is not None and self.overlap:   # it fed ids of the failed step
                    self._fail_many(launched.touched, e)
                    self._in_flight = None
        t2 = time.perf_counter()
        now = time.monotonic()
        for req, tok in sampled:
            req.in_flight -= 1
            # a request that ended while this step was in flight: its lookahead token is dropped
            if not req.status.finished and req.phase is not Phase.FINALIZE:
                try:                  # _guarded, inlined: this runs once per sampled token
                    self._on_token(req, tok, now)
                except Exception as e:
                    log.exception("request %s: update failed", req.request_id)
                    self._fail(req, e)
        if self.metrics:
            self.metrics.count_tokens(len(sampled))
            self.metrics.observe_itls(self._itls)
        self._itls = []
        # a turn whose last tokens the in-flight step feeds is exported after it (no wait for it here)
        busy = self._in_flight.touched if self._in_flight is not None else set()
        for req in list(self._finalizing):
            if req.status.finished:            # aborted or failed meanwhile
                del self._finalizing[req]
            elif not req.pending and not req.truncate and not req.restart and req not in busy:
                del self._finalizing[req]
                self._guarded(req, self._export, req)
        self._deliver_exports(wait=False)
        if self.metrics:
            device_s = self.runner.last_device_s if prev is not None else None   # of the step collected here
            self.metrics.observe_step(t1 - t0, t2 - t1, time.perf_counter() - t2, device_s)
        return True

    def _fail_many(self, reqs, exc: BaseException) -> None:
        with self._lock:
            for req in list(reqs):
                self._fail(req, exc)

    def _guarded(self, req: Request, fn, *args) -> None:
        """Per-request update work (detokenizing, re-encoding, export): a failure fails that request only."""
        try:
            fn(*args)
        except Exception as e:
            log.exception("request %s: update failed", req.request_id)
            self._fail(req, e)

    def _export(self, req: Request) -> None:
        """Queue the copy of the turn's state and free the slot at once: the copy runs behind the
        launched steps and before any later write to the slot, on the same stream. The turn's done
        event goes out once the copy has landed (_deliver_exports), without the host waiting for it."""
        pending = self.runner.export(req.slot)
        self._release(req, req.final_status)
        self._exports.append((req, pending))

    def _deliver_exports(self, wait: bool) -> None:
        """Emit done (with the state) for exports whose copies have landed; all of them if `wait`.
        Copies land in the order they were queued."""
        while self._exports and (wait or self._exports[0][1].ready()):
            req, pending = self._exports.popleft()
            try:
                state = pending.result()
            except Exception as e:
                log.exception("request %s: export failed", req.request_id)
                req.emit(Event("error", error=e))
                continue
            req.emit(_done(req, req.final_status, state))

    def fail_all(self, exc: BaseException) -> None:
        with self._lock:
            self._fail_many([*self.scheduler.waiting, *self.scheduler.running], exc)

    # ---- update (engine thread; the lock only where the scheduler or the request table change) ----
    def _on_token(self, req: Request, tok: int, now: float) -> None:
        req.output_ids.append(tok)
        if req.lookahead:   # the scheduler fed this token to the next step before it was known
            req.fed_this_turn[-1] = tok
            req.lookahead = False
        if self.metrics:
            if req.first_token_time is None:
                self.metrics.observe_ttft(now - req.arrival)
            else:
                self._itls.append(now - req.last_token_time)
        if req.first_token_time is None:
            req.first_token_time = now
        req.last_token_time = now
        if tok in self.tokenizer.stop_token_ids:
            return self._end_generation(req, RequestStatus.FINISHED_STOPPED)
        req.unsent_ids.append(tok)
        text = req.text_stream.push(tok)
        if text:
            req.emit(Event("delta", text=text, token_ids=req.unsent_ids))
            req.unsent_ids = []
        if req.text_stream.stopped:
            self._end_generation(req, RequestStatus.FINISHED_STOPPED)
        elif len(req.output_ids) >= req.params.max_tokens:
            self._end_generation(req, RequestStatus.FINISHED_LENGTH)
        else:
            req.phase = Phase.DECODE

    def _end_generation(self, req: Request, status: RequestStatus) -> None:
        text = req.text_stream.flush()
        if text or req.unsent_ids:
            req.emit(Event("delta", text=text, token_ids=req.unsent_ids))
            req.unsent_ids = []
        if not req.return_blob:
            return self._complete(req, status, None)
        req.final_status = status
        req.phase = Phase.FINALIZE
        self._finalizing[req] = None
        canonical = req.turn.canonical_ids(self.tokenizer, req.text_stream.emitted)
        fed = req.fed_this_turn
        p = _common_prefix(fed, canonical)
        req.retokenized = p < len(fed)
        # an eviction ran while the slot held non-canonical tokens, or only to make room for a token
        # past the turn's canonical end: either way it kept a different set than a stateless request
        # would, so rebuild the turn from its start state
        if req.retokenized and (req.last_evict_at > p or req.last_evict_at == p == len(canonical)):
            req.restart = req.rebuilt = True
            req.pending = list(canonical)
        else:
            req.truncate = len(fed) - p
            req.pending = canonical[p:]
        # exported by step() once nothing is left to feed and no launched step writes its slot

    def _release(self, req: Request, status: RequestStatus) -> None:
        """Take the request out of the batch and the request table (its slot is free from now on)."""
        with self._lock:
            self.scheduler.finish(req, status)
            self._requests.pop(req.request_id, None)

    def _complete(self, req: Request, status: RequestStatus, state) -> None:
        self._release(req, status)
        req.emit(_done(req, status, state))

    def _fail(self, req: Request, exc: BaseException) -> None:
        if req.status.finished:
            return
        self._release(req, RequestStatus.FINISHED_ERROR)
        req.emit(Event("error", error=exc))


def _done(req: Request, status: RequestStatus, state) -> Event:
    return Event("done", finish_reason=status.finish_reason, state=state, completion_tokens=len(req.output_ids),
                 tokens_seen=req.tokens_seen, cache_len=req.cache_len)


class EngineLoop:
    """Runs Engine.step in a daemon thread. A request's `emit` only collects its events; after each
    step `deliver` gets all of that step's (request, event) pairs in one call, so whoever forwards
    them is woken once per step, not once per token. `after_step` (optional) runs after every
    iteration, busy or idle (at least every `idle_wait_s`)."""

    def __init__(self, engine: Engine, deliver: Callable[[list[tuple[Request, Event]]], None],
                 after_step: Callable[[], None] | None = None, idle_wait_s: float = 0.5):
        self.engine = engine
        self._deliver, self._after_step = deliver, after_step
        self._wake = threading.Event()
        self._stopping = False
        self._idle_wait_s = idle_wait_s
        self._thread: threading.Thread | None = None
        self._outbox: deque[tuple[Request, Event]] = deque()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lckv-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, req: Request) -> None:
        """Queue a request (OverloadedError when the admission queue is full)."""
        req.emit = lambda ev: self._outbox.append((req, ev))
        self.engine.add(req)
        self._wake.set()

    def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)
        self._wake.set()

    def _flush(self) -> None:
        batch = []
        while self._outbox:
            batch.append(self._outbox.popleft())
        if batch:
            self._deliver(batch)

    def _loop(self) -> None:
        while not self._stopping:
            try:
                busy = self.engine.step()
            except Exception as e:  # a bug in update logic: fail everyone, keep serving
                log.exception("engine loop error")
                self.engine.fail_all(e)
                busy = False
            self._flush()
            if self._after_step is not None:
                self._after_step()
            if not busy:
                self._wake.wait(self._idle_wait_s)
                self._wake.clear()


class EventRoutes:
    """Who reads each request's events: request id -> (event loop, asyncio.Queue). `deliver` hands a
    batch of (request id, event) pairs over from any thread with one call_soon_threadsafe per loop;
    a done or error event ends its route."""

    def __init__(self):
        self._routes: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}

    def open(self, request_id: str) -> "asyncio.Queue[Event]":
        """A queue for the request's events, read on the running event loop."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._routes[request_id] = (asyncio.get_running_loop(), queue)
        return queue

    def close(self, request_id: str) -> None:
        self._routes.pop(request_id, None)   # nobody reads its events any more

    def ids(self) -> list[str]:
        return list(self._routes)

    def deliver(self, batch) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for rid, ev in batch:
            route = self._routes.get(rid) if ev.type == "delta" else self._routes.pop(rid, None)
            if route is not None:
                by_loop.setdefault(route[0], []).append((route[1], ev))
        for loop, items in by_loop.items():
            call_in(loop, _put_all, items)


def call_in(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """fn(*args) on `loop`, from any thread; nothing if the loop has closed (nobody is listening)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


def _put_all(items: list) -> None:
    for queue, ev in items:
        queue.put_nowait(ev)


class AsyncEngine:
    """The engine in this process, for asyncio callers: each request's events arrive on its own
    asyncio.Queue. (server.engine_process.EngineProcess has the same interface, with the engine in
    a child process.)"""

    def __init__(self, engine: Engine, idle_wait_s: float = 0.5):
        self.engine = engine
        self._routes = EventRoutes()
        self._loop = EngineLoop(engine, lambda batch: self._routes.deliver((r.request_id, ev) for r, ev in batch),
                                idle_wait_s=idle_wait_s)
        self.on_death = None   # EngineProcess's hook; an engine in this process cannot die alone

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    async def add(self, req: Request) -> "asyncio.Queue[Event]":
        """Queue a request; its events arrive on the returned queue. OverloadedError when the
        admission queue is full."""
        queue = self._routes.open(req.request_id)
        try:
            self._loop.submit(req)
        except BaseException:
            self._routes.close(req.request_id)
            raise
        return queue

    def abort(self, request_id: str) -> None:
        self._routes.close(request_id)
        self._loop.abort(request_id)

    def stats(self) -> dict[str, int]:
        return self.engine.stats()
