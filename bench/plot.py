"""Turn bench/results/*.jsonl into PNG plots and markdown tables (CPU only, no GPU needed).

    python bench/plot.py                       # all results -> bench/results/*.png + README section
    python bench/plot.py RESULTS.jsonl ... --out DIR --readme PATH

The README's part between the GENERATED markers is replaced; the rest is left as written. Where
several runs measured the same thing on the same device, the latest row wins.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- BEGIN GENERATED (bench/plot.py) -->", "<!-- END GENERATED -->"
VARIANT_ORDER = ["hf-llama", "llama", "lckv-w2", "lckv-w10"]
SHAPE_LAYERS = {"llama2-7b": 32, "tinyllama-1.1b": 22, "tiny": 12}


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{p}:{i}: not JSON ({e})")
    return rows


def latest(rows: list[dict], suite: str, key) -> dict:
    """{key(row): row} over ok rows of `suite`, later rows (file order) replacing earlier ones."""
    out = {}
    for r in rows:
        if r.get("suite") == suite and r.get("status") == "ok":
            out[key(r)] = r
    return out


def vkey(v: str) -> int:
    return VARIANT_ORDER.index(v) if v in VARIANT_ORDER else len(VARIANT_ORDER)


def fmt(x, nd=1):
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


def table(head: list[str], body: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


def _proj(r) -> float | None:
    """Projected tokens/s at the max batch, where the time box ran a smaller one (else None)."""
    pr = r.get("projected_at_max_batch") or {}
    return pr.get("tokens_per_s")


# ---- tables --------------------------------------------------------------------------------------
def throughput_md(rows) -> tuple[str, dict]:
    # ratios only within one run (same machine, same measured ceilings): runs are grouped apart
    tp = latest(rows, "throughput", lambda r: (r["device"], r.get("run_id", ""), r["shape"], r["prompt_len"],
                                               r["gen_len"], r["variant"]))
    groups = defaultdict(dict)
    for (dev, run, shape, p, g, v), r in tp.items():
        groups[(f"{dev} / {run}", shape, p, g)][v] = r
    out, body = [], []
    for (dev, shape, p, g), vs in sorted(groups.items()):
        hf, base = vs.get("hf-llama"), vs.get("llama")
        for v in sorted(vs, key=vkey):
            r = vs[v]
            body.append([dev, shape, f"{p}+{g}", v, fmt(r["batch"]), fmt(r.get("max_batch")),
                         r.get("batch_limited_by", ""), fmt(r["tokens_per_s"]), fmt(r.get("peak_mem_gib"), 1),
                         fmt(r["prefill_s"], 1), fmt(r["total_s"], 1),
                         f"{r['steps_done']}/{r['steps_total']}" + (" (extrap.)" if r.get("extrapolated") else ""),
                         fmt(r["tokens_per_s"] / hf["tokens_per_s"], 2) + "×" if hf else "—",
                         fmt(r["tokens_per_s"] / base["tokens_per_s"], 2) + "×" if base else "—",
                         fmt(_proj(r)) + (f" (b={r['projected_at_max_batch']['batch']})" if _proj(r) else "")])
    out.append(table(["device / run", "shape", "prompt+gen", "variant", "batch run", "max batch", "batch set by",
                      "tokens/s", "peak GiB", "prefill s", "total s", "decode steps measured", "vs hf-llama",
                      "vs llama", "tokens/s at max batch (projected)"], body))
    return "\n".join(out), groups


def roofline_md(rows) -> str:
    hw = latest(rows, "hw", lambda r: r["device"])
    rl = latest(rows, "roofline", lambda r: (r["device"], r["shape"], r["prompt_len"], r["gen_len"], r["variant"]))
    parts = [table(["device", "copy GB/s (read+write)", "bf16 matmul TFLOP/s"],
                   [[d, fmt(r["copy_gbps"]), fmt(r["matmul_tflops"])] for d, r in sorted(hw.items())])]
    body = [[d, s, f"{p}+{g}", v, fmt(r["batch"]), fmt(r["mean_ctx"], 0), fmt(r["step_bytes"] / 1e9, 2),
             fmt(r["step_flops"] / 1e12, 2), fmt(r["intensity_flop_per_byte"], 1), fmt(r["step_ms"], 2),
             fmt(r.get("roofline_step_ms"), 2), fmt(100 * r["frac_of_roofline"], 0) + "%" if r.get("frac_of_roofline") else "—",
             fmt(r["achieved_gbps"])]
            for (d, s, p, g, v), r in sorted(rl.items(), key=lambda kv: (kv[0][:4], vkey(kv[0][4])))]
    if body:
        parts.append(table(["device", "shape", "prompt+gen", "variant", "batch", "mean ctx", "GB/step", "TFLOP/step",
                            "FLOP/byte", "ms/step", "roofline ms/step", "of roofline", "GB/s achieved"], body))
    return "\n\n".join(parts)


def prefill_md(rows) -> str:
    pf = latest(rows, "prefill", lambda r: (r["device"], r["shape"], r["variant"], r["mode"], r["prompt_len"]))
    lens = sorted({k[4] for k in pf})
    series = sorted({k[:4] for k in pf}, key=lambda k: (k[0], k[1], vkey(k[2]), k[3]))
    body = []
    for s in series:
        base = {n: pf.get((s[0], s[1], "llama", "exact", n)) for n in lens}
        cells = []
        for n in lens:
            r = pf.get((*s, n))
            if r is None:
                cells.append("—")
                continue
            c = f"{1e3 * r['ttft_s']:.0f} ms"
            if base[n] and s[2] != "llama":
                c += f" ({r['ttft_s'] / base[n]['ttft_s']:.1f}×)"
            if r.get("top1_agree") is not None:
                c += f", top-1 {100 * r['top1_agree']:.0f}%"
            cells.append(c)
        body.append([s[0], s[1], s[2], s[3]] + cells)
    return table(["device", "shape", "variant", "mode"] + [f"TTFT @ {n}" for n in lens], body)


def streaming_md(rows) -> str:
    st = latest(rows, "streaming", lambda r: (r["device"], r["shape"], r["batch"], r["variant"], r["decoder"],
                                              r["cache_size"]))
    sizes = sorted({k[5] for k in st})
    series = sorted({k[:5] for k in st}, key=lambda k: (k[0], k[1], k[2], vkey(k[3]), k[4]))
    body = [[*s] + [(lambda r: f"{r['ms_per_token']:.2f} ms / {r['kv_cache_mib']:.3g} MiB" if r else "—")(st.get((*s, n)))
                    for n in sizes] for s in series]
    return table(["device", "shape", "batch", "variant", "decoder"] + [f"cache {n}" for n in sizes], body)


def sessions_md(rows) -> str:
    ss = latest(rows, "sessions", lambda r: (r["device"], r["shape"], r["variant"], r["history_len"]))
    body = [[d, s, v, fmt(h), fmt(r["blob_bytes"] / 2**20, 2), fmt(1e3 * r["resume_ttft_s"], 1),
             fmt(1e3 * r["blob_decode_s"], 1), fmt(1e3 * r["restore_s"], 1), fmt(1e3 * r["turn_prefill_s"], 1),
             fmt(1e3 * r["reprefill_ttft_s"], 1), fmt(r["speedup"], 1) + "×"]
            for (d, s, v, h), r in sorted(ss.items(), key=lambda kv: (kv[0][0], kv[0][1], vkey(kv[0][2]), kv[0][3]))]
    return table(["device", "shape", "variant", "history", "blob MiB", "resume TTFT ms", "blob.decode ms",
                  "restore ms", "turn prefill ms", "re-prefill TTFT ms", "speedup"], body)


def targets_md(rows, groups) -> str:
    """The issue's targets, each with its measured value and verdict."""
    body = []

    def verdict(ok, val, need):
        return ["met" if ok else "missed", val, need]
    for (dev, shape, p, g), vs in sorted(groups.items()):
        hf, base = vs.get("hf-llama"), vs.get("llama")
        w2 = vs.get("lckv-w2")
        if shape == "llama2-7b" and (p, g) in ((2048, 2048), (512, 1024)) and hf and w2:
            x = w2["tokens_per_s"] / hf["tokens_per_s"]
            body.append([dev, f"lckv-w2 ≥ 5× hf-llama, 7B {p}+{g}"] + verdict(x >= 5, f"{x:.2f}×", "5×"))
            if _proj(w2):
                x = _proj(w2) / hf["tokens_per_s"]
                body.append([dev, f"lckv-w2 ≥ 5× hf-llama, 7B {p}+{g} (w2 projected at max batch)"]
                            + verdict(x >= 5, f"{x:.2f}×", "5×"))
        for v in ("lckv-w2", "lckv-w10"):
            r = vs.get(v)
            if r and base:
                x = r["tokens_per_s"] / base["tokens_per_s"]
                body.append([dev, f"{v} not slower than llama, {shape} {p}+{g}"] + verdict(x >= 1, f"{x:.2f}×", "≥ 1×"))
                if _proj(r):
                    x = _proj(r) / (_proj(base) or base["tokens_per_s"])
                    body.append([dev, f"{v} not slower than llama, {shape} {p}+{g} (projected at max batch)"]
                                + verdict(x >= 1, f"{x:.2f}×", "≥ 1×"))
                w = int(v.split("w")[1])
                L = SHAPE_LAYERS.get(shape)
                if L and r.get("max_batch") and base.get("max_batch"):
                    need = 0.9 * L / (w + 1)
                    x = r["max_batch"] / base["max_batch"]
                    body.append([dev, f"{v} max batch ≥ 0.9·L/(w+1) × llama's, {shape} {p}+{g}"]
                                + verdict(x >= need, f"{x:.2f}× ({r['max_batch']} vs {base['max_batch']})", f"{need:.2f}×"))
    rl = latest(rows, "roofline", lambda r: (r["device"], r["shape"], r["prompt_len"], r["gen_len"], r["variant"]))
    for (dev, shape, p, g, v), r in sorted(rl.items()):
        if r.get("frac_of_roofline"):
            body.append([dev, f"decode ≥ 80% of roofline, {shape} {p}+{g} {v} (batch {r['batch']})"]
                        + verdict(r["frac_of_roofline"] >= 0.8, f"{100 * r['frac_of_roofline']:.0f}%", "80%"))
    pf = latest(rows, "prefill", lambda r: (r["device"], r["shape"], r["variant"], r["mode"], r["prompt_len"]))
    for (dev, shape, v, mode, n), r in sorted(pf.items()):
        base = pf.get((dev, shape, "llama", "exact", n))
        if n == 2048 and v != "llama" and base:
            x = r["ttft_s"] / base["ttft_s"]
            body.append([dev, f"2k TTFT ≤ 3× llama, {shape} {v} {mode}"] + verdict(x <= 3, f"{x:.1f}×", "≤ 3×"))
    ss = latest(rows, "sessions", lambda r: (r["device"], r["shape"], r["variant"], r["history_len"]))
    for (dev, shape, v, h), r in sorted(ss.items()):
        if h == 4096:
            body.append([dev, f"resume ≥ 5× faster than re-prefill of 4k, {shape} {v}"]
                        + verdict(r["speedup"] >= 5, f"{r['speedup']:.1f}×", "5×"))
    return table(["device (/ run where a ratio is taken)", "target", "verdict", "measured", "needed"], body)


# ---- plots ---------------------------------------------------------------------------------------
def _serving_key(r):
    server = " ".join(x for x in (r.get("server_src", "this tree"), r.get("server_args")) if x)
    # session rows (each turn returns its cache blob) show as their own arrival, e.g. "burst, session"
    arrival = r["arrival"] + (", session" if r.get("requests") == "session" else "")
    return (r["device"], r["shape"], r["variant"], server, r["prompt_len"], r["gen_len"], arrival, r["streams"])


def _engine(r: dict, field: str):
    """A serving row's engine-alone figure, or None where the row says its baseline is not comparable."""
    return r.get(field) if r.get("engine_comparable", True) else None


def serving_md(rows) -> str:
    sv = latest(rows, "serving", _serving_key)
    body = [[d, s, v, src, f"{p}+{g}", a, fmt(n), fmt(r.get("slots_total")), fmt(r["tokens_per_s"]),
             fmt(_engine(r, "engine_tokens_per_s")),
             fmt(_engine(r, "service_vs_engine"), 2), fmt(r["ttft_p50_s"], 2), fmt(r["ttft_p95_s"], 2),
             fmt(1e3 * r["itl_p50_s"], 1) if r.get("itl_p50_s") is not None else "—",
             fmt(1e3 * _engine(r, "engine_step_s"), 1) if _engine(r, "engine_step_s") is not None else "—",
             fmt(r.get("step_ms"), 1), fmt(r.get("gpu_busy_frac"), 2), fmt(r["all_tokens_delivered_once"]),
             r.get("run_id", "—")]
            for (d, s, v, src, p, g, a, n), r in sorted(sv.items(), key=lambda kv: (kv[0][0], kv[0][1], vkey(kv[0][2]),
                                                                                 kv[0][3], kv[0][4:]))]
    return table(["device", "shape", "variant", "server", "prompt+gen", "arrival", "streams", "pool slots",
                  "service tok/s", "engine tok/s", "service/engine", "TTFT p50 s", "TTFT p95 s", "ITL p50 ms",
                  "engine step ms", "service step ms", "GPU busy", "tokens once", "run"], body)


def _save(plt, fig, out: Path, name: str, made: list[str]) -> None:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    made.append(name)


def plots(rows, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []

    tp = latest(rows, "throughput", lambda r: (r["device"], r["shape"], r["prompt_len"], r["gen_len"], r["variant"]))
    if tp:
        keys = sorted({k[:2] for k in tp})
        fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
        for ax, (dev, shape) in zip(axes[0], keys):
            settings = sorted({(k[2], k[3]) for k in tp if k[:2] == (dev, shape)})
            variants = sorted({k[4] for k in tp if k[:2] == (dev, shape)}, key=vkey)
            wdt = 0.8 / max(1, len(variants))
            runs = {r.get("run_id") for k, r in tp.items() if k[:2] == (dev, shape)}
            for j, v in enumerate(variants):
                rs = [tp.get((dev, shape, p, g, v), {}) for p, g in settings]
                ys = [r.get("tokens_per_s", 0) for r in rs]
                ids = sorted({r["run_id"] for r in rs if r.get("run_id")})
                # bars of different runs stand side by side here; say so in the legend
                lbl = v + (f" (run {', '.join(ids)})" if len(runs) > 1 and ids else "")
                ax.bar([i + j * wdt for i in range(len(settings))], ys, wdt, label=lbl)
            ax.set_xticks([i + wdt * (len(variants) - 1) / 2 for i in range(len(settings))],
                          [f"{p}+{g}" for p, g in settings])
            ax.set_title(f"{shape} on {dev}", fontsize=9)
            ax.set_ylabel("tokens/s (FlexGen protocol)")
            ax.legend(fontsize=8)
        _save(plt, fig, out, "throughput.png", made)

    rl = latest(rows, "roofline", lambda r: (r["device"], r["shape"], r["prompt_len"], r["gen_len"], r["variant"]))
    hw = latest(rows, "hw", lambda r: r["device"])
    if rl and hw:
        fig, ax = plt.subplots(figsize=(6, 4))
        for dev, h in hw.items():
            import numpy as np
            xs = np.logspace(-1, 4, 100)
            ax.loglog(xs, np.minimum(xs * h["copy_gbps"] / 1e3, h["matmul_tflops"]), "k-", lw=1,
                      label=f"measured ceilings ({dev})")
        for (dev, shape, p, g, v), r in sorted(rl.items()):
            ax.loglog(r["intensity_flop_per_byte"], r["achieved_tflops"], "o", label=f"{shape} {p}+{g} {v} b={r['batch']}")
        ax.set_xlabel("FLOP per byte (decode step)")
        ax.set_ylabel("TFLOP/s achieved")
        ax.legend(fontsize=6)
        _save(plt, fig, out, "roofline.png", made)

    pf = latest(rows, "prefill", lambda r: (r["device"], r["shape"], r["variant"], r["mode"], r["prompt_len"]))
    if pf:
        fig, ax = plt.subplots(figsize=(6, 4))
        for s in sorted({k[:4] for k in pf}, key=lambda k: (k[0], k[1], vkey(k[2]), k[3])):
            pts = sorted((k[4], r["ttft_s"]) for k, r in pf.items() if k[:4] == s)
            ax.loglog([a for a, _ in pts], [b for _, b in pts], "o-", label=f"{s[2]} {s[3]}")
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel("time to first token (s)")
        ax.set_title(", ".join(sorted({f"{k[1]} on {k[0]}" for k in pf})), fontsize=8)
        ax.legend(fontsize=7)
        _save(plt, fig, out, "prefill_ttft.png", made)

    st = latest(rows, "streaming", lambda r: (r["device"], r["shape"], r["batch"], r["variant"], r["decoder"],
                                              r["cache_size"]))
    if st:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        main_dec = {}
        for k, r in st.items():   # the decoder the suite picked is the one timed at every size
            main_dec.setdefault(k[:4], defaultdict(int))[k[4]] += 1
        for s4, decs in sorted(main_dec.items(), key=lambda kv: (kv[0][2], vkey(kv[0][3]))):
            d = max(decs, key=decs.get)
            pts = sorted((k[5], r) for k, r in st.items() if k[:4] == s4 and k[4] == d)
            lbl = f"{s4[3]} b={s4[2]}"
            a1.plot([n for n, _ in pts], [r["ms_per_token"] for _, r in pts], "o-", label=lbl)
            a2.plot([n for n, _ in pts], [r["kv_cache_mib"] for _, r in pts], "o-", label=lbl)
        a1.set_xlabel("cache size (tokens, 4 sinks)"); a1.set_ylabel("decode ms per step")
        a2.set_xlabel("cache size (tokens, 4 sinks)"); a2.set_ylabel("KV cache MiB")
        a1.set_xscale("log", base=2); a2.set_xscale("log", base=2); a2.set_yscale("log")
        a1.legend(fontsize=7); a2.legend(fontsize=7)
        _save(plt, fig, out, "streaming.png", made)

    sv = latest(rows, "serving", _serving_key)
    burst = {k: r for k, r in sv.items() if k[6] == "burst"}
    if burst:   # the (device, shape) with the most points; the table has the rest
        ds = max(sorted({k[:2] for k in burst}), key=lambda d: sum(k[:2] == d for k in burst))
        burst = {k: r for k, r in burst.items() if k[:2] == ds}
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 6.5))
        for key in sorted({k[:6] for k in burst}, key=lambda k: (vkey(k[2]), k[3])):
            pts = sorted((k[7], r) for k, r in burst.items() if k[:6] == key)
            ns = [n for n, _ in pts]
            tag = f"{key[2]}" + ("" if key[3] == "this tree" else f" ({key[3]})")
            runs = sorted({r.get("run_id", "?") for _, r in pts})
            if len(runs) > 1:   # points of different runs (hosts) on one line: say which
                tag += " (runs " + ", ".join(f"{n}: {r.get('run_id', '?')}" for n, r in pts) + ")"
            line = a1.plot(ns, [r["tokens_per_s"] for _, r in pts], "o-", label=f"{tag} service")[0]
            eng = [(n, _engine(r, "engine_tokens_per_s")) for n, r in pts if _engine(r, "engine_tokens_per_s")]
            if eng and key[3] == "this tree":
                a1.plot([n for n, _ in eng], [e for _, e in eng], "x--", color=line.get_color(), label=f"{tag} engine alone")
            sess = sorted((k[7], r) for k, r in sv.items() if k[:6] == key and k[6] == "burst, session")
            if sess:   # session turns (each returns its cache blob): the Worker's path
                a1.plot([n for n, _ in sess], [r["tokens_per_s"] for _, r in sess], "s", color=line.get_color(),
                        mfc="none", ms=9, label=f"{tag} session turns")
            a2.plot(ns, [r["ttft_p50_s"] for _, r in pts], "o-", color=line.get_color(), label=f"{tag} p50")
            a2.plot(ns, [r["ttft_p95_s"] for _, r in pts], "v:", color=line.get_color(), label=f"{tag} p95")
        dev, shape, _, _, p, g = next(iter(burst))[:6]
        a1.set_title(f"{shape}, {p}+{g}, all streams at once, {dev}", fontsize=9)
        a1.set_xlabel("concurrent streams"); a1.set_ylabel("output tokens/s")
        a2.set_xlabel("concurrent streams"); a2.set_ylabel("time to first token (s, log)"); a2.set_yscale("log")
        for ax in (a1, a2):   # under the axes: the lines stay visible
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
        _save(plt, fig, out, "serving.png", made)

    rt = latest(rows, "responses", lambda r: (r["device"], r["shape"], r["variant"], r["target_tokens"]))
    if rt:
        fig, ax = plt.subplots(figsize=(6, 4))
        for s in sorted({k[:3] for k in rt}):
            pts = sorted((r["history_tokens"], r) for k, r in rt.items() if k[:3] == s)
            hs = [h for h, _ in pts]
            line = ax.loglog(hs, [r["chain_ttft_ms"] / 1e3 for _, r in pts], "o-",
                             label=f"{s[0]}: by previous_response_id")[0]
            st = [(h, r["stateless_ttft_ms"] / 1e3) for h, r in pts if r.get("stateless_ttft_ms")]
            ax.loglog([h for h, _ in st], [t for _, t in st], "x--", color=line.get_color(),
                      label=f"{s[0]}: whole history, stateless")
        ax.set_title(f"turn-N time to first token ({', '.join(sorted({k[1] + ' ' + k[2] for k in rt}))})", fontsize=9)
        ax.set_xlabel("history tokens"); ax.set_ylabel("TTFT (s)"); ax.legend(fontsize=7)
        _save(plt, fig, out, "responses_ttft.png", made)

    ss = latest(rows, "sessions", lambda r: (r["device"], r["shape"], r["variant"], r["history_len"]))
    if ss:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for s in sorted({k[:3] for k in ss}, key=lambda k: vkey(k[2])):
            pts = sorted((k[3], r) for k, r in ss.items() if k[:3] == s)
            hs = [h for h, _ in pts]
            a1.loglog(hs, [r["resume_ttft_s"] for _, r in pts], "o-", label=f"{s[2]} resume")
            a1.loglog(hs, [r["reprefill_ttft_s"] for _, r in pts], "x--", label=f"{s[2]} re-prefill")
            a2.loglog(hs, [r["blob_bytes"] / 2**20 for _, r in pts], "o-", label=s[2])
        a1.set_xlabel("history tokens"); a1.set_ylabel("turn TTFT (s)")
        a2.set_xlabel("history tokens"); a2.set_ylabel("blob MiB per session")
        a1.legend(fontsize=7); a2.legend(fontsize=7)
        _save(plt, fig, out, "sessions.png", made)
    return made


def report(rows, pngs: list[str], png_rel: str) -> str:
    tp_md, groups = throughput_md(rows)
    parts = ["### Serving: the real server under load vs the engine alone", serving_md(rows),
             "### Targets", targets_md(rows, groups), "### Throughput (FlexGen protocol, engine only)", tp_md,
             "### Roofline (decode)", roofline_md(rows), "### Prefill: time to first token (× llama), top-1 agreement with exact",
             prefill_md(rows), "### Streaming (4 sinks): ms per decode step / KV cache size", streaming_md(rows),
             "### Sessions: resume from blob vs re-prefill", sessions_md(rows)]
    parts += [f"![{p}]({png_rel}/{p})" for p in pngs]
    return "\n\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="*", type=Path, help="JSONL files (default: bench/results/*.jsonl)")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for the PNGs")
    ap.add_argument("--readme", type=Path, default=HERE / "README.md", help="markdown file to update ('-': print)")
    args = ap.parse_args(argv)
    paths = args.results or sorted((HERE / "results").glob("*.jsonl")) + sorted((HERE / "results" / "serving").glob("*.jsonl"))
    if not paths:
        print("no results (bench/results/*.jsonl)", file=sys.stderr)
        return 1
    rows = load(paths)
    args.out.mkdir(parents=True, exist_ok=True)
    pngs = plots(rows, args.out)
    if str(args.readme) == "-":
        print(report(rows, pngs, str(args.out)))
        return 0
    rel = Path(os.path.relpath(args.out.resolve(), args.readme.resolve().parent)).as_posix()
    text = args.readme.read_text(encoding="utf-8") if args.readme.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    args.readme.write_text(text[:a] + "\n" + report(rows, pngs, str(rel)) + "\n" + text[b:], encoding="utf-8")
    print(f"wrote {', '.join(pngs)} to {args.out} and tables to {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
