"""The service's access log: one structured line per request, joined to the edge's by X-Request-Id,
with the generation's outcome and token counts and never a prompt, secret or blob."""
from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from lckv_service.server import protocol as P

from service_fixtures import MODEL_ID, SECRET, ServerThread, model_folder, request_body, serve_config, single_torch_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_torch_thread")
PROMPT = "Tell me about the secret lighthouse"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with ServerThread(serve_config(model_folder(tmp_path_factory.mktemp("models")))) as s:
        yield s


def call(url: str, method: str, path: str, headers: dict, body: bytes = b"") -> int:
    async def go():
        async with aiohttp.ClientSession() as s, s.request(method, url + path, headers=headers, data=body) as r:
            await r.read()
            return r.status
    return asyncio.run(go())


def access_lines(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "lckv_service.access"]


def test_one_line_per_request_with_the_callers_request_id(srv, caplog):
    body = request_body({"request_id": "req_edge42", "model": MODEL_ID, "kind": "chat",
                         "messages": [{"role": "user", "content": PROMPT}],
                         "sampling": {"max_tokens": 3, "temperature": 0}, "return_blob": True})
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": P.CONTENT_TYPE, "X-Request-Id": "req_edge42"}
    with caplog.at_level(logging.INFO, logger="lckv_service.access"):
        assert call(srv.url, "POST", "/v1/internal/generate", headers, body) == 200
        assert call(srv.url, "GET", "/readyz", {}) == 200  # probes are not logged
        assert call(srv.url, "GET", "/v1/internal/models", {"Authorization": "Bearer wrong", "X-Request-Id": "req_bad"}) == 401
        assert call(srv.url, "GET", "/v1/internal/models", {"Authorization": f"Bearer {SECRET}", "X-Request-Id": "a b{c}"}) == 200
    lines = access_lines(caplog)
    assert len(lines) == 3
    gen, denied, odd = lines
    assert gen["request_id"] == "req_edge42" and gen["status"] == 200 and gen["path"] == "/v1/internal/generate"
    assert gen["outcome"] in {"stop", "length"} and gen["completion_tokens"] >= 1 and gen["prompt_tokens"] > 0
    assert denied["request_id"] == "req_bad" and denied["status"] == 401
    assert odd["request_id"] is None  # a malformed id is dropped, never echoed into the log
    text = caplog.text + repr(lines)
    assert PROMPT not in text and "lighthouse" not in text and SECRET not in text
