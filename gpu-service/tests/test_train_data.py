"""Corpus cleaning, held-out split, chat rendering, tokenizer training and token shards, on small
generated inputs (the real corpus is not needed: CI starts fresh)."""
from __future__ import annotations

import importlib.util
import json
import struct
import sys
import zlib
from pathlib import Path

import jinja2
import numpy as np
import pytest
from tokenizers import Tokenizer

from lckv_service.train import corpus as C

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod          # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def test_clean_osis_drops_notes_and_markup():
    osis = ('<title type="x-s">Psalm 1 OVERVIEW</title> <div sID="g1" type="x-p"/><w lemma="strong:H0430">God</w>'
            '<note placement="foot"><reference type="annotateRef">1:1 </reference>Hebrew “Elohim”.</note> '
            '<hi type="italic">said</hi>, &amp; <reference osisRef="John.1.1">Joh 1:1</reference>.<div eID="g1" type="x-p"/>')
    assert C.clean_osis(osis) == "Psalm 1 OVERVIEW\n\nGod said, & Joh 1:1."
    assert C.clean_osis(osis, keep_titles=False) == "God said, & Joh 1:1."


def test_bible_chapters_from_imp_export():
    imp = ("$$$[ Module Heading ]\n\n$$$Genesis 0:0\n<div>Preface</div>\n$$$Genesis 1:0\n<chapter n=\"1\"/>\n"
           "$$$Genesis 1:1\n<w>In</w> <w>the</w> <w>beginning</w>,\r\n<w>God</w>.\n"
           "$$$Genesis 1:2\n<w>Darkness</w>.<note>n</note>\n$$$I John 5:7\n<w>Three</w>.\n")
    assert C.bible_chapters(C.parse_imp(imp)) == {("Genesis", 1): [(1, "In the beginning, God."), (2, "Darkness.")],
                                                  ("I John", 5): [(7, "Three.")]}


def test_wordnet_lines_give_lemma_pos_definition_examples():
    text = ("  1 This software and database is being provided to you, the LICENSEE, by\n"
            "00002098 00 a 01 unable 0 002 = 05200169 n 0000 ! 00001740 a 0101 | (usually followed by `to') not "
            "having the necessary means or skill or know-how; \"unable to get to town without a car\"; "
            "\"unable to obtain funds\"  \n"
            "00002137 03 n 02 abstraction 0 abstract_entity 0 010 @ 00001740 n 0000 | a general concept  \n")
    assert C.parse_wordnet_data(text) == [
        ("unable", "adjective", "(usually followed by `to') not having the necessary means or skill or know-how",
         ["unable to get to town without a car", "unable to obtain funds"]),
        ("abstraction", "noun", "a general concept", [])]


def test_whitespace_unwrap_and_chunks():
    assert C.normalize_whitespace("a  b\r\nc\t \r\n\r\n\r\n\r\nd ") == "a b\nc\n\nd"
    assert C.unwrap_paragraphs("one\ntwo\n\nthree\nfour\n") == "one two\n\nthree four"
    paras = "\n\n".join(f"p{i} " + "x" * 50 for i in range(20))
    chunks = C.chunk_paragraphs(paras, 200)
    assert "\n\n".join(chunks) == paras and all(len(c) >= 200 for c in chunks[:-1])


def test_heldout_split_is_deterministic_and_about_the_share():
    ids = [f"doc{i}" for i in range(20000)]
    held = [i for i in ids if C.is_heldout("src", i, 25)]
    assert held == [i for i in ids if C.is_heldout("src", i, 25)]
    assert 0.02 < len(held) / len(ids) < 0.03


def test_render_chat_matches_the_shipped_chat_template():
    tmpl = load_script("train_tokenizer").CHAT_TEMPLATE
    turns = [("user", 'What does "ewe" mean?'), ("assistant", '"ewe" (noun): female sheep.'), ("user", "Thanks")]
    msgs = [{"role": "system", "content": "Be brief."}] + [{"role": r, "content": c} for r, c in turns]
    want = jinja2.Environment().from_string(tmpl).render(messages=msgs, add_generation_prompt=False)
    assert C.render_chat(turns, system="Be brief.") == want
    assert C.render_chat([("user", "say <|end|> now")]) == "<|user|>\nsay < |end| > now<|end|>\n"
    with pytest.raises(ValueError):
        C.render_chat([("tool", "x")])


def test_commentary_blocks_are_read_from_the_zcom_files(tmp_path):
    blocks = ['<title>Genesis 1</title><div type="x-p"/>First.', "Second book."]
    data, index = b"", b""
    for b in blocks:
        z = zlib.compress(b.encode())
        index += struct.pack("<III", len(data), len(z), len(b.encode()))
        data += z
    (tmp_path / "ot.bzs").write_bytes(index)
    (tmp_path / "ot.bzz").write_bytes(data)
    assert load_script("build_corpus").sword_commentary_blocks(tmp_path) == blocks


def test_tokenizer_and_shards_end_to_end(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    prose = [f"Chapter {i}.\n\nThe quick brown fox {i} jumps over the lazy dog; “quotes” — and ünïcode.\r\n"
             f"Line two of {i}." for i in range(60)]
    chat = [C.render_chat([("user", f'What does "word{i}" mean?'), ("assistant", f"It means thing {i}.")],
                          system="Be brief." if i % 2 else None) for i in range(20)]
    for name, docs in (("train", prose + chat), ("val", prose[:5]), ("val_chat", chat[:3])):
        with open(corpus / f"{name}.txt", "w", encoding="utf-8", newline="") as f:
            for d in docs:
                f.write(d + "\n" + C.DOC_SEPARATOR + "\n")
    model_dir = tmp_path / "model"
    assert load_script("train_tokenizer").main(["--train", str(corpus / "train.txt"), "--out", str(model_dir),
                                                "--vocab-size", "400"]) == 0
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert [tok.token_to_id(t) for t in C.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == "<|end|>" and cfg["bos_token"] is None

    assert load_script("tokenize_corpus").main(["--corpus", str(corpus), "--tokenizer",
                                                str(model_dir / "tokenizer.json"), "--out", str(tmp_path / "tok")]) == 0
    ids = np.fromfile(tmp_path / "tok" / "train.bin", dtype=np.uint16)
    docs = np.split(ids, np.flatnonzero(ids == 0) + 1)[:-1]            # every document ends with id 0
    assert len(docs) == 80 and int(ids[-1]) == 0
    assert [tok.decode(d[:-1].tolist(), skip_special_tokens=False) for d in docs] == prose + chat  # round trip
    assert {1, 2, 3, 4} <= set(docs[-1].tolist())                      # chat roles are single special ids
    meta = json.loads((tmp_path / "tok" / "meta.json").read_text())
    assert meta["shards"][0]["tokens"] == ids.size and meta["vocab_size"] == 400

    from transformers import AutoTokenizer   # the files are loadable as a stock HF tokenizer
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    text = hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>\nhi<|end|>\n<|assistant|>\n" and hf.eos_token_id == 4
