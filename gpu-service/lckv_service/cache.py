"""Preallocated condensed KV cache: one slot per live sequence, the K/V of cfg.kv_layers only.

Keys are stored BEFORE RoPE: attention rotates them at their index inside the cache, so
StreamingLLM eviction (keep `sinks` first + most recent tokens) is a plain slice and a cache holding
tokens [0,1,2,3,6,7,8] decodes the next token at position 7.

Lengths live twice: `lengths` on the device (for kernels) and a host mirror (for shapes and
capacity checks), so the decode hot path needs no device->host sync. The mirrors are numpy arrays so
a step over a thousand slots reads and updates them in a few vectorised operations, not per slot.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import ModelConfig
from .device import to_device


_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


@dataclass
class CacheState:
    """One sequence's condensed cache, on CPU."""
    k: torch.Tensor            # [n_kv_layers, n, n_kv_heads, head_dim], keys before RoPE
    v: torch.Tensor            # same
    token_ids: list[int]       # ids of the n tokens the cache holds (sinks + recent)
    tokens_seen: int           # all tokens ever appended (>= n; the rest were evicted)


class PendingExport:
    """A slot's state on its way to the host (KVCache.export_start): read it once `ready()`."""
    __slots__ = ("k", "v", "tokens", "tokens_seen", "done")

    def __init__(self, k, v, tokens, tokens_seen: int, done):
        self.k, self.v, self.tokens, self.tokens_seen, self.done = k, v, tokens, tokens_seen, done

    def ready(self) -> bool:
        return self.done is None or self.done.query()

    def result(self) -> CacheState:
        """The state (waits for the copies if they have not finished)."""
        if self.done is not None:
            self.done.synchronize()
        return CacheState(k=self.k, v=self.v, token_ids=self.tokens.tolist(), tokens_seen=self.tokens_seen)


class KVCache:
    def __init__(self, cfg: ModelConfig, num_slots: int, capacity: int, device="cpu", dtype=torch.float32):
        for name, v in (("num_slots", num_slots), ("capacity", capacity)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.cfg, self.num_slots, self.capacity = cfg, num_slots, capacity
        self.device, self.dtype = torch.device(device), dtype
        self.layer_index = {layer: i for i, layer in enumerate(cfg.kv_layers)}  # model layer -> buffer row
        shape = (len(cfg.kv_layers), num_slots, capacity, cfg.num_kv_heads, cfg.head_dim)
        self.k = torch.zeros(shape, device=self.device, dtype=dtype)
        self.v = torch.zeros(shape, device=self.device, dtype=dtype)
        self.tokens = torch.zeros(num_slots, capacity, device=self.device, dtype=torch.long)
        self.lengths = torch.zeros(num_slots, device=self.device, dtype=torch.long)
        self._len = np.zeros(num_slots, np.int64)    # host mirror of lengths
        self._seen = np.zeros(num_slots, np.int64)   # tokens ever appended per slot

    # ---- bookkeeping ---------------------------------------------------------------------------
    def _slot(self, slot) -> int:
        if isinstance(slot, torch.Tensor) and slot.numel() == 1:
            slot = int(slot)
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot!r} is not in [0, {self.num_slots})")
        return slot

    def check_slots(self, slots) -> list[int]:
        out = [self._slot(s) for s in slots]
        if not out or len(set(out)) != len(out):
            raise ValueError(f"slots must be a non-empty list of distinct slot indices, got {out}")
        return out

    def slot_array(self, slots: torch.Tensor) -> np.ndarray:
        """`check_slots` for a 1-D CPU integer tensor (the decode step's input), vectorised: the
        validated slots as an int64 array (possibly sharing the tensor's memory; read it only).
        Anything else goes through check_slots, so every bad input fails the same way."""
        if not (isinstance(slots, torch.Tensor) and slots.device.type == "cpu" and slots.dim() == 1
                and slots.numel() and slots.dtype in _INDEX_DTYPES):
            return np.asarray(self.check_slots(slots.tolist() if isinstance(slots, torch.Tensor) else slots),
                              np.int64)
        a = slots.numpy().astype(np.int64, copy=False)
        if a.min() < 0 or a.max() >= self.num_slots:
            self._slot(int(a[(a < 0) | (a >= self.num_slots)][0]))    # raises, naming the first bad slot
        if np.bincount(a).max() > 1:
            raise ValueError(f"slots must be a non-empty list of distinct slot indices, got {a.tolist()}")
        return a

    def length(self, slot) -> int:
        return int(self._len[self._slot(slot)])

    def lengths_of(self, slots: np.ndarray) -> np.ndarray:
        """Host lengths of validated `slots` (a copy)."""
        return self._len[slots]

    def tokens_seen(self, slot) -> int:
        return int(self._seen[self._slot(slot)])

    def reset(self, slot):
        """Free the slot (no memset: lengths bound every read)."""
        s = self._slot(slot)
        self._len[s] = self._seen[s] = 0
        self._set_length(s, 0)

    def _set_length(self, s: int, n: int) -> None:
        # fill_, not `lengths[s] = n`: on CUDA that assignment copies a pageable host scalar, a
        # blocking copy that waits for the device stream to drain
        self.lengths[s].fill_(n)

    def commit(self, slots, new_lengths, added, slot_t=None, lengths_t=None):
        """Called by the model after writing K/V of `added[b]` new tokens into each of the distinct,
        validated `slots` (lists or int arrays; `added` may be one int for all; slot_t / lengths_t:
        slots and new lengths as device tensors, if the caller has them)."""
        self._len[slots] = new_lengths
        np.add.at(self._seen, slots, added)
        if slot_t is None or lengths_t is None:
            slot_t, lengths_t = to_device(np.array([slots, new_lengths], np.int64), self.device)
        self.lengths.index_put_((slot_t,), lengths_t)

    def truncate(self, slot, drop: int):
        """Drop the slot's last `drop` tokens (lengths bound every read: no copy)."""
        s = self._slot(slot)
        n = int(self._len[s])
        if isinstance(drop, bool) or not isinstance(drop, int) or not 0 <= drop <= n:
            raise ValueError(f"drop must be an integer in [0, {n}], got {drop!r}")
        self._len[s] = n - drop
        self._seen[s] -= drop
        self._set_length(s, n - drop)

    # ---- StreamingLLM --------------------------------------------------------------------------
    def evict(self, slot, sinks: int, keep_recent: int):
        """Keep the first `sinks` and the last `keep_recent` tokens: one copy, here, not per step."""
        s = self._slot(slot)
        for name, v in (("sinks", sinks), ("keep_recent", keep_recent)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        n = int(self._len[s])
        if n <= sinks + keep_recent:
            return
        src = slice(n - keep_recent, n)
        dst = slice(sinks, sinks + keep_recent)
        for buf in (self.k, self.v):
            buf[:, s, dst] = buf[:, s, src].clone()    # regions may overlap: copy out first
        self.tokens[s, dst] = self.tokens[s, src].clone()
        self._len[s] = sinks + keep_recent
        self._set_length(s, sinks + keep_recent)

    # ---- sizes ---------------------------------------------------------------------------------
    @staticmethod
    def bytes_for(cfg: ModelConfig, num_slots: int, capacity: int, dtype=torch.bfloat16) -> int:
        """Bytes of the K and V buffers of a pool (to size it before allocating)."""
        per_token = 2 * len(cfg.kv_layers) * cfg.num_kv_heads * cfg.head_dim * torch.empty(0, dtype=dtype).element_size()
        return per_token * num_slots * capacity

    def bytes_per_token(self) -> int:
        return self.bytes_for(self.cfg, 1, 1, self.dtype)

    def nbytes_used(self, slot) -> int:
        return self.length(slot) * self.bytes_per_token()

    # ---- export / restore (for blobs) ----------------------------------------------------------
    def export(self, slot) -> CacheState:
        return self.export_start(slot).result()

    def export_start(self, slot) -> "PendingExport":
        """Begin copying a slot's state to the host. On CUDA the copies go into pinned memory behind
        the work already queued on the stream (so they see every write queued before them, and any
        later write to the slot comes after them), without making the host wait; elsewhere they are
        done on return."""
        s = self._slot(slot)
        n = int(self._len[s])
        parts = (self.k[:, s, :n], self.v[:, s, :n], self.tokens[s, :n])
        if self.device.type != "cuda":
            return PendingExport(*(p.to("cpu", copy=True) for p in parts), int(self._seen[s]), None)
        host = []
        for p in parts:
            h = torch.empty(p.shape, dtype=p.dtype, pin_memory=True)
            h.copy_(p, non_blocking=True)
            host.append(h)
        done = torch.cuda.Event()
        done.record()
        return PendingExport(*host, int(self._seen[s]), done)

    def restore(self, slot, state: CacheState):
        s = self._slot(slot)
        shape = (len(self.cfg.kv_layers), len(state.token_ids), self.cfg.num_kv_heads, self.cfg.head_dim)
        n = shape[1]
        if tuple(state.k.shape) != shape or tuple(state.v.shape) != shape:
            raise ValueError(f"cache state has shape {tuple(state.k.shape)}/{tuple(state.v.shape)}, expected {shape}")
        if n > self.capacity:
            raise ValueError(f"cache state holds {n} tokens, more than the slot capacity {self.capacity}")
        seen = state.tokens_seen
        if isinstance(seen, bool) or not isinstance(seen, int) or not n <= seen < 2 ** 63:
            raise ValueError(f"cache state has tokens_seen {seen!r}, expected an integer in [{n}, 2^63)")
        # pinned, non-blocking copies: a pageable one would first drain the device stream
        self.k[:, s, :n] = to_device(state.k, self.device, self.dtype)
        self.v[:, s, :n] = to_device(state.v, self.device, self.dtype)
        self.tokens[s, :n] = to_device(state.token_ids, self.device)
        self._len[s], self._seen[s] = n, state.tokens_seen
        self._set_length(s, n)
