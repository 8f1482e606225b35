"""Sessions: a conversation's turn N resumed from its cache blob (blob.decode + cache.restore +
prefill of the new turn, to the first token) vs re-prefilling the whole transcript, for histories
of 1k/4k/16k tokens; and the blob's size per session, standard vs LCKV.

The blob here holds the whole history (no eviction) so both paths see the same context; with the
service's sinks+window bound a blob never exceeds bytes_per_token * context_window.
"""
from __future__ import annotations

import traceback
import time

import torch

from lckv_service import blob
from lckv_service.cache import KVCache
from lckv_service.model import PrefillMode

from .. import ours
from ..common import Context, clean, median, now, release
from ..shapes import cost_model, make_config

HISTORIES = (1024, 4096, 16384)
TINY_HISTORIES = (16, 48)
VARIANTS = ("llama", "lckv-w2", "lckv-w10")


def run(ctx: Context) -> None:
    histories = TINY_HISTORIES if ctx.tiny else HISTORIES
    turn = 8 if ctx.tiny else 64
    dtype = torch.float32 if ctx.device.type == "cpu" else torch.bfloat16
    variants = [v for v in (ctx.variants or VARIANTS) if v != "hf-llama"]
    mode = PrefillMode(kind="iterative")
    for shape in ctx.shapes:
        for vi, variant in enumerate(variants):
            # each variant gets an equal share of what is left, so the last is not starved
            share = ctx.budget.sub(ctx.budget.left() / (len(variants) - vi))
            if ctx.budget.left() < 3:
                ctx.rec.write("sessions", status="skipped", shape=shape, variant=variant, reason="suite time budget spent")
                continue
            model = None
            try:
                cfg = make_config(shape, variant, max(histories) + turn + 1)
                cost = cost_model(cfg)
                identity = cfg.fingerprint()    # random weights: the layout fingerprint names the model
                model = ours.build_model(cfg, ctx.device, dtype)
                last = None
                for hist in histories:
                    base = dict(shape=shape, variant=variant, history_len=hist, new_tokens=turn)
                    if last is not None:
                        # the longest history runs once (not 3 times): ~0.7 of the runs, superlinear in length
                        projected = 0.7 * last[1] * (hist / last[0]) ** 1.7
                        if projected > share.left():
                            ctx.rec.write("sessions", status="skipped", **base,
                                          reason=f"projected {projected:.0f}s exceeds the budget left")
                            continue
                    t_case = time.perf_counter()
                    cache = KVCache(cfg, 2, hist + turn, ctx.device, dtype)
                    toks = torch.randint(0, cfg.vocab_size, (hist + turn,), device=ctx.device)
                    model.prefill(cache, [0], [toks[:hist]], mode=mode)              # the earlier turns
                    t = time.perf_counter()
                    data = blob.encode(cache.export(0), cfg, identity)
                    encode_s = time.perf_counter() - t

                    def resume():
                        t0 = now(ctx.device)
                        state = blob.decode(data, cfg, identity)
                        t1 = time.perf_counter()
                        cache.restore(1, state)
                        t2 = now(ctx.device)
                        model.prefill(cache, [1], [toks[hist:]], mode=mode).argmax(-1).item()
                        t3 = now(ctx.device)
                        return t3 - t0, (t1 - t0, t2 - t1, t3 - t2)

                    def reprefill():
                        cache.reset(1)
                        t0 = now(ctx.device)
                        model.prefill(cache, [1], [toks], mode=mode).argmax(-1).item()
                        return now(ctx.device) - t0

                    reps = 1 if hist >= 16384 else 3
                    resume()                                                          # warm-up
                    runs = [resume() for _ in range(reps)]
                    r_s = median([r[0] for r in runs])
                    parts = min(runs)[1]
                    reprefill()
                    p_s = median([reprefill() for _ in range(reps)])
                    ctx.rec.write("sessions", **clean(dict(
                        status="ok", **base, blob_bytes=len(data), blob_encode_s=encode_s,
                        bytes_per_token=cost.kv_bytes_per_token, resume_ttft_s=r_s, blob_decode_s=parts[0],
                        restore_s=parts[1], turn_prefill_s=parts[2], reprefill_ttft_s=p_s,
                        speedup=p_s / r_s, prefill_mode=repr(mode))))
                    last = (hist, time.perf_counter() - t_case)
                    cache = data = None  # free before the next, larger history
                    release(ctx.device)
            except Exception as e:  # noqa: BLE001 - one variant failing must not end the suite
                ctx.rec.write("sessions", status="error", shape=shape, variant=variant, error=repr(e)[:500],
                              trace=traceback.format_exc()[-1500:])
            model = None
            release(ctx.device)
