"""Throughput, FlexGen protocol: throughput = batch * gen_len / (prefill + decode time).

Per (shape, variant, setting): the max batch is found by search (memory-implied from the shapes
and free memory, verified by allocating the full pool and running full-length decode steps,
bisected down on OOM); the full protocol then runs once at the chosen batch: the max batch, or
less where the suite's time budget cannot afford it (`batch_limited_by: "time_budget"`). A run
that reaches its deadline stops decoding and extrapolates the remaining steps from the measured
step times (`extrapolated: true`, `steps_done` of `steps_total`).
"""
from __future__ import annotations

import time
import traceback

import torch

from .. import hf, ours
from ..common import GIB, Context, clean, is_oom, peak_mem_gib, release, reset_peak
from ..shapes import SHAPES, VARIANTS, cost_model, decode_totals, decode_step_bytes, \
    make_config, prefill_flops

SETTINGS = ((2048, 2048), (512, 1024), (5, 2043))
TINY_SETTINGS = ((16, 16), (8, 24), (2, 14))
PREFILL_BUDGET = 4 * GIB       # transient memory allowed to one prefill call
RESERVE = int(1.5 * GIB)       # allocator slack, cuBLAS workspaces, graph pools
BUCKET = 128
# Key bucket of the graph-captured Triton decoder: the kernel reads each row's keys only up to its own
# length whatever the bucket, so a coarse bucket costs no bytes and means 4x fewer CUDA graphs (each
# holds its own copy of a step's intermediates); the SDPA path reads the whole bucket, so it keeps 128.
TRITON_BUCKET = 512


# Time shares: the headline variants get more; a setting's share grows with its decode work.
VARIANT_WEIGHT = {"llama": 1.2, "lckv-w2": 1.6, "lckv-w10": 0.6, "hf-llama": 0.5}


def _weight(variant: str, p: int, g: int) -> float:
    return VARIANT_WEIGHT.get(variant, 1.0) * (g * (p + g / 2)) ** 0.5


def run(ctx: Context) -> None:
    settings = ctx.settings or (TINY_SETTINGS if ctx.tiny else SETTINGS)
    variants = ctx.variants or VARIANTS
    pending = [(s, v, p, g) for s in ctx.shapes for v in variants for p, g in settings]
    min_case = 0.2 if ctx.tiny else 3.0
    for shape in ctx.shapes:
        for variant in variants:
            mine = [c for c in pending if c[0] == shape and c[1] == variant]
            if ctx.budget.left() < min_case:
                for c in mine:
                    _skip(ctx, *c, "suite time budget spent")
                    pending.remove(c)
                continue
            try:
                model = _build(ctx, shape, variant, max(p + g for _, _, p, g in mine))
                picked: dict = {}       # the decoder chosen for this model, shared by its settings
                if variant != "hf-llama":   # chosen before the cases' clocks start (compiles, timings)
                    cfg = make_config(shape, variant, max(p + g for _, _, p, g in mine))
                    picked["decoder"] = ours.pick_decoder(model, cfg, ctx.device, _dtype(ctx),
                                                          ctx.preferred_decoder(), BUCKET)
            except Exception as e:  # noqa: BLE001 - one variant failing must not end the suite
                for c in mine:
                    _skip(ctx, *c, f"model build failed: {e!r}"[:500])
                    pending.remove(c)
                continue
            for c in mine:
                share = _weight(*c[1:]) / sum(_weight(*x[1:]) for x in pending)
                case_s = ctx.budget.left() * share
                pending.remove(c)
                if case_s < min_case:
                    _skip(ctx, *c, "suite time budget spent")
                    continue
                try:
                    _case(ctx, model, *c, time.perf_counter() + case_s, picked)
                except Exception as e:  # noqa: BLE001
                    ctx.rec.write("throughput", **clean(dict(
                        status="error", shape=shape, variant=variant, prompt_len=c[2], gen_len=c[3],
                        error=repr(e)[:500], trace=traceback.format_exc()[-1500:], search=picked.pop("search", None),
                        decoder=(picked.get("decoder") or ("", ""))[0],
                        decoder_note=(picked.get("decoder") or ("", ""))[1])))
                release(ctx.device)
            del model
            release(ctx.device)


def _skip(ctx, shape, variant, p, g, why):
    ctx.rec.write("throughput", status="skipped", shape=shape, variant=variant, prompt_len=p, gen_len=g, reason=why)


def _dtype(ctx):
    return torch.float32 if ctx.device.type == "cpu" else torch.bfloat16


def _build(ctx, shape, variant, max_pos):
    if variant == "hf-llama":
        return hf.build_hf(SHAPES[shape], max_pos, ctx.device, _dtype(ctx))
    return ours.build_model(make_config(shape, variant, max_pos), ctx.device, _dtype(ctx))


def _estimate_s(ctx, cost, passes, batch, p, g, fast_bytes_factor, tokenwise=False) -> float:
    """Rough wall time of one run at `batch` from the measured ceilings (derated)."""
    hw = ctx.hw or {}
    bw = hw.get("copy_gbps", 100.0) * 1e9 * 0.75
    fl = hw.get("matmul_tflops", 1.0) * 1e12 * 0.35
    if tokenwise:   # p decode-shaped steps: bound by bytes (weights + context) or by the batch's matmuls
        pre = p * max(decode_step_bytes(cost, batch, p / 2) * fast_bytes_factor / bw,
                      batch * prefill_flops(cost, 1, 1) / fl)
    else:
        pre = batch * prefill_flops(cost, p, passes) / fl
    dec = (g - 1) * decode_step_bytes(cost, batch, p + g / 2) * fast_bytes_factor / bw
    return pre + dec


def _case(ctx: Context, model, shape, variant, p, g, deadline, picked: dict):
    dev, dtype = ctx.device, _dtype(ctx)
    cfg = make_config(shape, variant, p + g)
    cost = cost_model(cfg)
    limit = 4 if ctx.tiny else None
    base = dict(shape=shape, variant=variant, prompt_len=p, gen_len=g, kv_bytes_per_token=cost.kv_bytes_per_token,
                weight_gib=round(cost.weight_bytes / GIB, 3))
    t_search = time.perf_counter()
    tokenwise, prefill_est, bucket = False, None, None
    if variant == "hf-llama":
        search = hf.max_batch(model, cost, p, g, dev, reserve_bytes=RESERVE + PREFILL_BUDGET, limit=limit,
                              deadline=deadline)
        batch, limited = search["max_batch"], "memory"
        decoder, decoder_note, mode_name = "hf-generate", "", "hf"
        if ctx.max_run_batch and batch > ctx.max_run_batch:
            batch, limited = ctx.max_run_batch, "max_run_batch option"
        if batch:
            hf.generate(model, min(2, batch), min(p, 16), 4, dev, deadline=float("inf"))   # warm-up
    else:
        mode = ours.default_prefill_mode(cfg)
        if "decoder" not in picked:
            picked["decoder"] = ours.pick_decoder(model, cfg, dev, dtype, ctx.preferred_decoder(), BUCKET)
        decoder, decoder_note = picked["decoder"]
        bucket = TRITON_BUCKET if decoder.endswith("+triton") else BUCKET
        choice = ctx.lckv_prefill if cfg.is_cyclic else "iterative"   # a standard model: one exact pass
        group = 2 if ctx.tiny else ours.prefill_group_size(cost, p, cfg.hidden_size, cfg.intermediate_size,
                                                           PREFILL_BUDGET)
        search = ours.max_batch(model, cfg, cost, p, g, dev, dtype, decoder=decoder, mode=mode, group=group,
                                bucket=bucket, reserve_bytes=RESERVE + PREFILL_BUDGET, limit=limit, deadline=deadline)
        batch, limited = search["max_batch"], "memory"
        passes = cfg.forward_passes + cfg.backward_passes if cfg.is_cyclic else 1
        # sdpa path: +1 write +1 read of each source's keys per step; the Triton kernel reads K/V once
        rot = 1.0 if decoder.endswith("+triton") else 1 + len(cfg.kv_layers) / cfg.num_layers
        room = 0.85 * (deadline - time.perf_counter())
        def est(b):   # "auto" is sized by the cheaper estimate; the measurement below decides
            return min(_estimate_s(ctx, cost, passes, b, p, g, rot, tw) for tw in
                       ((False, True) if choice == "auto" else (choice == "tokenwise",)))
        while batch > 1 and not ctx.tiny and est(batch) > room:
            batch = max(1, int(batch * 0.9))
            limited = "time_budget"
        if ctx.max_run_batch and batch > ctx.max_run_batch:
            batch, limited = ctx.max_run_batch, "max_run_batch option"
        prefill_est = None
        if choice == "auto" and batch:
            prefill_est = ours.measure_prefills(model, cfg, batch, p, dev, dtype, decoder=decoder, bucket=bucket,
                                                mode=mode, group=group)
            choice = min(prefill_est, key=prefill_est.get)
        tokenwise = choice == "tokenwise"
        mode_name = "tokenwise (batched decode steps, exact)" if tokenwise else \
            f"iterative(m+b={passes})" if cfg.is_cyclic else "parallel (one pass, exact)"
        if batch:   # warm-up (kernels, cuBLAS) outside the timed run
            ours.generate(model, cfg, min(2, batch), min(p, 16), 4, dev, dtype, decoder=decoder, mode=mode,
                          group=group, deadline=float("inf"), mark_every=2, bucket=bucket, tokenwise=tokenwise)
    search_s = time.perf_counter() - t_search
    picked["search"] = search   # for the error row, should the run fail
    if not batch:
        ctx.rec.write("throughput", status="error", **base, error="not even one sequence fits", search=search)
        return
    for attempt in range(2):
        if attempt:   # after the failed attempt's frames are gone: its memory is free again
            release(dev)
        reset_peak(dev)
        try:
            if variant == "hf-llama":
                r = hf.generate(model, batch, p, g, dev, deadline=deadline, mark_every=8 if ctx.tiny else 64)
            else:
                r = ours.generate(model, cfg, batch, p, g, dev, dtype, decoder=decoder, mode=mode, group=group,
                                  deadline=deadline, bucket=bucket, mark_every=4 if ctx.tiny else 64,
                                  tokenwise=tokenwise)
            break
        except Exception as e:  # noqa: BLE001
            if not is_oom(e) or attempt:
                raise
            batch, limited = max(1, int(batch * 0.9)), "oom_in_run"
    bytes_, flops = decode_totals(cost, batch, p + 1, r.steps_done)
    hw = ctx.hw or {}
    row = dict(
        status="ok", **base, batch=batch, max_batch=search["max_batch"], batch_limited_by=limited,
        tokens_per_s=batch * g / r.total_s, total_s=r.total_s, prefill_s=r.prefill_s, decode_s=r.decode_s,
        steps_done=r.steps_done, steps_total=r.steps_total, extrapolated=r.extrapolated,
        peak_mem_gib=peak_mem_gib(dev), decoder=decoder, decoder_note=decoder_note, prefill_mode=mode_name,
        key_bucket=bucket, prefill_choice_s=None if variant == "hf-llama" or prefill_est is None else
        {k: round(v, 4) for k, v in prefill_est.items()},
        search=search, search_s=round(search_s, 2), capture_s=round(r.capture_s, 2),
        decode_gbps=bytes_ / r.decode_s / 1e9 if r.decode_s else None,
        decode_tflops=flops / r.decode_s / 1e12 if r.decode_s else None,
        decode_ms_per_step=1e3 * r.decode_s / r.steps_done if r.steps_done else None,
        marks=[(n, round(t, 4)) for n, t in r.marks],
    )
    if hw.get("copy_gbps") and row["decode_gbps"]:
        row["decode_frac_copy_bw"] = row["decode_gbps"] / hw["copy_gbps"]
    mb = search["max_batch"]
    if variant != "hf-llama" and batch < mb and not r.extrapolated and time.perf_counter() < deadline + 30:
        # the time box ran a smaller batch: project the max batch from measured step times there
        # (prefill scales with the batch), clearly apart from the measured tokens_per_s
        try:
            pr = ours.probe_max_batch(model, cfg, mb, p, g, dev, dtype, decoder=decoder, bucket=bucket,
                                      tokenwise=tokenwise)
            # tokenwise prefill is probed like decode; a parallel prefill scales with the batch
            pre = pr.pop("prefill_s_projected", None) or r.prefill_s * mb / batch
            total = pre + pr["decode_s_projected"]
            row.update(projected_at_max_batch=dict(pr, prefill_s_projected=pre, total_s=total,
                                                   tokens_per_s=mb * g / total, batch=mb))
        except Exception as e:  # noqa: BLE001 - a projection is optional
            row.update(projected_at_max_batch={"error": repr(e)[:300]})
    picked.pop("search", None)
    ctx.rec.write("throughput", **clean(row))
