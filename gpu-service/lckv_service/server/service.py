"""The loaded model as a service: folder -> model + tokenizer + engine; wire request -> engine Request.

Everything that can reject a request (unknown model, bad blob, prompt too long) happens here, before
the request reaches the engine, so a bad request never touches the running batch.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
import uuid
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from .. import blob as blob_codec
from ..cache import CacheState
from ..checkpoint import load_model, model_identity
from ..errors import ConfigError, ContextLengthError, ModelNotFoundError, RequestError
from ..config import ModelConfig
from ..engine.engine import AsyncEngine, Engine
from ..engine.request import Request, Turn
from ..engine.runner import ModelRunner, graph_memory, plan_slots
from ..engine.scheduler import Scheduler, SchedulerConfig
from ..model import PrefillMode
from ..sampling import SamplingParams
from ..tokenizer import ChatTokenizer
from .engine_process import EngineProcess
from .protocol import GenerateRequest

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


PREFILL_MODES = ("auto", "tokenwise", "exact", "iterative", "adaptive")
AUTO = "auto"


def _opt(default, help: str, kind=str, choices=None, env: str | None = None, cli: bool = True):
    """A serving option: its default, its `serve` flag (--name-with-dashes) and help, in one place."""
    return field(default=default, metadata=dict(help=help, kind=kind, choices=choices, env=env, cli=cli))


@dataclass(frozen=True)
class ServeConfig:
    """Every serving option, declared once: `python -m lckv_service serve` derives its flags from these
    fields (`add_arguments` / `from_args`), tests and benchmarks construct it directly."""
    model: str = _opt("/models/default", "model folder", env="MODEL_DIR")
    secret: str = _opt("", "shared secret (env GPU_SERVICE_SECRET only, never a flag)", cli=False)
    model_id: str | None = _opt(None, "id clients use (default: the folder's name)", env="MODEL_ID")
    host: str = _opt("127.0.0.1", "listen address")
    port: int = _opt(8000, "listen port", kind=int, env="PORT")
    listen_backlog: int = _opt(4096, "connections the listen socket queues before they are accepted (the kernel "
                                     "caps it at net.core.somaxconn); a connect beyond it waits for the "
                                     "client's SYN retransmit, 1 s", kind=int)
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    dtype: str = _opt("auto", "auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16")
    max_slots: int = _opt(8, "K/V pool slots (CPU: exactly; CUDA: at most)", kind=int)
    mem_fraction: float = _opt(0.85, "CUDA: share of free memory (after loading) for the K/V pool", kind=float)
    sinks: int = _opt(4, "attention-sink tokens kept by StreamingLLM eviction", kind=int)
    window: int | None = _opt(None, "recent tokens kept (default: max positions - sinks)", kind=int)
    evict_step: int = _opt(0, "tokens dropped per eviction (0: window/8)", kind=int)
    prefill_mode: str = _opt(AUTO, "auto (tokenwise for models with a cyclic LCKV block, one pass per "
                                   "chunk otherwise) | tokenwise (exact; prompt tokens ride in the decode "
                                   "batch) | exact (chunks of --prefill-chunk with as many passes) | "
                                   "iterative (the paper's m+b passes; approximate) | adaptive",
                             choices=PREFILL_MODES)
    prefill_chunk: int = _opt(16, "exact mode: tokens per chunk", kind=int)
    decode: str = _opt("fast", "decode step: fast (FastDecode; Triton kernel on CUDA) or reference "
                               "(model.decode, for debugging)", choices=("fast", "reference"), env="LCKV_DECODE")
    decode_graphs: str = _opt(AUTO, "CUDA graphs for the decode step: auto (on with CUDA and decode=fast) | "
                                    "on | off", choices=("auto", "on", "off"))
    overlap: str = _opt(AUTO, "overlap each step's host work (tokens to events, scheduling the next step) "
                              "with the device's work on the next step: auto (on with CUDA) | on | off",
                        choices=("auto", "on", "off"))
    max_batched_tokens: int | None = _opt(None, "token budget of one step (default: slots + 8192 on CUDA, "
                                                "slots + 512 on CPU)", kind=int)
    max_waiting: int = _opt(64, "admission queue bound (beyond: 503)", kind=int)
    max_prompt_tokens: int | None = _opt(None, "longest new prompt (default: sinks + window)", kind=int)
    max_tokens: int = _opt(4096, "largest sampling.max_tokens", kind=int)
    max_request_bytes: int = _opt(64 * 2**20, "largest request body in bytes", kind=int)
    chat_template: str | None = _opt(None, "Jinja chat template file, used instead of the model folder's "
                                           "(or for a base model)")
    engine_process: str = _opt("on", "run the engine (model, scheduler, detokenizing) in its own process, so "
                                     "its host work never waits for the HTTP side's (Python runs one thread at "
                                     "a time per process) | off: in this process (debugging)",
                               choices=("on", "off"), env="LCKV_ENGINE_PROCESS")

    def __post_init__(self):
        if not self.secret:
            raise ConfigError("the shared secret (GPU_SERVICE_SECRET) must be set", param="GPU_SERVICE_SECRET")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be auto or one of {sorted(DTYPES)}", param="dtype")
        for name in ("max_slots", "max_tokens", "max_request_bytes", "prefill_chunk", "max_waiting", "listen_backlog"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1", param=name)
        for name in ("max_batched_tokens", "max_prompt_tokens", "window"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1", param=name)
        if not 0 < self.mem_fraction <= 1:
            raise ConfigError("mem_fraction must be in (0, 1]", param="mem_fraction")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)}", param=f.name)

    @classmethod
    def add_arguments(cls, ap) -> None:
        for f in fields(cls):
            m = f.metadata
            if not m.get("cli"):
                continue
            default = f.default
            if m.get("env") and os.environ.get(m["env"]):
                try:
                    default = m["kind"](os.environ[m["env"]])
                except ValueError:
                    what = {int: "an integer", float: "a number"}.get(m["kind"], "text")
                    raise ConfigError(f"env {m['env']} must be {what}", param=m["env"]) from None
            ap.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=m["kind"], default=default,
                            choices=m.get("choices"), help=m["help"] + (f" (env {m['env']})" if m.get("env") else ""))

    @classmethod
    def from_args(cls, ns, **extra) -> "ServeConfig":
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if f.metadata.get("cli")}, **extra)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but CUDA is not available", param="device")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError("device must be auto, cpu or cuda", param="device")
    return dev


@dataclass(frozen=True)
class EngineInfo:
    """What the server needs to know of its engine, wherever that runs (it crosses to the server's process)."""
    model_cfg: ModelConfig
    identity: str                  # model_identity: blobs of other weights are refused
    dtype: torch.dtype
    sched_cfg: SchedulerConfig
    cache_bytes_per_token: int


def load_engine(cfg: ServeConfig, tokenizer: ChatTokenizer, metrics=None) -> tuple[Engine, EngineInfo]:
    """The model folder's weights on the device, the K/V pool, the captured decode graphs and the Engine
    over them: what the engine's process holds."""
    folder = Path(cfg.model)
    device = resolve_device(cfg.device)
    auto = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = DTYPES[cfg.dtype] if cfg.dtype != "auto" else auto
    model = load_model(folder, device=device, dtype=dtype).eval().requires_grad_(False)   # serving never trains
    model_cfg = model.cfg
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ConfigError("the tokenizer's vocabulary is larger than the model's", param="vocab_size")
    identity = model_identity(model)
    window = cfg.window or model_cfg.max_position_embeddings - cfg.sinks
    if cfg.sinks + window > model_cfg.max_position_embeddings:
        raise ConfigError(f"sinks + window must be <= max_position_embeddings "
                          f"({model_cfg.max_position_embeddings})", param="window")
    capacity = cfg.sinks + window
    cuda = device.type == "cuda"
    graphs = cfg.decode_graphs == "on" or (cfg.decode_graphs == AUTO and cuda and cfg.decode == "fast")
    kind = cfg.prefill_mode
    if kind == AUTO:  # measured (bench/README.md, serving): exact tokenwise beats chunked passes
        kind = "tokenwise" if model_cfg.iter_block is not None else "exact"
    mode = PrefillMode(kind="exact" if kind == "tokenwise" else kind, chunk=cfg.prefill_chunk)
    num_slots = plan_slots(model_cfg, capacity, device, dtype, cfg.max_slots, cfg.mem_fraction)
    if graphs and cuda and cfg.decode == "fast":   # the graphs for that many slots, measured; then the pool
        try:                                         # is sized around them
            reserve = graph_memory(model, num_slots, capacity, cfg.sinks, mode, dtype)
        except Exception as e:   # a sizing aid: serve with the pool sized without it rather than not at all
            log.warning("could not measure the decode graphs' memory (%s); sizing the K/V pool without it",
                        type(e).__name__, exc_info=e)
            reserve = 0
        num_slots = plan_slots(model_cfg, capacity, device, dtype, cfg.max_slots, cfg.mem_fraction, reserve)
    runner, num_slots, graphs_held = _build_runner(cfg, model, num_slots, capacity, mode, dtype, graphs)
    budget = cfg.max_batched_tokens or num_slots + (8192 if cuda else 512)
    sched_cfg = SchedulerConfig(num_slots=num_slots, sinks=cfg.sinks, window=window, evict_step=cfg.evict_step,
                                max_batched_tokens=budget, max_waiting=cfg.max_waiting,
                                prefill_chunk=1 if kind == "tokenwise" else 0)
    overlap = cfg.overlap == "on" or (cfg.overlap == AUTO and cuda)
    engine = Engine(Scheduler(sched_cfg), runner, tokenizer, metrics, overlap=overlap)
    log.info("model loaded: device=%s dtype=%s slots=%d capacity=%d kv_layers=%d prefill=%s step_tokens=%d "
             "decode_graphs=%s (%d captured) overlap=%s", device, str(dtype).removeprefix("torch."), num_slots,
             capacity, len(model_cfg.kv_layers), kind, budget, graphs, graphs_held, overlap)
    return engine, EngineInfo(model_cfg, identity, dtype, sched_cfg, runner.cache.bytes_per_token())


POOL_RETRIES = 3          # smaller pools tried when the first leaves too little memory to run in
POOL_SHRINK = 0.8


def _build_runner(cfg: ServeConfig, model, num_slots: int, capacity: int, mode: PrefillMode, dtype, graphs: bool):
    """The runner with its K/V pool and every decode graph captured. The pool was sized around the
    graphs' measured memory (graph_memory); if capturing still runs out of memory (something else took
    device memory meanwhile), the pool shrinks and the capture runs again rather than the replica
    failing: a last resort, since PyTorch keeps an abandoned capture's memory pool. A pool that still
    does not fit is a ConfigError naming the knobs."""
    last = None
    for attempt in range(POOL_RETRIES + 1):
        if attempt:
            smaller = max(1, int(num_slots * POOL_SHRINK))
            log.warning("the K/V pool of %d slots left too little device memory to capture the decode "
                        "graphs (%s); retrying with %d slots (lower --mem-fraction to choose)",
                        num_slots, last, smaller)
            num_slots = smaller
        try:
            runner = ModelRunner(model, num_slots, capacity, cfg.sinks, mode, dtype,
                                 decode=cfg.decode, decode_graphs=graphs)
            t = time.monotonic()
            held = runner.warm_graphs()
            if held:
                log.info("decode graphs captured: %d in %.2fs", held, time.monotonic() - t)
            return runner, num_slots, held
        except torch.OutOfMemoryError:
            last = _live_memory()   # while the failed attempt's tensors are still alive
        # out of the except block, its traceback no longer holds the failed pool's tensors; nor
        # does `runner`, if the pool was built and the capture failed
        runner = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if num_slots == 1:
            break
    raise ConfigError(f"the device ran out of memory capturing the decode step with a K/V pool of "
                      f"{num_slots} slots x {capacity} tokens; lower --mem-fraction (now "
                      f"{cfg.mem_fraction}), --max-slots or --window ({last})", param="mem_fraction")


class ModelService:
    """A model folder as the server sees it: tokenizer, identity, limits, and the handle of its running
    engine (in a child process by default, `engine_process`; `engine` is the Engine itself only when it
    runs in this process)."""

    def __init__(self, cfg: ServeConfig, metrics=None):
        self.cfg = cfg
        folder = Path(cfg.model)
        if not (folder / "config.json").is_file():
            raise ConfigError(f"model folder {folder} has no config.json", param="model")
        self.model_id = cfg.model_id or folder.resolve().name
        self.created = int((folder / "config.json").stat().st_mtime)
        self.tokenizer = ChatTokenizer.from_folder(folder, chat_template=_read_template(cfg.chat_template))
        if cfg.engine_process == "on":
            self.engine = None
            self.async_engine = EngineProcess(cfg)      # spawns the engine's process, waits for its load
            self.async_engine.bind_metrics(metrics)
            info = self.async_engine.info
        else:
            self.engine, info = load_engine(cfg, self.tokenizer, metrics)
            self.async_engine = AsyncEngine(self.engine)
        self.model_cfg, self.identity, self.dtype = info.model_cfg, info.identity, info.dtype
        self.sched_cfg, self.cache_bytes_per_token = info.sched_cfg, info.cache_bytes_per_token
        self.max_prompt_tokens = cfg.max_prompt_tokens or self.sched_cfg.capacity
        log.info("model ready: id=%s engine=%s", self.model_id,
                 "own process" if self.engine is None else "this process")

    def info(self) -> dict:
        c = self.model_cfg
        return {"id": self.model_id, "context_window": self.sched_cfg.capacity,
                "max_prompt_tokens": self.max_prompt_tokens, "fingerprint": c.fingerprint(),
                "kv_layers": len(c.kv_layers), "num_layers": c.num_layers,
                "cache_bytes_per_token": self.cache_bytes_per_token,
                "sinks": self.sched_cfg.sinks, "window": self.sched_cfg.window, "created": self.created}

    def decode_blob(self, data: bytes) -> CacheState:
        # the codec checks finiteness, vocabulary, shape, dtype and counters
        state = blob_codec.decode(data, self.model_cfg, self.identity, dtype=self.dtype)
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
            turn = Turn("chat", messages=tuple(g.messages), continues=state is not None)
            prompt_ids = tok.encode_chat(g.messages, add_generation_prompt=True, continues=turn.continues)
            param = "messages"
        else:
            prompt_ids = tok.encode_prompt(g.prompt)
            # an empty prompt starts a new document, as at OpenAI: BOS where the tokenizer adds one,
            # else the document separator
            start = (tok.document_separator_id,) if not prompt_ids and tok.document_separator_id is not None else ()
            prompt_ids = [*start, *prompt_ids]
            turn = Turn("completion", prompt=g.prompt, start=start)
            param = "prompt"
        if len(prompt_ids) > self.max_prompt_tokens:
            raise ContextLengthError(len(prompt_ids), self.max_prompt_tokens, param=param)
        if not prompt_ids:
            raise RequestError("the prompt encodes to no tokens", param=param, code="invalid_value")
        if state is not None:
            blob_codec.check_room(state, len(prompt_ids) + g.sampling.max_tokens)
        # the engine keys requests by a fresh id: a caller reusing a request_id cannot collide
        return Request(request_id=f"req_{uuid.uuid4().hex}", prompt_ids=prompt_ids,
                       params=g.sampling, restore_state=state,
                       restored_tokens=len(state.token_ids) if state else 0,
                       cached_tokens=state.tokens_seen if state else 0,
                       return_blob=g.return_blob, turn=turn)

    def encode_blob(self, state: CacheState) -> list[memoryview]:
        """The turn's blob as byte views (blob.encode_parts): written out without copies."""
        return blob_codec.encode_parts(state, self.model_cfg, self.identity)

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
        queue = await self.async_engine.add(req)
        while True:
            ev = await queue.get()
            if ev.type == "error":
                raise RuntimeError("warmup generation failed") from ev.error
            if ev.type == "done":
                await asyncio.to_thread(self.encode_blob, ev.state)
                break
        log.info("warmup generation done in %.2fs", time.monotonic() - t)


def _live_memory() -> str:
    """What holds device memory at an out-of-memory error: the largest groups of live blocks (count x
    size) and the allocated total, for the log line that reports it."""
    if not torch.cuda.is_available():
        return "out of memory"
    sizes: dict[int, int] = {}
    for segment in torch.cuda.memory_snapshot():
        for block in segment.get("blocks", []):
            if block.get("state") == "active_allocated":
                sizes[block["size"]] = sizes.get(block["size"], 0) + 1
    top = sorted(sizes.items(), key=lambda kv: -kv[0] * kv[1])[:8]
    return (f"{torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated; largest live blocks: "
            + ", ".join(f"{n} x {size / 2**20:.1f} MiB" for size, n in top))


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
