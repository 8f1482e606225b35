#!/usr/bin/env python3
"""Train the byte-level BPE tokenizer (8192 entries) on the training split and write the HF-style files.

    python gpu-service/scripts/train_tokenizer.py     # data/corpus/train.txt -> gpu-service/models/lckv-tiny/

Writes tokenizer.json and tokenizer_config.json (eos "<|end|>", no bos, the chat template the
service renders). Special tokens get ids 0..4, `<|endoftext|>` = 0 is the document separator.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "gpu-service"))
from lckv_service.train.corpus import DOC_SEPARATOR, SPECIAL_TOKENS  # noqa: E402

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def iter_documents(path: Path, block_docs: int = 256):
    """Documents of a corpus file without special-token strings (they are added, not learned)."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    docs = text.split("\n" + DOC_SEPARATOR + "\n")
    for i in range(0, len(docs), block_docs):
        batch = []
        for d in docs[i:i + block_docs]:
            for tok in SPECIAL_TOKENS:
                d = d.replace(tok, "\n")
            if d.strip():
                batch.append(d)
        yield batch


def build_tokenizer(vocab_size: int, min_frequency: int = 2):
    tok = Tokenizer(models.BPE())
    # No normalizer: decoding must give back the exact input text (byte-level round trip).
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=True,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return tok, trainer


def tokenizer_config(model_max_length: int) -> dict:
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, t in enumerate(SPECIAL_TOKENS)}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=REPO / "data" / "corpus" / "train.txt")
    ap.add_argument("--out", type=Path, default=REPO / "gpu-service" / "models" / "lckv-tiny")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--model-max-length", type=int, default=1024, help="the models' max_position_embeddings")
    args = ap.parse_args(argv)
    if not 256 + len(SPECIAL_TOKENS) < args.vocab_size <= 65536:
        ap.error("--vocab-size must be in 262..65536 (token shards are uint16)")
    if not args.train.exists():
        ap.error(f"--train {args.train} does not exist (run build_corpus.py first)")

    t0 = time.time()
    tok, trainer = build_tokenizer(args.vocab_size)
    tok.train_from_iterator(iter_documents(args.train), trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):   # the contract: fixed ids 0..4
        if tok.token_to_id(t) != i:
            raise RuntimeError(f"special token {t} got id {tok.token_to_id(t)}, expected {i}")
    args.out.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out / "tokenizer.json"))
    (args.out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(args.model_max_length), indent=2) + "\n", encoding="utf-8")
    sample = "Hello, world!  In the beginning\r\n<|user|>\nWhat does \"ewe\" mean?<|end|>\n"
    ids = tok.encode(sample, add_special_tokens=False).ids
    assert tok.decode(ids, skip_special_tokens=False) == sample, "round trip failed"
    print(f"[tokenizer] vocab {tok.get_vocab_size()} trained in {time.time() - t0:.0f}s -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
