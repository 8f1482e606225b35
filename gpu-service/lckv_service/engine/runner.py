"""StepPlan -> tensors -> model.prefill / decode step -> sampled tokens.

Owns the device-side state: the KVCache pool (one preallocated slot per live sequence, sized from
free device memory on CUDA or a configured slot count on CPU) and each request's sampling stream.

The decode step is kernels.FastDecode by default (decode="fast"): the model's semantics exactly, with
keys rotated once per source layer and, on CUDA with Triton, the flash-decoding kernel that rotates
keys in registers. decode="reference" runs model.decode (for debugging). Key buckets: 256 on CUDA
(repeating shapes; what CUDA graphs key on), 16 on CPU, where a bucket only adds masked keys
(measured on lckv-tiny: FastDecode with bucket 16 is as fast as model.decode at batch 1 and up to
~1.6x faster at batch 32 with 512 cached tokens). CUDA graphs stay off by default: a serving batch
changes slots and size every step, and graphs serve contiguous slot ranges only.
"""
from __future__ import annotations

import logging
import os

import torch

from ..cache import CacheState, KVCache
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
               max_slots: int, mem_fraction: float) -> int:
    """How many cache slots to allocate: CPU takes `max_slots`; CUDA what fits in a fraction of free memory."""
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
    n = min(max_slots, int(free * mem_fraction) // per_slot)
    if n < 1:
        raise ConfigError(f"not enough free GPU memory for one cache slot of {capacity} tokens "
                          f"({per_slot} bytes)", param="window")
    log.info("kv pool: %d slots x %d tokens (%.1f MiB of %.1f MiB free)", n, capacity,
             n * per_slot / 2**20, free / 2**20)
    return n


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
                    # the sdpa path's key rotation is compiled on CUDA, which needs Triton (inductor)
                    compile_rope=cuda and triton_decode.triton is not None, attention=attention,
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
        """Apply the plan's cache operations, run the model, return (request, sampled token) pairs.
        On CUDA `last_device_s` is then the device time span of the step's work."""
        events = None
        if self.device.type == "cuda":
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record()
        self.last_device_s = None
        for req in plan.admitted:
            self._load_turn_start(req)
            req.runner_state = make_stream(req.params)
        for req in plan.restarts:
            self._load_turn_start(req)
        for slot, drop in plan.truncations:
            self._truncate(slot, drop)
        for slot, keep_recent in plan.evictions:
            self.cache.evict(slot, self.sinks, keep_recent)

        reqs: list[Request] = []            # the rows to sample, in order
        parts: list[torch.Tensor] = []       # their logits, one tensor per model call
        chunks = [p for p in plan.prefills if len(p.tokens) > 1]
        singles = [p for p in plan.prefills if len(p.tokens) == 1]
        if chunks:
            tokens = [to_device(p.tokens, self.device) for p in chunks]
            logits = self.model.prefill(self.cache, [p.request.slot for p in chunks], tokens,
                                        mode=self.prefill_mode)                # [len(chunks), V]
            self._take(logits, [i for i, p in enumerate(chunks) if p.sample], chunks, reqs, parts)
        if plan.decodes or singles:
            # one decode step for sampled tokens and one-token prompt pieces alike
            slots = torch.tensor([r.slot for r in plan.decodes] + [p.request.slot for p in singles],
                                 dtype=torch.long)                             # CPU: no host sync
            toks = to_device([r.last_token for r in plan.decodes] + [p.tokens[0] for p in singles], self.device)
            logits = self.decode(slots, toks)                                  # [decodes + singles, V]
            nd = len(plan.decodes)
            reqs += plan.decodes
            rows = list(range(nd)) + [nd + i for i, p in enumerate(singles) if p.sample]
            self._take(logits, rows, None, None, parts)
            reqs += [p.request for p in singles if p.sample]
        if not reqs:
            return []
        out = sample(parts[0] if len(parts) == 1 else torch.cat(parts), [r.params for r in reqs],
                     [r.runner_state for r in reqs])
        if events is not None:
            events[1].record()
        ids = out.tolist()                                                     # the step's one host sync
        if events is not None:
            self.last_device_s = events[0].elapsed_time(events[1]) / 1000
        return list(zip(reqs, ids))

    def _take(self, logits: torch.Tensor, rows: list[int], items, reqs, parts) -> None:
        """Append the logits of `rows` (all of them without an index copy) and, given the plan
        items, their requests."""
        if not rows:
            return
        parts.append(logits if len(rows) == logits.shape[0] else logits[to_device(rows, logits.device)])
        if items is not None:
            reqs += [items[i].request for i in rows]

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

    def export(self, slot: int) -> CacheState:
        return self.cache.export(slot)

    def _truncate(self, slot: int, drop: int) -> None:
        # rare (canonical re-tokenization differs): cut the slot's last `drop` tokens via export/restore
        st = self.cache.export(slot)
        keep = len(st.token_ids) - drop
        self.cache.restore(slot, CacheState(k=st.k[:, :keep].clone(), v=st.v[:, :keep].clone(),
                                            token_ids=st.token_ids[:keep], tokens_seen=st.tokens_seen - drop))

    def bytes_in_use(self, slots: list[int]) -> int:
        return sum(self.cache.nbytes_used(s) for s in slots)

    @property
    def bytes_total(self) -> int:
        return KVCache.bytes_for(self.model.cfg, self.cache.num_slots, self.cache.capacity, self.dtype)
