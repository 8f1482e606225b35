"""The real HTTP server on 127.0.0.1, driven over docs/internal-protocol.md: streaming order, usage and
blob, auth, every class of malformed input, sessions, batching, cancellation and admission control."""
from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
import torch

from lckv_service import blob as blob_codec
from lckv_service.checkpoint import load_model, model_identity
from lckv_service.server import protocol as P

from service_fixtures import (MODEL_ID, SECRET, ServerThread, chat, model_folder, post, request_body, run_one,
                              run_requests, serve_config, single_torch_thread, split_frames, wait_until)  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_torch_thread")

HELLO = [{"role": "user", "content": "Hello there, little fox!"}]
LIMIT_BYTES = 2 * 2**20


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return model_folder(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def srv(folder):
    with ServerThread(serve_config(folder, max_request_bytes=LIMIT_BYTES)) as s:
        yield s


def get(url: str, path: str, secret: str | None = SECRET) -> tuple[int, dict, bytes]:
    async def go():
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        async with aiohttp.ClientSession() as s, s.get(url + path, headers=headers) as r:
            return r.status, dict(r.headers), await r.read()
    return asyncio.run(go())


# ---- health, models, metrics, auth -----------------------------------------------------------------
def test_health_ready_and_ping_need_no_auth(srv):
    assert get(srv.url, "/healthz", None)[::2] == (200, b'{"status": "ok"}')
    assert json.loads(get(srv.url, "/readyz", None)[2]) == {"status": "ready"}
    assert get(srv.url, "/ping", None)[0] == 200


def test_models_describes_the_served_model(srv):
    status, _, body = get(srv.url, "/v1/internal/models")
    (m,) = json.loads(body)["models"]
    cfg = srv.service.model_cfg
    assert status == 200 and m["id"] == MODEL_ID and m["fingerprint"] == cfg.fingerprint()
    assert (m["sinks"], m["window"], m["context_window"]) == (4, 250, 254)
    assert m["kv_layers"] == len(cfg.kv_layers) == 3 and m["num_layers"] == 4
    assert m["cache_bytes_per_token"] == 2 * 3 * cfg.num_kv_heads * cfg.head_dim * 4   # float32
    assert m["max_prompt_tokens"] == 254 and isinstance(m["created"], int)


@pytest.mark.parametrize("path", ["/v1/internal/models", "/metrics", "/v1/internal/generate"])
@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Basic {SECRET}", f"Bearer {SECRET}x", "Bearer "])
def test_auth_failures(srv, path, auth, caplog):
    async def go():
        headers = {"Authorization": auth} if auth else {}
        async with aiohttp.ClientSession() as s:
            method = s.post if path.endswith("generate") else s.get
            async with method(srv.url + path, headers=headers, data=b"") as r:
                return r.status, await r.json()
    with caplog.at_level(logging.DEBUG):
        status, body = asyncio.run(go())
    assert status == 401
    assert body["error"]["type"] == "authentication_error" and body["error"]["code"] == "invalid_service_secret"
    assert SECRET not in caplog.text


def test_secret_header_for_gateways_that_own_authorization(srv):
    async def go(headers):
        async with aiohttp.ClientSession() as s, s.get(srv.url + "/v1/internal/models", headers=headers) as r:
            return r.status
    assert asyncio.run(go({"X-Service-Secret": SECRET, "Authorization": "Bearer gateway-key"})) == 200
    assert asyncio.run(go({"X-Service-Secret": "wrong", "Authorization": f"Bearer {SECRET}"})) == 401


def test_metrics(srv):
    run_one(srv.url, chat(HELLO, max_tokens=4))
    status, headers, body = get(srv.url, "/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for name in ("lckv_generated_tokens_total", "lckv_time_to_first_token_seconds_count",
                 "lckv_inter_token_latency_seconds_bucket", "lckv_queue_depth", "lckv_running_requests",
                 "lckv_kv_pool_used_bytes", "lckv_kv_pool_bytes", 'lckv_requests_total{outcome="length"}'):
        assert name in text, name
    value = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("lckv_")}
    # every kind of engine metric arrives (the engine runs in its own process: its calls are replayed here)
    assert value["lckv_generated_tokens_total"] >= 4 and value["lckv_time_to_first_token_seconds_count"] >= 1
    assert value["lckv_inter_token_latency_seconds_count"] >= 3 and value["lckv_engine_steps_total"] >= 4


def test_unknown_route_is_an_openai_shaped_404(srv):
    status, _, body = get(srv.url, "/v1/nope")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


# ---- streaming -----------------------------------------------------------------------------------
def test_stream_order_usage_and_blob(srv):
    r = run_one(srv.url, chat(HELLO, max_tokens=10, return_blob=True, request_id="req_order"))
    assert r.status == 200 and r.headers["Content-Type"] == P.CONTENT_TYPE and r.ended
    types = [e["type"] for e in r.events]
    assert types[0] == "start" and types[-1] == "done" and set(types[1:-1]) == {"delta"}
    start, done = r.events[0], r.done
    assert start["request_id"] == "req_order" and start["model"] == MODEL_ID and start["cached_tokens"] == 0
    n_prompt = len(srv.service.tokenizer.encode_chat(HELLO))
    assert start["prompt_tokens"] == n_prompt
    usage = done["usage"]
    eos = 1 if done["finish_reason"] == "stop" else 0
    assert usage == {"prompt_tokens": n_prompt, "completion_tokens": len(r.token_ids) + eos,
                     "total_tokens": n_prompt + len(r.token_ids) + eos, "cached_tokens": 0}
    assert done["blob_bytes"] == len(r.blob) > 0
    state = blob_codec.decode(r.blob, srv.service.model_cfg, srv.service.identity)
    history = HELLO + [{"role": "assistant", "content": r.text}]
    assert state.token_ids == srv.service.tokenizer.encode_chat(history, False)
    assert done["session"] == {"tokens_seen": len(state.token_ids), "cache_tokens": len(state.token_ids),
                               "evicted_tokens": 0}


def test_stateless_request_sends_no_blob(srv):
    r = run_one(srv.url, chat(HELLO, max_tokens=3))
    assert r.status == 200 and r.blob == b"" and r.done["blob_bytes"] == 0 and r.ended


def test_completion_kind(srv):
    body = {"model": MODEL_ID, "kind": "completion", "prompt": "Once upon a time",
            "sampling": {"max_tokens": 5}, "return_blob": True}
    r = run_one(srv.url, body)
    assert r.status == 200 and r.done["usage"]["completion_tokens"] == 5
    state = blob_codec.decode(r.blob, srv.service.model_cfg, srv.service.identity)
    assert state.token_ids == srv.service.tokenizer.encode("Once upon a time" + r.text)


# ---- malformed input -------------------------------------------------------------------------------
GOOD = chat(HELLO, max_tokens=4)


def _frame(kind: bytes, payload: bytes, length: int | None = None) -> bytes:
    return kind + (len(payload) if length is None else length).to_bytes(4, "big") + payload


BAD_FRAMES = {
    "empty body": b"",
    "truncated header": b"J\x00\x00",
    "truncated payload": _frame(b"J", b'{"a":1}', length=100),
    "blob first": _frame(b"B", b"xx") + request_body(GOOD),
    "two J frames": request_body(GOOD, end=False) + request_body(GOOD),
    "non-empty E": request_body(GOOD, end=False) + _frame(b"E", b"x"),
    "data after E": request_body(GOOD) + _frame(b"B", b"x"),
    "unknown kind": request_body(GOOD, end=False) + _frame(b"X", b""),
    "oversized frame length": _frame(b"J", b"", length=2**31),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frames(srv, case):
    r = run_requests(srv.url, [BAD_FRAMES[case]])[0]
    assert r.status == 400 and r.error["code"] == "invalid_frame" and r.error["type"] == "invalid_request_error"


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'"text"', b"\xff\xfe{}", b'{"model": '])
def test_bad_json(srv, payload):
    r = run_requests(srv.url, [_frame(b"J", payload)])[0]
    assert r.status == 400 and r.error["code"] == "invalid_json" and r.error["param"] == "body"


def _with(**over) -> dict:
    body = json.loads(json.dumps(GOOD))
    for k, v in over.items():
        if k.startswith("sampling_"):
            body["sampling"][k.removeprefix("sampling_")] = v
        elif v is None:
            body.pop(k)
        else:
            body[k] = v
    return body


BAD_FIELDS = [
    (_with(temperature=0.5), "temperature"),
    (_with(stream=True), "stream"),
    (_with(messages=[{"role": "user", "content": "x", "name": "bob"}]), "messages[0].name"),
    (_with(sampling_frequency_penalty=1), "sampling.frequency_penalty"),
    (_with(kind="edit"), "kind"),
    (_with(kind=None), "kind"),
    (_with(model=None), "model"),
    (_with(model=""), "model"),
    (_with(messages=[]), "messages"),
    (_with(messages=None), "messages"),
    (_with(messages="hi"), "messages"),
    (_with(messages=[{"role": "tool", "content": "x"}]), "messages[0].role"),
    (_with(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (_with(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]),
     "messages[0].content[0]"),
    (_with(prompt="also"), "prompt"),
    (_with(return_blob="yes"), "return_blob"),
    (_with(request_id=7), "request_id"),
    (_with(request_id="x" * 129), "request_id"),
    (_with(sampling="hot"), "sampling"),
    (_with(sampling_temperature=3), "sampling.temperature"),
    (_with(sampling_temperature="0"), "sampling.temperature"),
    (_with(sampling_top_p=0), "sampling.top_p"),
    (_with(sampling_max_tokens=0), "sampling.max_tokens"),
    (_with(sampling_max_tokens=513), "sampling.max_tokens"),
    (_with(sampling_seed=-2**63 - 1), "sampling.seed"),
    (_with(sampling_stop=["a", "b", "c", "d", "e"]), "sampling.stop"),
    ({"model": MODEL_ID, "kind": "completion", "prompt": 7}, "prompt"),
    ({"model": MODEL_ID, "kind": "completion", "prompt": "x", "messages": HELLO}, "messages"),
]


@pytest.mark.parametrize("body,param", BAD_FIELDS, ids=[p for _, p in BAD_FIELDS])
def test_bad_fields_name_the_parameter(srv, body, param):
    r = run_one(srv.url, body)
    assert r.status == 400, r.body
    assert r.error == {"message": r.error["message"], "type": "invalid_request_error", "param": param,
                       "code": "invalid_value"}


LONE_SURROGATES = [
    (_with(messages=[{"role": "user", "content": "hi \ud83d"}]), "messages[0].content"),
    (_with(messages=[{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]), "messages[0].content[0].text"),
    ({"model": MODEL_ID, "kind": "completion", "prompt": "x\ud83d"}, "prompt"),
]


@pytest.mark.parametrize("body,param", LONE_SURROGATES, ids=[p for _, p in LONE_SURROGATES])
def test_unpaired_surrogates_are_400_not_a_tokenizer_crash(srv, body, param):
    # valid JSON (an escaped "\ud83d", as JavaScript's JSON.stringify writes it) but not Unicode text
    r = run_requests(srv.url, [P.frame(P.J, json.dumps(body).encode()) + P.end_frame()])[0]
    assert r.status == 400, r.body
    assert r.error["param"] == param and r.error["code"] == "invalid_value"
    assert run_one(srv.url, GOOD).status == 200  # and the service is fine afterwards


def test_developer_role_and_text_parts_are_accepted(srv):
    msgs = [{"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hello there, "}, {"type": "text", "text": "fox!"}]}]
    a = run_one(srv.url, chat(msgs, max_tokens=4))
    b = run_one(srv.url, chat([{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Hello there, fox!"}], max_tokens=4))
    assert a.status == b.status == 200 and a.token_ids == b.token_ids


def test_unknown_model_is_404(srv):
    r = run_one(srv.url, _with(model="gpt-4"))
    assert r.status == 404 and r.error["code"] == "model_not_found" and r.error["param"] == "model"


def test_prompt_over_the_limit(srv):
    r = run_one(srv.url, chat([{"role": "user", "content": "fox " * 300}]))
    assert r.status == 400 and r.error["code"] == "context_length_exceeded" and r.error["param"] == "messages"
    # the numbers travel as fields (the edge trims a rebuild by them), and agree with the message
    limits = r.error["limits"]
    assert limits["max_prompt_tokens"] == srv.service.max_prompt_tokens < limits["prompt_tokens"]
    assert f"has {limits['prompt_tokens']} tokens, more than the limit of {limits['max_prompt_tokens']}" in r.error["message"]


def test_oversize_body_is_413(srv):
    r = run_one(srv.url, GOOD, blob=b"\0" * (LIMIT_BYTES + 10))
    assert r.status == 413 and r.error["code"] == "request_too_large"


def _blob(srv) -> bytes:
    return run_one(srv.url, chat(HELLO, max_tokens=4, return_blob=True)).blob


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_corrupt_blob_is_400(srv, damage):
    b = bytearray(_blob(srv))
    if damage == "flip":
        b[len(b) // 2] ^= 0x40
    elif damage == "truncate":
        b = b[:len(b) - 7]
    elif damage == "empty":
        b = b""
    else:
        b = b"LCKVBLOB" + b"\x01\x00" + b"\x01" * 98  # right magic and version, garbage after
    r = run_one(srv.url, chat(HELLO), blob=bytes(b))
    assert r.status == 400 and r.error["code"] == "blob_invalid" and r.error["param"] == "blob"


def test_blob_of_another_format_version_is_409(srv):
    b = bytearray(_blob(srv))
    b[8:10] = (2).to_bytes(2, "little")
    r = run_one(srv.url, chat(HELLO), blob=bytes(b))
    assert r.status == 409 and r.error["code"] == "blob_version" and r.error["param"] == "blob"


def test_foreign_blob_is_409(srv, tmp_path_factory):
    other = load_model(model_folder(tmp_path_factory.getbasetemp() / "foreign", seed=1))
    state = blob_codec.decode(_blob(srv), srv.service.model_cfg, srv.service.identity)
    foreign = blob_codec.encode(state, other.cfg, model_identity(other))
    r = run_one(srv.url, chat(HELLO), blob=foreign)
    assert r.status == 409 and r.error["code"] == "blob_model_mismatch" and r.error["param"] == "blob"


def test_blob_of_another_dtype_is_409(srv):
    # a replica computing in bfloat16 made it; this one computes in float32: rebuild, never reinterpret
    state = blob_codec.decode(_blob(srv), srv.service.model_cfg, srv.service.identity)
    assert state.k.dtype == srv.service.dtype == torch.float32
    state.k, state.v = state.k.to(torch.bfloat16), state.v.to(torch.bfloat16)
    bf16 = blob_codec.encode(state, srv.service.model_cfg, srv.service.identity)
    r = run_one(srv.url, chat(HELLO), blob=bf16)
    assert r.status == 409 and r.error["code"] == "blob_model_mismatch" and r.error["param"] == "blob"
    assert "bfloat16" in r.error["message"] and "float32" in r.error["message"]


def test_blob_whose_counter_has_no_room_is_refused_before_work(srv):
    # the reader accepts tokens_seen up to the writer's bound; a turn that would pass it is refused up
    # front (400 blob_invalid: the edge rebuilds), not when its result cannot be encoded
    state = blob_codec.decode(_blob(srv), srv.service.model_cfg, srv.service.identity)
    state.tokens_seen = blob_codec.MAX_TOKENS_SEEN
    full = blob_codec.encode(state, srv.service.model_cfg, srv.service.identity)
    r = run_one(srv.url, chat(HELLO, max_tokens=4), blob=full)
    assert r.status == 400 and r.error["code"] == "blob_invalid" and "no room" in r.error["message"]
    state.tokens_seen = blob_codec.MAX_TOKENS_SEEN - 1000
    roomy = blob_codec.encode(state, srv.service.model_cfg, srv.service.identity)
    r = run_one(srv.url, chat(HELLO, max_tokens=4, return_blob=True), blob=roomy)
    assert r.status == 200
    assert blob_codec.decode(r.blob, srv.service.model_cfg, srv.service.identity).tokens_seen <= blob_codec.MAX_TOKENS_SEEN


def test_non_finite_blob_values_are_400(srv):
    state = blob_codec.decode(_blob(srv), srv.service.model_cfg, srv.service.identity)
    state.k[0, 0, 0, 0] = float("nan")
    bad = blob_codec.encode(state, srv.service.model_cfg, srv.service.identity)
    r = run_one(srv.url, chat(HELLO), blob=bad)
    assert r.status == 400 and r.error["code"] == "blob_invalid"


def test_bad_requests_do_not_poison_the_batch(srv):
    before = run_one(srv.url, chat(HELLO, max_tokens=12)).token_ids
    bodies = [request_body(chat(HELLO, max_tokens=12))] + list(BAD_FRAMES.values()) \
        + [request_body(b) for b, _ in BAD_FIELDS] + [request_body(chat(HELLO, max_tokens=12))]
    results = run_requests(srv.url, bodies)
    assert results[0].status == results[-1].status == 200
    assert results[0].token_ids == results[-1].token_ids == before
    assert all(r.status == 400 for r in results[1:-1])
    wait_until(lambda: srv.service.async_engine.stats()["running"] == 0)


# ---- sessions --------------------------------------------------------------------------------------
def test_turn_plus_blob_equals_the_stateless_request(srv):
    t1 = run_one(srv.url, chat(HELLO, max_tokens=12, return_blob=True))
    turn2 = [{"role": "user", "content": "And the river?"}]
    t2 = run_one(srv.url, chat(turn2, max_tokens=12, return_blob=True), blob=t1.blob)
    history = HELLO + [{"role": "assistant", "content": t1.text}] + turn2
    st = run_one(srv.url, chat(history, max_tokens=12, return_blob=True))
    assert t2.token_ids == st.token_ids and t2.done["finish_reason"] == st.done["finish_reason"]
    assert t2.events[0]["cached_tokens"] == t1.done["session"]["tokens_seen"]
    assert t2.done["usage"]["prompt_tokens"] == st.done["usage"]["prompt_tokens"]
    cfg, ident = srv.service.model_cfg, srv.service.identity
    a, b = blob_codec.decode(t2.blob, cfg, ident), blob_codec.decode(st.blob, cfg, ident)
    assert a.token_ids == b.token_ids and torch.allclose(a.k, b.k, atol=1e-5)


def test_sessions_with_eviction(folder):
    cfg = serve_config(folder, window=24, evict_step=4, max_batched_tokens=16, max_prompt_tokens=200)
    with ServerThread(cfg) as s:
        msgs = [{"role": "user", "content": "Once upon a time there was a little fox who lived by the sea."}]
        t1 = run_one(s.url, chat(msgs, max_tokens=12, return_blob=True))
        assert t1.done["session"]["evicted_tokens"] > 0 and t1.done["session"]["cache_tokens"] <= 28
        turn2 = [{"role": "user", "content": "Tell me about the river and the hills."}]
        t2 = run_one(s.url, chat(turn2, max_tokens=12, return_blob=True), blob=t1.blob)
        st = run_one(s.url, chat(msgs + [{"role": "assistant", "content": t1.text}] + turn2,
                                 max_tokens=12, return_blob=True))
        assert t2.token_ids == st.token_ids and t2.done["session"] == st.done["session"]
        a, b = (blob_codec.decode(x.blob, s.service.model_cfg, s.service.identity) for x in (t2, st))
        assert a.token_ids == b.token_ids and a.tokens_seen == b.tokens_seen and torch.allclose(a.k, b.k, atol=1e-5)


def test_blob_larger_than_this_replicas_window_is_trimmed_by_the_same_rule(srv, folder):
    long_turn = run_one(srv.url, chat(HELLO, max_tokens=30, return_blob=True))   # window 250: no eviction
    assert long_turn.done["session"]["cache_tokens"] > 28
    turn2 = [{"role": "user", "content": "More?"}]
    with ServerThread(serve_config(folder, window=24, evict_step=4)) as small:
        r = run_one(small.url, chat(turn2, max_tokens=5, return_blob=True), blob=long_turn.blob)
        assert r.status == 200 and r.events[0]["cached_tokens"] == long_turn.done["session"]["tokens_seen"]
        state = blob_codec.decode(r.blob, small.service.model_cfg, small.service.identity)
        assert len(state.token_ids) <= 28
        old = blob_codec.decode(long_turn.blob, srv.service.model_cfg, srv.service.identity)
        assert state.token_ids[:4] == old.token_ids[:4]                       # the sinks survive
        assert r.done["session"]["tokens_seen"] == state.tokens_seen


# ---- batching, cancellation, admission --------------------------------------------------------------
def test_concurrent_requests_get_their_solo_tokens(srv):
    prompts = [[{"role": "user", "content": "Hi"}], HELLO,
               [{"role": "user", "content": "Once upon a time there was a little fox who lived at the edge."}],
               [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "The river?"}]]
    bodies = [request_body(chat(p, max_tokens=6 + 5 * i)) for i, p in enumerate(prompts)]
    solo = [run_requests(srv.url, [b])[0].token_ids for b in bodies]
    together = run_requests(srv.url, bodies * 3)
    assert [r.token_ids for r in together] == solo * 3


async def _open_stream(session, url, obj):
    resp = await session.post(url + "/v1/internal/generate", data=request_body(obj),
                              headers={"Authorization": f"Bearer {SECRET}"})
    assert resp.status == 200
    header = await resp.content.readexactly(5)
    start = json.loads(await resp.content.readexactly(int.from_bytes(header[1:], "big")))
    assert start["type"] == "start"
    return resp


def test_client_disconnect_frees_the_slot(srv):
    engine = srv.service.async_engine
    def generated():
        return srv.metrics.registry.get_sample_value("lckv_generated_tokens_total")
    tokens_before = generated()

    async def go():
        async with aiohttp.ClientSession() as s:
            resp = await _open_stream(s, srv.url, chat(HELLO, max_tokens=512))
            resp.close()   # the caller goes away mid-stream
    asyncio.run(go())
    wait_until(lambda: engine.stats()["running"] == 0 and engine.stats()["waiting"] == 0
               and engine.stats()["kv_bytes_used"] == 0)
    assert generated() - tokens_before < 500


def test_queue_full_is_503_with_retry_after(folder):
    with ServerThread(serve_config(folder, max_slots=1, max_waiting=1)) as s:
        engine = s.service.async_engine

        async def go():
            async with aiohttp.ClientSession() as sess:
                first = await _open_stream(sess, s.url, chat(HELLO, max_tokens=512))
                # the first must hold the slot before the second queues: its response starts at admission
                # to the queue, and a waiting==1 seen while the *first* still waits let the third in
                await asyncio.to_thread(wait_until, lambda: engine.stats()["running"] == 1)
                second = asyncio.create_task(post(sess, s.url, request_body(chat(HELLO, max_tokens=2))))
                await asyncio.to_thread(wait_until, lambda: engine.stats()["waiting"] == 1)
                third = await post(sess, s.url, request_body(chat(HELLO, max_tokens=2)))
                first.close()
                return third, await second
        third, second = asyncio.run(go())
        assert third.status == 503 and third.error["code"] == "overloaded" and third.error["type"] == "server_error"
        assert int(third.headers["Retry-After"]) >= 1
        assert second.status == 200 and second.ended      # the queued one ran once the slot was freed


def test_error_after_start_is_sent_in_band(folder):
    """A failure inside the engine (injected: the engine runs in this process here) reaches the open
    stream as an error frame with no internal detail, and the next request is served."""
    with ServerThread(serve_config(folder, engine_process="off")) as srv:
        async def go():
            async with aiohttp.ClientSession() as s:
                resp = await _open_stream(s, srv.url, chat(HELLO, max_tokens=512, return_blob=True))
                srv.service.engine.fail_all(RuntimeError("secret internal detail"))
                return await resp.read()
        rest = asyncio.run(go())
        assert run_one(srv.url, chat(HELLO, max_tokens=3)).status == 200
    frames = split_frames(rest)
    assert frames[-1] == (P.E, b"") and all(k in (P.J, P.E) for k, _ in frames)   # no blob
    events = [json.loads(p) for k, p in frames if k == P.J]
    assert events[-1] == {"type": "error", "error": {"message": "internal error", "type": "server_error",
                                                    "param": None, "code": "internal_error"}}
    assert not any(e["type"] == "done" for e in events)


# ---- CLI ---------------------------------------------------------------------------------------------
def test_cli_make_test_model_and_serve_without_secret(tmp_path, monkeypatch, capsys):
    from lckv_service.__main__ import main
    from lckv_service.tokenizer import ChatTokenizer

    assert main(["make-test-model", str(tmp_path / "m")]) == 0
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names
    assert ChatTokenizer.from_folder(tmp_path / "m").eos_token == "<|end|>"
    monkeypatch.delenv("GPU_SERVICE_SECRET", raising=False)
    assert main(["serve", "--model", str(tmp_path / "m")]) == 2
    assert "GPU_SERVICE_SECRET" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2


def test_an_empty_completions_prompt_starts_a_new_document(srv):
    """OpenAI: with no prompt the model generates as if from the beginning of a new document."""
    tok = srv.service.tokenizer
    assert tok.document_separator_id is not None
    r = run_one(srv.url, {"model": MODEL_ID, "kind": "completion", "prompt": "", "sampling": {"max_tokens": 6}})
    assert r.status == 200 and r.events[0]["prompt_tokens"] == 1
    assert r.events[-1]["usage"]["completion_tokens"] >= 1


def test_frame_reader_takes_whole_frames_and_keeps_the_rest():
    """A response stream arrives in arbitrary pieces: only complete frames come out, in order."""
    stream = P.json_frame({"type": "delta", "text": "hé"}) + b"".join(P.blob_frames(b"xyz")) + P.end_frame()
    for size in (1, 2, 5, len(stream)):                # one byte at a time is the worst split
        reader, got = P.FrameReader(), []
        for i in range(0, len(stream), size):
            got += reader.feed(stream[i:i + size])
        assert reader.pending == 0 and [k for k, _ in got] == [P.J, P.B, P.E]
        assert split_frames(stream) == got              # the strict test parser agrees
    reader = P.FrameReader()
    assert reader.feed(stream[:7]) == [] and reader.pending == 7
    big = b"".join(P.blob_frames(bytes(range(256)) * 9000))   # 2.2 MB: frames of 1 MiB and a tail
    reader = P.FrameReader()
    got = [f for i in range(0, len(big), 65536) for f in reader.feed(big[i:i + 65536])]
    assert b"".join(p for _, p in got) == bytes(range(256)) * 9000 and reader.pending == 0
