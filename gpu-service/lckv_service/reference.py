"""Sequential reference: the definition of the model, one token at a time, in float64.

Ground truth for tests only (slow). It reuses the model's weight tensors but none of model.py's
attention, masking or iteration code. Token i at in-cache position p, layer j with source s:
  - j owns K/V (s == j): k = W_K h, v = W_V h for token i (keys rotated at their cache index)
  - j attends to the cached K/V of s for tokens < i, plus token i's own entry unless j masks the
    diagonal: s is a cyclic target -- read by a layer below it -- (our rule), or s lies above j
    (the authors' rule, nodiag_rule "attends_above"), or nodiag_everywhere
  - no key at all: the attention output is zero
After all layers, token i's K/V of every K/V layer is appended to the cache.
"""
from __future__ import annotations

import math

import torch


def _rmsnorm(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean() + eps))


def _rotate(u, pos, inv_freq):
    """RoPE for one head vector u [D] at position pos (pairs (d, d + D/2))."""
    half = u.shape[0] // 2
    a = pos * inv_freq
    c, s = torch.cos(a), torch.sin(a)
    return torch.cat((u[:half] * c - u[half:] * s, u[half:] * c + u[:half] * s))


class ReferenceLCKV:
    """ref = ReferenceLCKV(model); logits = ref.step(token) -> [V] float64, appending to ref.cache."""

    def __init__(self, model, state=None):
        cfg = self.cfg = model.cfg
        self.w = {k: t.detach().to("cpu", torch.float64) for k, t in model.state_dict().items()}
        src = cfg.kv_source
        if cfg.nodiag_rule == "attends_above":   # the authors' rule: only layers reading a layer above
            self.nodiag = [cfg.nodiag_everywhere or src[j] > j for j in range(cfg.num_layers)]
        else:
            self.nodiag = [cfg.nodiag_everywhere or any(src[x] == src[j] and x < src[j] for x in range(cfg.num_layers))
                           for j in range(cfg.num_layers)]
        self.inv_freq = torch.tensor(cfg.rope_inv_freq(), dtype=torch.float64)
        kv_layers = [j for j in range(cfg.num_layers) if src[j] == j]
        # cache[layer] = list of (k unrotated [Hkv, D], v [Hkv, D]) per cached token
        self.cache = {j: [] for j in kv_layers}
        if state is not None:  # continue from an exported CacheState (e.g. after eviction)
            for li, j in enumerate(kv_layers):
                self.cache[j] = [(state.k[li, t].to(torch.float64), state.v[li, t].to(torch.float64))
                                 for t in range(state.k.shape[1])]

    def step(self, token: int):
        cfg, W = self.cfg, self.w
        H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        p = len(next(iter(self.cache.values())))  # position = index inside the cache
        x = W["model.embed_tokens.weight"][token].clone()
        new = {}
        for j in range(cfg.num_layers):
            pre = f"model.layers.{j}."
            h = _rmsnorm(x, W[pre + "input_layernorm.weight"], cfg.rms_norm_eps)
            s = cfg.kv_source[j]
            if s == j:
                new[j] = ((W[pre + "self_attn.k_proj.weight"] @ h).view(Hkv, D),
                          (W[pre + "self_attn.v_proj.weight"] @ h).view(Hkv, D))
            entries = list(self.cache[s]) + ([] if self.nodiag[j] else [new[s]])
            q = (W[pre + "self_attn.q_proj.weight"] @ h).view(H, D)
            heads = []
            for hq in range(H):
                g = hq // (H // Hkv)
                qr = _rotate(q[hq], p, self.inv_freq)
                if not entries:
                    heads.append(torch.zeros(D, dtype=torch.float64))
                    continue
                scores = torch.stack([qr @ _rotate(k[g], pos, self.inv_freq) for pos, (k, _) in enumerate(entries)])
                probs = torch.softmax(scores / math.sqrt(D), dim=0)
                heads.append(sum(pr * v[g] for pr, (_, v) in zip(probs, entries)))
            x = x + W[pre + "self_attn.o_proj.weight"] @ torch.cat(heads)
            h2 = _rmsnorm(x, W[pre + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
            gate = W[pre + "mlp.gate_proj.weight"] @ h2
            x = x + W[pre + "mlp.down_proj.weight"] @ (gate * torch.sigmoid(gate) * (W[pre + "mlp.up_proj.weight"] @ h2))
        for j, kv in new.items():
            self.cache[j].append(kv)
        return W["lm_head.weight"] @ _rmsnorm(x, W["model.norm.weight"], cfg.rms_norm_eps)

    def run(self, tokens) -> torch.Tensor:
        """Logits [n, V] of each token, appended in order."""
        return torch.stack([self.step(int(t)) for t in tokens])


def reference_logits(model, tokens, state=None) -> torch.Tensor:
    return ReferenceLCKV(model, state).run(tokens)
