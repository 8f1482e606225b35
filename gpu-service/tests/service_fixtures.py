"""Helpers for the service tests: a real server on 127.0.0.1 (own thread + event loop) and a protocol client.

The model folder comes from `python -m lckv_service make-test-model` (lckv_service.testmodel), the same
builder the end-to-end tests use.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import torch
from aiohttp import web

from lckv_service.server import protocol as P
from lckv_service.server.app import METRICS, STATE, create_app
from lckv_service.server.service import ServeConfig
from lckv_service.testmodel import make_test_model, train_tokenizer, write_tokenizer_files
from lckv_service.tokenizer import ChatTokenizer

DEVICE = os.environ.get("LCKV_TEST_DEVICE", "cpu")   # scripts/gpu_service_suite.sh sets cuda
SECRET = "test-secret-123"
MODEL_ID = "lckv-tiny"

_folders: dict[tuple, Path] = {}


# chat prompts for the engine tests (short, long, with a system turn, digits)
ENGINE_PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hello there, little fox!"}],
    [{"role": "system", "content": "Be kind and brief."}, {"role": "user", "content": "Tell me about the river."}],
    [{"role": "user", "content": "Once upon a time there was a little fox who lived at the edge of a forest."}],
    [{"role": "user", "content": "2 + 2 = ?"}],
]


def chat_request(tok, rid, messages, max_tokens=12, return_blob=False, state=None, **sampling):
    """An engine Request for a chat turn (optionally resumed from a cache state) that records its
    events in `req.events`; its `turn` re-tokenizes it the way the service does."""
    from lckv_service.engine.request import Request, Turn
    from lckv_service.sampling import SamplingParams

    req = Request(rid, tok.encode_chat(messages, True), SamplingParams(max_tokens=max_tokens, **sampling),
                  restore_state=state, restored_tokens=len(state.token_ids) if state else 0,
                  cached_tokens=state.tokens_seen if state else 0, return_blob=return_blob,
                  turn=Turn("chat", messages=tuple(messages)))
    req.events = []
    req.emit = req.events.append
    return req


def random_chat_model(tok, device="cpu", dtype=torch.float64, **shape):
    """The tiny-test LCKV shape over `tok`'s vocabulary with a wide init (varied greedy outputs)."""
    import dataclasses
    from lckv_service.config import ModelConfig
    from lckv_service.model import LCKVModel
    cfg = dataclasses.replace(ModelConfig.preset("tiny-test"), vocab_size=tok.vocab_size, **shape)
    torch.manual_seed(0)
    m = LCKVModel(cfg)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
    return m.to(device=device, dtype=dtype).eval()


@pytest.fixture(scope="module", name="tok")
def tok_fixture(tmp_path_factory) -> ChatTokenizer:
    """A small BPE trained on the test corpus, with the chat template (one per test module)."""
    d = tmp_path_factory.mktemp("tok")
    write_tokenizer_files(train_tokenizer(), d)
    return ChatTokenizer.from_folder(d)


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny matrices: extra intra-op threads only contend on a 2-core CI machine (10x slower there)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def model_folder(tmp_root: Path, variant: str = "lckv-w2", seed: int = 0) -> Path:
    key = (str(tmp_root), variant, seed)
    if key not in _folders:
        _folders[key] = make_test_model(tmp_root / f"{variant}-{seed}", seed=seed, variant=variant)
    return _folders[key]


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def serve_process(folder: Path, *flags: str) -> tuple[subprocess.Popen, int]:
    """The real `python -m lckv_service serve` (CPU, 4 slots, window 200, then `flags`) on a free port;
    stderr piped (text). Wait for it with `wait_until(lambda: serve_ready(port) or proc.poll() is not None)`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, GPU_SERVICE_SECRET=SECRET)
    proc = subprocess.Popen([sys.executable, "-m", "lckv_service", "serve", "--model", str(folder), "--device", "cpu",
                             "--host", "127.0.0.1", "--port", str(port), "--max-slots", "4", "--window", "200", *flags],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, port


def serve_ready(port: int) -> bool:
    """GET /readyz answers 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
            c.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
            return c.recv(64).split(b" ")[1] == b"200"
    except (OSError, IndexError):
        return False


def serve_config(folder: Path, **over) -> ServeConfig:
    kw = dict(model=str(folder), secret=SECRET, model_id=MODEL_ID, device=DEVICE, dtype="float32", max_slots=8,
              window=250, max_batched_tokens=256, max_waiting=64, max_tokens=512)
    kw.update(over)
    return ServeConfig(**kw)


class ServerThread:
    """The real aiohttp app on an ephemeral port, served from a background thread."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        self.app = create_app(cfg)
        self.port: int | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._started.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics(self):
        return self.app[METRICS]

    @property
    def service(self):
        return self.app[STATE].service

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        self._started.wait(30)
        deadline = time.monotonic() + 300   # a 1B model loads in seconds; leave room on a busy host
        while not self.app[STATE].ready:
            if self.app[STATE].failure is not None:
                raise RuntimeError("server failed to load") from self.app[STATE].failure
            if time.monotonic() > deadline:
                raise TimeoutError("server not ready")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        fut = asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop)
        fut.result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


# ---- protocol client ---------------------------------------------------------------------------
def request_body(obj: dict, blob: bytes | None = None, end: bool = True) -> bytes:
    out = P.json_frame(obj)
    if blob is not None:
        out += b"".join(P.blob_frames(blob)) if blob else P.frame(P.B, b"")
    return out + (P.end_frame() if end else b"")


def split_frames(data: bytes) -> list[tuple[bytes, bytes]]:
    """Strict parser of a response body (independent of the server's parser)."""
    out, off = [], 0
    while off < len(data):
        assert len(data) - off >= 5, "truncated header"
        kind = data[off:off + 1]
        (n,) = struct.unpack(">I", data[off + 1:off + 5])
        off += 5
        assert len(data) - off >= n, "truncated payload"
        out.append((kind, data[off:off + n]))
        off += n
    return out


@dataclass
class Result:
    status: int
    headers: dict
    body: bytes
    events: list[dict] = field(default_factory=list)
    blob: bytes = b""
    ended: bool = False

    @property
    def error(self) -> dict:
        return json.loads(self.body)["error"]

    @property
    def text(self) -> str:
        return "".join(e["text"] for e in self.events if e["type"] == "delta")

    @property
    def token_ids(self) -> list[int]:
        return [t for e in self.events if e["type"] == "delta" for t in e["token_ids"]]

    @property
    def done(self) -> dict:
        return next(e for e in self.events if e["type"] == "done")


def chat(messages, max_tokens=16, return_blob=False, request_id="req_test", **sampling) -> dict:
    return {"request_id": request_id, "model": MODEL_ID, "kind": "chat", "messages": messages,
            "sampling": {"max_tokens": max_tokens, "temperature": 0.0, **sampling}, "return_blob": return_blob}


async def post(session: aiohttp.ClientSession, url: str, body: bytes, secret: str | None = SECRET) -> Result:
    headers = {"Content-Type": P.CONTENT_TYPE}
    if secret is not None:
        headers["Authorization"] = f"Bearer {secret}"
    async with session.post(url + "/v1/internal/generate", data=body, headers=headers) as r:
        data = await r.read()
        res = Result(r.status, dict(r.headers), data)
    if res.status == 200:
        for kind, payload in split_frames(data):
            assert not res.ended, "frame after E"
            if kind == P.J:
                res.events.append(json.loads(payload))
            elif kind == P.B:
                res.blob += payload
            else:
                assert kind == P.E and payload == b""
                res.ended = True
    return res


def run_requests(url: str, bodies: list[bytes], secret: str | None = SECRET) -> list[Result]:
    async def go():
        async with aiohttp.ClientSession() as s:
            return await asyncio.gather(*(post(s, url, b, secret) for b in bodies))
    return asyncio.run(go())


def run_one(url: str, obj: dict, blob: bytes | None = None) -> Result:
    return run_requests(url, [request_body(obj, blob)])[0]
