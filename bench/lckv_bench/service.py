"""The real GPU service as the serving benchmarks drive it: a random-weight model folder of a named
shape, the `python -m lckv_service serve` process (the code `npm start` and the container run), and
one request over its wire protocol (docs/internal-protocol.md), framed and parsed with
lckv_service/server/protocol.py.

The model's tokenizer is the test BPE plus filler tokens up to the shape's vocabulary (so the LM head
and sampling have the real width).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from lckv_service.checkpoint import save_model
from lckv_service.model import LCKVModel
from lckv_service.server import protocol as P
from lckv_service.testmodel import CORPUS, train_tokenizer, write_tokenizer_files

from .shapes import make_config

SECRET = "bench-serving-secret"
MODEL_ID = "bench"
SERVICE_SRC = Path(__file__).resolve().parents[2] / "gpu-service"


# ---- the model folder --------------------------------------------------------------------------
def make_model_folder(folder: Path, shape: str, variant: str, max_positions: int, dtype: torch.dtype,
                      device: torch.device | str = "cpu") -> Path:
    """A folder the service loads: random weights and the test tokenizer. The weights are drawn on
    `device` (the 7B shape's draw: ~36 s on two CPU cores, seconds on a GPU) one parameter at a time;
    the model itself stays on the CPU."""
    tok = train_tokenizer()
    cfg = make_config(shape, variant, max_positions)
    if cfg.vocab_size < tok.get_vocab_size():   # the CPU test shape: the tokenizer's width
        cfg = dataclasses.replace(cfg, vocab_size=tok.get_vocab_size())
    n_fill = cfg.vocab_size - tok.get_vocab_size()
    tok.add_tokens([f"<w{i}>" for i in range(n_fill)])   # decodable ids up to the shape's width
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer_files(tok, folder)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LCKVModel(cfg).to(dtype)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.empty(p.shape, dtype=p.dtype, device=device).normal_(0.0, 0.02))
            else:
                p.fill_(1.0)
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()   # the server, started next in its own process, sizes its pool from free memory
    save_model(model, folder, dtype=dtype)
    return folder


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(path)


def make_prompts(folder: Path, n: int, length: int, seed: int = 0) -> list[str]:
    """n different texts of exactly `length` tokens under the folder's tokenizer."""
    tok = _tokenizer(str(folder / "tokenizer.json"))
    words = " ".join(CORPUS).split()
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        text = " ".join(rng.choice(words) for _ in range(length * 2))
        ids = tok.encode(text, add_special_tokens=False).ids[:length]
        cut = tok.decode(ids, skip_special_tokens=False)
        if len(tok.encode(cut, add_special_tokens=False).ids) == length:
            out.append(cut)
    return out


# ---- the server process ------------------------------------------------------------------------
class ServerProcess:
    def __init__(self, folder: Path, device: str, port: int, flags: list[str], src: Path, log: Path,
                 model_id: str = MODEL_ID):
        self.url = f"http://127.0.0.1:{port}"
        # `src` first (a baseline tree wins over this one); what the caller's path adds (packages
        # installed with --target, e.g. on a machine without internet) stays reachable after it
        path = os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, GPU_SERVICE_SECRET=SECRET, PYTHONPATH=path)
        cmd = [sys.executable, "-m", "lckv_service", "serve", "--model", str(folder), "--model-id", model_id,
               "--host", "127.0.0.1", "--port", str(port), "--device", device, *flags]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float) -> None:
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout:.0f}s")

    def _get(self, path: str) -> bytes:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {SECRET}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    def models(self) -> list[dict]:
        """GET /v1/internal/models: id, context_window, max_prompt_tokens, sinks, window, ..."""
        return json.loads(self._get("/v1/internal/models"))["models"]

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in self._get("/metrics").decode().splitlines():
            if line.startswith("lckv_") and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def cpu_seconds(self) -> dict[str, float | None]:
        """CPU seconds (user + system) so far of the server process and of its engine process (None
        where it has none: --engine-process off), from Linux's /proc; {} elsewhere."""
        try:
            engines = engine_pids(self.proc.pid)
            return {"server": cpu_seconds(self.proc.pid),
                    "engine": sum(cpu_seconds(p) for p in engines) if engines else None}
        except OSError:
            return {}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def engine_pids(pid: int) -> list[int]:
    """The engine processes among `pid`'s children (multiprocessing spawns them, from any of its threads)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(int(child))
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- one request over the wire -----------------------------------------------------------------
def request_body(request: dict, blob: bytes | None = None) -> bytes:
    """The request frames as the Worker sends them: J (the request), B* (the session's blob), E."""
    return P.json_frame(request) + b"".join(P.blob_frames(blob or b"")) + P.end_frame()


async def generate(session, url: str, body: bytes, progress: dict | None = None) -> dict:
    """POST /v1/internal/generate and read the reply to its end. Returns `sent` (perf_counter before
    the request went out), `start` (the start event), `frames` [(arrival time, token ids)] of the
    delta frames, `text` (the deltas' text joined, as the Worker keeps a reply), `done`, `blob` (the
    B frames' bytes, b"" when none came) and `end`; on a refusal or an in-band error, `status` and
    `error` instead of `done`. `progress`, when given, holds `sent` and the growing `frames` while
    the reply streams, for a caller that may cancel it."""
    sent = time.perf_counter()
    frames: list[tuple[float, list[int]]] = []
    if progress is not None:
        progress.update(sent=sent, frames=frames)
    start = done = None
    blob, text, reader = [], [], P.FrameReader()
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": P.CONTENT_TYPE}
    async with session.post(url + "/v1/internal/generate", data=body, headers=headers) as r:
        if r.status != 200:
            return {"status": r.status, "sent": sent, "error": (await r.text())[:300]}
        async for chunk in r.content.iter_any():
            got = reader.feed(chunk)
            for kind, payload in got:
                if kind == P.B:
                    blob.append(payload)
                    continue
                if kind != P.J:
                    continue
                ev = json.loads(payload)
                if ev["type"] == "delta":
                    frames.append((time.perf_counter(), ev["token_ids"]))
                    text.append(ev["text"])
                elif ev["type"] == "start":
                    start = ev
                elif ev["type"] == "done":
                    done = ev
                elif ev["type"] == "error":
                    return {"status": 200, "sent": sent, "start": start, "frames": frames, "error": ev}
    return {"status": 200, "sent": sent, "start": start, "frames": frames, "text": "".join(text), "done": done,
            "blob": b"".join(blob), "end": time.perf_counter()}
