"""Prefill: time to first token vs prompt length (one sequence, empty cache), standard vs LCKV in
each prefill mode, and each mode's logit agreement with exact (chunked) prefill.

Modes: llama has one (a single parallel pass, exact). LCKV: `iterative` (the paper's m+b passes),
`exact` (chunks of c=16, c passes each: equal to token-by-token), `adaptive` (passes until the
target K/V change < tol). Agreement is measured on every position's logits (all_logits=True, an
untimed run): top-1 agreement with exact, and max |logit difference| relative to exact's max |logit|.
"""
from __future__ import annotations

import traceback
import torch

from lckv_service.cache import KVCache
from lckv_service.model import PrefillMode

from .. import ours
from ..common import Context, clean, median, now, peak_mem_gib, release, reset_peak
from ..shapes import make_config

LENGTHS = (128, 512, 2048, 8192)
TINY_LENGTHS = (8, 24)
VARIANTS = ("llama", "lckv-w2", "lckv-w10")


def modes(is_cyclic: bool) -> dict[str, PrefillMode]:
    if not is_cyclic:
        return {"exact": PrefillMode(kind="iterative")}   # acyclic: one parallel pass is exact
    return {"exact": PrefillMode(kind="exact", chunk=16), "iterative": PrefillMode(kind="iterative"),
            "adaptive": PrefillMode(kind="adaptive", tol=1e-3, max_iterations=32)}


def run(ctx: Context) -> None:
    lengths = TINY_LENGTHS if ctx.tiny else LENGTHS
    dtype = torch.float32 if ctx.device.type == "cpu" else torch.bfloat16
    variants = [v for v in (ctx.variants or VARIANTS) if v != "hf-llama"]
    for shape in ctx.shapes:
        for vi, variant in enumerate(variants):
            # each variant gets an equal share of what is left, so the last is not starved
            share = ctx.budget.sub(ctx.budget.left() / (len(variants) - vi))
            if ctx.budget.left() < 3:
                ctx.rec.write("prefill", status="skipped", shape=shape, variant=variant, reason="suite time budget spent")
                continue
            model = None
            try:
                cfg = make_config(shape, variant, max(lengths) + 1)
                model = ours.build_model(cfg, ctx.device, dtype)
                last: dict[str, tuple[int, float]] = {}     # mode -> (length, seconds) for projection
                for n in lengths:
                    cache = KVCache(cfg, 1, n, ctx.device, dtype)
                    toks = torch.randint(0, cfg.vocab_size, (n,), device=ctx.device)
                    ref = None
                    for name, mode in modes(cfg.is_cyclic).items():
                        base = dict(shape=shape, variant=variant, prompt_len=n, mode=name)
                        if name in last:
                            n0, t0 = last[name]
                            projected = 3 * t0 * (n / n0) ** 1.5 + 0.5   # warm-up, timed, agreement runs
                            if projected > share.left():
                                ctx.rec.write("prefill", status="skipped", **base,
                                              reason=f"projected {projected:.0f}s exceeds the budget left")
                                continue
                        def once(all_logits=False):
                            cache.reset(0)
                            out = model.prefill(cache, [0], [toks], mode=mode, all_logits=all_logits)
                            return out[0] if all_logits else out.argmax(-1)
                        reset_peak(ctx.device)
                        once()                                        # warm-up
                        ts = []
                        for _ in range(1 if n >= 2048 else 3):
                            t = now(ctx.device)
                            once()
                            ts.append(now(ctx.device) - t)
                        ttft = median(ts)
                        last[name] = (n, ttft)
                        logits = once(all_logits=True).float()
                        row = dict(status="ok", **base, ttft_s=ttft, peak_mem_gib=peak_mem_gib(ctx.device),
                                   prefill_mode=repr(mode))
                        if name == "exact":
                            ref = logits
                        elif ref is not None:
                            row.update(top1_agree=(logits.argmax(-1) == ref.argmax(-1)).float().mean().item(),
                                       last_top1_agree=bool(logits[-1].argmax() == ref[-1].argmax()),
                                       max_abs_diff_rel=((logits - ref).abs().max() / ref.abs().max()).item())
                        del logits
                        ctx.rec.write("prefill", **clean(row))
                    cache = ref = None
                    release(ctx.device)
            except Exception as e:  # noqa: BLE001 - one variant failing must not end the suite
                ctx.rec.write("prefill", status="error", shape=shape, variant=variant, error=repr(e)[:500],
                              trace=traceback.format_exc()[-1500:])
            model = None
            release(ctx.device)
