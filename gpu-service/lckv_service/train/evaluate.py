"""Held-out perplexity of a model folder, computed three ways on the same windows:

- exact:     the sequential LCKV model, via `prefill(mode="exact", all_logits=True)` into a KV cache
             (chunks of c tokens with c passes each: every token's states are exact);
- iterative: the training-time computation, `forward(x)` with the default m+b parallel passes;
- theorem1:  `forward(x, iterations=T)`, exact by the paper's Theorem 1 (T passes; slow, a cross-check).

For a Llama config (no cyclic K/V target) all three are the same computation.

    python -m lckv_service.train.evaluate --model runs/lckv-w2/model --data data/tokens/val.bin --out eval.json
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..cache import KVCache
from ..errors import ConfigError, LCKVError
from ..model import PrefillMode
from .data import TokenShard

log = logging.getLogger("lckv.evaluate")
METHODS = ("exact", "iterative", "theorem1")


def _batches(windows: list, batch_size: int):
    for i in range(0, len(windows), batch_size):
        yield torch.from_numpy(np.stack(windows[i:i + batch_size]))  # [B, T+1]


@torch.no_grad()
def nll_forward(model, windows: list, batch_size: int, iterations: int | None, device) -> torch.Tensor:
    """Per-token next-token NLL (float64, CPU, window-major) from model.forward with `iterations` passes."""
    out = []
    for w in _batches(windows, batch_size):
        w = w.to(device)
        logits, _ = model(w[:, :-1], iterations=iterations)                      # [B, T, V]
        out.append(F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten(), reduction="none").double().cpu())
    return torch.cat(out)


@torch.no_grad()
def nll_exact(model, windows: list, batch_size: int, chunk: int, device) -> torch.Tensor:
    """Per-token NLL of the sequential model: every window prefilled into a fresh cache slot, exact mode."""
    T = len(windows[0]) - 1
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.cfg, num_slots=min(batch_size, len(windows)), capacity=T, device=device, dtype=dtype)
    out = []
    for w in _batches(windows, batch_size):
        slots = list(range(w.shape[0]))
        for s in slots:
            cache.reset(s)
        rows = model.prefill(cache, slots, [row[:-1].to(device) for row in w],
                             mode=PrefillMode("exact", chunk=chunk), all_logits=True)   # B x [T, V]
        logits = torch.stack(rows).float()
        out.append(F.cross_entropy(logits.flatten(0, 1), w[:, 1:].to(device).flatten(),
                                   reduction="none").double().cpu())
    return torch.cat(out)


def evaluate(model, shard: TokenShard, *, methods=("exact", "iterative"), block_size: int = 512,
             max_tokens: int | None = None, batch_size: int = 16, chunk: int = 16, device="cpu") -> dict:
    """{method: {loss, ppl, tokens, seconds}} over the same non-overlapping windows of the shard."""
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; known: {METHODS}", param="methods")
    windows = list(shard.windows(block_size, max_tokens))
    if not windows:
        raise ConfigError(f"{shard.path} has fewer than block_size + 1 = {block_size + 1} tokens",
                          param="block_size")
    model.eval()
    cfg = model.cfg
    res, per_token = {}, {}
    for m in methods:
        t0 = time.time()
        if m == "exact":
            nll = nll_exact(model, windows, batch_size, chunk, device)
            extra = {"chunk": chunk}
        elif m == "iterative":
            nll = nll_forward(model, windows, batch_size, None, device)
            extra = {"iterations": cfg.forward_passes + cfg.backward_passes if cfg.is_cyclic else 1}
        else:
            nll = nll_forward(model, windows, batch_size, block_size if cfg.is_cyclic else None, device)
            extra = {"iterations": block_size if cfg.is_cyclic else 1}
        per_token[m] = nll
        loss = float(nll.mean())   # float64 accumulation: small exact-vs-iterative gaps stay visible
        res[m] = {"loss": loss, "ppl": math.exp(loss), "tokens": nll.numel(), "seconds": time.time() - t0, **extra}
        log.info("%s: loss %.6f ppl %.4f over %d tokens (%.1fs)", m, loss, math.exp(loss), nll.numel(),
                 res[m]["seconds"])
    for m in ("iterative", "theorem1"):
        if m in per_token and "exact" in per_token:   # how far the m+b computation is from the sequential model
            d = (per_token[m] - per_token["exact"]).abs()
            res[m]["nll_abs_diff_vs_exact"] = {"mean": float(d.mean()), "max": float(d.max())}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lckv_service evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="model folder (config.json + model.safetensors)")
    ap.add_argument("--data", required=True, type=Path, help="uint16 token shard, e.g. data/tokens/val.bin")
    ap.add_argument("--methods", default="exact,iterative", help=f"comma list of {METHODS}")
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N tokens")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=16, help="exact mode: chunk size c (c passes per chunk)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--name", help="label for reports (default: the model folder's parent name)")
    ap.add_argument("--out", type=Path, help="write the JSON result here (also printed)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    from ..checkpoint import load_model
    try:
        for name in ("block_size", "batch_size", "chunk"):
            if getattr(args, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1", param=name)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        model = load_model(args.model, device=device, dtype=getattr(torch, args.dtype))
        shard = TokenShard(args.data, args.block_size, model.cfg.vocab_size)
        res = evaluate(model, shard, methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                       block_size=args.block_size, max_tokens=args.max_tokens, batch_size=args.batch_size,
                       chunk=args.chunk, device=device)
    except LCKVError as e:
        log.error("error: %s", e)
        return 2
    cfg = model.cfg
    out = {"name": args.name or args.model.resolve().parent.name, "model": str(args.model), "data": str(args.data),
           "block_size": args.block_size, "dtype": args.dtype, "device": str(device),
           "params": sum(p.numel() for p in model.parameters()), "warmup_layers": cfg.warmup_layers,
           "num_layers": cfg.num_layers, "kv_layers": len(cfg.kv_layers),
           "kv_bytes_per_token_bf16": 2 * len(cfg.kv_layers) * cfg.num_kv_heads * cfg.head_dim * 2,
           "methods": res}
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
