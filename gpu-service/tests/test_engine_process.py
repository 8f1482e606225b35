"""The engine in its own process (server/engine_process.py), with real processes: it serves what the
in-process engine serves; a killed engine process fails the open streams in-band and takes the replica
out of service (`serve` exits non-zero, for its supervisor); a killed server takes its engine process
with it."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from lckv_service.server.app import STATE

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from lckv_bench.service import engine_pids  # noqa: E402
from service_fixtures import (SECRET, ServerThread, chat, model_folder, request_body, run_one, serve_config,  # noqa: F401
                              serve_process, serve_ready, single_torch_thread, split_frames, wait_until)
from lckv_service.server import protocol as P

pytestmark = pytest.mark.usefixtures("single_torch_thread")

HELLO = [{"role": "user", "content": "Hello there, little fox!"}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return model_folder(tmp_path_factory.mktemp("models"))


def test_both_engine_modes_serve_the_same_tokens_texts_and_blobs(folder):
    turn2 = [{"role": "user", "content": "And the river?"}]
    out = {}
    for mode in ("off", "on"):
        with ServerThread(serve_config(folder, engine_process=mode)) as s:
            t1 = run_one(s.url, chat(HELLO, max_tokens=12, return_blob=True))
            t2 = run_one(s.url, chat(turn2, max_tokens=12, return_blob=True, stop=["."]), blob=t1.blob)
            c = run_one(s.url, {"request_id": "c", "model": "lckv-tiny", "kind": "completion", "prompt": "The fox",
                                "sampling": {"max_tokens": 8}})
            out[mode] = [(r.status, r.token_ids, r.text, r.done, r.blob) for r in (t1, t2, c)]
    assert out["on"] == out["off"]
    assert all(status == 200 for status, *_ in out["on"]) and out["on"][1][4]


def test_a_killed_engine_process_fails_open_streams_in_band_and_the_replica_stops_serving(folder):
    with ServerThread(serve_config(folder)) as srv:
        async def go():
            async with aiohttp.ClientSession() as s:
                resp = await s.post(srv.url + "/v1/internal/generate",
                                    data=request_body(chat(HELLO, max_tokens=512, return_blob=True)),
                                    headers={"Authorization": f"Bearer {SECRET}"})
                assert resp.status == 200
                header = await resp.content.readexactly(5)      # the start frame: the request is open
                await resp.content.readexactly(int.from_bytes(header[1:], "big"))
                os.kill(srv.service.async_engine.pid, signal.SIGKILL)
                return await resp.read()
        rest = asyncio.run(go())
        frames = split_frames(rest)
        events = [json.loads(p) for k, p in frames if k == P.J]
        assert frames[-1] == (P.E, b"") and events[-1]["type"] == "error"
        assert events[-1]["error"]["code"] == "internal_error" and not any(e["type"] == "done" for e in events)
        wait_until(lambda: not srv.app[STATE].ready)
        r = run_one(srv.url, chat(HELLO, max_tokens=3))
        assert r.status == 503 and r.error["code"] == "overloaded" and int(r.headers["Retry-After"]) >= 1
        assert "exit code" in str(srv.app[STATE].failure)


def _engine_child(pid: int) -> int:
    (child,) = engine_pids(pid)
    return child


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return True


def test_serve_exits_with_a_failure_code_when_its_engine_process_is_killed(folder):
    proc, port = serve_process(folder)
    try:
        wait_until(lambda: serve_ready(port) or proc.poll() is not None, 120)
        assert proc.poll() is None
        os.kill(_engine_child(proc.pid), signal.SIGKILL)
        assert proc.wait(60) == 1
        assert "the engine process exited" in proc.stderr.read()
    finally:
        proc.kill()


def test_the_engine_process_exits_when_its_server_is_killed(folder):
    proc, port = serve_process(folder)
    try:
        wait_until(lambda: serve_ready(port) or proc.poll() is not None, 120)
        child = _engine_child(proc.pid)
        proc.kill()
        proc.wait(10)
        wait_until(lambda: _gone(child), 30)
    finally:
        proc.kill()


def test_the_channel_carries_messages_and_tensor_bytes_in_order_byte_exact():
    """Tensor bytes bypass the Connection but share its socket: a receiver reading messages and
    tensors in the sender's order gets each one whole, for tensors far larger than the socket's buffer."""
    import multiprocessing as mp
    import threading

    import torch

    from lckv_service.server.engine_process import Channel
    a, b = mp.get_context("spawn").Pipe(duplex=True)
    send, recv = Channel(a), Channel(b)
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(2, 1024, 1024, generator=g).to(torch.bfloat16),   # 4 MiB
               torch.empty(0, 3), torch.randint(0, 2**31, (3, 5), generator=g, dtype=torch.int64),
               torch.randn(6_000_000, generator=g)]                              # 24 MB

    def writer():
        for i, t in enumerate(tensors):
            send.send(("tensor", i, tuple(t.shape), t.dtype))
            send.send_tensor(t)
        send.send(("end",))

    th = threading.Thread(target=writer)
    th.start()
    got = []
    while (msg := recv.recv())[0] != "end":
        got.append(recv.recv_tensor(msg[2], msg[3]))
    th.join()
    assert len(got) == len(tensors)
    for t, u in zip(tensors, got):
        assert u.dtype == t.dtype and u.shape == t.shape and torch.equal(u, t)
    send.close()
    with pytest.raises(EOFError):   # the writer gone mid-stream: a clear end, not a short tensor
        recv.recv_tensor((4,), torch.float32)
    recv.close()
