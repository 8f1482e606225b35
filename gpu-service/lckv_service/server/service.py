"""The loaded model as a service: folder -> model + tokenizer + engine; wire request -> engine Request.

Everything that can reject a request (unknown model, bad blob, prompt too long) happens here, before
the request reaches the engine, so a bad request never touches the running batch.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import blob as blob_codec
from ..cache import CacheState
from ..checkpoint import load_model, model_identity
from ..errors import BlobError, ConfigError, ModelNotFoundError, RequestError
from ..engine.engine import AsyncEngine, Engine
from ..engine.request import Request
from ..engine.runner import DECODERS, ModelRunner, plan_slots
from ..engine.scheduler import Scheduler, SchedulerConfig
from ..model import PrefillMode
from ..sampling import SamplingParams
from ..tokenizer import ChatTokenizer
from .protocol import GenerateRequest

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ServeConfig:
    model: str                              # model folder
    secret: str
    model_id: str | None = None             # default: the folder's name
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"                    # auto | cpu | cuda[:n]
    dtype: str = "auto"                     # auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    max_slots: int = 8                      # CPU: the pool size; CUDA: an upper bound
    mem_fraction: float = 0.85              # CUDA: share of free memory (after loading) for the K/V pool
    sinks: int = 4
    window: int | None = None               # default: max_position_embeddings - sinks
    evict_step: int = 0                     # 0 = window // 8
    prefill_mode: str = "exact"             # exact | iterative | adaptive
    prefill_chunk: int = 16
    decode: str = "fast"                    # fast (kernels.FastDecode) | reference (model.decode, for debugging)
    decode_graphs: bool = False             # CUDA graphs for the fast decode step (contiguous batches only)
    max_batched_tokens: int = 512
    max_waiting: int = 64
    max_prompt_tokens: int | None = None    # default: sinks + window
    max_tokens: int = 4096                  # largest sampling.max_tokens accepted
    max_request_bytes: int = 64 * 2**20
    chat_template: str | None = None        # a template file used instead of the folder's (or for a base model)

    def __post_init__(self):
        if not self.secret:
            raise ConfigError("the shared secret (GPU_SERVICE_SECRET) must be set", param="GPU_SERVICE_SECRET")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be auto or one of {sorted(DTYPES)}", param="dtype")
        for name in ("max_slots", "max_tokens", "max_request_bytes", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1", param=name)
        if not 0 < self.mem_fraction <= 1:
            raise ConfigError("mem_fraction must be in (0, 1]", param="mem_fraction")
        if self.decode not in DECODERS:
            raise ConfigError(f"decode must be one of {', '.join(DECODERS)}", param="decode")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but CUDA is not available", param="device")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError("device must be auto, cpu or cuda", param="device")
    return dev


class ModelService:
    """Model, tokenizer, identity and the running engine of one model folder."""

    def __init__(self, cfg: ServeConfig, metrics=None):
        self.cfg = cfg
        folder = Path(cfg.model)
        if not (folder / "config.json").is_file():
            raise ConfigError(f"model folder {folder} has no config.json", param="model")
        self.model_id = cfg.model_id or folder.resolve().name
        self.created = int((folder / "config.json").stat().st_mtime)
        device = resolve_device(cfg.device)
        auto = torch.bfloat16 if device.type == "cuda" else torch.float32
        dtype = DTYPES[cfg.dtype] if cfg.dtype != "auto" else auto
        self.tokenizer = ChatTokenizer.from_folder(folder, chat_template=_read_template(cfg.chat_template))
        self.model = load_model(folder, device=device, dtype=dtype).eval()
        self.model_cfg = self.model.cfg
        if self.tokenizer.vocab_size > self.model_cfg.vocab_size:
            raise ConfigError("the tokenizer's vocabulary is larger than the model's", param="vocab_size")
        self.identity = model_identity(self.model)
        window = cfg.window or self.model_cfg.max_position_embeddings - cfg.sinks
        if cfg.sinks + window > self.model_cfg.max_position_embeddings:
            raise ConfigError(f"sinks + window must be <= max_position_embeddings "
                              f"({self.model_cfg.max_position_embeddings})", param="window")
        capacity = cfg.sinks + window
        num_slots = plan_slots(self.model_cfg, capacity, device, dtype, cfg.max_slots, cfg.mem_fraction)
        self.sched_cfg = SchedulerConfig(num_slots=num_slots, sinks=cfg.sinks, window=window,
                                         evict_step=cfg.evict_step, max_batched_tokens=cfg.max_batched_tokens,
                                         max_waiting=cfg.max_waiting)
        self.max_prompt_tokens = cfg.max_prompt_tokens or capacity
        mode = PrefillMode(kind=cfg.prefill_mode, chunk=cfg.prefill_chunk)
        runner = ModelRunner(self.model, num_slots, capacity, cfg.sinks, mode, dtype,
                             decode=cfg.decode, decode_graphs=cfg.decode_graphs)
        self.engine = Engine(Scheduler(self.sched_cfg), runner, self.tokenizer, metrics)
        self.async_engine = AsyncEngine(self.engine)
        log.info("model loaded: id=%s device=%s dtype=%s slots=%d capacity=%d kv_layers=%d",
                 self.model_id, device, str(dtype).removeprefix("torch."), num_slots, capacity,
                 len(self.model_cfg.kv_layers))

    def info(self) -> dict:
        c = self.model_cfg
        return {"id": self.model_id, "context_window": self.sched_cfg.capacity,
                "max_prompt_tokens": self.max_prompt_tokens, "fingerprint": c.fingerprint(),
                "kv_layers": len(c.kv_layers), "num_layers": c.num_layers,
                "cache_bytes_per_token": self.engine.runner.cache.bytes_per_token(),
                "sinks": self.sched_cfg.sinks, "window": self.sched_cfg.window, "created": self.created}

    def decode_blob(self, data: bytes) -> CacheState:
        state = blob_codec.decode(data, self.model_cfg, self.identity)
        if not (torch.isfinite(state.k).all() and torch.isfinite(state.v).all()):
            raise BlobError("the blob holds non-finite keys or values")
        if any(not 0 <= t < self.model_cfg.vocab_size for t in state.token_ids):
            raise BlobError("the blob holds token ids outside the vocabulary")
        n, sc = len(state.token_ids), self.sched_cfg
        if n > sc.capacity:  # made by a replica with a larger window: apply our eviction rule once
            keep = sc.sinks + sc.keep_recent
            idx = list(range(sc.sinks)) + list(range(n - sc.keep_recent, n))
            state = CacheState(k=state.k[:, idx].contiguous(), v=state.v[:, idx].contiguous(),
                               token_ids=[state.token_ids[i] for i in idx], tokens_seen=state.tokens_seen)
            assert len(state.token_ids) == keep
        return state

    def make_request(self, g: GenerateRequest, state: CacheState | None) -> Request:
        if g.model != self.model_id:
            raise ModelNotFoundError(f"model {g.model[:100]!r} is not served here", param="model")
        tok = self.tokenizer
        if g.kind == "chat":
            messages, continues = g.messages, state is not None
            prompt_ids = tok.encode_chat(messages, add_generation_prompt=True, continues=continues)

            def canonical(reply: str) -> list[int]:
                return tok.encode_chat(messages + [{"role": "assistant", "content": reply}], False, continues)
            param = "messages"
        else:
            prompt = g.prompt
            prompt_ids = tok.encode_prompt(prompt)
            # an empty prompt starts a new document, as at OpenAI: BOS where the tokenizer adds one,
            # else the document separator
            start = [tok.document_separator_id] if not prompt_ids and tok.document_separator_id is not None else []
            prompt_ids = start + prompt_ids

            def canonical(reply: str) -> list[int]:
                return start + tok.encode_prompt(prompt + reply)
            param = "prompt"
        if len(prompt_ids) > self.max_prompt_tokens:
            raise RequestError(f"the new prompt has {len(prompt_ids)} tokens, more than the limit of "
                               f"{self.max_prompt_tokens}", param=param, code="context_length_exceeded")
        if not prompt_ids:
            raise RequestError("the prompt encodes to no tokens", param=param, code="invalid_value")
        # the engine keys requests by a fresh id: a caller reusing a request_id cannot collide
        return Request(request_id=f"req_{uuid.uuid4().hex}", prompt_ids=prompt_ids,
                       params=g.sampling, restore_state=state,
                       restored_tokens=len(state.token_ids) if state else 0,
                       cached_tokens=state.tokens_seen if state else 0,
                       return_blob=g.return_blob, canonical=canonical)

    def encode_blob(self, state: CacheState) -> bytes:
        return blob_codec.encode(state, self.model_cfg, self.identity)

    async def warmup(self) -> None:
        """One real generation through the engine, so /readyz means 'serves requests'."""
        t = time.monotonic()
        if self.tokenizer.has_chat_template:
            g = GenerateRequest(f"warmup_{uuid.uuid4().hex[:8]}", self.model_id, "chat",
                                [{"role": "user", "content": "Hello"}], None, SamplingParams(max_tokens=2), True)
        else:  # a base model serves completions only
            g = GenerateRequest(f"warmup_{uuid.uuid4().hex[:8]}", self.model_id, "completion",
                                None, "Hello", SamplingParams(max_tokens=2), True)
        req = self.make_request(g, None)
        queue = self.async_engine.add(req)
        while True:
            ev = await queue.get()
            if ev.type == "error":
                raise RuntimeError("warmup generation failed") from ev.error
            if ev.type == "done":
                await asyncio.to_thread(self.encode_blob, ev.state)
                break
        log.info("warmup generation done in %.2fs", time.monotonic() - t)


def _read_template(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the chat template file: {type(e).__name__}", param="chat_template") from e
    if not text.strip():
        raise ConfigError("the chat template file is empty", param="chat_template")
    return text


def describe_config(cfg: ServeConfig) -> str:
    """The config for logs, with the secret left out."""
    d = {k: v for k, v in cfg.__dict__.items() if k != "secret"}
    return json.dumps(d, sort_keys=True)
