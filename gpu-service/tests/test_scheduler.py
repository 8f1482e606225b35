"""Scheduler unit tests: no torch, no model. A fake runner applies each StepPlan to plain token lists
(the slot contents) and returns made-up sampled tokens, in the style of vLLM's tests/v1/core/utils.py."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lckv_service.engine.request as request_mod
import lckv_service.engine.scheduler as scheduler_mod
from lckv_service.engine.request import Phase, Request, RequestStatus
from lckv_service.engine.scheduler import Scheduler, SchedulerConfig, StepPlan
from lckv_service.errors import ConfigError, OverloadedError


class Params:  # of SamplingParams the scheduler reads max_tokens only (to skip useless lookaheads)
    def __init__(self, max_tokens: int = 4):
        self.max_tokens = max_tokens
        self.stop = ()


def make_scheduler(**kw) -> Scheduler:
    cfg = dict(num_slots=2, sinks=2, window=30, evict_step=5, max_batched_tokens=16, max_waiting=4)
    cfg.update(kw)
    return Scheduler(SchedulerConfig(**cfg))


def make_requests(lengths: list[int], prefix: str = "r", max_tokens: int = 4) -> list[Request]:
    return [Request(f"{prefix}{i}", list(range(100 * i, 100 * i + n)), Params(max_tokens))
            for i, n in enumerate(lengths)]


class FakeRunner:
    """Slots as token lists; eviction keeps sinks + last keep_recent. 'Samples' 1000 + tokens seen."""

    def __init__(self, sched: Scheduler):
        self.sched = sched
        self.slots: dict[int, list[int]] = {}
        self.sampled: dict[Request, int] = {}   # each request's last sampled token, as the device holds it
        self.n = 0

    def run(self, plan: StepPlan) -> list[tuple[Request, int]]:
        cap = self.sched.cfg.capacity
        for r in plan.admitted:
            self.slots[r.slot] = []
        for slot, drop in plan.truncations:
            del self.slots[slot][len(self.slots[slot]) - drop:]
        for slot, keep in plan.evictions:
            s = self.slots[slot]
            self.slots[slot] = s[:self.sched.cfg.sinks] + s[len(s) - keep:]
        out = []
        for p in plan.prefills:
            self.slots[p.request.slot] += p.tokens
            assert len(self.slots[p.request.slot]) <= cap, "a chunk crossed the slot capacity"
            if p.sample:
                out.append(p.request)
        for r in plan.decodes:
            self.slots[r.slot].append(self.sampled[r])
            assert len(self.slots[r.slot]) <= cap
            out.append(r)
        for r in out + [p.request for p in plan.prefills]:
            assert len(self.slots[r.slot]) == r.cache_len, "scheduler's view of the slot drifted"
        self.n += 1
        out = [(r, 1000 + r.tokens_seen) for r in out]
        self.sampled.update(out)
        return out


def update(sched: Scheduler, sampled: list[tuple[Request, int]]) -> None:
    """The engine's update rule, reduced: take the sample (filling a lookahead's entry), finish after
    max_tokens; a request that already finished drops its lookahead's sample."""
    for req, tok in sampled:
        req.in_flight -= 1
        if req.status.finished:
            continue
        req.output_ids.append(tok)
        if req.lookahead:
            req.fed_this_turn[-1], req.lookahead = tok, False
        if len(req.output_ids) >= req.params.max_tokens:
            sched.finish(req, RequestStatus.FINISHED_LENGTH)
        else:
            req.phase = Phase.DECODE


def drive(sched: Scheduler, runner: FakeRunner, max_steps: int = 10_000, overlap: bool = False) -> list[StepPlan]:
    """Serial: schedule, run, update. Overlapped as the engine does: step N is planned and run before
    step N-1's samples are handled."""
    plans, in_flight = [], []
    for _ in range(max_steps):
        plan = sched.schedule()
        if plan.empty and not in_flight:
            break
        plans.append(plan)
        sampled = runner.run(plan) if not plan.empty else []
        if overlap:
            sampled, in_flight = in_flight, sampled
        update(sched, sampled)
    return plans


def test_scheduler_and_request_modules_import_no_torch():
    for mod in (scheduler_mod, request_mod):
        tree = ast.parse(Path(mod.__file__).read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(n == "torch" or n.startswith("torch.") for n in names), mod.__name__


def test_admits_up_to_free_slots_in_arrival_order():
    s = make_scheduler(num_slots=2)
    reqs = make_requests([3, 3, 3])
    for r in reqs:
        s.add(r)
    plan = s.schedule()
    assert plan.admitted == reqs[:2]
    assert [r.status for r in reqs] == [RequestStatus.RUNNING] * 2 + [RequestStatus.WAITING]
    assert {r.slot for r in reqs[:2]} == {0, 1}
    assert list(s.waiting) == [reqs[2]]


def test_token_budget_chunks_prefill_and_samples_only_after_the_last_chunk():
    s = make_scheduler(num_slots=1, max_batched_tokens=8, window=100)
    (r,) = make_requests([20], max_tokens=2)
    s.add(r)
    runner = FakeRunner(s)
    plans = drive(s, runner)
    chunks = [[len(p.tokens) for p in pl.prefills] for pl in plans]
    assert chunks[:3] == [[8], [8], [4]]
    assert [p.sample for pl in plans[:3] for p in pl.prefills] == [False, False, True]
    assert runner.slots[r.slot][:20] == r.prompt_ids
    assert all(pl.num_tokens <= 8 for pl in plans)


def test_decodes_go_first_and_requests_join_and_leave_between_steps():
    s = make_scheduler(num_slots=2, max_batched_tokens=6)
    a, b, c = make_requests([2, 12, 3])
    for r in (a, b, c):
        s.add(r)
    runner = FakeRunner(s)
    p1 = s.schedule()
    assert [x.request for x in p1.prefills] == [a, b] and [len(x.tokens) for x in p1.prefills] == [2, 4]
    for req, tok in runner.run(p1):
        req.output_ids.append(tok)
        req.phase = Phase.DECODE
    p2 = s.schedule()
    assert p2.decodes == [a]                       # a decodes while b is still prefilling
    assert [len(x.tokens) for x in p2.prefills] == [5]
    runner.run(p2)
    s.finish(a, RequestStatus.FINISHED_STOPPED)   # a leaves: its slot goes to c at the next step
    p3 = s.schedule()
    assert p3.admitted == [c] and c.slot == a.slot


def test_admission_queue_is_bounded():
    s = make_scheduler(max_waiting=2, num_slots=1)
    r = make_requests([1, 1, 1])
    s.add(r[0])
    s.add(r[1])
    with pytest.raises(OverloadedError) as e:
        s.add(r[2])
    assert e.value.retry_after >= 1 and e.value.code == "overloaded"


def test_finish_frees_the_slot_at_once_and_removes_waiting_requests():
    s = make_scheduler(num_slots=1)
    a, b = make_requests([4, 4])
    s.add(a)
    s.add(b)
    s.schedule()
    assert s.free_slots == []
    s.finish(b, RequestStatus.FINISHED_ABORTED)   # still waiting
    assert not s.waiting
    s.finish(a, RequestStatus.FINISHED_ABORTED)
    assert s.free_slots == [a.slot] and not s.running and not s.has_work()
    assert a.status.finish_reason is None and RequestStatus.FINISHED_LENGTH.finish_reason == "length"


def test_eviction_happens_exactly_when_full():
    s = make_scheduler(num_slots=1, sinks=2, window=10, evict_step=4, max_batched_tokens=64)
    (r,) = make_requests([25], max_tokens=1)
    s.add(r)
    runner = FakeRunner(s)
    plans = drive(s, runner)
    # 12 tokens fill the slot; each eviction keeps 2 sinks + 6 recent, then 4 more tokens fit
    assert [len(p.tokens) for pl in plans for p in pl.prefills] == [12, 4, 4, 4, 1]
    assert sum(len(pl.evictions) for pl in plans) == 4
    assert runner.slots[r.slot] == r.prompt_ids[:2] + r.prompt_ids[-7:]
    assert r.tokens_seen == 25 and r.cache_len == 9


@settings(max_examples=40, deadline=None)
@given(budget=st.integers(1, 40), prompt=st.integers(1, 90), new=st.integers(1, 30),
       window=st.integers(3, 25), step=st.integers(1, 3))
def test_kept_tokens_do_not_depend_on_chunking(budget, prompt, new, window, step):
    """What a slot keeps is a function of the token sequence only (so resumed == stateless)."""
    results = []
    for b, overlap in ((budget, False), (10_000, False), (budget, True)):
        s = make_scheduler(num_slots=1, sinks=2, window=window, evict_step=step, max_batched_tokens=b)
        (r,) = make_requests([prompt], max_tokens=new)
        s.add(r)
        runner = FakeRunner(s)
        drive(s, runner, overlap=overlap)
        results.append((runner.slots[0], r.tokens_seen, r.output_ids))
    assert results[0] == results[1] == results[2]
    assert len(results[0][0]) <= 2 + window and len(results[0][2]) == new


def test_overlapped_steps_decode_lookaheads_but_never_past_max_tokens_or_through_an_eviction():
    s = make_scheduler(num_slots=1, sinks=2, window=4, evict_step=2, max_batched_tokens=64)
    (r,) = make_requests([3], max_tokens=6)
    s.add(r)
    runner = FakeRunner(s)
    p1 = s.schedule()                       # the whole prompt; its sample is in flight
    first = runner.run(p1)
    p2 = s.schedule()                       # decodes that sample before knowing it
    assert p2.decodes == [r] and r.lookahead and r.fed_this_turn[-1] == scheduler_mod.LOOKAHEAD
    second = runner.run(p2)
    update(s, first)
    assert r.fed_this_turn == r.prompt_ids + r.output_ids and not r.lookahead
    in_flight, plans = second, [p1, p2]
    while True:                             # overlapped to the end
        plan = s.schedule()
        if plan.empty and not in_flight:
            break
        plans.append(plan)
        sampled, in_flight = in_flight, runner.run(plan)
        assert not (plan.evictions and plan.decodes and r.lookahead), "evicted for a lookahead"
        update(s, sampled)
    assert len(r.output_ids) == 6 and r.status is RequestStatus.FINISHED_LENGTH
    assert sum(len(p.decodes) for p in plans) == 5          # no lookahead past max_tokens
    # the slot holds what serial steps would leave: prompt and outputs with the same evictions
    serial = make_scheduler(num_slots=1, sinks=2, window=4, evict_step=2, max_batched_tokens=64)
    (q,) = make_requests([3], max_tokens=6)
    serial.add(q)
    ref = FakeRunner(serial)
    drive(serial, ref)
    assert runner.slots[0] == ref.slots[0] and r.output_ids == q.output_ids
    assert sum(len(p.evictions) for p in plans) == 1 and r.tokens_seen == q.tokens_seen


def test_truncation_is_planned_once_and_updates_the_view():
    s = make_scheduler(num_slots=1, window=100)
    (r,) = make_requests([6])
    s.add(r)
    runner = FakeRunner(s)
    runner.run(s.schedule())
    r.truncate, r.phase, r.pending = 2, Phase.FINALIZE, [7, 8, 9]
    plan = s.schedule()
    assert plan.truncations == [(r.slot, 2)] and [p.tokens for p in plan.prefills] == [[7, 8, 9]]
    assert not plan.prefills[0].sample
    runner.run(plan)
    assert runner.slots[r.slot] == r.prompt_ids[:4] + [7, 8, 9] == r.fed_this_turn
    assert s.schedule().empty


def test_config_is_validated():
    with pytest.raises(ConfigError) as e:
        SchedulerConfig(num_slots=0)
    assert e.value.param == "num_slots"
    with pytest.raises(ConfigError) as e:
        SchedulerConfig(num_slots=1, window=4, evict_step=5)
    assert e.value.param == "evict_step"
