"""The engine's fast decode step (kernels.FastDecode) against the reference step (model.decode).

Two engines on the same random float64 model get the same requests at the same steps; every decode
call's slots, tokens and logits are recorded and must agree (logits to 1e-9), and so must every
request's tokens and returned cache state. The workload makes the batch change every few steps:
requests join and leave mid-run, slots come back in non-contiguous order, StreamingLLM evicts
(sinks + window), greedy and seeded sampled rows share batches, and session turns restore a cache
state. (test_engine.py checks the default, fast, engine against the sequential reference model.)
"""
from __future__ import annotations


import pytest
import torch

from lckv_service.engine.engine import Engine
from lckv_service.engine.request import Request
from lckv_service.engine.runner import ModelRunner
from lckv_service.engine.scheduler import Scheduler, SchedulerConfig
from lckv_service.errors import ConfigError
from lckv_service.kernels import FastDecode, triton_decode
from lckv_service.model import PrefillMode
from lckv_service.sampling import SamplingParams
from lckv_service.server.protocol import GenerateRequest
from lckv_service.server.service import ModelService, ServeConfig, describe_config

from service_fixtures import ENGINE_PROMPTS, chat_request, random_chat_model, model_folder, serve_config, single_torch_thread, tok_fixture  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PROMPTS = ENGINE_PROMPTS + [[{"role": "user", "content": "Name three colours of the sea at dawn."}]]


random_model = random_chat_model


@pytest.fixture(scope="module")
def model(tok):
    return random_model(tok)


class Recorder:
    """Wraps the runner's decode step and keeps what each call saw and returned."""

    def __init__(self, decode):
        self.decode, self.calls = decode, []

    def __call__(self, slots: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.decode(slots, tokens)
        self.calls.append((slots.tolist(), tokens.tolist(), logits.detach().to("cpu", copy=True)))
        return logits


def make_engine(model, tok, decode, num_slots=3, sinks=4, window=24, evict_step=4, budget=16) -> Engine:
    sc = SchedulerConfig(num_slots=num_slots, sinks=sinks, window=window, evict_step=evict_step,
                         max_batched_tokens=budget, max_waiting=64)
    runner = ModelRunner(model, num_slots, sc.capacity, sinks, PrefillMode("exact", chunk=8), decode=decode)
    runner.decode = Recorder(runner.decode)
    return Engine(Scheduler(sc), runner, tok)




def drive(engine: Engine, arrivals: dict[int, list[Request]], max_steps: int = 5000) -> list[Request]:
    """Add each step's arrivals before that step; run until idle and all have arrived."""
    reqs = [r for step in sorted(arrivals) for r in arrivals[step]]
    last = max(arrivals)
    for step in range(max_steps):
        for r in arrivals.get(step, []):
            engine.add(r)
        if not engine.step() and step >= last:
            break
    for r in reqs:
        assert r.events and r.events[-1].type == "done", (r.request_id, r.events[-1:])
    return reqs


def assert_same_run(fast: Engine, ref: Engine, fast_reqs: list[Request], ref_reqs: list[Request], atol=1e-9):
    assert [r.output_ids for r in fast_reqs] == [r.output_ids for r in ref_reqs]
    fc, rc = fast.runner.decode.calls, ref.runner.decode.calls
    assert len(fc) == len(rc) > 0
    for (fs, ft, fl), (rs, rt, rl) in zip(fc, rc):
        assert (fs, ft) == (rs, rt)
        torch.testing.assert_close(fl, rl, rtol=atol, atol=atol)
    for f, r in zip(fast_reqs, ref_reqs):
        fs, rs = f.events[-1].state, r.events[-1].state
        assert (fs is None) == (rs is None)
        if fs is not None:
            assert fs.token_ids == rs.token_ids and fs.tokens_seen == rs.tokens_seen
            torch.testing.assert_close(fs.k, rs.k, rtol=atol, atol=atol)
            torch.testing.assert_close(fs.v, rs.v, rtol=atol, atol=atol)


def workload(tok, tag: str) -> dict[int, list[Request]]:
    """More requests than slots, arriving mid-run, of mixed lengths; greedy and seeded sampled rows."""
    sampled = dict(temperature=0.8, top_p=0.9)
    return {
        0: [chat_request(tok, f"{tag}0", PROMPTS[3], 30),
            chat_request(tok, f"{tag}1", PROMPTS[0], 6, seed=5, **sampled),
            chat_request(tok, f"{tag}2", PROMPTS[1], 14)],
        4: [chat_request(tok, f"{tag}3", PROMPTS[2], 9, seed=77, temperature=1.2)],
        9: [chat_request(tok, f"{tag}4", PROMPTS[4], 25, return_blob=True)],
        15: [chat_request(tok, f"{tag}5", PROMPTS[5], 12, seed=9, **sampled)],
    }


def test_fast_engine_equals_reference_engine(model, tok):
    fast, ref = make_engine(model, tok, "fast"), make_engine(model, tok, "reference")
    assert isinstance(fast.runner.decode.decode, FastDecode)
    assert not isinstance(ref.runner.decode.decode, FastDecode)
    fr = drive(fast, workload(tok, "f"))
    rr = drive(ref, workload(tok, "r"))
    assert_same_run(fast, ref, fr, rr)
    # the workload exercised what it is meant to
    calls = fast.runner.decode.calls
    assert len({len(s) for s, _, _ in calls}) > 1                                  # batch size changed
    assert any(s != list(range(s[0], s[0] + len(s))) for s, _, _ in calls)         # non-contiguous slots
    assert any(r.tokens_seen > fast.scheduler.cfg.capacity for r in fr)            # eviction ran
    assert len({len(r.output_ids) for r in fr}) > 2                                # they leave at different steps
    assert fr[1].output_ids != drive(make_engine(model, tok, "fast"), {0: [chat_request(
        tok, "g", PROMPTS[0], 6)]})[0].output_ids                                  # the sampled rows sample


def test_restored_session_turns_are_equal(model, tok):
    runs = {}
    for kind in ("fast", "reference"):
        eng = make_engine(model, tok, kind)
        (t1,) = drive(eng, {0: [chat_request(tok, "t1", PROMPTS[3], 16, return_blob=True)]})
        s1 = t1.events[-1].state
        assert s1.tokens_seen > len(s1.token_ids)                                  # the blob was evicted
        turn2 = [{"role": "user", "content": "Tell me about the river and the sea, and the hills."}]
        # the restored turn shares the batch with a request that joins later and one that leaves early
        reqs = drive(eng, {0: [chat_request(tok, "t2", turn2, 20, state=s1, return_blob=True),
                               chat_request(tok, "x", PROMPTS[0], 3)],
                           5: [chat_request(tok, "y", PROMPTS[2], 10, seed=3, temperature=1.0)]})
        runs[kind] = (eng, [t1, *reqs])
    (fast, fr), (ref, rr) = runs["fast"], runs["reference"]
    assert_same_run(fast, ref, fr, rr)
    assert fr[1].cached_tokens == fr[0].events[-1].state.tokens_seen


def test_decoder_choice_and_config_errors(model, tok):
    runner = ModelRunner(model, 2, 32, 4)
    assert isinstance(runner.decode, FastDecode) and runner.decode_kind == "fast"
    assert runner.decode.attention == "sdpa" and runner.decode.bucket == 16 and not runner.decode.graphs
    assert not isinstance(ModelRunner(model, 2, 32, 4, decode="reference").decode, FastDecode)
    with pytest.raises(ConfigError) as e:
        ModelRunner(model, 2, 32, 4, decode="turbo")
    assert e.value.param == "decode"
    with pytest.raises(ConfigError) as e:
        ModelRunner(model, 2, 32, 4, decode_graphs=True)                            # CPU: no graphs
    assert e.value.param == "decode_graphs"
    with pytest.raises(ConfigError) as e:
        ServeConfig(model="m", secret="s", decode="turbo")
    assert e.value.param == "decode"


def test_service_wires_the_decode_option(tmp_path_factory):
    folder = model_folder(tmp_path_factory.getbasetemp() / "runner-decode")
    outs = {}
    for kind in ("fast", "reference"):
        cfg = serve_config(folder, decode=kind, max_slots=2, engine_process="off")   # the engine stepped here
        assert f'"decode": "{kind}"' in describe_config(cfg)
        svc = ModelService(cfg)
        assert isinstance(svc.engine.runner.decode, FastDecode) == (kind == "fast")
        msgs = [{"role": "user", "content": "Tell me about the river."}]
        reqs = [svc.make_request(GenerateRequest(f"r{i}", svc.model_id, "chat", msgs, None, sp, False), None)
                for i, sp in enumerate([SamplingParams(max_tokens=12),
                                        SamplingParams(max_tokens=12, temperature=1.0, seed=8)])]
        for r in reqs:
            svc.engine.add(r)
        while svc.engine.step():
            pass
        outs[kind] = [r.output_ids for r in reqs]
    assert outs["fast"] == outs["reference"] and all(len(o) > 0 for o in outs["fast"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fast_engine_matches_reference(tok):
    """On a GPU: Triton attention where available; float32, so logits agree closely, not exactly."""
    model = random_model(tok, "cuda", torch.float32, hidden_size=256)            # head_dim 64
    fast, ref = make_engine(model, tok, "fast"), make_engine(model, tok, "reference")
    want = "triton" if triton_decode.available(torch.device("cuda"), 64) else "sdpa"
    assert fast.runner.decode.decode.attention == want
    fr = drive(fast, workload(tok, "f"))
    rr = drive(ref, workload(tok, "r"))
    assert_same_run(fast, ref, fr, rr, atol=1e-3)


def test_bucket_pairs_cover_every_padded_step_largest_first(tok):
    """The graphs warm_buckets captures (and bench/graph_memory.py measures): every batch bucket up to
    the pool's and every key bucket, largest batch and keys first."""
    from lckv_service.cache import KVCache
    from lckv_service.kernels.fast_decode import batch_bucket
    model = random_model(tok, "cpu", torch.float32)
    fd = FastDecode(model, KVCache(model.cfg, 11, 64, "cpu", torch.float32), bucket=32, pad_slot=10)
    pairs = fd.bucket_pairs(10)
    assert pairs[0] == (batch_bucket(10), max(S for _, S in pairs)) and pairs == sorted(pairs, reverse=True)
    assert {B for B, _ in pairs} == {1, 2, 4, 8, 16} and len(pairs) == len(set(pairs))
    assert all(fd.key_bucket(n) in {S for _, S in pairs} for n in range(64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_captured_graphs_hold_no_autograd_state(tok):
    """Graphs captured by warm_buckets (outside __call__'s no_grad) from a model whose weights require
    grad: their outputs carry no autograd graph, which would keep every layer's activations of every
    graph alive (the ~9 GiB beyond weights and pool at the 7B shape, run f1)."""
    from lckv_service.cache import KVCache
    model = random_model(tok, "cuda", torch.bfloat16, hidden_size=256)
    assert all(p.requires_grad for p in model.parameters())
    cache = KVCache(model.cfg, 9, 64, "cuda", torch.bfloat16)
    fd = FastDecode(model, cache, bucket=32, graphs=True, pad_slot=8, attention="sdpa")
    assert fd.warm_buckets(8) > 0
    for _graph, _tokens, _slots, (logits, new_len) in fd._graphs.values():
        assert logits.grad_fn is None and not logits.requires_grad


def test_the_service_serves_a_model_without_gradients(tmp_path_factory):
    folder = model_folder(tmp_path_factory.getbasetemp() / "runner-grad")
    svc = ModelService(serve_config(folder, max_slots=2, engine_process="off"))
    assert not any(p.requires_grad for p in svc.engine.runner.model.parameters())
