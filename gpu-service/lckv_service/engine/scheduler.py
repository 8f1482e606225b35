"""Continuous batching, torch-free: which tokens of which requests run in the next step.

Each step: admit waiting requests into free cache slots, give every decoding request one token, then
fill the rest of the token budget with prompt chunks (chunked prefill), first come first served.
Requests join and leave the batch at any step. StreamingLLM eviction is planned here too: a slot is
trimmed to sinks + (window - evict_step) exactly when it is full and must take a token, and a chunk
never crosses that point, so what a slot keeps depends only on the token sequence, not on chunking.

With overlapped steps (Engine(overlap=True)) a request's sampled token may still be in flight when
the next step is planned: it then decodes a lookahead, recorded as LOOKAHEAD in `fed_this_turn`
until the engine learns the token.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..errors import ConfigError, OverloadedError
from .request import Phase, Request, RequestStatus

LOOKAHEAD = -1          # fed_this_turn's entry for a token fed before the host knows it


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    num_slots: int
    sinks: int = 4
    window: int = 2044
    evict_step: int = 0                   # tokens dropped per eviction; 0 = window // 8 (at least 1)
    max_batched_tokens: int = 512         # token budget of one step (decodes + prefill chunks)
    prefill_chunk: int = 0                # most prompt tokens one request feeds per step (0: budget);
                                          # 1 = tokenwise prefill, riding in the decode batch
    max_waiting: int = 64                 # admission queue bound; beyond it requests get 503
    retry_after_s: int = 1

    def __post_init__(self):
        for name in ("num_slots", "window", "max_batched_tokens", "max_waiting"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1", param=name)
        if self.sinks < 0:
            raise ConfigError("sinks must be >= 0", param="sinks")
        if self.prefill_chunk < 0:
            raise ConfigError("prefill_chunk must be >= 0", param="prefill_chunk")
        if not 0 <= self.evict_step <= self.window:
            raise ConfigError("evict_step must be in 0..window", param="evict_step")

    @property
    def capacity(self) -> int:
        return self.sinks + self.window

    @property
    def keep_recent(self) -> int:
        step = self.evict_step or max(1, self.window // 8)
        return self.window - step


@dataclass(slots=True)
class PrefillItem:
    request: Request
    tokens: list[int]
    sample: bool                           # the chunk ends the prompt: sample the next token


@dataclass(slots=True)
class StepPlan:
    admitted: list[Request] = field(default_factory=list)        # restore their blob or reset the slot
    restarts: list[Request] = field(default_factory=list)        # same, to re-feed a whole turn
    truncations: list[tuple[int, int]] = field(default_factory=list)  # (slot, tail tokens to drop)
    evictions: list[tuple[int, int]] = field(default_factory=list)    # (slot, keep_recent)
    prefills: list[PrefillItem] = field(default_factory=list)
    decodes: list[Request] = field(default_factory=list)          # feed request.last_token, sample

    @property
    def empty(self) -> bool:
        return not (self.admitted or self.restarts or self.truncations or self.evictions
                    or self.prefills or self.decodes)

    def requests(self) -> set[Request]:
        """Every request whose slot this step works on."""
        return {*self.admitted, *self.restarts, *(p.request for p in self.prefills), *self.decodes}

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(len(p.tokens) for p in self.prefills)


class Scheduler:
    def __init__(self, cfg: SchedulerConfig):
        self.cfg = cfg
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.free_slots: list[int] = list(range(cfg.num_slots - 1, -1, -1))

    def add(self, req: Request) -> None:
        if len(self.waiting) >= self.cfg.max_waiting:
            raise OverloadedError("the service is at capacity; retry shortly", retry_after=self.cfg.retry_after_s)
        req.status = RequestStatus.WAITING
        self.waiting.append(req)

    def finish(self, req: Request, status: RequestStatus) -> None:
        """Take a request out of the batch (done, aborted or failed) and free its slot at once."""
        req.status = status
        if req in self.running:
            self.running.remove(req)
            self.free_slots.append(req.slot)
        elif req in self.waiting:
            self.waiting.remove(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        while self.waiting and self.free_slots:
            req = self.waiting.popleft()
            req.slot = self.free_slots.pop()
            req.status = RequestStatus.RUNNING
            req.cache_len, req.tokens_seen = req.restored_tokens, req.cached_tokens
            self.running.append(req)
            plan.admitted.append(req)
        budget = self.cfg.max_batched_tokens
        for req in self.running:
            if req.restart:
                plan.restarts.append(req)
                req.cache_len, req.tokens_seen = req.restored_tokens, req.cached_tokens
                req.fed_this_turn, req.last_evict_at, req.restart = [], -1, False
            if req.truncate:
                plan.truncations.append((req.slot, req.truncate))
                req.cache_len -= req.truncate
                req.tokens_seen -= req.truncate
                del req.fed_this_turn[len(req.fed_this_turn) - req.truncate:]
                req.truncate = 0
        # decodes first: they are latency-critical and cost one token each
        for req in self.running:
            if budget == 0:
                break
            if req.phase is Phase.DECODE and not req.pending:
                if req.in_flight:
                    # its last token is still being sampled (overlapped steps): feed it from the device
                    # as a lookahead, unless it is known to be the last one or feeding it would evict
                    # (an eviction must not depend on a token that may end the turn)
                    if len(req.output_ids) + req.in_flight >= req.params.max_tokens or req.cache_len >= self.cfg.capacity:
                        continue
                    self._append(req, [LOOKAHEAD])
                    req.lookahead = True
                else:
                    self._make_room(req, plan)
                    self._append(req, [req.last_token])
                req.in_flight += 1
                plan.decodes.append(req)
                budget -= 1
        capacity, per_request = self.cfg.capacity, self.cfg.prefill_chunk
        for req in self.running:
            if budget == 0:
                break
            if req.pending:
                self._make_room(req, plan)
                n = min(len(req.pending), budget, capacity - req.cache_len, per_request or budget)
                chunk = req.pending[:n]
                del req.pending[:n]          # in place: no copy of the rest of a long prompt per step
                self._append(req, chunk)
                sample = req.phase is Phase.PREFILL and not req.pending
                plan.prefills.append(PrefillItem(req, chunk, sample))
                if sample:   # decodes from the next step on, its first token possibly still in flight
                    req.phase = Phase.DECODE
                    req.in_flight += 1
                budget -= n
        return plan

    def _make_room(self, req: Request, plan: StepPlan) -> None:
        if req.cache_len >= self.cfg.capacity:
            plan.evictions.append((req.slot, self.cfg.keep_recent))
            req.last_evict_at = len(req.fed_this_turn)
            req.cache_len = min(req.cache_len, self.cfg.sinks + self.cfg.keep_recent)

    @staticmethod
    def _append(req: Request, tokens: list[int]) -> None:
        req.cache_len += len(tokens)
        req.tokens_seen += len(tokens)
        req.fed_this_turn.extend(tokens)
