"""StepPlan -> tensors -> model.prefill / decode step -> sampled tokens.

Owns the device-side state: the KVCache pool (one preallocated slot per live sequence, sized from
free device memory on CUDA or a configured slot count on CPU) and each request's sampling stream.

The decode step is kernels.FastDecode by default (decode="fast"): the model's semantics exactly, with
keys rotated once per source layer and, on CUDA with Triton, the flash-decoding kernel that rotates
keys in registers. decode="reference" runs model.decode (for debugging). Key buckets: 256 on CUDA
(repeating shapes; what CUDA graphs key on), 16 on CPU, where a bucket only adds masked keys
(measured on lckv-tiny: FastDecode with bucket 16 is as fast as model.decode at batch 1 and up to
~1.6x faster at batch 32 with 512 cached tokens). With decode_graphs, slot indices are a graph input
and batches are padded to buckets (FastDecode's pad_slot), so any serving batch replays a graph.

A step is `launch` (enqueue the cache operations, the model and sampling; on CUDA it returns before
the device has run them) then `collect` (wait for that step's sampled ids only, via a pinned copy and
an event). The engine may launch step N+1 before collecting step N (Engine(overlap=True)).
"""
from __future__ import annotations

import gc
import logging
import os

import torch

from ..cache import KVCache, PendingExport
from ..config import ModelConfig
from ..device import to_device
from ..errors import ConfigError
from ..kernels import FastDecode, triton_decode
from ..model import LCKVModel, PrefillMode
from ..sampling import make_stream, sample
from .request import Request
from .scheduler import StepPlan

log = logging.getLogger(__name__)


def plan_slots(cfg: ModelConfig, capacity: int, device: torch.device, dtype: torch.dtype,
               max_slots: int, mem_fraction: float, reserve: int = 0) -> int:
    """How many cache slots to allocate: CPU takes `max_slots`; CUDA what fits in `mem_fraction` of the
    free memory less `reserve` (bytes the decode graphs will take: graph_memory)."""
    if device.type != "cuda":
        # refused up front: an overcommitted pool would be killed for memory later, mid-request
        need, avail = KVCache.bytes_for(cfg, max_slots, capacity, dtype), _available_ram()
        if avail is not None and need > avail:
            raise ConfigError(f"the K/V pool ({max_slots} slots x {capacity} tokens) needs {need / 2**30:.1f} GiB, "
                              f"more than the {avail / 2**30:.1f} GiB of memory available: lower --window or "
                              f"--max-slots", param="window")
        return max_slots
    free, _total = torch.cuda.mem_get_info(device)
    per_slot = KVCache.bytes_for(cfg, 1, capacity, dtype)
    n = min(max_slots, int(max(0, free - reserve) * mem_fraction) // per_slot)
    if n < 1:
        raise ConfigError(f"not enough free GPU memory for one cache slot of {capacity} tokens "
                          f"({per_slot} bytes; {free / 2**20:.0f} MiB free, {reserve / 2**20:.0f} MiB of it "
                          f"for the decode graphs)", param="window")
    log.info("kv pool: %d slots x %d tokens (%.1f MiB of %.1f MiB free, %.1f MiB kept for decode graphs)", n,
             capacity, n * per_slot / 2**20, free / 2**20, reserve / 2**20)
    return n


def graph_memory(model: LCKVModel, max_batch: int, capacity: int, sinks: int, mode: PrefillMode,
                 dtype: torch.dtype) -> int:
    """Device bytes the serving decode graphs take for batches up to `max_batch` (CUDA), measured: every
    graph captured once against a one-slot pool and released. A graph's memory does not depend on the
    pool's size (captures index only the padding slot), so the pool can be sized around it; running
    out of memory in a capture instead leaves that capture's memory pool allocated for the life of the
    process (PyTorch does not release an abandoned capture's pool), so a retry would not get it back."""
    device = next(model.parameters()).device
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()   # cached free blocks would serve the probe unseen by mem_get_info
    free_before = torch.cuda.mem_get_info(device)[0]
    probe = ModelRunner(model, 1, capacity, sinks, mode, dtype, decode="fast", decode_graphs=True)
    probe.decode.warm_buckets(max_batch)
    torch.cuda.synchronize(device)
    used = free_before - torch.cuda.mem_get_info(device)[0] - probe.bytes_total
    del probe
    gc.collect()
    torch.cuda.empty_cache()
    return max(0, used)


def _available_ram() -> int | None:
    """Linux's MemAvailable (free + reclaimable), else free pages; None where neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


DECODERS = ("fast", "reference")


def make_decoder(model: LCKVModel, cache: KVCache, decode: str = "fast", graphs: bool = False,
                 bucket: int | None = None, pad_slot: int | None = None):
    """The decode step `(slots, tokens) -> logits`, with model.decode's contract."""
    if decode not in DECODERS:
        raise ConfigError(f"decode must be one of {', '.join(DECODERS)}, got {decode!r}", param="decode")
    cuda = cache.device.type == "cuda"
    if graphs and (decode != "fast" or not cuda):
        raise ConfigError("decode graphs need decode=fast on a CUDA device", param="decode_graphs")
    if decode == "reference":
        return lambda slots, tokens: model.decode(cache, slots, tokens)
    # Triton's CPU interpreter also reports `available`: far too slow to serve with, so CUDA only
    attention = "triton" if cuda and triton_decode.available(cache.device, model.cfg.head_dim) else "sdpa"
    fd = FastDecode(model, cache, bucket=bucket or (256 if cuda else 16), graphs=graphs,
                    attention=attention,
                    pad_slot=pad_slot, max_graphs=256)
    log.info("decode: FastDecode attention=%s bucket=%d graphs=%s", attention, fd.bucket, graphs)
    return fd


class ModelRunner:
    def __init__(self, model: LCKVModel, num_slots: int, capacity: int, sinks: int,
                 prefill_mode: PrefillMode = PrefillMode(), dtype: torch.dtype | None = None,
                 decode: str = "fast", decode_graphs: bool = False, decode_bucket: int | None = None):
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = dtype or next(model.parameters()).dtype
        self.sinks = sinks
        self.prefill_mode = prefill_mode
        # graphs pad batches into one scratch slot beyond the scheduler's `num_slots`
        self.cache = KVCache(model.cfg, num_slots + (1 if decode_graphs else 0), capacity, self.device, self.dtype)
        self.num_slots = num_slots
        self.decode_kind = decode
        self.last_device_s: float | None = None
        self.decode = make_decoder(model, self.cache, decode, decode_graphs, decode_bucket,
                                   pad_slot=num_slots if decode_graphs else None)

    def run(self, plan: StepPlan) -> list[tuple[Request, int]]:
        """Launch the plan's step and wait for its sampled tokens."""
        return self.collect(self.launch(plan))

    def launch(self, plan: StepPlan, prev: "StepHandle | None" = None) -> "StepHandle":
        """Apply the plan's cache operations and enqueue the model and sampling work; on CUDA this
        returns before the device has run it. A decode row of a request sampled in `prev` (still in
        flight) feeds that sampled id straight from the device."""
        timing = None
        if self.device.type == "cuda":
            timing = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            timing[0].record()
        for req in plan.admitted:
            self._load_turn_start(req)
            req.runner_state = make_stream(req.params)
        for req in plan.restarts:
            self._load_turn_start(req)
        for slot, drop in plan.truncations:
            self.cache.truncate(slot, drop)
        for slot, keep_recent in plan.evictions:
            self.cache.evict(slot, self.sinks, keep_recent)

        reqs: list[Request] = []            # the rows to sample, in order
        parts: list[torch.Tensor] = []       # their logits, one tensor per model call
        chunks = [p for p in plan.prefills if len(p.tokens) > 1]
        singles = [p for p in plan.prefills if len(p.tokens) == 1]
        if chunks:
            tokens = [torch.tensor(p.tokens) for p in chunks]     # host tensors: checked without a sync
            logits = self.model.prefill(self.cache, [p.request.slot for p in chunks], tokens,
                                        mode=self.prefill_mode)                # [len(chunks), V]
            rows = [i for i, p in enumerate(chunks) if p.sample]
            self._take(logits, rows, parts)
            reqs += [chunks[i].request for i in rows]
        if plan.decodes or singles:
            # one decode step for sampled tokens and one-token prompt pieces alike
            slots = torch.tensor([r.slot for r in plan.decodes] + [p.request.slot for p in singles],
                                 dtype=torch.long)                             # CPU: no host sync
            logits = self.decode(slots, self._decode_tokens(plan, singles, prev))   # [decodes + singles, V]
            nd = len(plan.decodes)
            self._take(logits, list(range(nd)) + [nd + i for i, p in enumerate(singles) if p.sample], parts)
            reqs += plan.decodes + [p.request for p in singles if p.sample]
        ids = host = None
        if reqs:
            ids = sample(parts[0] if len(parts) == 1 else torch.cat(parts), [r.params for r in reqs],
                         [r.runner_state for r in reqs])                       # [len(reqs)] on the device
            host = ids
            if self.device.type == "cuda":
                # the ids travel to pinned memory behind the step's work; collect() waits for the step's
                # end event, recorded right after this copy, not for whatever was launched after it
                host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
                host.copy_(ids, non_blocking=True)
        if timing is not None:
            timing[1].record()
        return StepHandle(reqs, ids, host, timing, plan.requests())

    def collect(self, handle: "StepHandle") -> list[tuple[Request, int]]:
        """Wait for a launched step's sampled tokens: (request, token) per sampled row."""
        self.last_device_s = None
        if handle.timing is not None:
            handle.timing[1].synchronize()
            self.last_device_s = handle.timing[0].elapsed_time(handle.timing[1]) / 1000
        if not handle.reqs:
            return []
        return list(zip(handle.reqs, handle.host.tolist()))

    def _decode_tokens(self, plan: StepPlan, singles, prev: "StepHandle | None") -> torch.Tensor:
        """The decode step's input ids [decodes + singles]: host ids, and for requests sampled in the
        in-flight step `prev`, its sampled ids, gathered on the device (no host sync)."""
        rows = prev.rows() if prev is not None and prev.reqs else {}
        n = prev.ids.shape[0] if rows else 0
        index, host = [], []                # index into cat(prev.ids, host)
        for r in plan.decodes:
            j = rows.get(r)
            if j is None:
                j = n + len(host)
                host.append(r.last_token)
            index.append(j)
        for p in singles:
            index.append(n + len(host))
            host.append(p.tokens[0])
        if len(host) == len(index):
            return to_device(host, self.device)
        both = torch.cat([prev.ids, to_device(host, self.device)]) if host else prev.ids
        return both[to_device(index, self.device)]

    @staticmethod
    def _take(logits: torch.Tensor, rows: list[int], parts: list[torch.Tensor]) -> None:
        """Append the logits of `rows` (all of them without an index copy)."""
        if rows:
            parts.append(logits if len(rows) == logits.shape[0] else logits[to_device(rows, logits.device)])

    def warm_graphs(self) -> int:
        """Capture the decode step's CUDA graphs for every batch and key bucket the pool can need,
        so serving replays only (captures take tens of ms each). Returns graphs held."""
        fd = self.decode
        if not isinstance(fd, FastDecode) or not fd.graphs or fd.pad_slot is None:
            return 0
        return fd.warm_buckets(self.num_slots)

    def _load_turn_start(self, req: Request) -> None:
        if req.restore_state is not None:
            self.cache.restore(req.slot, req.restore_state)
        else:
            self.cache.reset(req.slot)

    def export(self, slot: int) -> PendingExport:
        """Start copying the slot's state out (behind the queued steps; the host does not wait)."""
        return self.cache.export_start(slot)

    def bytes_in_use(self, slots: list[int]) -> int:
        return sum(self.cache.nbytes_used(s) for s in slots)

    @property
    def bytes_total(self) -> int:
        return KVCache.bytes_for(self.model.cfg, self.cache.num_slots, self.cache.capacity, self.dtype)


class StepHandle:
    """A launched step: its sampled rows' requests, their ids on the device (`ids`) and on the host
    once the step's end event (`timing[1]`, CUDA) has fired (`host`), and every request whose slot it
    works on (`touched`)."""
    __slots__ = ("reqs", "ids", "host", "timing", "touched")

    def __init__(self, reqs: list[Request], ids, host, timing, touched: set[Request]):
        self.reqs, self.ids, self.host, self.timing, self.touched = reqs, ids, host, timing, touched

    def rows(self) -> dict[Request, int]:
        return {r: i for i, r in enumerate(self.reqs)}
