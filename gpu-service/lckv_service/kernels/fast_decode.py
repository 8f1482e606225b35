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
  streams K/V once (flash-decoding);
- the key length is rounded up to a bucket (masked per row), so shapes repeat and a step can be
  captured in a CUDA graph per (first slot, batch, bucket) and replayed (`graphs=True`, CUDA only;
  contiguous slot ranges only and at most `max_graphs` of them, so a serving engine whose batches
  change shape cannot grow graphs without bound; other steps run eagerly).

Semantics are the model's exactly (tests compare logits and cache contents in float64): new K/V
written at each slot's length, no-diagonal layers see keys < position, a row with no key gets a zero
attention output, and the cache's lengths advance by one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model import LCKVModel, apply_rope
from . import triton_decode

_compiled_rope = None


def rope_keys_fn(device: torch.device, compile_rope: bool):
    """apply_rope for the keys; on CUDA compiled into one fused kernel (read K, write rotated K)
    instead of eager's four elementwise passes over the keys."""
    global _compiled_rope
    if not compile_rope or device.type != "cuda":
        return apply_rope
    if _compiled_rope is None:
        _compiled_rope = torch.compile(apply_rope, dynamic=True, fullgraph=True)
    return _compiled_rope


class FastDecode:
    def __init__(self, model: LCKVModel, cache, bucket: int = 256, graphs: bool = False,
                 compile_rope: bool = True, attention: str = "sdpa", max_graphs: int = 64):
        if isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1:
            raise ValueError(f"bucket must be a positive integer, got {bucket!r}")
        if graphs and cache.device.type != "cuda":
            raise ValueError("graphs=True needs a CUDA cache")
        if attention not in ("sdpa", "triton"):
            raise ValueError(f"attention must be 'sdpa' or 'triton', got {attention!r}")
        if attention == "triton" and not triton_decode.available(cache.device, model.cfg.head_dim):
            raise ValueError("attention='triton' needs Triton, a CUDA cache and head_dim >= 32")
        self.model, self.cache, self.cfg = model, cache, model.cfg
        self.attention = attention
        self.bucket, self.graphs, self.max_graphs = bucket, graphs, max_graphs
        self.rope_keys = rope_keys_fn(cache.device, compile_rope)
        cos, sin = model._rope(cache.capacity + 1, cache.device, cache.dtype)
        self.cos, self.sin = cos[: cache.capacity + 1], sin[: cache.capacity + 1]   # [cap+1, D]
        src = self.cfg.kv_source
        self.last_reader = {s: max(i for i in range(len(src)) if src[i] == s) for s in set(src)}
        self._graphs: dict = {}
        self._pool = None
        self._stream = None   # one side stream for every capture's warm-up (see _capture)

    # ---- public: same contract as model.decode ---------------------------------------------------
    @torch.no_grad()
    def __call__(self, slots: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """slots (CPU), tokens: [B] -> logits [B, V]; appends one token per slot."""
        cache = self.cache
        slot_list = cache.check_slots(slots.tolist())
        lens = [cache.length(s) for s in slot_list]
        for s, n in zip(slot_list, lens):
            if n + 1 > cache.capacity:
                raise ValueError(f"slot {s} is full (capacity {cache.capacity}); evict first")
        B = len(slot_list)
        S = min(cache.capacity, -(-(max(lens) + 1) // self.bucket) * self.bucket)
        first = slot_list[0]
        contiguous = slot_list == list(range(first, first + B))
        if tokens.numel() != B:
            raise ValueError(f"tokens must hold one id per slot ({B}), got shape {tuple(tokens.shape)}")
        if tokens.device.type == "cpu" and tokens.numel() and not (
                0 <= int(tokens.min()) and int(tokens.max()) < self.cfg.vocab_size):
            raise ValueError(f"tokens has ids outside [0, {self.cfg.vocab_size})")   # device ids: argmax, in range
        self._check_bounds(slot_list, lens, S)
        tokens = tokens.to(cache.device, torch.long).view(B)
        key = (first, B, S)
        slot_t = torch.tensor(slot_list, device=cache.device)
        if self.graphs and contiguous and (key in self._graphs or len(self._graphs) < self.max_graphs):
            logits, new_len = self._replay(key, tokens)
        else:
            logits, new_len = self._step(tokens, slot_t, first if contiguous else None, S)
        cache.tokens[slot_t, new_len - 1] = tokens
        cache.commit(slot_list, [n + 1 for n in lens], [1] * B, slot_t, new_len)
        return logits

    def _check_bounds(self, slot_list: list[int], lens: list[int], S: int) -> None:
        """Every index a step will use, checked on the host from the mirrored lengths: an
        out-of-range index on the device is a device-side assert, which poisons the CUDA context
        for the rest of the process (no fallback could run after it)."""
        cache = self.cache
        if not 0 < S <= cache.capacity or S > self.cos.shape[0]:
            raise ValueError(f"key bucket {S} outside the cache capacity {cache.capacity}")
        if min(slot_list) < 0 or max(slot_list) >= cache.num_slots:
            raise ValueError(f"slots {slot_list} outside [0, {cache.num_slots})")
        if min(lens) < 0 or max(lens) + 1 > min(S, cache.capacity) or max(lens) >= self.cos.shape[0]:
            raise ValueError(f"slot lengths {lens} do not fit key bucket {S} / capacity {cache.capacity}")

    # ---- the step: pure tensor work, no host sync, shapes fixed by (B, S, contiguous) -------------
    def _step(self, tokens, slot_idx, first: int | None, S: int):
        cfg, cache, m = self.cfg, self.cache, self.model.model
        B = tokens.shape[0]
        H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        g = H // Hkv
        pos = cache.lengths[slot_idx]                                         # [B] new token positions
        kp = torch.arange(S, device=cache.device)
        allowed = {False: kp[None, :] <= pos[:, None], True: kp[None, :] < pos[:, None]}   # [B, S]
        empty = (pos == 0)[:, None, None, None]                             # nodiag row without keys
        # a fully masked row would make SDPA return NaN: let it see key 0, then zero its output
        allowed[True] = allowed[True] | (empty[:, 0, 0] & (kp[None, :] == 0))
        masks = {nd: a[:, None, None, :] for nd, a in allowed.items()}      # [B, 1, 1, S]
        cq, sq = self.cos[pos][:, None, None, :], self.sin[pos][:, None, None, :]   # [B, 1, 1, D]
        ck, sk = self.cos[None, :S], self.sin[None, :S]                      # [1, S, D]

        def kv_rows(buf):  # [B, S, Hkv, D]: a view of the pool when slots are contiguous
            return buf.narrow(0, first, B)[:, :S] if first is not None else buf[slot_idx, :S]

        x = m.embed_tokens(tokens)                                          # [B, C]
        rotated: dict[int, torch.Tensor] = {}
        limits = {False: pos + 1, True: pos}                                # keys each row may see
        for i, layer in enumerate(m.layers):
            h = layer.input_layernorm(x)
            attn = layer.self_attn
            if cfg.kv_source[i] == i:                                       # own K/V: write at pos
                li = cache.layer_index[i]
                cache.k[li][slot_idx, pos] = attn.k_proj(h).view(B, Hkv, D)
                cache.v[li][slot_idx, pos] = attn.v_proj(h).view(B, Hkv, D)
                rotated.pop(i, None)                                        # its keys changed at pos
            s = cfg.kv_source[i]
            li = cache.layer_index[s]
            q = apply_rope(attn.q_proj(h).view(B, 1, H, D), cq[:, 0], sq[:, 0])     # [B, 1, H, D]
            if self.attention == "triton":                                  # keys rotated in-kernel
                y = triton_decode.decode_attention(q.view(B, H, D), cache.k[li], cache.v[li], slot_idx,
                                                   limits[layer.nodiag], self.cos, self.sin, S)
            else:
                if s not in rotated:                                        # once per source per step
                    rotated[s] = self.rope_keys(kv_rows(cache.k[li]), ck, sk)      # [B, S, Hkv, D]
                k, v = rotated[s], kv_rows(cache.v[li])
                y = F.scaled_dot_product_attention(q.view(B, Hkv, g, D), k.transpose(1, 2), v.transpose(1, 2),
                                                   attn_mask=masks[layer.nodiag])   # [B, Hkv, g, D]
                if layer.nodiag:
                    y = y.masked_fill(empty, 0.0)
                if self.last_reader[s] == i:
                    del rotated[s]
            x = x + attn.o_proj(y.reshape(B, H * D))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = self.model.lm_head(m.norm(x))                              # [B, V]
        return logits, pos + 1

    # ---- CUDA graphs: one per (first slot or gather, B, S) ---------------------------------------
    def _replay(self, key, tokens):
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(*key)
        graph, static_tokens, _slot_idx, out = entry
        static_tokens.copy_(tokens)
        graph.replay()
        return out

    def _capture(self, first: int, B: int, S: int):
        cache = self.cache
        static_tokens = torch.zeros(B, dtype=torch.long, device=cache.device)
        slot_idx = torch.arange(first, first + B, device=cache.device)
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
        """Capture (graphs) the steps for the contiguous `slots` whose longest row will hold each of
        `max_lengths` tokens before the step, so timed runs replay only. Returns graphs held."""
        if self.graphs:
            slot_list = self.cache.check_slots(slots)
            first, B = slot_list[0], len(slot_list)
            if slot_list != list(range(first, first + B)):
                raise ValueError("graphs are captured for contiguous slot ranges only")
            for n in sorted({min(self.cache.capacity, -(-(m + 1) // self.bucket) * self.bucket)
                             for m in max_lengths}):
                if (first, B, n) not in self._graphs and len(self._graphs) < self.max_graphs:
                    self._graphs[(first, B, n)] = self._capture(first, B, n)
        return len(self._graphs)

    def reset_graphs(self) -> None:
        """Drop captured graphs (their memory pool goes once nothing references it)."""
        self._graphs.clear()
        self._pool = None
