"""Sessions: a conversation's turn N resumed from its cache blob (blob.decode + cache.restore +
prefill of the new turn, to the first token) vs re-prefilling the whole transcript, for histories
of 1k/4k/16k tokens; and the blob's size per session, standard vs LCKV.

The blob here holds the whole history (no eviction) so both paths see the same context; with the
service's sinks+window bound a blob never exceeds bytes_per_token * context_window.

Both sides prefill with kernels.FastPrefill (CUDA graphs on CUDA unless --graphs off) when their new
tokens fit its token buckets, else with model.prefill; the rows say which (`turn_prefill_path`,
`reprefill_path`), in the same prefill mode (the paper's m+b passes). Each case also checks on the
device that FastPrefill's turn logits and K/V agree with model.prefill's (`fast_vs_model_*`), and
times the model's own turn prefill once (`turn_prefill_model_s`) for comparison.
"""
from __future__ import annotations

import time

import torch

from lckv_service import blob
from lckv_service.cache import KVCache
from lckv_service.kernels.fast_prefill import FastPrefill
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
    for shape, variant, share in ctx.model_cases("sessions", variants):
        model = None
        with ctx.errors_as_rows("sessions", shape=shape, variant=variant):
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
                graphs = ctx.graphs and ctx.device.type == "cuda"
                fp = FastPrefill(model, cache, graphs=graphs, max_graphs=4)
                fast_name = "fast-prefill-graph" if graphs else "fast-prefill"
                turn_path = fast_name if turn <= fp.max_tokens else "model"
                re_path = fast_name if hist + turn <= fp.max_tokens else "model"
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
                    prefill(turn_path, [toks[hist:]]).argmax(-1).item()
                    t3 = now(ctx.device)
                    return t3 - t0, (t1 - t0, t2 - t1, t3 - t2)

                def reprefill():
                    cache.reset(1)
                    t0 = now(ctx.device)
                    prefill(re_path, [toks]).argmax(-1).item()
                    return now(ctx.device) - t0

                def prefill(path, rows):   # slot 1, the same passes either way
                    return model.prefill(cache, [1], rows, mode=mode) if path == "model" else fp([1], rows)

                reps = 1 if hist >= 16384 else 3
                resume()                                                          # warm-up
                runs = [resume() for _ in range(reps)]
                r_s = median([r[0] for r in runs])
                parts = min(runs)[1]
                reprefill()
                p_s = median([reprefill() for _ in range(reps)])
                check = agreement(ctx, cache, model, fp, mode, blob.decode(data, cfg, identity), toks[hist:],
                                  turn_path)
                ctx.rec.write("sessions", **clean(dict(
                    status="ok", **base, blob_bytes=len(data), blob_encode_s=encode_s,
                    bytes_per_token=cost.kv_bytes_per_token, resume_ttft_s=r_s, blob_decode_s=parts[0],
                    restore_s=parts[1], turn_prefill_s=parts[2], reprefill_ttft_s=p_s,
                    speedup=p_s / r_s, prefill_mode=repr(mode), turn_prefill_path=turn_path,
                    reprefill_path=re_path, **check)))
                last = (hist, time.perf_counter() - t_case)
                fp.reset_graphs()
                cache = data = fp = None  # free before the next, larger history
                release(ctx.device)
        model = None
        release(ctx.device)


def agreement(ctx: Context, cache: KVCache, model, fp: FastPrefill, mode: PrefillMode, state, turn_toks,
              turn_path: str) -> dict:
    """The turn prefilled after the restored history by model.prefill (timed once) and by FastPrefill,
    on this device and dtype: logits' argmax agreement and max |diff|, and the max |diff| of the
    K/V they wrote (the state the next turn builds on)."""
    if turn_path == "model":
        return {}
    n0, n1 = len(state.token_ids), len(state.token_ids) + turn_toks.numel()
    cache.restore(1, state)
    t = now(ctx.device)
    ref = model.prefill(cache, [1], [turn_toks], mode=mode).float()
    model_s = now(ctx.device) - t
    ref_kv = (cache.k[:, 1, n0:n1].float(), cache.v[:, 1, n0:n1].float())
    cache.restore(1, state)
    got = fp([1], [turn_toks]).float()
    kv_diff = max((cache.k[:, 1, n0:n1].float() - ref_kv[0]).abs().max().item(),
                  (cache.v[:, 1, n0:n1].float() - ref_kv[1]).abs().max().item())
    diff = (got - ref).abs().max().item()
    return dict(turn_prefill_model_s=model_s,
                fast_vs_model_argmax_agree=bool((got.argmax(-1) == ref.argmax(-1)).all()),
                fast_vs_model_max_abs_diff=diff,
                fast_vs_model_max_abs_diff_rel=diff / max(ref.abs().max().item(), 1e-30),
                fast_vs_model_kv_max_abs_diff=kv_diff, fast_prefill_passes=fp.last_passes)
