"""Roofline: the device's two ceilings (copy bandwidth, bf16 matmul rate) measured in this run,
and for every throughput measurement of this run the bytes and FLOPs one decode step needs
(from the shapes) against what was achieved at that batch."""
from __future__ import annotations

from ..common import Context, clean
from ..shapes import cost_model, decode_step_bytes, decode_step_flops, make_config


def run(ctx: Context) -> None:
    hw = ctx.hw or {}
    rows = [r for r in ctx.rec.rows if r.get("suite") == "throughput" and r.get("status") == "ok"]
    if not rows:
        ctx.rec.write("roofline", status="skipped", reason="no throughput rows in this run (run both suites together)")
        return
    bw, fl = hw.get("copy_gbps"), hw.get("matmul_tflops")
    for r in rows:
        if r["variant"] == "hf-llama" or not r.get("steps_done"):
            continue
        cfg = make_config(r["shape"], r["variant"], r["prompt_len"] + r["gen_len"])
        c = cost_model(cfg)
        mean_ctx = r["prompt_len"] + 1 + (r["steps_done"] - 1) / 2
        b = r["batch"]
        step_bytes = decode_step_bytes(c, b, mean_ctx)
        step_flops = decode_step_flops(c, b, mean_ctx)
        step_s = r["decode_s"] / r["steps_done"]
        bound_s = max(step_bytes / (bw * 1e9), step_flops / (fl * 1e12)) if bw and fl else None
        ctx.rec.write("roofline", **clean(dict(
            status="ok", shape=r["shape"], variant=r["variant"], prompt_len=r["prompt_len"], gen_len=r["gen_len"],
            batch=b, mean_ctx=mean_ctx, step_bytes=step_bytes, step_flops=step_flops,
            intensity_flop_per_byte=step_flops / step_bytes,
            ridge_flop_per_byte=(fl * 1e12) / (bw * 1e9) if bw and fl else None,
            step_ms=1e3 * step_s, roofline_step_ms=None if bound_s is None else 1e3 * bound_s,
            frac_of_roofline=None if bound_s is None else bound_s / step_s,
            achieved_gbps=step_bytes / step_s / 1e9, achieved_tflops=step_flops / step_s / 1e12,
            frac_copy_bw=None if not bw else step_bytes / step_s / 1e9 / bw,
            frac_matmul=None if not fl else step_flops / step_s / 1e12 / fl,
            weight_bytes_share=c.params_nonembed * c.elt / step_bytes,
        )))
