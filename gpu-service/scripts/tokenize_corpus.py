#!/usr/bin/env python3
"""Tokenize the corpus splits into flat uint16 shards: data/tokens/{train,val,val_chat}.bin.

    python gpu-service/scripts/tokenize_corpus.py

Each document is followed by `<|endoftext|>` (id 0), so documents are separated in the stream.
meta.json records token counts and the sha256 of the tokenizer and of every input and shard.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "gpu-service"))
from lckv_service.train.corpus import DOC_SEPARATOR, sha256_file  # noqa: E402

MAX_TRAIN_BYTES = 64 * 2**20   # the train shard is carried to the GPU machine (64 MiB carry limit)


def tokenize_file(tok: Tokenizer, src: Path, dst: Path, eot: int, batch: int = 512) -> dict:
    with open(src, encoding="utf-8", newline="") as f:
        docs = [d for d in f.read().split("\n" + DOC_SEPARATOR + "\n") if d]
    chunks = []
    for i in range(0, len(docs), batch):
        for enc in tok.encode_batch(docs[i:i + batch], add_special_tokens=False):
            chunks.append(np.asarray(enc.ids + [eot], dtype=np.uint16))
    arr = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint16)
    dst.parent.mkdir(parents=True, exist_ok=True)
    arr.tofile(dst)
    return {"file": dst.name, "source": src.name, "source_sha256": sha256_file(src), "documents": len(docs),
            "tokens": int(arr.size), "bytes": dst.stat().st_size, "sha256": sha256_file(dst)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=REPO / "data" / "corpus")
    ap.add_argument("--tokenizer", type=Path, default=REPO / "gpu-service" / "models" / "lckv-tiny" / "tokenizer.json")
    ap.add_argument("--out", type=Path, default=REPO / "data" / "tokens")
    args = ap.parse_args(argv)
    if not args.tokenizer.exists():
        ap.error(f"--tokenizer {args.tokenizer} does not exist (run train_tokenizer.py first)")
    tok = Tokenizer.from_file(str(args.tokenizer))
    if tok.get_vocab_size() > 65536:
        ap.error("--tokenizer has more than 65536 entries; uint16 shards cannot hold its ids")
    eot = tok.token_to_id(DOC_SEPARATOR)
    if eot is None:
        ap.error(f"--tokenizer lacks the {DOC_SEPARATOR} token")

    t0 = time.time()
    shards = []
    for split in ("train", "val", "val_chat"):
        src = args.corpus / f"{split}.txt"
        if not src.exists():
            ap.error(f"{src} does not exist (run build_corpus.py first)")
        shards.append(tokenize_file(tok, src, args.out / f"{split}.bin", eot))
        s = shards[-1]
        print(f"[tokens] {split}: {s['documents']} docs -> {s['tokens']:,} tokens ({s['bytes'] / 2**20:.1f} MiB)",
              flush=True)
    if shards[0]["bytes"] > MAX_TRAIN_BYTES:
        print(f"[tokens] error: train shard exceeds {MAX_TRAIN_BYTES} bytes (carry limit)", file=sys.stderr)
        return 1
    meta = {"dtype": "uint16", "vocab_size": tok.get_vocab_size(), "eot_id": eot,
            "tokenizer_sha256": sha256_file(args.tokenizer), "shards": shards}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"[tokens] done in {time.time() - t0:.0f}s -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
