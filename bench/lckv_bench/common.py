"""Shared plumbing: the JSONL recorder, time budgets, device facts, timing and memory helpers."""
from __future__ import annotations

import json
import math
import os
import platform
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import torch

GIB = 1 << 30


class BenchError(Exception):
    """A benchmark argument or environment problem; `.param` names what is wrong."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class Recorder:
    """Appends one JSON object per line and flushes it at once, so a killed run keeps what it measured."""

    def __init__(self, path: Path | None, base: dict[str, Any], echo: TextIO | None = None):
        self.path = path
        self.base = dict(base)
        self.echo = echo
        self.rows: list[dict[str, Any]] = []
        self._fh = open(path, "a", encoding="utf-8") if path is not None else None

    def write(self, suite: str, **fields: Any) -> dict[str, Any]:
        row = {**self.base, "suite": suite, "time_unix": round(time.time(), 3), **fields}
        line = json.dumps(row, default=_jsonable, allow_nan=False)
        self.rows.append(json.loads(line))
        if self._fh is not None:
            self._fh.write(line + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        if self.echo is not None:
            brief = {k: v for k, v in row.items() if k not in self.base and k != "time_unix"}
            print(json.dumps(brief, default=_jsonable), file=self.echo, flush=True)
        return row

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (torch.Tensor,)):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "__dataclass_fields__"):
        return {k: getattr(x, k) for k in x.__dataclass_fields__}
    return str(x)


def clean(x: Any) -> Any:
    """Recursively turn non-finite floats into None (JSON has no NaN/inf)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


@dataclass
class Budget:
    """A wall-clock allowance. Suites ask `left()` before starting a case and pass `deadline` down."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    @property
    def deadline(self) -> float:
        return self.start + self.seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def sub(self, seconds: float) -> "Budget":
        """A child budget of at most `seconds`, never past this one's deadline."""
        return Budget(max(0.0, min(seconds, self.left())))


@dataclass
class Context:
    device: torch.device
    rec: Recorder
    budget: Budget
    tiny: bool                     # CPU-sized shapes and lengths (tests, dry runs)
    shapes: tuple[str, ...]        # preset names to run
    settings: tuple[tuple[int, int], ...] | None = None   # throughput (prompt, gen) override
    variants: tuple[str, ...] | None = None
    hw: dict[str, float] | None = None                    # measured copy GB/s and matmul TFLOP/s
    max_run_batch: int | None = None                      # cap on the batch a throughput run uses
    graphs: bool = True                                   # let decoders replay CUDA graphs
    lckv_prefill: str = "auto"                            # throughput prefill of LCKV: auto | tokenwise | iterative
    streams: tuple[int, ...] | None = None                # serving: concurrent streams per run
    arrivals: tuple[str, ...] | None = None               # serving: burst | poisson
    rate: float | None = None                             # serving: Poisson arrivals per second
    requests: tuple[str, ...] | None = None               # serving: completion | session (returns a blob)
    server_src: str | None = None                         # serving: another tree's gpu-service (a baseline)
    server_args: str | None = None                        # serving, responses: extra `serve` flags
    history: tuple[int, ...] | None = None                # responses: history sizes in tokens
    repeats: int | None = None                            # responses: timed turns per size
    label: str | None = None                              # responses: names its markdown table
    model_folder: str | None = None                       # responses: serve this folder
    log: Callable[[str], None] = print

    def preferred_decoder(self) -> str:
        """The decoder pick_decoder tries first here (it falls back from it step by step)."""
        if self.device.type != "cuda":
            return "fast"
        return "fast-graph+triton" if self.graphs else "fast+triton"

    def model_cases(self, suite: str, variants: list[str]):
        """(shape, variant, its time share) per case of a suite that builds one model per case. Each
        variant gets an equal share of what is left, so the last is not starved; a case with no time
        left is written as a skipped row instead."""
        for shape in self.shapes:
            for vi, variant in enumerate(variants):
                share = self.budget.sub(self.budget.left() / (len(variants) - vi))
                if self.budget.left() < 3:
                    self.rec.write(suite, status="skipped", shape=shape, variant=variant,
                                   reason="suite time budget spent")
                    continue
                yield shape, variant, share

    @contextmanager
    def errors_as_rows(self, suite: str, **where):
        """One case failing must not end the suite: its exception becomes an `error` row naming the case."""
        try:
            yield
        except Exception as e:  # noqa: BLE001
            self.rec.write(suite, status="error", **where, error=repr(e)[:500], trace=traceback.format_exc()[-1500:])


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "host": platform.node()}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(device=p.name, device_mem_gib=round(p.total_memory / GIB, 2),
                    cuda=torch.version.cuda, sm_count=p.multi_processor_count)
    else:
        info.update(device=f"cpu ({platform.processor() or platform.machine()})",
                    device_mem_gib=None, cuda=None)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """perf_counter after the device finished everything queued so far."""
    sync(device)
    return time.perf_counter()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mem_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / GIB, 3)


def free_mem_bytes(device: torch.device) -> int | None:
    """Bytes a new allocation can still get: the driver's free memory plus PyTorch's cached-but-unused."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def allocated_bytes(device: torch.device) -> int | None:
    """Bytes held by live tensors (None on CPU)."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def release(device: torch.device) -> None:
    import gc
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def build_on_device(make: Callable[[], torch.nn.Module], device: torch.device, dtype: torch.dtype,
                    seed: int = 0) -> torch.nn.Module:
    """make() with random weights (seeded) created directly on the device in `dtype`: a 7B init on the
    CPU would take minutes, and a float32 build would need twice the memory."""
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = make()
    finally:
        torch.set_default_dtype(prev)
    return model.to(device=device, dtype=dtype).eval()


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def fits_in_memory(attempt: Callable[[], Any], device: torch.device) -> bool:
    """Runs attempt() (allocate and run what must fit) to the device's end: True, or False on out of
    memory; any other error propagates. attempt's tensors live in its own frame, so they are gone (the
    exception and its frames included) before the allocator's cache is released."""
    try:
        attempt()
        now(device)
        return True
    except Exception as e:  # noqa: BLE001 - only OOM means "does not fit"
        if not is_oom(e):
            raise
        return False
    finally:
        release(device)


def parse_list(spec: str | None, known, param: str) -> tuple[str, ...] | None:
    """A flag's comma list of names among `known` (None when empty), or a BenchError naming the unknown one."""
    if not spec:
        return None
    out = tuple(x.strip() for x in spec.split(",") if x.strip())
    for x in out:
        if x not in known:
            raise BenchError(f"unknown {param} {x!r}; known: {', '.join(known)}", param=param)
    return out


def parse_ints(spec: str | None, param: str) -> tuple[int, ...] | None:
    """A flag's comma list of positive integers (None when empty), or a BenchError naming --param."""
    if not spec:
        return None
    try:
        out = tuple(int(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise BenchError(f"--{param} must be a comma list of positive integers, got {spec!r}", param=param) from None
    if not out or min(out) < 1:
        raise BenchError(f"--{param} must be a comma list of positive integers, got {spec!r}", param=param)
    return out


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def timed(fn: Callable[[], Any], device: torch.device, repeat: int = 3, warmup: int = 1) -> float:
    """Median seconds of `fn()` over `repeat` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = now(device)
        fn()
        ts.append(now(device) - t0)
    return median(ts)
