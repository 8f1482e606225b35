"""Prefill: time to first token vs prompt length (one sequence, empty cache), standard vs LCKV in
each prefill mode, and each mode's logit agreement with exact (chunked) prefill.

Modes: llama has one (a single parallel pass, exact). LCKV: `iterative` (the paper's m+b passes),
`exact` (chunks of c=16, c passes each: equal to token-by-token), `adaptive` (passes until the
target K/V change < tol). Agreement is measured on every position's logits (all_logits=True, an
untimed run): top-1 agreement with exact, and max |logit difference| relative to exact's max |logit|.

Prompts that fit kernels.FastPrefill's token buckets (<= 256) also get a `fast` row (llama) or a
`fast-iterative` row (LCKV: the same m+b passes as `iterative`), replaying a CUDA graph on CUDA
unless --graphs off (`path`), with the same agreement fields plus `vs_model_max_abs_diff_rel`: the
max |logit difference| from the model's own prefill of the same passes, relative to its max |logit|.
"""
from __future__ import annotations

import torch

from lckv_service.cache import KVCache
from lckv_service.kernels.fast_prefill import FastPrefill
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


def fast_mode(is_cyclic: bool) -> tuple[str, str]:
    """(row name, the model mode it computes the same as): FastPrefill runs the default m+b passes."""
    return ("fast-iterative", "iterative") if is_cyclic else ("fast", "exact")


def run(ctx: Context) -> None:
    lengths = TINY_LENGTHS if ctx.tiny else LENGTHS
    dtype = torch.float32 if ctx.device.type == "cpu" else torch.bfloat16
    variants = [v for v in (ctx.variants or VARIANTS) if v != "hf-llama"]
    for shape, variant, share in ctx.model_cases("prefill", variants):
        model = None
        with ctx.errors_as_rows("prefill", shape=shape, variant=variant):
            cfg = make_config(shape, variant, max(lengths) + 1)
            model = ours.build_model(cfg, ctx.device, dtype)
            last: dict[str, tuple[int, float]] = {}     # mode -> (length, seconds) for projection
            graphs = ctx.graphs and ctx.device.type == "cuda"
            fast_name, same_as = fast_mode(cfg.is_cyclic)
            for n in lengths:
                cache = KVCache(cfg, 1, n, ctx.device, dtype)
                fp = FastPrefill(model, cache, graphs=graphs, max_graphs=2)
                toks = torch.randint(0, cfg.vocab_size, (n,), device=ctx.device)
                ref = same = None
                todo = list(modes(cfg.is_cyclic).items())
                if n <= fp.max_tokens:
                    todo.append((fast_name, None))
                for name, mode in todo:
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
                        if mode is None:
                            out = fp([0], [toks], all_logits=all_logits)
                        else:
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
                               prefill_mode=repr(mode if mode is not None else modes(cfg.is_cyclic)[same_as]))
                    if mode is None:
                        row.update(path="fast-prefill-graph" if graphs else "fast-prefill", passes=fp.last_passes)
                        if same is not None:
                            row.update(vs_model_max_abs_diff_rel=((logits - same).abs().max()
                                                                  / same.abs().max()).item())
                    if name == "exact":
                        ref = logits
                    elif ref is not None:
                        row.update(top1_agree=(logits.argmax(-1) == ref.argmax(-1)).float().mean().item(),
                                   last_top1_agree=bool(logits[-1].argmax() == ref[-1].argmax()),
                                   max_abs_diff_rel=((logits - ref).abs().max() / ref.abs().max()).item())
                    if name == same_as and n <= fp.max_tokens:
                        same = logits   # the model's prefill of FastPrefill's passes
                    del logits
                    ctx.rec.write("prefill", **clean(row))
                fp.reset_graphs()
                cache = ref = same = fp = None
                release(ctx.device)
        model = None
        release(ctx.device)
