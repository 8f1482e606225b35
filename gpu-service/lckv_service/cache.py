"""Preallocated condensed KV cache: one slot per live sequence, the K/V of cfg.kv_layers only.

Keys are stored BEFORE RoPE: attention rotates them at their index inside the cache, so
StreamingLLM eviction (keep `sinks` first + most recent tokens) is a plain slice and a cache holding
tokens [0,1,2,3,6,7,8] decodes the next token at position 7.

Lengths live twice: `lengths` on the device (for kernels) and a host mirror (for shapes and
capacity checks), so the decode hot path needs no device->host sync.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ModelConfig
from .device import to_device


@dataclass
class CacheState:
    """One sequence's condensed cache, on CPU."""
    k: torch.Tensor            # [n_kv_layers, n, n_kv_heads, head_dim], keys before RoPE
    v: torch.Tensor            # same
    token_ids: list[int]       # ids of the n tokens the cache holds (sinks + recent)
    tokens_seen: int           # all tokens ever appended (>= n; the rest were evicted)


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
        self._len = [0] * num_slots          # host mirror of lengths
        self._seen = [0] * num_slots         # tokens ever appended per slot

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

    def length(self, slot) -> int:
        return self._len[self._slot(slot)]

    def tokens_seen(self, slot) -> int:
        return self._seen[self._slot(slot)]

    def reset(self, slot):
        """Free the slot (no memset: lengths bound every read)."""
        s = self._slot(slot)
        self._len[s] = self._seen[s] = 0
        self.lengths[s] = 0

    def commit(self, slots: list[int], new_lengths: list[int], added: list[int], slot_t=None, lengths_t=None):
        """Called by the model after writing K/V of `added[b]` new tokens into each slot
        (slot_t / lengths_t: the same as device tensors, if the caller has them)."""
        for s, n, a in zip(slots, new_lengths, added):
            self._len[s] = n
            self._seen[s] += a
        if slot_t is None or lengths_t is None:
            slot_t, lengths_t = to_device([slots, new_lengths], self.device)
        self.lengths[slot_t] = lengths_t

    # ---- StreamingLLM --------------------------------------------------------------------------
    def evict(self, slot, sinks: int, keep_recent: int):
        """Keep the first `sinks` and the last `keep_recent` tokens: one copy, here, not per step."""
        s = self._slot(slot)
        for name, v in (("sinks", sinks), ("keep_recent", keep_recent)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        n = self._len[s]
        if n <= sinks + keep_recent:
            return
        src = slice(n - keep_recent, n)
        dst = slice(sinks, sinks + keep_recent)
        for buf in (self.k, self.v):
            buf[:, s, dst] = buf[:, s, src].clone()    # regions may overlap: copy out first
        self.tokens[s, dst] = self.tokens[s, src].clone()
        self._len[s] = sinks + keep_recent
        self.lengths[s] = sinks + keep_recent

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
        s = self._slot(slot)
        n = self._len[s]
        return CacheState(k=self.k[:, s, :n].to("cpu", copy=True), v=self.v[:, s, :n].to("cpu", copy=True),
                          token_ids=self.tokens[s, :n].tolist(), tokens_seen=self._seen[s])

    def restore(self, slot, state: CacheState):
        s = self._slot(slot)
        shape = (len(self.cfg.kv_layers), len(state.token_ids), self.cfg.num_kv_heads, self.cfg.head_dim)
        n = shape[1]
        if tuple(state.k.shape) != shape or tuple(state.v.shape) != shape:
            raise ValueError(f"cache state has shape {tuple(state.k.shape)}/{tuple(state.v.shape)}, expected {shape}")
        if n > self.capacity:
            raise ValueError(f"cache state holds {n} tokens, more than the slot capacity {self.capacity}")
        if state.tokens_seen < n:
            raise ValueError("cache state has tokens_seen < number of cached tokens")
        self.k[:, s, :n] = state.k.to(self.device, self.dtype)
        self.v[:, s, :n] = state.v.to(self.device, self.dtype)
        self.tokens[s, :n] = torch.tensor(state.token_ids, dtype=torch.long, device=self.device)
        self._len[s], self._seen[s] = n, state.tokens_seen
        self.lengths[s] = n
