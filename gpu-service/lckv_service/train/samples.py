"""Greedy samples from trained model folders, side by side (the training report's "samples from both").

Every model gets the same prompts: prose continuations (raw text) and chat turns (rendered with the
model's chat template). Generation is the serving computation: exact prefill, then one decode step
per token, greedy, until the end-of-turn token or `max_new` tokens.

    python -m lckv_service.train.samples --model llama=runs/gpu/llama/model --model w2=runs/gpu/w2/model \
        --out samples.json --md samples.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..cache import KVCache
from ..checkpoint import load_model
from ..errors import LCKVError
from ..model import PrefillMode
from ..tokenizer import ChatTokenizer

PROSE = (
    "It was a dark and stormy night, and the",
    "In the beginning God created",
    "Mr. Darcy looked at Elizabeth and",
    "The Congress of the United States has",
)
CHAT = (
    'What does "lantern" mean?',
    "Who delivered the 1863 State of the Union address?",
    "What does John 3:16 say?",
    "Tell me about the sea.",
)


@torch.no_grad()
def greedy(model, ids: list[int], max_new: int, stop_ids: frozenset[int]) -> list[int]:
    w = next(model.parameters())
    cache = KVCache(model.cfg, 1, len(ids) + max_new, device=w.device, dtype=w.dtype)
    logits = model.prefill(cache, [0], [torch.tensor(ids)], mode=PrefillMode(kind="exact"))
    out: list[int] = []
    while len(out) < max_new:
        tok = int(logits[0].argmax())
        out.append(tok)
        if tok in stop_ids:
            break
        logits = model.decode(cache, torch.tensor([0]), torch.tensor([tok]))
    return out


def samples(folder: Path, max_new: int, device: str = "cpu") -> list[dict]:
    model = load_model(folder, device=device, dtype=torch.float32).eval()
    tok = ChatTokenizer.from_folder(folder)
    rows = []
    for p in PROSE:
        ids = greedy(model, tok.encode(p), max_new, frozenset({0}))
        rows.append({"kind": "prose", "prompt": p, "output": tok.decode(ids)})
    for q in CHAT:
        ids = greedy(model, tok.encode_chat([{"role": "user", "content": q}]), max_new, tok.stop_token_ids)
        rows.append({"kind": "chat", "prompt": q, "output": tok.decode(ids)})
    return rows


def to_markdown(results: dict[str, list[dict]]) -> str:
    names = list(results)
    lines = ["| kind | prompt | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for i, row in enumerate(results[names[0]]):
        cells = [results[n][i]["output"].replace("\n", " ").replace("|", "\\|").strip() for n in names]
        lines.append(f"| {row['kind']} | {row['prompt']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _model_arg(s: str) -> tuple[str, Path]:
    name, sep, path = s.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--model takes NAME=FOLDER, got {s!r}")
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=_model_arg, action="append", required=True, help="NAME=FOLDER, repeatable")
    ap.add_argument("--max-new", type=int, default=40, help="tokens generated per prompt (default 40)")
    ap.add_argument("--out", type=Path, required=True, help="JSON: {name: [{kind, prompt, output}]}")
    ap.add_argument("--md", type=Path, help="also write a markdown table")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: cuda if present")
    args = ap.parse_args(argv)
    if args.max_new < 1:
        ap.error("--max-new must be >= 1")
    try:
        results = {name: samples(folder, args.max_new, args.device) for name, folder in args.model}
    except (LCKVError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.md:
        args.md.write_text(to_markdown(results), encoding="utf-8")
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
