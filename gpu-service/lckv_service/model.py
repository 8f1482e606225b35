"""The LCKV model: a Llama decoder whose layers may attend to another layer's K/V (Wu & Tu 2024).

Reads top-down: RMSNorm -> RoPE -> masks/attention -> MLP -> Block -> PrefillMode -> LCKVModel.
Shapes: B batch, T/N new tokens, S keys, C hidden, H heads, Hkv kv heads, D head_dim, V vocab.

LCKV specifics live here and in config.py only:
- kv_source[i]: the layer whose K/V layer i attends to; only layers with kv_source[i] == i own
  W_K/W_V. A *cyclic target* t (read by some layer below it) forces an iterative computation.
- No-diagonal layers (those reading a cyclic target, or all with nodiag_everywhere): token i sees
  tokens < i only, and token 0's attention output is exactly zero (set explicitly).
- The iterated block [lo, hi] (first layer reading upward .. topmost target) runs several passes
  restarting from the same input; every layer in it reads the targets' K/V of the *previous*
  pass (zeros at first). Bottom layers run once before, top layers once after the final pass.
  Theorem 1: with passes >= tokens this equals the sequential model (tests/ prove it against
  reference.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .device import to_device
from .errors import ConfigError


def rms_norm(x, weight, eps: float):
    """x: [..., C] -> weight * x / rms(x); bf16/fp16 normalise in float32, like HF."""
    xf = x.float() if x.element_size() < 4 else x
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.kernel = rms_norm   # kernels.fused.fuse swaps in one compiled kernel (CUDA)

    def forward(self, x):
        return self.kernel(x, self.weight, self.eps)


# ---- RoPE (HF "rotate_half" convention, so HF Llama weights load unchanged) ----------------------
def rope_table(n: int, inv_freq: list[float], device, dtype):
    """cos, sin: [n, D] for positions 0..n-1 from the D/2 inverse frequencies (cfg.rope_inv_freq():
    theta and any scaling), angles in float64, then cast."""
    inv_freq = torch.tensor(inv_freq, dtype=torch.float64, device=device)
    ang = torch.arange(n, dtype=torch.float64, device=device)[:, None] * inv_freq  # [n, D/2]
    ang = torch.cat((ang, ang), dim=-1)                                            # [n, D]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x: [B, T, H, D]; cos/sin: [B or 1, T, D] -> x rotated at those positions."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


# ---- masks and attention -----------------------------------------------------------------------
def attention_masks(q_pos, k_len, S: int):
    """Boolean masks (True = may attend) for query positions q_pos [B, T] over S keys, of which
    the first k_len [B] are valid. Returns {nodiag: (mask [B,1,T,S], empty [B,1,T,1] | None)}.
    Rows with no key at all (token 0 without diagonal) get key 0 unmasked so SDPA stays finite;
    `empty` marks them so their output is then set to exactly 0."""
    kp = torch.arange(S, device=q_pos.device)
    in_seq = kp[None, None, :] < k_len[:, None, None]                  # [B, 1, S]
    out = {}
    for nodiag in (False, True):
        allowed = (kp[None, None, :] < q_pos[:, :, None] + (0 if nodiag else 1)) & in_seq  # [B,T,S]
        if nodiag:
            empty = ~allowed.any(-1, keepdim=True)                     # [B, T, 1]
            allowed = allowed | (empty & (kp == 0))
            out[nodiag] = (allowed[:, None], empty[:, None])
        else:  # key 0 is always allowed with the diagonal: no empty rows
            out[nodiag] = (allowed[:, None], None)
    return out


def sdpa(q, k, v, mask):
    """q: [B, H, T, D]; k, v: [B, Hkv, S, D]; mask: [B|1, 1, T, S] bool -> [B, H, T, D]."""
    if k.shape[1] != q.shape[1] and q.device.type == "cuda":
        # CUDA's masked kernels (memory-efficient) refuse GQA: expand the kv heads instead
        g = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, has_kv: bool):
        super().__init__()
        self.H, self.Hkv, self.D, self.has_kv = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, has_kv
        C = cfg.hidden_size
        self.q_proj = nn.Linear(C, self.H * self.D, bias=False)
        if has_kv:  # middle LCKV layers have no W_K/W_V at all
            self.k_proj = nn.Linear(C, self.Hkv * self.D, bias=False)
            self.v_proj = nn.Linear(C, self.Hkv * self.D, bias=False)
        self.o_proj = nn.Linear(self.H * self.D, C, bias=False)
        self.rope = apply_rope   # the queries' rotation; kernels.fused.fuse swaps in one compiled kernel (CUDA)
        # [W_Q; W_K; W_V] as one tensor whose slices *are* the three weights (kernels.fused.merge_qkv), for
        # one GEMM instead of three without grad. A plain attribute: state_dict keeps the three names,
        # loading into them updates it, and moving the model without merging again fails loudly
        self.qkv: torch.Tensor | None = None

    def project(self, h):
        """h: [B, T, C] -> q (NOT rotated) [B, T, H, D], and this layer's own new k (NOT rotated), v
        [B, T, Hkv, D], or None for a layer without W_K/W_V."""
        B, T, _ = h.shape
        if self.qkv is not None and not torch.is_grad_enabled():   # training keeps the three weights' grads
            q, k, v = F.linear(h, self.qkv).split((self.H * self.D, self.Hkv * self.D, self.Hkv * self.D), -1)
        else:
            q = self.q_proj(h)
            if not self.has_kv:
                return q.view(B, T, self.H, self.D), None
            k, v = self.k_proj(h), self.v_proj(h)
        return q.view(B, T, self.H, self.D), (k.view(B, T, self.Hkv, self.D), v.view(B, T, self.Hkv, self.D))


def masked_attention(q, k, v, mask, empty):
    """q (rotated): [B, T, H, D]; k (rotated), v: [B, S, Hkv, D]; mask [B|1, 1, T, S]; empty: rows
    with no key ([B, 1, T, 1] or None), whose output is exactly 0 -> [B, T, H*D]."""
    B, T, H, D = q.shape
    y = sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)  # [B, H, T, D]
    if empty is not None:
        y = y.masked_fill(empty, 0.0)  # token 0 without diagonal attends to nothing: output 0
    return y.transpose(1, 2).reshape(B, T, H * D)


def swiglu(gate, up):
    """SwiGLU's gating: silu(gate) * up."""
    return F.silu(gate) * up


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C, F_ = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(C, F_, bias=False)
        self.up_proj = nn.Linear(C, F_, bias=False)
        self.down_proj = nn.Linear(F_, C, bias=False)
        self.kernel = swiglu   # kernels.fused.fuse swaps in one compiled kernel (CUDA)

    def forward(self, x):
        return self.down_proj(self.kernel(self.gate_proj(x), self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.nodiag = layer, cfg.nodiag(layer)
        self.source = cfg.kv_source[layer]          # the layer whose K/V this one attends to
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, has_kv=self.source == layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, kv, rope):
        """x: [B, T, C]; kv: the step's KV backend (where K/V live, how attention reads them);
        rope: (cos, sin) [B|1, T, D] at the queries' positions."""
        attn = self.self_attn
        q, own_kv = attn.project(self.input_layernorm(x))
        if own_kv is not None:
            kv.store(self.layer, *own_kv)
        q = attn.rope(q, *rope)                                                 # [B, T, H, D]
        x = x + attn.o_proj(kv.attend(self.layer, self.source, q, self.nodiag))
        return x + self.mlp(self.post_attention_layernorm(x))


# ---- KV backends: where K/V live and how attention reads them ----------------------------------
class KVBackend:
    """The model holds the LCKV rules (which layer stores, which K/V it reads, no-diagonal, the pass
    schedule); a backend holds the storage. Block.forward / run_layers call:
      store(layer, k, v)                this layer's own new K/V, keys before RoPE: [B, T, Hkv, D]
      attend(layer, source, q, nodiag)  -> [B, T, H*D]: q (rotated) over `source`'s K/V
      begin_block()                     before the first pass over the iterated block
      begin_pass() / end_pass() -> bool around each pass (True: stop iterating)
    The deferred-target rule lives here: during a pass, a deferred target's new K/V are held and
    written when the pass ends (cfg.deferred_targets); every other layer's are written at once.
    Subclasses implement write(layer, k, v) and attend. Backends: SequenceKV (training), CachedKV
    (the KVCache pool), kernels.fast_decode.PoolDecodeKV, kernels.fast_prefill.StaticPrefillKV,
    export_onnx.ExportKV."""

    def __init__(self, cfg: ModelConfig):
        self.deferred = cfg.deferred_targets
        self.pending: dict = {}

    def write(self, layer, k, v):
        raise NotImplementedError

    def attend(self, layer, source, q, nodiag):
        raise NotImplementedError

    def store(self, layer, k, v):
        if layer in self.pending:
            self.pending[layer] = (k, v)
        else:
            self.write(layer, k, v)

    def begin_block(self):
        pass

    def begin_pass(self):
        self.pending = {t: None for t in self.deferred}

    def end_pass(self) -> bool:
        for t, (k, v) in self.pending.items():
            self.write(t, k, v)
        self.pending = {}
        return False


class SequenceKV(KVBackend):
    """A whole sequence, no cache (training, evaluation): a layer reading a cyclic target sees the
    previous pass's K/V of it (zeros before the first pass)."""

    def __init__(self, cfg: ModelConfig, rope, masks, zeros):
        super().__init__(cfg)
        self.targets, self.rope, self.masks = cfg.cyclic_targets, rope, masks
        self.fresh: dict = {}
        self.carried = {t: (zeros, zeros) for t in self.targets} if cfg.iter_block is not None else {}

    def write(self, layer, k, v):
        self.fresh[layer] = (apply_rope(k, *self.rope), v)
        self.carried.pop(layer, None)   # a published target: its readers from here on see this pass's

    def attend(self, layer, source, q, nodiag):
        k, v = self.carried[source] if source in self.carried else self.fresh[source]
        return masked_attention(q, k, v, *self.masks[nodiag])

    def end_pass(self) -> bool:
        super().end_pass()
        self.carried = {t: self.fresh[t] for t in self.targets}
        return False


class CachedKV(KVBackend):
    """One step over the KVCache pool: row b's n[b] new tokens after its slot's cached ones, written
    at the new positions (the first pass sees zeros for the targets'). Each source's keys are gathered
    and rotated once per pass and shared by its readers. tol: stop passes once the targets' K/V
    change less (mean square) than it."""

    def __init__(self, cfg: ModelConfig, cache, slot_t, w_slot, w_pos, real, S, k_rope, masks, tol, shape):
        super().__init__(cfg)
        self.cfg, self.cache, self.slot_t, self.S, self.k_rope, self.masks = cfg, cache, slot_t, S, k_rope, masks
        self.shape = shape                          # (B, N): rows and new tokens per row (padded)
        self.w_slot, self.w_pos, self.real, self.tol = w_slot, w_pos, real, tol
        self.gathered: dict = {}
        self.last_reader = cfg.last_reader
        self.published: dict = {}     # adaptive: published targets' (new, old) K/V of this pass
        self.passes_run = 0

    def write(self, layer, k, v):  # k, v: [B, N, Hkv, D] -> the cache at each row's new positions
        li = self.cache.layer_index[layer]
        self.cache.k[li].index_put_((self.w_slot, self.w_pos), self.real(k))
        self.cache.v[li].index_put_((self.w_slot, self.w_pos), self.real(v))
        self.gathered.pop(layer, None)

    def _old(self, layer):  # the cache's K/V at the new positions, before this pass writes them
        li = self.cache.layer_index[layer]
        return self.cache.k[li][self.w_slot, self.w_pos], self.cache.v[li][self.w_slot, self.w_pos]

    def store(self, layer, k, v):
        if self.tol is not None and layer in self.cfg.cyclic_targets and layer not in self.pending:
            self.published[layer] = tuple(zip((k, v), self._old(layer)))   # published now: its change
        super().store(layer, k, v)

    def attend(self, layer, source, q, nodiag):
        if source not in self.gathered:
            li = self.cache.layer_index[source]
            k, v = self.cache.k[li][self.slot_t, :self.S], self.cache.v[li][self.slot_t, :self.S]  # [B, S, Hkv, D]
            self.gathered[source] = (apply_rope(k, *self.k_rope), v)
        y = masked_attention(q, *self.gathered[source], *self.masks[nodiag])
        if self.last_reader[source] == layer:   # a pass holds one source's gathered K/V, not every layer's
            del self.gathered[source]
        return y

    def begin_block(self):
        B, N = self.shape
        if N > 1:  # the first pass sees zeros for the new tokens' target K/V
            z = torch.zeros(B, N, self.cfg.num_kv_heads, self.cfg.head_dim, dtype=self.cache.dtype,
                            device=self.cache.device)
            for t in self.cfg.cyclic_targets:
                self.write(t, z, z)

    def begin_pass(self):
        super().begin_pass()
        self.published = {}

    def end_pass(self) -> bool:
        delta = self._change() if self.tol is not None else None
        super().end_pass()
        self.passes_run += 1
        return delta is not None and delta.item() < self.tol

    def _change(self):
        """Mean squared change of the targets' new K/V between this pass and the last (0-d)."""
        pairs = [p for t, (k, v) in self.pending.items() for p in zip((k, v), self._old(t))]
        pairs += [p for kv_pairs in self.published.values() for p in kv_pairs]
        return torch.stack([(self.real(new).float() - old.float()).pow(2).mean() for new, old in pairs]).mean()


# ---- inference schedule ------------------------------------------------------------------------
PREFILL_KINDS = ("iterative", "exact", "adaptive")


@dataclass(frozen=True)
class PrefillMode:
    kind: str = "exact"           # "iterative" (paper m+b) | "exact" (chunks of c, c passes) | "adaptive"
    iterations: int | None = None  # iterative: default cfg.forward_passes + cfg.backward_passes
    chunk: int = 8                # exact: chunk size c (8 measured ~10% faster than 16 on CPU)
    tol: float = 1e-3             # adaptive: stop once mean squared change of target K/V < tol
    max_iterations: int = 32      # adaptive cap

    def __post_init__(self):
        if self.kind not in PREFILL_KINDS:
            raise ConfigError(f"prefill mode must be one of {PREFILL_KINDS}, got {self.kind!r}", param="kind")
        for name in ("chunk", "max_iterations") + (("iterations",) if self.iterations is not None else ()):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}", param=name)
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not self.tol >= 0:
            raise ConfigError(f"tol must be a non-negative number, got {self.tol!r}", param="tol")


# ---- the model ---------------------------------------------------------------------------------
class LCKVModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = nn.ModuleDict(dict(  # HF LlamaForCausalLM names: checkpoints load 1:1
            embed_tokens=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
            layers=nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers)),
            norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        self._rope_cache: dict = {}
        self.last_prefill_passes = 0  # block passes of the last prefill (max over chunks), for metrics
        if not any(p.is_meta for p in self.parameters()):
            self.apply(self._init_weights)

    def tie_weights(self):
        """With cfg.tie_word_embeddings the LM head is the embedding matrix (one Parameter)."""
        if self.cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def _rope(self, n: int, device, dtype):
        """cos, sin: [>= n, D], cached per device/dtype and grown on demand."""
        key = (str(device), dtype)
        cos, sin = self._rope_cache.get(key, (None, None))
        if cos is None or cos.shape[0] < n:
            size = max(n, self.cfg.max_position_embeddings)
            cos, sin = self._rope_cache[key] = rope_table(size, self.cfg.rope_inv_freq(), device, dtype)
        return cos, sin

    def _layers(self, x, layers, kv, rope):
        for i in layers:
            x = self.model.layers[i](x, kv, rope)
        return x

    def run_layers(self, x, kv, rope, passes: int = 1, grad_passes: int | None = None):
        """The LCKV schedule, the one place it lives: x [B, T, C] through the bottom layers once, the
        iterated block `passes` times restarting from the same input (every layer in it reading the
        targets' K/V of the previous pass), the top layers once. grad_passes: only the last n passes
        record gradients (training). Without a cyclic block: every layer once."""
        block = self.cfg.iter_block
        if block is None:
            return self._layers(x, range(self.cfg.num_layers), kv, rope)
        lo, hi = block
        x0 = self._layers(x, range(lo), kv, rope)
        kv.begin_block()
        grad_on = torch.is_grad_enabled()
        for p in range(passes):
            kv.begin_pass()
            with torch.set_grad_enabled(grad_on and (grad_passes is None or p >= passes - grad_passes)):
                x = self._layers(x0, range(lo, hi + 1), kv, rope)
            if kv.end_pass():
                break
        return self._layers(x, range(hi + 1, self.cfg.num_layers), kv, rope)

    # ---- training / evaluation forward ---------------------------------------------------------
    def forward(self, idx, targets=None, iterations: int | None = None):
        """idx: [B, T] -> logits [B, T, V], loss (next-token CE, targets pre-shifted, -1 ignored).
        Default: m passes without grad + b with grad; `iterations=n`: n passes (all with grad)."""
        cfg = self.cfg
        B, T = idx.shape
        x = self.model.embed_tokens(idx)                                    # [B, T, C]
        cos, sin = self._rope(T, idx.device, x.dtype)
        rope = (cos[None, :T], sin[None, :T])                               # [1, T, D]
        pos = torch.arange(T, device=idx.device)
        masks = attention_masks(pos[None], pos.new_full((1,), T), T)
        n = iterations if iterations is not None else cfg.forward_passes + cfg.backward_passes
        if n < 1:
            raise ValueError(f"iterations must be >= 1, got {n}")
        kv = SequenceKV(cfg, rope, masks, x.new_zeros(B, T, cfg.num_kv_heads, cfg.head_dim))
        x = self.run_layers(x, kv, rope, passes=n, grad_passes=None if iterations is not None else cfg.backward_passes)
        logits = self.lm_head(self.model.norm(x))                           # [B, T, V]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    # ---- inference: prefill and decode into a KVCache -------------------------------------------
    @torch.no_grad()
    def prefill(self, cache, slots: list[int], tokens: list[torch.Tensor], mode: PrefillMode = PrefillMode(),
                all_logits: bool = False):
        """Append each sequence's new tokens after what its slot holds. Returns [len(slots), V]
        logits of each last new token, or with all_logits a list of [n_i, V]."""
        slots = cache.check_slots(slots)
        if not isinstance(tokens, (list, tuple)) or len(tokens) != len(slots):
            raise ValueError("tokens must be a list with one 1-D tensor per slot")
        toks = []
        for b, t in enumerate(tokens):
            t = torch.as_tensor(t)
            if t.dim() != 1 or t.numel() == 0 or t.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"tokens[{b}] must be a non-empty 1-D integer tensor")
            if int(t.min()) < 0 or int(t.max()) >= self.cfg.vocab_size:   # host tokens: no device sync
                raise ValueError(f"tokens[{b}] has ids outside [0, {self.cfg.vocab_size})")
            if cache.length(slots[b]) + t.numel() > cache.capacity:
                raise ValueError(f"slot {slots[b]} holds {cache.length(slots[b])} tokens and cannot take "
                                 f"{t.numel()} more (capacity {cache.capacity}); evict first")
            toks.append(to_device(t, cache.device))
        if mode.kind == "exact" and self.cfg.iter_block is not None:
            step = mode.chunk
            passes, tol, cap = None, None, None
        else:
            step = max(t.numel() for t in toks)
            passes = (mode.iterations or self.cfg.forward_passes + self.cfg.backward_passes) \
                if mode.kind == "iterative" else None
            tol, cap = (mode.tol, mode.max_iterations) if mode.kind == "adaptive" else (None, None)
        outs: list[list[torch.Tensor]] = [[] for _ in slots]
        self.last_prefill_passes = 0
        for start in range(0, max(t.numel() for t in toks), step):
            live = [b for b, t in enumerate(toks) if t.numel() > start]
            chunk = [toks[b][start:start + step] for b in live]
            n = [c.numel() for c in chunk]
            idx = nn.utils.rnn.pad_sequence(chunk, batch_first=True)        # [B', N]
            p = passes if passes is not None else (cap if tol is not None else max(n))
            res = self._extend(cache, [slots[b] for b in live], idx, n, p, tol, all_logits)
            self.last_prefill_passes = max(self.last_prefill_passes, self._passes_run)
            for b, r in zip(live, res):
                outs[b].append(r)
        if all_logits:
            return [torch.cat(o) for o in outs]
        return torch.stack([o[-1][-1] for o in outs])

    @torch.no_grad()
    def decode(self, cache, slots: torch.Tensor, tokens: torch.Tensor):
        """slots, tokens: [B] -> logits [B, V]; one token per sequence appended to its slot.
        Pass `slots` as a CPU tensor: lengths are mirrored on the host, so nothing syncs."""
        slot_list = cache.check_slots(slots.tolist())
        for s in slot_list:
            if cache.length(s) + 1 > cache.capacity:
                raise ValueError(f"slot {s} is full (capacity {cache.capacity}); evict first")
        idx = tokens.to(cache.device, torch.long).view(-1, 1)               # [B, 1]
        return torch.stack(self._extend(cache, slot_list, idx, [1] * len(slot_list), 1, None, False))[:, -1]

    def _extend(self, cache, slots: list[int], idx, n: list[int], passes: int, tol: float | None, all_rows: bool):
        """Run idx [B, N] (row b's first n[b] tokens valid) after each slot's cached tokens, writing
        K/V into the cache. Up to `passes` passes over the iterated block (adaptive: stop once the
        targets' K/V change < tol). Returns per row logits [n_b, V] (all_rows) or [1, V]."""
        cfg, dev = self.cfg, cache.device
        w = self.lm_head.weight
        if cache.k.dtype != w.dtype or cache.k.device != w.device:
            raise ValueError(f"cache is {cache.k.dtype} on {cache.k.device}, model is {w.dtype} on {w.device}")
        B, N = idx.shape
        start = [cache.length(s) for s in slots]
        S = max(a + b for a, b in zip(start, n))
        slot_t, start_t, n_t = to_device([slots, start, n], dev)           # one host->device copy
        q_pos = start_t[:, None] + torch.arange(N, device=dev)             # [B, N] in-cache positions
        k_len = start_t + n_t                                              # [B] keys after this step
        if N == 1:  # decode: every row is real, no index lists needed
            rows, w_slot, w_pos = None, slot_t, start_t
        else:       # flat indices of the real (non-padding) tokens, computed on the host: no sync
            rows = to_device((torch.arange(N)[None, :] < torch.tensor(n)[:, None]).flatten().nonzero().squeeze(1).tolist(), dev)
            w_slot, w_pos = slot_t[:, None].expand(B, N).flatten()[rows], q_pos.flatten()[rows]

        def real(t):  # [B, N, ...] -> [number of real tokens, ...]
            t = t.reshape(B * N, *t.shape[2:])
            return t if rows is None else t[rows]

        cache.tokens.index_put_((w_slot, w_pos), real(idx))

        x = self.model.embed_tokens(idx)                                   # [B, N, C]
        cos, sin = self._rope(S + N, dev, x.dtype)
        rope = (cos[q_pos], sin[q_pos])                                    # [B, N, D]
        kv = CachedKV(cfg, cache, slot_t, w_slot, w_pos, real, S, (cos[None, :S], sin[None, :S]),
                      attention_masks(q_pos, k_len, S), tol, (B, N))
        # Theorem 1: N passes are exact, more change nothing
        x = self.run_layers(x, kv, rope, passes=min(passes, N))
        self._passes_run = max(1, kv.passes_run)
        cache.commit(slots, [a + b for a, b in zip(start, n)], n, slot_t, k_len)
        if not all_rows:  # only each row's last real token needs the LM head
            x = x[torch.arange(B, device=dev), n_t - 1][:, None]             # [B, 1, C]
        logits = self.lm_head(self.model.norm(x))                          # [B, N or 1, V]
        return [logits[b, :n[b]] if all_rows else logits[b] for b in range(B)]
