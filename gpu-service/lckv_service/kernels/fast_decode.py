"""FastDecode: a drop-in for `LCKVModel.decode` with static shapes, built for bandwidth.

`model.decode` gathers every source layer's K and V (a copy), rotates all keys, and keeps all of
them alive until the step ends: about twice the step's K/V bytes moved and a transient copy of the
whole active cache. Here, per step:
- K/V are read through views of the pool when the slots form a contiguous range (a gather only
  otherwise); V is never copied;
- each *source* layer's keys are rotated once per step and freed after its last reader, so an LCKV
  middle block (all reading one target) pays one rotation, a standard model one per layer;
- GQA attends without expanding K/V (the g query heads of a kv head ride as g query rows);
- on CUDA the key rotation is one compiled kernel (eager RoPE makes four passes over the keys), or,
  with attention="triton", no pass at all: triton_decode.py rotates keys in registers while it
  streams K/V once (flash-decoding); the model's norms, SwiGLU and query rotation are one compiled
  kernel each too (`compile`, kernels/fused.py: the model it is given runs them, prefill included);
- the key length is rounded up to a bucket (masked per row), so shapes repeat and a step can be
  captured in a CUDA graph and replayed (`graphs=True`, CUDA only), at most `max_graphs` of them
  (other steps run eagerly). Two kinds of graph:
  * with `pad_slot` (serving): slot indices are a graph input and the batch is padded up to a batch
    bucket (`BATCH_BUCKETS`), so any set of slots replays one graph per (batch bucket, key bucket);
    padding rows decode token 0 into `pad_slot`, a scratch slot the caller never uses, whose length
    stays 0 (so they write only its position 0 and their logits are dropped);
  * without it (benchmarks): one graph per (first slot, batch, key bucket) of a contiguous slot range,
    which reads K/V through views of the pool instead of indexing it.

Semantics are the model's exactly (tests compare logits and cache contents in float64): new K/V
written at each slot's length, no-diagonal layers see keys < position, a row with no key gets a zero
attention output, and the cache's lengths advance by one.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..device import to_device
from ..model import KVBackend, LCKVModel, apply_rope
from . import fused, triton_decode


BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024)


def batch_bucket(n: int) -> int:
    """The padded batch a graph is captured for: the smallest bucket >= n (multiples of 256 beyond)."""
    for b in BATCH_BUCKETS:
        if b >= n:
            return b
    return -(-n // 256) * 256


class FastDecode:
    def __init__(self, model: LCKVModel, cache, bucket: int = 256, graphs: bool = False,
                 compile: bool = True, attention: str = "sdpa", max_graphs: int = 64,
                 pad_slot: int | None = None):
        if isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1:
            raise ValueError(f"bucket must be a positive integer, got {bucket!r}")
        if graphs and cache.device.type != "cuda":
            raise ValueError("graphs=True needs a CUDA cache")
        if attention not in ("sdpa", "triton"):
            raise ValueError(f"attention must be 'sdpa' or 'triton', got {attention!r}")
        if attention == "triton" and not triton_decode.available(cache.device, model.cfg.head_dim):
            raise ValueError("attention='triton' needs Triton, a CUDA cache and head_dim >= 32")
        if pad_slot is not None and not (isinstance(pad_slot, int) and 0 <= pad_slot < cache.num_slots):
            raise ValueError(f"pad_slot must be a slot index of the cache, got {pad_slot!r}")
        self.model, self.cache, self.cfg = model, cache, model.cfg
        self.attention, self.pad_slot = attention, pad_slot
        self.bucket, self.graphs, self.max_graphs = bucket, graphs, max_graphs
        # compile (CUDA with Triton): the model's norms, SwiGLU and query rotation, and the keys' rotation
        # here, run as one compiled kernel each (kernels/fused.py); otherwise (or off) the eager reference
        fused.fuse(model, on=compile)
        self.rope_keys = fused.kernel(apply_rope, cache.device, compile)
        cos, sin = model._rope(cache.capacity + 1, cache.device, cache.dtype)
        self.cos, self.sin = cos[: cache.capacity + 1], sin[: cache.capacity + 1]   # [cap+1, D]
        src = self.cfg.kv_source
        self.last_reader = self.cfg.last_reader
        # sources whose keys rotated before the source layer stores its new K/V are stale for a
        # reader from that layer on that sees the diagonal (the new position)
        self.restale = {s for s in set(src) if any(src[i] == s and i >= s and not self.cfg.nodiag(i)
                                                   for i in range(len(src)))}
        self._graphs: dict = {}
        self._pool = None
        self._stream = None   # one side stream for every capture's warm-up (see _capture)

    # ---- public: same contract as model.decode ---------------------------------------------------
    @torch.no_grad()
    def __call__(self, slots: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """slots (CPU), tokens: [B] -> logits [B, V]; appends one token per slot.
        Host work is a few vectorised operations on the cache's host mirrors, whatever B: the
        engine overlaps it with the previous step's device work only while it stays shorter."""
        cache = self.cache
        slot_a = cache.slot_array(slots)                                    # distinct, in range
        lens = cache.lengths_of(slot_a)
        B, longest = slot_a.size, int(lens.max())
        if longest + 1 > cache.capacity:                                    # argmax: the first full one
            raise ValueError(f"slot {int(slot_a[lens.argmax()])} is full (capacity {cache.capacity}); evict first")
        S = self.key_bucket(longest)
        first = int(slot_a[0])
        contiguous = int(slot_a[-1]) - first == B - 1 and (B < 3 or bool((np.diff(slot_a) == 1).all()))
        if tokens.numel() != B:
            raise ValueError(f"tokens must hold one id per slot ({B}), got shape {tuple(tokens.shape)}")
        if tokens.device.type == "cpu" and not (
                0 <= int(tokens.min()) and int(tokens.max()) < self.cfg.vocab_size):
            raise ValueError(f"tokens has ids outside [0, {self.cfg.vocab_size})")   # device ids: argmax, in range
        self._check_bounds((int(slot_a.min()), int(slot_a.max())), (int(lens.min()), longest), S)
        if self.pad_slot is not None and bool((slot_a == self.pad_slot).any()):
            raise ValueError(f"slot {self.pad_slot} is the padding slot")
        tokens = tokens.to(cache.device, torch.long).view(B)
        key = (None, batch_bucket(B), S) if self.pad_slot is not None else (first, B, S) if contiguous else None
        slot_t = to_device(slot_a, cache.device)
        if self.graphs and key is not None and (key in self._graphs or len(self._graphs) < self.max_graphs):
            logits, new_len = self._replay(key, tokens, slot_t)
        else:
            logits, new_len = self._step(tokens, slot_t, first if contiguous else None, S)
        cache.commit(slot_a, lens + 1, 1, slot_t, new_len)
        return logits

    def key_bucket(self, longest: int) -> int:
        """Keys a step attends over when its longest row holds `longest` tokens before the step."""
        return min(self.cache.capacity, -(-(longest + 1) // self.bucket) * self.bucket)

    def _check_bounds(self, slot_range: tuple[int, int], len_range: tuple[int, int], S: int) -> None:
        """Every index a step will use, checked on the host from the mirrored lengths (each range:
        the batch's (min, max)): an out-of-range index on the device is a device-side assert, which
        poisons the CUDA context for the rest of the process (no fallback could run after it)."""
        cache = self.cache
        if not 0 < S <= cache.capacity or S > self.cos.shape[0]:
            raise ValueError(f"key bucket {S} outside the cache capacity {cache.capacity}")
        if slot_range[0] < 0 or slot_range[1] >= cache.num_slots:
            raise ValueError(f"slots {slot_range[0]}..{slot_range[1]} outside [0, {cache.num_slots})")
        if len_range[0] < 0 or len_range[1] + 1 > min(S, cache.capacity) or len_range[1] >= self.cos.shape[0]:
            raise ValueError(f"slot lengths {len_range[0]}..{len_range[1]} do not fit key bucket {S} / "
                             f"capacity {cache.capacity}")

    # ---- the step: pure tensor work, no host sync, shapes fixed by (B, S, contiguous) -------------
    def _step(self, tokens, slot_idx, first: int | None, S: int):
        cache = self.cache
        pos = cache.lengths[slot_idx]                                         # [B] new token positions
        cache.tokens.index_put_((slot_idx, pos), tokens)                      # in the graph, if any
        cq, sq = self.cos[pos][:, None, :], self.sin[pos][:, None, :]         # [B, 1, D]
        x = self.model.model.embed_tokens(tokens)[:, None]                    # [B, 1, C]
        x = self.model.run_layers(x, PoolDecodeKV(self, slot_idx, first, pos, S), (cq, sq))
        logits = self.model.lm_head(self.model.model.norm(x[:, 0]))          # [B, V]
        return logits, pos + 1

    # ---- CUDA graphs: one per (first slot, B, S) or, with a padding slot, per (B bucket, S) --------
    def _replay(self, key, tokens, slot_t):
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(*key)
        graph, static_tokens, slot_idx, (logits, new_len) = entry
        B = tokens.shape[0]
        static_tokens[:B].copy_(tokens)
        if key[0] is None:                      # gathered graph: slots are an input, the rest pads
            slot_idx[:B].copy_(slot_t)
            slot_idx[B:].fill_(self.pad_slot)
            static_tokens[B:].zero_()
        graph.replay()
        return logits[:B], new_len[:B]

    @torch.no_grad()
    def _capture(self, first: int | None, B: int, S: int):
        # no_grad here, not only in __call__: warm / warm_buckets capture too, and a graph captured with
        # autograd on keeps every layer's activations alive through its logits (gigabytes over all graphs)
        cache = self.cache
        static_tokens = torch.zeros(B, dtype=torch.long, device=cache.device)
        slot_idx = (torch.full((B,), self.pad_slot, device=cache.device) if first is None
                    else torch.arange(first, first + B, device=cache.device))
        saved = (cache.lengths.clone(),)
        # warm up on a side stream (lazy inits, cuBLAS workspaces), then capture; the warm-up's
        # K/V writes land at positions the next real step overwrites, and lengths are unchanged
        # one stream for all captures: the caching allocator keeps freed blocks per stream, so a new
        # stream per capture would strand one warm-up step's transient memory per graph
        if self._stream is None:
            self._stream = torch.cuda.Stream(cache.device)
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream(cache.device))
        with torch.cuda.stream(stream):
            self._step(static_tokens, slot_idx, first, S)
        torch.cuda.current_stream(cache.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # capture on that same stream too: without `stream=` every capture gets a new internal side
        # stream, and blocks freed in one capture cannot serve the next, so each graph kept its own
        # step transients (measured on an H100: 30-60 GiB beyond pool + weights at batch 1-2k)
        with torch.cuda.graph(graph, pool=self._pool, stream=stream):
            out = self._step(static_tokens, slot_idx, first, S)
        if self._pool is None:
            self._pool = graph.pool()
        cache.lengths.copy_(saved[0])
        # the graph reads static_tokens and slot_idx at their captured addresses: the entry must
        # own them, or the caching allocator hands that memory to the next tensor and a replay
        # indexes the pool with whatever lands there (the device-side assert seen on the H200)
        return graph, static_tokens, slot_idx, out

    def warm(self, slots: list[int], max_lengths: list[int]) -> int:
        """Capture (graphs) the steps for a batch of `slots` whose longest row will hold each of
        `max_lengths` tokens before the step, so timed runs replay only. Returns graphs held.
        Without a padding slot the slots must be a contiguous range."""
        if self.graphs:
            slot_list = self.cache.check_slots(slots)
            first, B = slot_list[0], len(slot_list)
            if self.pad_slot is not None:
                first, B = None, batch_bucket(B)
            elif slot_list != list(range(first, first + B)):
                raise ValueError("graphs are captured for contiguous slot ranges only")
            for n in sorted({self.key_bucket(m) for m in max_lengths}):
                if (first, B, n) not in self._graphs and len(self._graphs) < self.max_graphs:
                    self._graphs[(first, B, n)] = self._capture(first, B, n)
        return len(self._graphs)

    def bucket_pairs(self, max_batch: int) -> list[tuple[int, int]]:
        """Every (batch bucket up to `max_batch`, key bucket) a padded step can use, in capture order:
        largest first, since the graphs share one memory pool and a smaller step's transients then fit
        in blocks the larger ones freed, where ascending order makes each larger capture grow the pool."""
        keys = sorted({self.key_bucket(n) for n in range(0, self.cache.capacity, self.bucket)})
        batches = [b for b in BATCH_BUCKETS if b < batch_bucket(max_batch)] + [batch_bucket(max_batch)]
        return [(B, S) for B in reversed(batches) for S in reversed(keys)]

    def warm_buckets(self, max_batch: int) -> int:
        """With a padding slot: capture every bucket_pairs graph. Returns graphs held."""
        if not self.graphs or self.pad_slot is None:
            return len(self._graphs)
        for B, S in self.bucket_pairs(max_batch):
            if (None, B, S) not in self._graphs and len(self._graphs) < self.max_graphs:
                self._graphs[(None, B, S)] = self._capture(None, B, S)
        return len(self._graphs)

    def reset_graphs(self) -> None:
        """Drop captured graphs (their memory pool goes once nothing references it)."""
        self._graphs.clear()
        self._pool = None


class PoolDecodeKV(KVBackend):
    """The model's KV backend for one FastDecode step (model.py, "KV backends"): own K/V written at
    each row's position in the pool; attention reads the source layer's K/V in place (Triton, keys
    rotated in registers) or through views / one gather with keys rotated once per source."""

    def __init__(self, fd: FastDecode, slot_idx, first: int | None, pos, S: int):
        super().__init__(fd.cfg)
        self.fd, self.cache, self.slot_idx, self.first, self.pos, self.S = fd, fd.cache, slot_idx, first, pos, S
        self.limits = {False: pos + 1, True: pos}                           # keys each row may see
        self.rotated: dict[int, torch.Tensor] = {}
        if fd.attention == "triton":   # the kernel masks by `limits`: no [B, S] masks in the step (or its graph)
            return
        kp = torch.arange(S, device=pos.device)
        self.empty = (pos == 0)[:, None, None, None]                        # nodiag row without keys
        allowed = {False: kp[None, :] <= pos[:, None], True: kp[None, :] < pos[:, None]}   # [B, S]
        # a fully masked row would make SDPA return NaN: let it see key 0, then zero its output
        allowed[True] = allowed[True] | (self.empty[:, 0, 0] & (kp[None, :] == 0))
        self.masks = {nd: a[:, None, None, :] for nd, a in allowed.items()}  # [B, 1, 1, S]

    def _rows(self, buf):  # [B, S, Hkv, D]: a view of the pool when slots are contiguous
        B = self.slot_idx.shape[0]
        return buf.narrow(0, self.first, B)[:, :self.S] if self.first is not None else buf[self.slot_idx, :self.S]

    def write(self, layer, k, v):                                            # [B, 1, Hkv, D]
        li = self.cache.layer_index[layer]
        self.cache.k[li][self.slot_idx, self.pos] = k[:, 0]
        self.cache.v[li][self.slot_idx, self.pos] = v[:, 0]
        if layer in self.fd.restale:
            self.rotated.pop(layer, None)

    def attend(self, layer, source, q, nodiag):                              # q: [B, 1, H, D]
        fd, cache = self.fd, self.cache
        B, _, H, D = q.shape
        li = cache.layer_index[source]
        if fd.attention == "triton":
            y = triton_decode.decode_attention(q.view(B, H, D), cache.k[li], cache.v[li], self.slot_idx,
                                               self.limits[nodiag], fd.cos, fd.sin, self.S)
        else:
            if source not in self.rotated:                                   # once per source per step
                self.rotated[source] = fd.rope_keys(self._rows(cache.k[li]), fd.cos[None, :self.S],
                                                    fd.sin[None, :self.S])   # [B, S, Hkv, D]
            k, v = self.rotated[source], self._rows(cache.v[li])
            Hkv = k.shape[2]
            y = F.scaled_dot_product_attention(q.view(B, Hkv, H // Hkv, D), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=self.masks[nodiag])   # [B, Hkv, g, D]
            if nodiag:
                y = y.masked_fill(self.empty, 0.0)
            if fd.last_reader[source] == layer:
                del self.rotated[source]
        return y.reshape(B, 1, H * D)
