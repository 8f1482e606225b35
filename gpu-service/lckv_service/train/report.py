"""Plots and tables from training logs (log.jsonl) and evaluation results (evaluate.py JSON).

    python -m lckv_service.train.report --run llama=runs/llama/log.jsonl --run w2=runs/w2/log.jsonl \
        --eval runs/llama/eval.json --eval runs/w2/eval.json --png loss.png --md eval.md

matplotlib is optional (the GPU image may lack it): without it the PNG is skipped, the table is not.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("lckv.report")


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def loss_curves(runs: dict[str, str | Path]) -> dict[str, dict[str, list]]:
    """label -> {train: [(tokens, loss)], val: [(tokens, val_loss)]} (a resumed run's repeats dropped)."""
    out = {}
    for label, path in runs.items():
        train, val = {}, {}
        for r in read_jsonl(path):
            if r.get("type") == "train":
                train[r["iter"]] = (r["tokens"], r["loss"])
            elif r.get("type") == "eval":
                val[r["iter"]] = (r["tokens"], r["val_loss"])
        out[label] = {"train": [train[k] for k in sorted(train)], "val": [val[k] for k in sorted(val)]}
    return out


def plot_losses(runs: dict[str, str | Path], png: str | Path, title: str = "lckv-tiny: loss vs tokens") -> bool:
    """One PNG: train loss (thin) and val loss (markers) of every run against tokens seen."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; skipping %s (re-plot later from the JSONL logs)", png)
        return False
    curves = loss_curves(runs)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for i, (label, c) in enumerate(curves.items()):
        color = f"C{i}"
        if c["train"]:
            t, y = zip(*c["train"])
            ax.plot([x / 1e6 for x in t], y, color=color, alpha=0.35, linewidth=1, label=f"{label} (train)")
        if c["val"]:
            t, y = zip(*c["val"])
            ax.plot([x / 1e6 for x in t], y, "o-", color=color, markersize=3, label=f"{label} (val)")
    ax.set_xlabel("tokens (millions)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return True


def eval_table(evals: list[dict]) -> str:
    """Markdown table: one row per model, exact vs iterative perplexity and K/V bytes per token."""
    rows = ["| model | w | KV layers | KV bytes/token (bf16) | params | ppl exact | ppl iterative (m+b) | Δ |",
            "|---|---|---|---|---|---|---|---|"]
    for e in evals:
        m = e["methods"]
        ex, it = m.get("exact", {}).get("ppl"), m.get("iterative", {}).get("ppl")
        delta = f"{(it / ex - 1) * 100:+.2f}%" if ex and it else "–"
        w = e["warmup_layers"]
        w = "–" if w is None else ("all (Llama)" if w == e["num_layers"] else w)
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        rows.append(f"| {e['name']} | {w} | {e['kv_layers']}/{e['num_layers']} | {e['kv_bytes_per_token_bf16']:,} | "
                    f"{e['params'] / 1e6:.2f}M | {fmt(ex)} | {fmt(it)} | {delta} |")
    tokens = {m.get("tokens") for e in evals for m in e["methods"].values()}
    rows.append("")
    rows.append(f"Held-out tokens per model: {', '.join(str(t) for t in sorted(t for t in tokens if t))}; "
                f"block size {', '.join(sorted({str(e['block_size']) for e in evals}))}.")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lckv_service report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", default=[], metavar="LABEL=LOG.jsonl")
    ap.add_argument("--eval", action="append", default=[], metavar="EVAL.json")
    ap.add_argument("--png", type=Path, help="loss-curve PNG")
    ap.add_argument("--md", type=Path, help="write the eval table (markdown) here (also printed)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    runs = {}
    for spec in args.run:
        label, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--run {spec!r}: expected LABEL=path/to/log.jsonl of an existing file")
        runs[label] = path
    if runs and args.png:
        plot_losses(runs, args.png)
    if args.eval:
        table = eval_table([json.loads(Path(p).read_text(encoding="utf-8")) for p in args.eval])
        if args.md:
            args.md.write_text(table, encoding="utf-8")
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
