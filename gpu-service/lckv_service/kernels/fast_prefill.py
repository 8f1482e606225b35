"""FastPrefill: `model.prefill` (iterative kind) for SHORT new chunks, with static shapes so the
whole chunk -- every layer of every pass over the iterated block -- replays as one CUDA graph.

Why: a 64-token turn after a cached history costs the model ~0.5 ms of launches and Python per
layer-pass, 98 ms for TinyLlama-w2's 9 passes over 20 middle layers, whatever the history length;
the arithmetic is a few ms. Here, per call:
- the new tokens are padded to a token bucket (`token_buckets`) and the key length to a multiple
  of `bucket`, so shapes repeat; per-row (start, n) tensors, which a graph owns as static inputs,
  drive every mask and index on the device;
- K/V (and token ids) are written only for real tokens: the write is a gather of the old values,
  torch.where(real, new, old), and an index_put_ at positions (start + j) mod capacity. Those are
  distinct within a row (a bucket never exceeds the capacity), so padding rewrites some position's
  own old value -- nothing else -- and needs no scratch space, even when a row fills its slot
  exactly. A warm-up with n = 0 therefore writes nothing at all;
- K/V are read through views of the pool when the slots are a contiguous range (a gather otherwise),
  each source layer's keys are rotated once per pass and shared by its readers, and GQA attends
  without expanding K/V (a kv head's g query heads ride as g*N query rows);
- graphs: one per (first slot, rows, token bucket, key bucket, passes, all_logits), at most
  `max_graphs`;
  non-contiguous slots, or more shapes, run the same step eagerly.

The layers run through the model's own forward (LCKVModel.run_layers over a StaticPrefillKV
backend), so the LCKV rules are the model's. Semantics are `LCKVModel._extend`'s
(tests/test_fast_prefill.py compares logits and the whole cache in float64): pass 1 sees zeros for the new tokens' target K/V, each pass writes the targets' K/V
once it ends, min(passes, longest row) passes (Theorem 1: that many are exact), no-diagonal layers
see keys < own position and a token without keys gets a zero attention output, keys are cached
before RoPE and rotated at their in-cache positions, and the cache's lengths advance (cache.commit).
Every index is validated on the host before any launch: a device-side assert cannot be caught.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..model import KVBackend, LCKVModel, apply_rope, attention_masks

TOKEN_BUCKETS = (16, 32, 64, 128, 256)


class PrefillInputError(ValueError):
    """Bad argument to FastPrefill; `.param` names it. Nothing was written when this is raised."""

    def __init__(self, message: str, param: str):
        super().__init__(f"{message} (param: {param})")
        self.param = param


def _positive_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and v >= 1


class FastPrefill:
    def __init__(self, model: LCKVModel, cache, bucket: int = 256, token_buckets: Sequence[int] = TOKEN_BUCKETS,
                 graphs: bool = False, max_graphs: int = 16):
        if not _positive_int(bucket):
            raise PrefillInputError(f"bucket must be a positive integer, got {bucket!r}", "bucket")
        tb = tuple(token_buckets) if isinstance(token_buckets, (list, tuple)) else None
        if not tb or not all(_positive_int(b) for b in tb):
            raise PrefillInputError(f"token_buckets must be positive integers, got {token_buckets!r}",
                                    "token_buckets")
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 0:
            raise PrefillInputError(f"max_graphs must be a non-negative integer, got {max_graphs!r}", "max_graphs")
        if graphs and cache.device.type != "cuda":
            raise PrefillInputError("graphs=True needs a CUDA cache", "graphs")
        w = model.lm_head.weight
        if cache.k.dtype != w.dtype or cache.k.device != w.device:
            raise PrefillInputError(f"cache is {cache.k.dtype} on {cache.k.device}, model is {w.dtype} on "
                                    f"{w.device}", "cache")
        if cache.cfg.kv_layers != model.cfg.kv_layers or cache.k.shape[3:] != (model.cfg.num_kv_heads,
                                                                               model.cfg.head_dim):
            raise PrefillInputError("cache layout does not match the model's K/V layers", "cache")
        self.model, self.cache, self.cfg = model, cache, model.cfg
        self.bucket, self.token_buckets = bucket, tuple(sorted(set(tb)))
        self.graphs, self.max_graphs = graphs, max_graphs
        cos, sin = model._rope(cache.capacity, cache.device, cache.dtype)
        self.cos, self.sin = cos[: cache.capacity], sin[: cache.capacity]          # [cap, D]
        self.last_passes = 0
        # per source layer, its last reader, unless a layer of the iterated block reads it (read again
        # every pass, so kept for the step): there its rotated keys can be freed
        src, blk = self.cfg.kv_source, self.cfg.iter_block
        readers = {s: [i for i in range(len(src)) if src[i] == s] for s in set(src)}
        self.done_after = {s: -1 if blk and any(blk[0] <= i <= blk[1] for i in r) else max(r)
                           for s, r in readers.items()}
        self._graphs: dict = {}
        self._pool = None
        self._stream = None

    @property
    def max_tokens(self) -> int:
        """The longest new chunk one call takes (the largest token bucket)."""
        return self.token_buckets[-1]

    # ---- public: model.prefill(cache, slots, tokens, PrefillMode("iterative", passes)) ----------
    @torch.no_grad()
    def __call__(self, slots, tokens, passes: int | str | None = None, all_logits: bool = False):
        """slots: distinct slot ids (list or CPU tensor); tokens: a [B, n] tensor or B 1-D sequences
        of ids (lengths may differ); passes: None (cfg m+b), an int, or "exact" (= longest row, exact
        by Theorem 1). Returns the logits of each row's last new token [B, V], or with all_logits a
        list of each row's [n_b, V]."""
        cache = self.cache
        slot_list, rows, p = self._check(slots, tokens, passes)
        B, ns = len(slot_list), [len(r) for r in rows]
        starts = [cache.length(s) for s in slot_list]
        N = min(cache.capacity, next(b for b in self.token_buckets if b >= max(ns)))
        S = min(cache.capacity, -(-max(a + n for a, n in zip(starts, ns)) // self.bucket) * self.bucket)
        first = slot_list[0]
        contiguous = slot_list == list(range(first, first + B))
        idx = torch.zeros(B, N, dtype=torch.long)                 # padding id 0: never written
        for b, r in enumerate(rows):
            idx[b, : len(r)] = r
        meta = torch.tensor([starts, ns], dtype=torch.long)       # [2, B]: start, n per row
        all_logits = bool(all_logits)
        key = (first, B, N, S, p, all_logits)
        if self.graphs and contiguous and (key in self._graphs or len(self._graphs) < self.max_graphs):
            logits = self._replay(key, idx, meta)
        else:
            dev = cache.device
            slot_t = torch.tensor(slot_list, device=dev)
            meta = meta.to(dev)
            logits = self._step(idx.to(dev), meta[0], meta[1], slot_t, first if contiguous else None, S, p,
                                all_logits)
        new = [a + n for a, n in zip(starts, ns)]
        cache.commit(slot_list, new, ns)
        self.last_passes = p if self.cfg.iter_block is not None else 1
        return [logits[b, :n] for b, n in enumerate(ns)] if all_logits else logits

    def _check(self, slots, tokens, passes):
        """Host-side validation of everything a step indexes with; raises before any write."""
        cache, V = self.cache, self.cfg.vocab_size
        if isinstance(slots, torch.Tensor):
            if slots.device.type != "cpu" or slots.dim() != 1:
                raise PrefillInputError("slots must be a 1-D CPU tensor or a list of ints", "slots")
            slots = slots.tolist()
        try:
            slot_list = cache.check_slots(list(slots))
        except (ValueError, TypeError) as e:
            raise PrefillInputError(str(e), "slots") from None
        if isinstance(tokens, torch.Tensor):
            if tokens.dim() != 2:
                raise PrefillInputError(f"tokens must be [B, n] or a list of 1-D sequences, got shape "
                                        f"{tuple(tokens.shape)}", "tokens")
            tokens = list(tokens)
        if not isinstance(tokens, (list, tuple)) or len(tokens) != len(slot_list):
            raise PrefillInputError(f"tokens must hold one row per slot ({len(slot_list)})", "tokens")
        rows = []
        for b, t in enumerate(tokens):
            try:
                t = torch.as_tensor(t).cpu()
            except (TypeError, ValueError, RuntimeError):
                raise PrefillInputError(f"tokens[{b}] is not a sequence of integer ids", "tokens") from None
            if t.dim() != 1 or t.numel() == 0 or t.dtype not in (torch.int64, torch.int32):
                raise PrefillInputError(f"tokens[{b}] must be a non-empty 1-D integer sequence", "tokens")
            if int(t.min()) < 0 or int(t.max()) >= V:
                raise PrefillInputError(f"tokens[{b}] has ids outside [0, {V})", "tokens")
            if t.numel() > self.max_tokens:
                raise PrefillInputError(f"tokens[{b}] has {t.numel()} tokens, more than the largest token "
                                        f"bucket {self.max_tokens}", "tokens")
            s = slot_list[b]
            if cache.length(s) + t.numel() > cache.capacity:
                raise PrefillInputError(f"slot {s} holds {cache.length(s)} tokens and cannot take {t.numel()} "
                                        f"more (capacity {cache.capacity}); evict first", "tokens")
            rows.append(t.long())
        longest = max(len(r) for r in rows)
        if passes is None:
            p = self.cfg.forward_passes + self.cfg.backward_passes
        elif passes == "exact":
            p = longest
        elif _positive_int(passes):
            p = passes
        else:
            raise PrefillInputError(f"passes must be None, 'exact' or a positive integer, got {passes!r}", "passes")
        p = min(p, longest) if self.cfg.iter_block is not None else 1   # Theorem 1: more change nothing
        return slot_list, rows, p

    # ---- the step: pure tensor work, no host sync; shapes fixed by (B, N, S, passes, contiguous) --
    def _step(self, idx, start, n, slot_idx, first: int | None, S: int, passes: int, all_logits: bool = False):
        cfg, cache, model = self.cfg, self.cache, self.model
        cap = cache.capacity
        B, N = idx.shape
        dev = idx.device
        j = torch.arange(N, device=dev)
        q_pos = start[:, None] + j                                       # [B, N] in-cache positions
        real = j[None, :] < n[:, None]                                   # [B, N] non-padding tokens
        w_slot, w_pos = slot_idx[:, None].expand(B, N), q_pos % cap      # distinct per row: N <= cap

        def put(buf, new):  # masked write of [B, N, ...] at the rows' new positions
            old = buf[w_slot, w_pos]
            keep = real.view(B, N, *[1] * (new.dim() - 2))
            buf.index_put_((w_slot, w_pos), torch.where(keep, new.to(buf.dtype), old))

        put(cache.tokens, idx)
        x = model.model.embed_tokens(idx)                                # [B, N, C]
        qp = q_pos.clamp(max=cap - 1)                                    # padding may run past the table
        rope = (self.cos[qp], self.sin[qp])                              # [B, N, D]
        # GQA without expanding K/V: the g query heads of a kv head ride as g*N query rows, so
        # each mask is repeated g times along the rows (built once per step, additive in x's dtype)
        g = cfg.num_heads // cfg.num_kv_heads
        masks = {}
        for nd, (allowed, empty) in attention_masks(q_pos, start + n, S).items():   # [B, 1, N, S]
            allowed = allowed.expand(B, g, N, S).reshape(B, 1, g * N, S)
            bias = torch.zeros(allowed.shape, dtype=x.dtype, device=dev).masked_fill_(~allowed, float("-inf"))
            masks[nd] = (bias, None if empty is None else empty.expand(B, g, N, 1).reshape(B, 1, g * N, 1))
        kv = StaticPrefillKV(self, put, slot_idx, first, S, masks, (self.cos[None, :S], self.sin[None, :S]), N)
        x = model.run_layers(x, kv, rope, passes=passes)
        if not all_logits:  # only each row's last real token needs the LM head
            x = x[torch.arange(B, device=dev), (n - 1).clamp(min=0)]     # [B, C]
        return model.lm_head(model.model.norm(x))                        # [B, V] or [B, N, V]

    # ---- CUDA graphs: one per (first slot, B, N, S, passes, all_logits) --------------------------
    def _replay(self, key, idx, meta):
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(*key)
        graph, static_idx, static_meta, _slot_idx, out = entry
        static_idx.copy_(idx)
        static_meta.copy_(meta)
        graph.replay()
        return out.clone()   # the next replay overwrites `out`

    def _capture(self, first: int, B: int, N: int, S: int, passes: int, all_logits: bool):
        dev = self.cache.device
        # n = 0 in every row: the warm-up writes nothing (each write keeps the old values)
        static_idx = torch.zeros(B, N, dtype=torch.long, device=dev)
        static_meta = torch.zeros(2, B, dtype=torch.long, device=dev)
        slot_idx = torch.arange(first, first + B, device=dev)
        if self._stream is None:   # one side stream for all warm-ups (the allocator pools per stream)
            self._stream = torch.cuda.Stream(dev)
        self._stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(self._stream):
            self._step(static_idx, static_meta[0], static_meta[1], slot_idx, first, S, passes, all_logits)
        torch.cuda.current_stream(dev).wait_stream(self._stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._step(static_idx, static_meta[0], static_meta[1], slot_idx, first, S, passes, all_logits)
        if self._pool is None:
            self._pool = graph.pool()
        # the entry owns every tensor the graph reads by address (see fast_decode.py: a freed input's
        # memory reused by the allocator made a replay index the pool with garbage)
        return graph, static_idx, static_meta, slot_idx, out

    def reset_graphs(self) -> None:
        """Drop captured graphs (their memory pool goes once nothing references it)."""
        self._graphs.clear()
        self._pool = None


class StaticPrefillKV(KVBackend):
    """The model's KV backend for one FastPrefill step (model.py, "KV backends"): masked writes of the
    real tokens' K/V (`put`), a cyclic target's held until its pass ends (zeros before the first),
    each source's keys rotated once per pass and freed after its last reader, GQA as grouped rows."""

    def __init__(self, fp: FastPrefill, put, slot_idx, first: int | None, S: int, masks, k_rope, n_new: int):
        super().__init__(fp.cfg)
        self.fp, self.cache, self.put, self.slot_idx, self.first, self.S = fp, fp.cache, put, slot_idx, first, S
        self.masks, self.k_rope, self.n_new = masks, k_rope, n_new
        self.rotated: dict = {}

    def _rows(self, buf):  # [B, S, Hkv, D]: a view of the pool for contiguous slots
        B = self.slot_idx.shape[0]
        return buf.narrow(0, self.first, B)[:, :self.S] if self.first is not None else buf[self.slot_idx, :self.S]

    def write(self, layer, k, v):
        li = self.cache.layer_index[layer]
        self.put(self.cache.k[li], k)
        self.put(self.cache.v[li], v)
        self.rotated.pop(layer, None)

    def attend(self, layer, source, q, nodiag):                          # q: [B, N, H, D]
        B, N, H, D = q.shape
        li = self.cache.layer_index[source]
        if source not in self.rotated:   # once per source and pass, shared by its readers
            self.rotated[source] = apply_rope(self._rows(self.cache.k[li]), *self.k_rope).transpose(1, 2)
        k, v = self.rotated[source], self._rows(self.cache.v[li]).transpose(1, 2)   # [B, Hkv, S, D]
        Hkv = k.shape[1]
        g = H // Hkv
        bias, empty = self.masks[nodiag]
        q = q.view(B, N, Hkv, g, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, g * N, D)   # head = kv * g + r
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)      # [B, Hkv, g*N, D]
        if empty is not None:     # a token without keys attends to nothing: output 0
            y = y.masked_fill(empty, 0.0)
        if self.fp.done_after[source] == layer:   # no later reader: free the rotated keys
            self.rotated.pop(source, None)
        return y.view(B, Hkv, g, N, D).permute(0, 3, 1, 2, 4).reshape(B, N, H * D)

    def begin_block(self):
        cfg = self.fp.cfg
        B, N = self.slot_idx.shape[0], self.n_new
        z = torch.zeros(B, N, cfg.num_kv_heads, cfg.head_dim, dtype=self.cache.dtype, device=self.cache.device)
        for t in cfg.cyclic_targets:  # pass 1 sees zeros for the new tokens' target K/V
            self.write(t, z, z)
