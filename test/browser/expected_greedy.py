"""What the in-browser engine must answer: greedy chat turns from the PyTorch model of a model folder.

Runs the model exactly as public/js/local/engine.js drives its ONNX graph: every token through
LCKVModel.decode (token-by-token prefill is exact for LCKV), a condensed cache of `sinks + window`
tokens that drops the oldest non-sink token when full, each turn rendered concatenatively with the
folder's chat template and closed with the template's end-of-turn tokens (the manifest's). Prints JSON:
{"turns": [{"prompt", "text", "token_ids", "finish_reason"}], "cache": {"length", "tokens_seen"}}.

    .venv/bin/python test/browser/expected_greedy.py MODEL_DIR --prompt "Hi" --prompt "More" \
        --max-tokens 24 --sinks 4 --window 28
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from lckv_service.cache import KVCache
from lckv_service.checkpoint import load_model
from lckv_service.export_onnx import end_of_turn_ids
from lckv_service.tokenizer import ChatTokenizer


def run(model_dir: str, prompts: list[str], max_tokens: int, sinks: int, window: int) -> dict:
    torch.manual_seed(0)
    model = load_model(model_dir, device="cpu", dtype=torch.float32)
    tok = ChatTokenizer.from_folder(model_dir)
    cache = KVCache(model.cfg, num_slots=1, capacity=sinks + window)

    def step(token_id: int) -> torch.Tensor:
        if cache.length(0) == cache.capacity:
            cache.evict(0, sinks, window - 1)
        return model.decode(cache, torch.tensor([0]), torch.tensor([token_id]))[0]

    turns = []
    for prompt in prompts:
        logits = None
        for t in tok.encode_chat([{"role": "user", "content": prompt}], add_generation_prompt=True):
            logits = step(t)
        stream, ids, finish = tok.text_stream(), [], "length"
        text = ""
        while len(ids) < max_tokens:
            nxt = int(logits.argmax())
            ids.append(nxt)
            if nxt in tok.stop_token_ids:
                finish = "stop"
                break
            text += stream.push(nxt)
            logits = step(nxt)
        text += stream.flush()
        for t in end_of_turn_ids(tok):
            step(t)
        turns.append({"prompt": prompt, "text": text, "token_ids": ids, "finish_reason": finish})
    return {"turns": turns, "cache": {"length": cache.length(0), "tokens_seen": cache.tokens_seen(0)}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--prompt", action="append", required=True, help="one user message per turn (repeatable)")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--window", type=int, default=508)
    a = ap.parse_args(argv)
    json.dump(run(a.model_dir, a.prompt, a.max_tokens, a.sinks, a.window), sys.stdout, ensure_ascii=False)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
