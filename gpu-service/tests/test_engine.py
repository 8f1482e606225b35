"""Engine on a tiny float64 model: continuous batching, sampling, aborts, sessions and eviction.

Ground truth is lckv_service.reference (sequential float64 LCKV, independent of model.py's attention
and iteration code), driven token by token with the same StreamingLLM rule (evict to sinks +
keep_recent exactly when the cache is full).
"""
from __future__ import annotations


import pytest
import torch

from lckv_service.engine.engine import Engine
from lckv_service.engine.request import Request, RequestStatus, Turn
from lckv_service.engine.runner import ModelRunner
from lckv_service.engine.scheduler import Scheduler, SchedulerConfig
from lckv_service.model import PrefillMode
from lckv_service.reference import ReferenceLCKV
from lckv_service.sampling import SamplingParams

from service_fixtures import DEVICE, ENGINE_PROMPTS, chat_request, random_chat_model, single_torch_thread, tok_fixture  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PROMPTS = ENGINE_PROMPTS
HELLO = PROMPTS[1]


@pytest.fixture(scope="module")
def model(tok):
    return random_chat_model(tok, device=DEVICE)


OVERLAP = [False]     # the engine mode every test of this module runs in (both, via `overlap`)


@pytest.fixture(autouse=True, params=[False, True], ids=["serial", "overlap"])
def overlap(request):
    """Every engine test runs with serial steps and with overlapped ones (step N launched before step
    N-1's tokens are handled, lookahead tokens dropped): the results must be identical."""
    OVERLAP[0] = request.param
    yield request.param
    OVERLAP[0] = False


def make_engine(model, tok, num_slots=4, sinks=4, window=200, evict_step=0, budget=64, chunk=8, prefill_chunk=0):
    sc = SchedulerConfig(num_slots=num_slots, sinks=sinks, window=window, evict_step=evict_step,
                         max_batched_tokens=budget, max_waiting=64, prefill_chunk=prefill_chunk)
    runner = ModelRunner(model, num_slots, sc.capacity, sinks, PrefillMode("exact", chunk=chunk))
    return Engine(Scheduler(sc), runner, tok, overlap=OVERLAP[0])




def run(engine: Engine, reqs: list[Request], max_steps: int = 5000) -> list[Request]:
    for r in reqs:
        engine.add(r)
    for _ in range(max_steps):
        if not engine.step():
            break
    for r in reqs:
        assert r.events and r.events[-1].type in ("done", "error"), r.request_id
    return reqs


def out_ids(req: Request) -> list[int]:
    return [t for e in req.events if e.type == "delta" for t in e.token_ids]


def text(req: Request) -> str:
    return "".join(e.text for e in req.events if e.type == "delta")


def state(req: Request):
    return req.events[-1].state


class RefGreedy:
    """Reference decoding with the engine's eviction rule."""

    def __init__(self, model, sinks=4, window=200, evict_step=0, state=None):
        self.ref = ReferenceLCKV(model, state)
        self.sinks, self.cap = sinks, sinks + window
        self.keep = window - (evict_step or max(1, window // 8))
        self.ids = list(state.token_ids) if state else []

    def feed(self, t: int) -> torch.Tensor:
        if len(self.ids) == self.cap:
            for j, c in self.ref.cache.items():
                self.ref.cache[j] = c[:self.sinks] + c[len(c) - self.keep:]
            self.ids = self.ids[:self.sinks] + self.ids[len(self.ids) - self.keep:]
        self.ids.append(t)
        return self.ref.step(t)

    def generate(self, prompt: list[int], max_new: int, stop_ids) -> list[int]:
        for t in prompt:
            logits = self.feed(t)
        out = []
        while True:
            nxt = int(logits.argmax())
            out.append(nxt)
            if nxt in stop_ids or len(out) == max_new:
                return out
            logits = self.feed(nxt)


def test_greedy_matches_the_sequential_reference(model, tok):
    eng = make_engine(model, tok)
    (req,) = run(eng, [chat_request(tok, "a", PROMPTS[3], max_tokens=10)])
    want = RefGreedy(model).generate(tok.encode_chat(PROMPTS[3]), 10, tok.stop_token_ids)
    assert req.output_ids == want
    assert out_ids(req) == [t for t in want if t not in tok.stop_token_ids]
    done = req.events[-1]
    assert done.finish_reason == ("stop" if want[-1] in tok.stop_token_ids else "length")


def test_concurrent_requests_get_exactly_their_solo_tokens(model, tok):
    """Mixed lengths, fewer slots than requests, a small token budget (chunked prefill + waiting)."""
    solo = [run(make_engine(model, tok), [chat_request(tok, f"s{i}", p, max_tokens=8 + 3 * i)])[0].output_ids
            for i, p in enumerate(PROMPTS)]
    eng = make_engine(model, tok, num_slots=3, budget=12)
    reqs = run(eng, [chat_request(tok, f"c{i}", p, max_tokens=8 + 3 * i) for i, p in enumerate(PROMPTS)])
    assert [r.output_ids for r in reqs] == solo
    assert eng.stats()["running"] == 0 and sorted(eng.scheduler.free_slots) == [0, 1, 2]


def test_seeded_sampling_is_reproducible_in_any_batch(model, tok):
    def go(batch):
        eng = make_engine(model, tok, num_slots=3)
        reqs = [chat_request(tok, f"r{i}", p, max_tokens=10, temperature=1.0, seed=123) for i, p in enumerate(batch)]
        return run(eng, reqs)
    alone = go([PROMPTS[1]])[0].output_ids
    mixed = go([PROMPTS[0], PROMPTS[1], PROMPTS[2]])[1].output_ids
    assert alone == mixed
    greedy = run(make_engine(model, tok), [chat_request(tok, "g", PROMPTS[1], max_tokens=10)])[0].output_ids
    assert alone != greedy  # it really sampled


def test_abort_frees_the_slot_at_the_next_step(model, tok):
    eng = make_engine(model, tok, num_slots=1)
    a = chat_request(tok, "a", PROMPTS[1], max_tokens=200)
    b = chat_request(tok, "b", PROMPTS[0], max_tokens=3)
    eng.add(a)
    eng.add(b)
    for _ in range(3):
        eng.step()
    assert a.slot == 0 and b.status is RequestStatus.WAITING
    eng.abort("a")
    eng.step()
    assert a.status is RequestStatus.FINISHED_ABORTED and b.slot == 0 and b.status is RequestStatus.RUNNING
    while eng.step():
        pass
    assert not any(e.type == "done" for e in a.events) and len(a.output_ids) < 200
    assert b.events[-1].type == "done"


def test_max_tokens_and_stop_strings_end_generation(model, tok):
    (r,) = run(make_engine(model, tok), [chat_request(tok, "a", PROMPTS[3], max_tokens=16)])
    assert r.output_ids[-1] not in tok.stop_token_ids, "pick a prompt the random model does not end"
    assert len(r.output_ids) == 16 and r.events[-1].finish_reason == "length"
    full = text(r)
    # the first 2-character string (no replacement char) whose first occurrence is not at the start
    stop = next(full[k:k + 2] for k in range(1, len(full) - 1)
                if "\ufffd" not in full[k:k + 2] and full.find(full[k:k + 2]) == k)
    (s,) = run(make_engine(model, tok), [chat_request(tok, "b", PROMPTS[3], max_tokens=16, stop=[stop])])
    assert text(s) == full[:full.find(stop)] and s.events[-1].finish_reason == "stop"
    assert len(s.output_ids) < 16


def _kv_of_fresh_prefill(model, tok, ids, sinks=4, window=200):
    eng = make_engine(model, tok, num_slots=1, sinks=sinks, window=window)
    r = Request("fresh", ids, SamplingParams(max_tokens=1))
    r.events = []
    r.emit = r.events.append
    run(eng, [r])
    return eng.runner.export(0).result()


def test_turn_plus_blob_equals_one_stateless_request(model, tok):
    eng = make_engine(model, tok)
    (t1,) = run(eng, [chat_request(tok, "t1", HELLO, max_tokens=10, return_blob=True)])
    s1 = state(t1)
    history = HELLO + [{"role": "assistant", "content": text(t1)}]
    # the blob covers the whole turn, end-of-turn included, as canonical ids
    assert s1.token_ids == tok.encode_chat(history, False) and s1.tokens_seen == len(s1.token_ids)
    fresh = _kv_of_fresh_prefill(model, tok, s1.token_ids)
    assert torch.allclose(s1.k, fresh.k, atol=1e-9) and torch.allclose(s1.v, fresh.v, atol=1e-9)

    turn2 = [{"role": "user", "content": "And what about the sea?"}]
    (t2,) = run(eng, [chat_request(tok, "t2", turn2, max_tokens=10, state=s1, return_blob=True)])
    (st,) = run(eng, [chat_request(tok, "st", history + turn2, max_tokens=10, return_blob=True)])
    assert t2.output_ids == st.output_ids
    assert t2.cached_tokens == len(s1.token_ids)
    assert state(t2).token_ids == state(st).token_ids
    assert torch.allclose(state(t2).k, state(st).k, atol=1e-9)
    ref = RefGreedy(model).generate(tok.encode_chat(history + turn2), 10, tok.stop_token_ids)
    assert t2.output_ids == ref


def test_sessions_with_eviction_equal_the_reference_over_the_kept_tokens(model, tok):
    """Window 24: both turns' prompts overflow it, so eviction also runs between prefill chunks."""
    kw = dict(sinks=4, window=24, evict_step=4)
    eng = make_engine(model, tok, budget=16, **kw)
    (t1,) = run(eng, [chat_request(tok, "t1", PROMPTS[3], max_tokens=12, return_blob=True)])
    s1 = state(t1)
    assert len(s1.token_ids) <= 28 and s1.tokens_seen > len(s1.token_ids)      # it evicted
    history = PROMPTS[3] + [{"role": "assistant", "content": text(t1)}]
    full1 = tok.encode_chat(history, False)
    assert s1.tokens_seen == len(full1)
    # the random model's reply re-encodes differently (invalid UTF-8 bytes) and the slot evicted while
    # holding the sampled ids: this exercises the rebuild-from-turn-start path
    assert t1.retokenized and t1.rebuilt
    assert s1.token_ids == full1[:4] + full1[len(full1) - len(s1.token_ids) + 4:]   # sinks + most recent

    turn2 = [{"role": "user", "content": "Tell me about the river and the sea, and the hills."}]
    (t2,) = run(eng, [chat_request(tok, "t2", turn2, max_tokens=12, state=s1, return_blob=True)])
    (st,) = run(make_engine(model, tok, budget=5, **kw),
                [chat_request(tok, "st", history + turn2, max_tokens=12, return_blob=True)])
    assert t2.output_ids == st.output_ids
    assert state(t2).token_ids == state(st).token_ids
    assert torch.allclose(state(t2).k, state(st).k, atol=1e-9)
    # reference: continue from the blob's kept K/V, token by token, with the same eviction rule
    ref = RefGreedy(model, state=s1, **kw).generate(tok.encode_chat(turn2), 12, tok.stop_token_ids)
    assert t2.output_ids == ref


def test_non_canonical_reply_ids_are_re_prefilled(model, tok):
    """A stop string that starts inside an already-fed token forces the cache back to canonical ids."""
    (probe,) = run(make_engine(model, tok), [chat_request(tok, "p", HELLO, max_tokens=12)])
    pieces = [tok.decode([t]) for t in probe.output_ids]
    # a stop string made of the end of token i and token i+1: token i was fed, the reply ends before it
    i = next(i for i in range(1, len(pieces) - 1)
             if pieces[i] and pieces[i + 1] and "\ufffd" not in pieces[i] + pieces[i + 1]
             and (pieces[i][-1] + pieces[i + 1]) not in "".join(pieces[:i]))
    stop = pieces[i][-1] + pieces[i + 1]
    (r,) = run(make_engine(model, tok), [chat_request(tok, "r", HELLO, max_tokens=12, stop=[stop], return_blob=True)])
    assert r.events[-1].finish_reason == "stop" and r.retokenized and not r.rebuilt   # truncate + re-feed
    history = HELLO + [{"role": "assistant", "content": text(r)}]
    canonical = tok.encode_chat(history, False)
    assert state(r).token_ids == canonical and state(r).tokens_seen == len(canonical)
    fresh = _kv_of_fresh_prefill(model, tok, canonical)
    assert torch.allclose(state(r).k, fresh.k, atol=1e-9) and torch.allclose(state(r).v, fresh.v, atol=1e-9)


def test_a_failed_step_fails_only_its_requests(model, tok):
    eng = make_engine(model, tok, num_slots=2)
    r = chat_request(tok, "a", HELLO, max_tokens=4)
    run(eng, [r])
    eng.fail_all(RuntimeError("boom"))      # nothing running: a no-op
    a, b = chat_request(tok, "b", HELLO, max_tokens=50), chat_request(tok, "c", HELLO, max_tokens=4)
    eng.add(a)
    eng.step()
    eng.fail_all(RuntimeError("boom"))
    assert a.events[-1].type == "error" and a.status is RequestStatus.FINISHED_ERROR
    run(eng, [b])
    assert b.output_ids == r.output_ids      # the pool is healthy afterwards


def test_a_failing_request_update_fails_only_that_request(model, tok):
    solo = run(make_engine(model, tok), [chat_request(tok, "s", PROMPTS[2], max_tokens=8)])[0].output_ids
    bad = chat_request(tok, "bad", HELLO, max_tokens=4, return_blob=True)

    class BrokenTurn(Turn):
        def canonical_ids(self, tok, reply: str) -> list[int]:
            raise RuntimeError("re-encoding failed")
    bad.turn = BrokenTurn("chat")
    good = chat_request(tok, "good", PROMPTS[2], max_tokens=8)
    eng = make_engine(model, tok)
    run(eng, [bad, good])
    assert bad.events[-1].type == "error" and bad.status is RequestStatus.FINISHED_ERROR
    assert good.events[-1].type == "done" and good.output_ids == solo
    assert sorted(eng.scheduler.free_slots) == [0, 1, 2, 3]


def test_tokenwise_prefill_rides_the_decode_batch_and_is_exact(model, tok):
    """prefill_chunk=1 (the serving default for LCKV): every prompt token goes through the decode step
    beside other requests' decodes; outputs and session caches equal chunked exact prefill's, eviction
    between prompt tokens included."""
    kw = dict(sinks=4, window=24, evict_step=4)
    reqs = lambda tag: [chat_request(tok, f"{tag}{i}", p, max_tokens=6 + 2 * i, return_blob=True)
                        for i, p in enumerate(PROMPTS)]
    chunked = run(make_engine(model, tok, num_slots=3, budget=16, **kw), reqs("c"))
    eng = make_engine(model, tok, num_slots=3, budget=16, prefill_chunk=1, **kw)
    plans = []
    schedule = eng.scheduler.schedule
    eng.scheduler.schedule = lambda: plans.append(schedule()) or plans[-1]
    tokenwise = run(eng, reqs("t"))
    assert [r.output_ids for r in tokenwise] == [r.output_ids for r in chunked]
    for a, b in zip(tokenwise, chunked):
        assert state(a).token_ids == state(b).token_ids
        assert torch.allclose(state(a).k, state(b).k, atol=1e-9) and torch.allclose(state(a).v, state(b).v, atol=1e-9)
    assert all(len(p.tokens) == 1 for plan in plans for p in plan.prefills)
    assert any(plan.decodes and plan.prefills for plan in plans)     # prompts and decodes in one step


def test_a_lookahead_fed_past_the_end_of_a_reply_is_dropped_and_the_blob_stays_canonical(model, tok, overlap):
    """Overlapped steps feed each sampled token to the next step before the host has seen it: the
    step after the token that ends the reply (here a stop string) runs one lookahead decode whose
    sample is dropped and whose fed token the canonical-tokens rule truncates from the session cache."""
    (probe,) = run(make_engine(model, tok), [chat_request(tok, "p", PROMPTS[3], max_tokens=16)])
    full = text(probe)
    stop = next(full[k:k + 2] for k in range(4, len(full) - 1)
                if "\ufffd" not in full[k:k + 2] and full.find(full[k:k + 2]) == k)
    eng = make_engine(model, tok)
    plans = []
    schedule = eng.scheduler.schedule
    eng.scheduler.schedule = lambda: plans.append(schedule()) or plans[-1]
    (r,) = run(eng, [chat_request(tok, "r", PROMPTS[3], max_tokens=16, stop=[stop], return_blob=True)])
    assert text(r) == full[:full.find(stop)] and r.events[-1].finish_reason == "stop"
    decodes = sum(pl.decodes.count(r) for pl in plans)
    assert decodes == len(r.output_ids) - 1 + (1 if overlap else 0)
    canonical = tok.encode_chat(PROMPTS[3] + [{"role": "assistant", "content": text(r)}], False)
    assert state(r).token_ids == canonical and state(r).tokens_seen == len(canonical)
    fresh = _kv_of_fresh_prefill(model, tok, canonical)
    assert torch.allclose(state(r).k, fresh.k, atol=1e-9) and torch.allclose(state(r).v, fresh.v, atol=1e-9)
    assert sorted(eng.scheduler.free_slots) == [0, 1, 2, 3] and not eng.has_work()


def test_a_session_turn_is_exported_only_once_no_launched_step_still_writes_its_slot(model, tok, overlap):
    """With overlapped steps a turn is exported only after the step that feeds its last canonical
    tokens has been collected, so its copy is queued behind that step and never behind a later one."""
    eng = make_engine(model, tok, num_slots=2)
    exports = []
    export = eng.runner.export

    def checked(slot):
        in_flight = eng._in_flight.touched if eng._in_flight is not None else set()
        exports.append(all(r.slot != slot for r in in_flight))
        return export(slot)
    eng.runner.export = checked
    reqs = [chat_request(tok, f"s{i}", p, max_tokens=6 + 3 * i, return_blob=True) for i, p in enumerate(PROMPTS[:3])]
    run(eng, reqs)
    assert len(exports) == 3 and all(exports)
    for p, r in zip(PROMPTS, reqs):
        assert r.events[-1].type == "done"
        assert state(r).token_ids == tok.encode_chat(p + [{"role": "assistant", "content": text(r)}], False)


class _LandsLate:
    """A real export whose copy reports 'not landed yet' for its first `polls` checks."""

    def __init__(self, pending, polls: int):
        self.pending, self.polls = pending, polls

    def ready(self) -> bool:
        self.polls -= 1
        return self.polls < 0 and self.pending.ready()

    def result(self):
        return self.pending.result()


def test_a_turns_slot_is_reused_at_once_and_its_done_waits_for_the_blob_copy(model, tok):
    """Exporting frees the slot at once (the copy is queued ahead of any later write to the slot) and
    the host never waits for the copy: the turn's done event goes out once the copy has landed, and
    the state it carries is the turn's, not what the slot's next request writes."""
    eng = make_engine(model, tok, num_slots=1)
    export = eng.runner.export
    eng.runner.export = lambda slot: _LandsLate(export(slot), polls=3)
    a = chat_request(tok, "a", PROMPTS[3], max_tokens=5, return_blob=True)
    b = chat_request(tok, "b", PROMPTS[1], max_tokens=8)
    eng.add(a)
    eng.add(b)
    while a.status is not RequestStatus.FINISHED_LENGTH:
        assert eng.step()
    assert not any(e.type == "done" for e in a.events)
    eng.step()        # b takes the slot while a's copy has not landed
    assert b.slot == 0 and b.status is RequestStatus.RUNNING and not any(e.type == "done" for e in a.events)
    while eng.step():
        pass
    assert a.events[-1].type == "done" and a.events[-1].finish_reason == "length"
    assert b.events[-1].type == "done" and not eng.has_work()
    canonical = tok.encode_chat(PROMPTS[3] + [{"role": "assistant", "content": text(a)}], False)
    fresh = _kv_of_fresh_prefill(model, tok, canonical)
    assert state(a).token_ids == canonical
    assert torch.allclose(state(a).k, fresh.k, atol=1e-9) and torch.allclose(state(a).v, fresh.v, atol=1e-9)


def test_an_idle_engine_waits_for_the_last_blob_copies(model, tok):
    """With nothing left to run, the engine still has work until every queued copy has landed."""
    eng = make_engine(model, tok)
    export = eng.runner.export
    eng.runner.export = lambda slot: _LandsLate(export(slot), polls=10 ** 9)
    reqs = run(eng, [chat_request(tok, f"i{i}", p, max_tokens=4, return_blob=True) for i, p in enumerate(PROMPTS[:2])])
    assert all(r.events[-1].type == "done" and state(r) is not None for r in reqs)


def _completion_request(tok, rid, prompt, max_tokens, **sampling):
    """A completion-kind turn as the service makes it: its canonical ids are the prompt text plus the
    reply re-tokenized, with no end-of-turn tokens after them."""
    ids = tok.encode_prompt(prompt)
    req = Request(rid, ids, SamplingParams(max_tokens=max_tokens, **sampling), return_blob=True,
                  turn=Turn("completion", prompt=prompt))
    req.events = []
    req.emit = req.events.append
    return req


def test_an_eviction_made_only_for_a_token_past_the_replys_end_is_undone(model, tok):
    """A completion turn stopped by a stop string fed one token past the reply's canonical end. If the
    slot was full just before that token, the eviction made room for a token the turn does not keep:
    a stateless request over the prompt and reply would end full and unevicted, so the turn is
    rebuilt from its start state and its blob holds exactly the stateless request's cache."""
    prompt = "Once upon a time there was a"
    n_prompt = len(tok.encode_prompt(prompt))
    (probe,) = run(make_engine(model, tok), [_completion_request(tok, "p", prompt, 12)])
    stable = [i for i in range(1, 9)
              if tok.encode_prompt(prompt + tok.decode(probe.output_ids[:i + 1])) == tok.encode_prompt(prompt)
              + probe.output_ids[:i + 1]]
    for i in stable:
        window = n_prompt + i + 1 - 4          # the slot is full once out[:i+1] is fed
        (again,) = run(make_engine(model, tok, window=window), [_completion_request(tok, "q", prompt, 12)])
        pieces = [tok.decode([t]) for t in again.output_ids]
        stop = pieces[i + 1] + pieces[i + 2]
        before = "".join(pieces[:i + 1])
        if pieces[i + 1] and pieces[i + 2] and "\ufffd" not in stop and stop not in before + stop[:-1]:
            break
    else:
        pytest.skip("no reply of this random model has a clean stop string at a token boundary")
    eng = make_engine(model, tok, window=window)
    (r,) = run(eng, [_completion_request(tok, "r", prompt, 12, stop=[stop])])
    assert text(r) == before and r.events[-1].finish_reason == "stop"
    assert r.retokenized and r.rebuilt
    canonical = tok.encode_prompt(prompt + before)
    assert len(canonical) == 4 + window                   # full, as a stateless request leaves it
    assert state(r).token_ids == canonical and state(r).tokens_seen == len(canonical)
    fresh = _kv_of_fresh_prefill(model, tok, canonical, window=window)
    assert torch.allclose(state(r).k, fresh.k, atol=1e-9) and torch.allclose(state(r).v, fresh.v, atol=1e-9)
