"""The engine in its own process: the server's handle (EngineProcess) and the child's side.

Python runs one thread at a time per process. In one process the engine's host work (scheduling,
sampled ids to text and events) and the HTTP side's (parsing, tokenizing, writing frames for every
stream) take turns, and once their sum passes the device's step time the GPU waits for the host.
Here the engine runs in a child process (spawned: CUDA cannot be forked), so the two run in parallel;
the server keeps the tokenizer, the checks and the blob codec.

One duplex pipe (a Unix socket pair) carries pickled tuples; tensors (a restored session's K/V, a
finished turn's exported K/V) follow their message as raw bytes, never pickled, written from and read
into the tensor's own memory (a plain-layout llama turn's K/V is tens of MB).
  server -> engine: ("add", request fields, state header | None) [+ K, V]; ("abort", id); ("stop",)
  engine -> server: ("ready", EngineInfo, stats) | ("failed", error); ("ack", id, error | None);
                    ("events", [event tuple], metrics calls, stats | None) [+ K, V per state]
A step's events travel as one message. The engine's metrics calls (EngineMetrics) are recorded in
the child and replayed on the server's metrics; its stats (queue depth, running, K/V bytes) come with
the events, at most every STATS_EVERY_S, and whenever it idles.

If the child dies, every open request gets an in-band error, new requests get 503 (OverloadedError),
and `on_death` tells the app (which marks the replica not ready and, under `serve`, exits so its
supervisor starts a new one). If the server dies, the child sees its pipe close and exits.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import pickle
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..cache import CacheState
from ..engine.engine import EngineLoop, EngineMetrics, EventRoutes, call_in
from ..engine.request import Event, Request
from ..errors import OverloadedError

log = logging.getLogger(__name__)

STATS_EVERY_S = 0.1
_METRIC_CALLS = frozenset(n for n in vars(EngineMetrics) if not n.startswith("_"))   # the protocol's calls
_REQUEST_FIELDS = ("request_id", "prompt_ids", "params", "restored_tokens", "cached_tokens", "return_blob",
                   "turn", "arrival")


@dataclass(frozen=True)
class StateHeader:
    """A CacheState without its tensors, which follow the message as K then V bytes."""
    shape: tuple[int, ...]
    dtype: torch.dtype
    token_ids: list[int]
    tokens_seen: int

    @staticmethod
    def of(state: CacheState) -> tuple["StateHeader", list[torch.Tensor]]:
        k, v = state.k.contiguous(), state.v.contiguous()
        return StateHeader(tuple(k.shape), k.dtype, state.token_ids, state.tokens_seen), [k, v]

    def receive(self, chan: "Channel") -> CacheState:
        return CacheState(k=chan.recv_tensor(self.shape, self.dtype), v=chan.recv_tensor(self.shape, self.dtype),
                          token_ids=self.token_ids, tokens_seen=self.tokens_seen)


class Channel:
    """One end of the pipe: messages through the Connection, tensor bytes straight through its socket
    (Connection.recv_bytes_into reads through intermediate bytes objects: about 5x the receiver's CPU
    for a 22 MB blob, measured). Each direction has one writer and one reader thread, and a Connection
    reads exactly its message's length, so the two never interleave."""

    def __init__(self, conn):
        self.conn = conn
        self._sock = socket.socket(fileno=os.dup(conn.fileno()))

    def send(self, msg) -> None:
        self.conn.send(msg)

    def recv(self):
        return self.conn.recv()

    def send_tensor(self, t: torch.Tensor) -> None:
        if t.numel():
            self._sock.sendall(_bytes_of(t))

    def recv_tensor(self, shape, dtype) -> torch.Tensor:
        t = torch.empty(shape, dtype=dtype)
        view, got = memoryview(_bytes_of(t)), 0
        while got < len(view):
            n = self._sock.recv_into(view[got:], len(view) - got, socket.MSG_WAITALL)
            if n == 0:
                raise EOFError("the engine pipe closed inside a tensor")
            got += n
        return t

    def close(self) -> None:
        self._sock.close()
        self.conn.close()


def _bytes_of(t: torch.Tensor):
    """A contiguous tensor's bytes as a flat array."""
    return t.reshape(-1).view(torch.uint8).numpy()


def portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling (ours do: LCKVError.__reduce__), else a
    RuntimeError naming its class; either maps to the same HTTP error (errors.http_error)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(type(exc).__name__)


class _Sender:
    """One thread writes the pipe, so a message and the tensors after it are never interleaved with
    another message, and the thread that queues a message never waits for the pipe."""

    def __init__(self, chan: Channel, name: str):
        self.chan = chan
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, msg: tuple, tensors: list[torch.Tensor] = ()) -> None:
        self._queue.put((msg, tensors))

    def close(self, timeout: float = 30) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            msg, tensors = item
            try:
                self.chan.send(msg)
                for t in tensors:
                    self.chan.send_tensor(t)
            except (OSError, ValueError):   # the other side is gone: its reader notices and reports it
                return


# ---- the server's side ----------------------------------------------------------------------------
class EngineProcess:
    """AsyncEngine's interface (start, stop, add, abort, stats) over an engine in a child process.
    The constructor spawns the child and waits for it to load the model (raising its error if it
    fails); `info` is what the child reports."""

    def __init__(self, cfg):
        ctx = mp.get_context("spawn")
        conn, child_conn = ctx.Pipe(duplex=True)   # duplex: a socket pair
        self._chan = Channel(conn)
        # the child computes with as many intra-op threads as this process would have
        self._proc = ctx.Process(target=_child_main, args=(cfg, child_conn, _log_setup(), torch.get_num_threads()),
                                 name="lckv-engine", daemon=True)
        self._proc.start()
        child_conn.close()
        self.on_death: Callable[[int | None], None] | None = None
        self._routes = EventRoutes()
        self._acks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._metrics = None
        self._dead = self._stopping = False
        try:
            msg = self._chan.recv()
        except EOFError:
            self._kill()
            raise RuntimeError(f"the engine process exited while loading (exit code {self._proc.exitcode})") from None
        except BaseException:
            self._kill()
            raise
        if msg[0] == "failed":
            self._proc.join(30)
            self._kill()
            raise msg[1]
        _, self.info, self._stats = msg
        self._sender = _Sender(self._chan, "lckv-engine-send")
        self._receiver = threading.Thread(target=self._receive, name="lckv-engine-recv", daemon=True)

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def bind_metrics(self, metrics) -> None:
        """Where the engine's metrics calls are replayed (the server's ServiceMetrics)."""
        self._metrics = metrics

    def start(self) -> None:
        self._receiver.start()

    def stop(self) -> None:
        self._stopping = True
        if self._proc.is_alive():
            self._sender.put(("stop",))
            self._sender.close(10)
            self._proc.join(30)
        self._kill()

    async def add(self, req: Request) -> "asyncio.Queue[Event]":
        if self._dead:
            raise _gone()
        loop = asyncio.get_running_loop()
        ack = loop.create_future()
        rid = req.request_id
        events, self._acks[rid] = self._routes.open(rid), (loop, ack)
        if self._dead:                      # died meanwhile: _died may have passed this request by
            self._routes.close(rid)
            self._acks.pop(rid, None)
            raise _gone()
        header, tensors = StateHeader.of(req.restore_state) if req.restore_state is not None else (None, [])
        self._sender.put(("add", {f: getattr(req, f) for f in _REQUEST_FIELDS}, header), tensors)
        try:
            error = await ack
        except asyncio.CancelledError:     # the caller went away before the engine took it
            self.abort(rid)
            raise
        finally:
            self._acks.pop(rid, None)
        if error is not None:
            self._routes.close(rid)
            raise error
        return events

    def abort(self, request_id: str) -> None:
        self._routes.close(request_id)
        if not self._dead:
            self._sender.put(("abort", request_id))

    def stats(self) -> dict[str, int]:
        return self._stats

    # -- the receiving thread --
    def _receive(self) -> None:
        chan = self._chan
        try:
            while True:
                msg = chan.recv()
                if msg[0] == "events":
                    self._on_events(msg, chan)
                elif msg[0] == "ack":
                    _, rid, error = msg
                    waiter = self._acks.get(rid)
                    if waiter is not None:
                        call_in(waiter[0], _resolve, waiter[1], error)
        except (EOFError, OSError):
            pass
        if not self._stopping:
            self._died()

    def _on_events(self, msg, chan: Channel) -> None:
        _, items, calls, stats = msg
        # metrics and stats first: whoever reads a request's end then sees the step that ended it counted
        if stats is not None:
            self._stats = stats
        if self._metrics is not None:
            for name, args in calls:
                if name in _METRIC_CALLS:
                    getattr(self._metrics, name)(*args)
        batch = []
        for item in items:
            ev = _event(item)
            if isinstance(ev.state, StateHeader):
                ev.state = ev.state.receive(chan)      # read even if nobody waits: the bytes are in the pipe
            batch.append((item[1], ev))
        self._routes.deliver(batch)

    def _died(self) -> None:
        self._dead = True
        self._proc.join(5)
        code = self._proc.exitcode
        log.critical("the engine process exited (exit code %s)", code)
        error = RuntimeError(f"the engine process exited (exit code {code})")
        self._routes.deliver([(rid, Event("error", error=error)) for rid in self._routes.ids()])
        for loop, ack in list(self._acks.values()):
            call_in(loop, _resolve, ack, _gone())
        if self.on_death is not None:
            self.on_death(code)

    def _kill(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._chan.close()


def _wire(rid: str, ev: Event) -> tuple:
    """An event as a plain tuple: a step's 256 deltas pickle in ~0.03 ms this way, ~0.35 ms as objects."""
    if ev.type == "delta":
        return ("delta", rid, ev.text, ev.token_ids)
    if ev.type == "done":
        return ("done", rid, ev.finish_reason, ev.completion_tokens, ev.tokens_seen, ev.cache_len, ev.state)
    return ("error", rid, ev.error)


def _event(item: tuple) -> Event:
    kind = item[0]
    if kind == "delta":
        return Event("delta", text=item[2], token_ids=item[3])
    if kind == "done":
        return Event("done", finish_reason=item[2], completion_tokens=item[3], tokens_seen=item[4],
                     cache_len=item[5], state=item[6])
    return Event("error", error=item[2])


def _gone() -> OverloadedError:
    return OverloadedError("the engine process has exited; this replica is restarting", retry_after=5)


def _resolve(fut: asyncio.Future, error) -> None:
    if not fut.done():
        fut.set_result(error)


def _log_setup() -> tuple[str, str] | None:
    """The server's logging (level, text|json), for the child to set up the same way."""
    root = logging.getLogger()
    handlers = [h for h in root.handlers if isinstance(h, logging.StreamHandler)]
    if not handlers:
        return None
    fmt = "json" if type(handlers[0].formatter).__name__ == "JsonLogFormatter" else "text"
    return logging.getLevelName(root.level), fmt


# ---- the child's side ------------------------------------------------------------------------------
class MetricsRelay:
    """EngineMetrics in the engine's process: records each call, which the server replays on its own
    metrics (so each metric's rule lives once, in ServiceMetrics)."""

    def __init__(self):
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, name: str):
        if name not in _METRIC_CALLS:
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, args))

    def drain(self) -> list[tuple[str, tuple]]:
        calls, self.calls = self.calls, []
        return calls


class _EngineHost:
    """The child: the engine loop's thread steps the engine and queues each step's events; the main
    thread reads commands until the server says stop or goes away."""

    def __init__(self, engine, relay: MetricsRelay, chan: Channel):
        self.engine, self.relay, self.chan = engine, relay, chan
        self.sender = _Sender(chan, "lckv-engine-send")
        self.loop = EngineLoop(engine, self._deliver, after_step=self._after_step)
        self._items: list[tuple] = []               # this step's events, as _wire tuples
        self._tensors: list[torch.Tensor] = []
        self._stats_at = 0.0

    def _deliver(self, batch: list[tuple[Request, Event]]) -> None:   # engine thread
        for req, ev in batch:
            if ev.state is not None:
                ev.state, tensors = StateHeader.of(ev.state)
                self._tensors += tensors
            if ev.error is not None:
                ev.error = portable(ev.error)
            self._items.append(_wire(req.request_id, ev))

    def _after_step(self) -> None:                                       # engine thread
        now = time.monotonic()
        stats = None
        if now - self._stats_at >= STATS_EVERY_S or not self.engine.has_work():
            stats, self._stats_at = self.engine.stats(), now
        calls = self.relay.drain()
        if self._items or calls or stats is not None:
            self.sender.put(("events", self._items, calls, stats), self._tensors)
            self._items, self._tensors = [], []

    def run(self) -> None:
        self.loop.start()
        chan = self.chan
        while True:
            try:
                msg = chan.recv()
            except (EOFError, OSError):      # the server is gone: nobody to serve
                break
            if msg[0] == "add":
                _, fields, header = msg
                state = header.receive(chan) if header is not None else None
                req = Request(**fields, restore_state=state)
                try:
                    self.loop.submit(req)
                    error = None
                except Exception as e:       # OverloadedError: the admission queue is full
                    error = portable(e)
                self.sender.put(("ack", req.request_id, error))
            elif msg[0] == "abort":
                self.loop.abort(msg[1])
            elif msg[0] == "stop":
                break
        self.loop.stop()
        self.sender.close()


def _child_main(cfg, conn, log_setup, threads: int) -> None:
    chan = Channel(conn)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the whole group: the server stops us
    torch.set_num_threads(threads)
    if log_setup is not None:
        from ..__main__ import setup_logging
        setup_logging(*log_setup)
    from pathlib import Path

    from ..tokenizer import ChatTokenizer
    from .service import _read_template, load_engine
    try:
        tokenizer = ChatTokenizer.from_folder(Path(cfg.model), chat_template=_read_template(cfg.chat_template))
        relay = MetricsRelay()
        engine, info = load_engine(cfg, tokenizer, relay)
    except BaseException as e:
        log.error("engine process: loading failed", exc_info=e)
        chan.send(("failed", portable(e)))
        chan.close()
        raise SystemExit(1)
    chan.send(("ready", info, engine.stats()))
    _EngineHost(engine, relay, chan).run()
