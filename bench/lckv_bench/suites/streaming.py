"""Streaming (paper Fig. 5): per-token decode latency and memory vs cache size with 4 attention
sinks, standard vs LCKV. The cache is kept full: when a slot reaches its capacity the engine's
StreamingLLM eviction keeps the sinks and the most recent tokens (`evict_block` are dropped at
once, so the copy is amortised); latency includes those evictions."""
from __future__ import annotations

import torch

from lckv_service.cache import KVCache

from .. import ours
from ..common import Context, clean, now, peak_mem_gib, release, reset_peak
from ..shapes import cost_model, make_config

SIZES = (256, 512, 1024, 2048, 4096)
TINY_SIZES = (16, 32)
VARIANTS = ("llama", "lckv-w2", "lckv-w10")
SINKS = 4


def run(ctx: Context) -> None:
    sizes = TINY_SIZES if ctx.tiny else SIZES
    batches = (1,) if ctx.tiny else (1, 16)
    steps = 12 if ctx.tiny else 192
    evict_block = 4 if ctx.tiny else 64
    dtype = torch.float32 if ctx.device.type == "cpu" else torch.bfloat16
    compare_size = sizes[-2]      # at this size the other decoders are timed too (kernel gains)
    variants = [v for v in (ctx.variants or VARIANTS) if v != "hf-llama"]
    for shape in ctx.shapes:
        for variant in variants:
            if ctx.budget.left() < 3:
                ctx.rec.write("streaming", status="skipped", shape=shape, variant=variant, reason="suite time budget spent")
                continue
            cfg = make_config(shape, variant, max(sizes) + 1)
            cost = cost_model(cfg)
            model = ours.build_model(cfg, ctx.device, dtype)
            decoder, note = ours.pick_decoder(model, cfg, ctx.device, dtype, ctx.preferred_decoder())
            others = ("fast-graph", "fast", "model") if ctx.device.type == "cuda" else ("fast", "model")
            runs = [(b, size, d) for b in batches for size in sizes
                    for d in ([decoder] + [x for x in others if x != decoder] if size == compare_size
                              else [decoder])]
            for b, size, dec in runs:
                if ctx.budget.left() < 2:
                    ctx.rec.write("streaming", status="skipped", shape=shape, variant=variant, cache_size=size,
                                  batch=b, reason="suite time budget spent")
                    continue
                with ctx.errors_as_rows("streaming", shape=shape, variant=variant, cache_size=size, batch=b,
                                        decoder=dec):
                    reset_peak(ctx.device)
                    cache = KVCache(cfg, b, size, ctx.device, dtype)
                    slots = list(range(b))
                    # a long conversation in steady state: the window is full of (random) K/V
                    cache.k.normal_(); cache.v.normal_()
                    cache.commit(slots, [size - evict_block // 2] * b, [size] * b)
                    step = ours.make_decoder(dec, model, cache, bucket=size)
                    tok = torch.zeros(b, dtype=torch.long, device=ctx.device)
                    slot_t = torch.arange(b)

                    def one(tok):
                        if cache.length(0) == size:
                            for s in slots:
                                cache.evict(s, SINKS, size - SINKS - evict_block)
                        return step(slot_t, tok).argmax(-1)
                    for _ in range(3):
                        tok = one(tok)                                # warm-up, graph capture
                    evictions = 0
                    t0 = now(ctx.device)
                    for _ in range(steps):
                        evictions += cache.length(0) == size
                        tok = one(tok)
                    dt = (now(ctx.device) - t0) / steps
                    ctx.rec.write("streaming", **clean(dict(
                        status="ok", shape=shape, variant=variant, cache_size=size, sinks=SINKS, batch=b,
                        evict_block=evict_block, steps=steps, evictions=evictions, ms_per_token=1e3 * dt,
                        tokens_per_s=b / dt, kv_cache_mib=cost.kv_bytes_per_token * size * b / 2**20,
                        peak_mem_gib=peak_mem_gib(ctx.device), decoder=dec, decoder_note=note)))
                cache = step = None
                release(ctx.device)
            model = None
            release(ctx.device)
