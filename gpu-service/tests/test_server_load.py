"""Bounded load test: 64 concurrent streams against the real server, none losing or duplicating tokens."""
from __future__ import annotations

import time

import pytest

from service_fixtures import (ServerThread, chat, model_folder, request_body, run_requests, serve_config,  # noqa: F401
                              single_torch_thread, wait_until)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

N_STREAMS = 64
PROMPTS = [[{"role": "user", "content": text}] for text in (
    "Hi", "Hello there, little fox!", "Tell me about the river.", "What is 2 + 2?",
    "Once upon a time there was a little fox who lived at the edge of a quiet forest.",
    "The cache keeps the keys and values.", "Rivers run to the sea.", "How are you today?")]


@pytest.fixture(scope="module", params=["off", "on"], ids=["serial", "overlap"])
def srv(tmp_path_factory, request):
    folder = model_folder(tmp_path_factory.mktemp("load-models"))
    with ServerThread(serve_config(folder, max_slots=16, max_waiting=N_STREAMS, max_batched_tokens=256,
                                   overlap=request.param)) as s:
        yield s


def test_64_concurrent_streams_lose_and_duplicate_nothing(srv):
    bodies = [request_body(chat(PROMPTS[i % 8], max_tokens=16 + (i % 5) * 4, request_id=f"load-{i}",
                                return_blob=i % 2 == 0)) for i in range(N_STREAMS)]
    solo = {i: run_requests(srv.url, [bodies[i]])[0] for i in range(40)}   # each distinct (prompt, length)
    t0 = time.monotonic()
    results = run_requests(srv.url, bodies)
    elapsed = time.monotonic() - t0
    assert elapsed < 60
    tok = srv.service.tokenizer
    for i, r in enumerate(results):
        assert r.status == 200 and r.ended, i
        assert r.events[0]["type"] == "start" and r.events[0]["request_id"] == f"load-{i}"
        done = r.done
        ids = r.token_ids
        eos = 1 if done["finish_reason"] == "stop" and len(ids) < done["usage"]["completion_tokens"] else 0
        assert done["usage"]["completion_tokens"] == len(ids) + eos, i          # every sampled id delivered once
        assert ids == solo[i % 40].token_ids and r.text == solo[i % 40].text, i  # same as alone (greedy)
        assert r.text == tok.decode(ids) or "\ufffd" in tok.decode(ids)
        assert done["blob_bytes"] == len(r.blob) and (len(r.blob) > 0) == (i % 2 == 0)
    engine = srv.service.async_engine
    wait_until(lambda: engine.stats()["running"] == 0 and engine.stats()["waiting"] == 0)
    print(f"{N_STREAMS} streams, {sum(len(r.token_ids) for r in results)} tokens in {elapsed:.2f}s")
