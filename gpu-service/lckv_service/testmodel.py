"""Build a tiny, complete model folder for tests and local runs: `python -m lckv_service make-test-model DIR`.

Random-weight LCKV model (preset "tiny-test", float32) + a byte-level BPE tokenizer trained here on a
few paragraphs, with the project's special tokens and chat template. Deterministic for a given seed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
EOS_TOKEN = "<|end|>"
DOC_SEPARATOR = "<|endoftext|>"

# A few paragraphs are enough for merges that make ordinary words multi-byte tokens while rare
# characters (é, ü, 日本, emoji) stay split over several byte-level tokens.
CORPUS = [
    "Once upon a time there was a little fox who lived at the edge of a quiet forest. Every morning "
    "the fox walked to the river, looked at the water and thought about the day ahead.",
    "The cache of a language model keeps the keys and values of every token it has seen. A smaller "
    "cache lets a server hold more conversations at the same time, and answer them faster.",
    "She asked the assistant a question, and the assistant answered with a short, kind reply. Then "
    "she asked another question, because the first answer was good and the day was long.",
    "Rivers run to the sea, the sea rises to the clouds, and the clouds fall again as rain on the "
    "hills. Nothing is lost; everything moves on to the next place in the circle.",
    "Hello! How are you today? I am fine, thank you. What would you like to talk about? Let us talk "
    "about the weather, the forest, the river and the little fox.",
    "Numbers like 1, 2, 3, 10, 42 and 2024 appear in text too, as do symbols: (a + b) * c = d.",
]


def train_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def write_tokenizer_files(tok, folder: Path) -> None:
    tok.save(str(folder / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHAT_TEMPLATE,
           "eos_token": EOS_TOKEN, "bos_token": None, "pad_token": DOC_SEPARATOR,
           "clean_up_tokenization_spaces": False, "model_max_length": 4096}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    gen = {"eos_token_id": [tok.token_to_id(EOS_TOKEN), tok.token_to_id(DOC_SEPARATOR)]}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2), encoding="utf-8")


def make_test_model(folder: str | Path, seed: int = 0, preset: str = "tiny-test", variant: str = "lckv-w2",
                    init_std: float = 0.1) -> Path:
    import dataclasses

    import torch

    from .checkpoint import save_model
    from .config import ModelConfig
    from .model import LCKVModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    write_tokenizer_files(tok, folder)
    cfg = dataclasses.replace(ModelConfig.preset(preset, variant), vocab_size=tok.get_vocab_size())
    torch.manual_seed(seed)
    model = LCKVModel(cfg)
    with torch.no_grad():  # a wider init than training's 0.02, so attention and outputs are not near-uniform
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, init_std)
    save_model(model, folder, dtype=torch.float32)
    return folder


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="lckv_service make-test-model", description=__doc__)
    ap.add_argument("folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default="lckv-w2", help="'llama' or 'lckv-w<N>'")
    args = ap.parse_args(argv)
    print(make_test_model(args.folder, seed=args.seed, variant=args.variant))
    return 0
