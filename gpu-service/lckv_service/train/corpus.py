"""Corpus building blocks: markup cleaning, documents, held-out split, chat rendering.

Pure functions over text (no downloads, no files), so they are unit-tested on small inputs;
`scripts/build_corpus.py` fetches the registry packages and drives them.
"""
from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from pathlib import Path

# Strings the tokenizer treats as special tokens; source text must never contain them,
# otherwise plain prose would be encoded as control tokens.
SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
DOC_SEPARATOR = "<|endoftext|>"


@dataclass(frozen=True)
class Document:
    source: str          # short source name, e.g. "web", "gutenberg"
    doc_id: str          # stable id inside the source (for the split and the manifest)
    text: str
    kind: str = "prose"  # "prose" | "chat"


# ---------------------------------------------------------------- whitespace / safety

_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (manifests of packages, corpora and shards)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def normalize_whitespace(text: str) -> str:
    """\r\n and \r -> \n, runs of spaces -> one space, no trailing spaces, at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def defuse_special_tokens(text: str) -> str:
    """Break any literal special-token string so it tokenizes as ordinary text."""
    return text.replace("<|", "< |").replace("|>", "| >") if "<|" in text or "|>" in text else text


# ---------------------------------------------------------------- OSIS (SWORD modules)

_NOTE = re.compile(r"<note\b[^>]*>.*?</note>", re.S)
_TITLE = re.compile(r"<title\b[^>]*>(.*?)</title>", re.S)
_PARA = re.compile(r"<(?:div|lb|lg|l|p|item|list|row|table)\b[^>]*/?>|</(?:l|p|item|list|row|table|lg)>")
_CELL = re.compile(r"</?cell\b[^>]*>")
_TAG = re.compile(r"<[^>]+>")


def clean_osis(markup: str, keep_titles: bool = True) -> str:
    """OSIS fragment -> plain text: footnotes dropped, titles/paragraphs/lines become line breaks."""
    text = _NOTE.sub("", markup)
    text = _TITLE.sub((lambda m: "\n\n" + m.group(1) + "\n\n") if keep_titles else "", text)
    text = _PARA.sub("\n", text)
    text = _CELL.sub(" ", text)
    text = _TAG.sub("", text)
    return normalize_whitespace(html.unescape(text))


def parse_imp(text: str) -> list[tuple[str, str]]:
    """SWORD `mod2imp` output -> [(key, body)]; keys like "Genesis 1:1"."""
    parts = re.split(r"^\$\$\$(.*)$", text, flags=re.M)
    return [(k.strip(), v) for k, v in zip(parts[1::2], parts[2::2])]


_VERSE_KEY = re.compile(r"^(.+?) (\d+):(\d+)$")


def bible_chapters(imp_entries: list[tuple[str, str]]) -> dict[tuple[str, int], list[tuple[int, str]]]:
    """Verse entries of a Bible module grouped by (book, chapter) -> [(verse, plain text)].

    Introductions (verse 0) and module headings are skipped; verse text is a single line.
    """
    chapters: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for key, body in imp_entries:
        m = _VERSE_KEY.match(key)
        if not m or int(m.group(2)) == 0 or int(m.group(3)) == 0:
            continue
        verse = clean_osis(body, keep_titles=False).replace("\n", " ")
        verse = _SPACES.sub(" ", verse).strip()
        if verse:
            chapters.setdefault((m.group(1), int(m.group(2))), []).append((int(m.group(3)), verse))
    return chapters


# ---------------------------------------------------------------- plain-text books

def unwrap_paragraphs(text: str) -> str:
    """Join hard-wrapped lines inside each paragraph (prose); blank lines stay paragraph breaks."""
    paras = [p for p in normalize_whitespace(text).split("\n\n") if p.strip()]
    return "\n\n".join(" ".join(line for line in p.split("\n") if line) for p in paras)


def chunk_paragraphs(text: str, target_chars: int) -> list[str]:
    """Split at paragraph boundaries into pieces of about `target_chars` (the unit of the split)."""
    chunks, cur, size = [], [], 0
    for para in text.split("\n\n"):
        cur.append(para)
        size += len(para) + 2
        if size >= target_chars:
            chunks.append("\n\n".join(cur))
            cur, size = [], 0
    if cur:
        tail = "\n\n".join(cur)
        if chunks and len(tail) < target_chars // 4:
            chunks[-1] += "\n\n" + tail     # no tiny trailing document
        else:
            chunks.append(tail)
    return [c for c in chunks if c.strip()]


# ---------------------------------------------------------------- WordNet

_POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


def parse_wordnet_data(text: str) -> list[tuple[str, str, str, list[str]]]:
    """WordNet `data.<pos>` -> [(lemma, part of speech, definition, examples)] (first lemma of a synset)."""
    out = []
    for line in text.split("\n"):
        if not line or line.startswith("  ") or "|" not in line:
            continue  # licence header lines start with two spaces
        head, gloss = line.split("|", 1)
        fields = head.split()
        pos = _POS.get(fields[2])
        if pos is None or int(fields[3], 16) < 1:
            continue
        lemma = re.sub(r"\(.*\)$", "", fields[4]).replace("_", " ")
        definition, examples = [], []
        for part in (p.strip() for p in gloss.strip().split("; ")):
            if part.startswith('"'):
                examples.append(part.strip('"').strip())
            elif part and not examples:
                definition.append(part)
        if definition:
            out.append((lemma, pos, "; ".join(definition), examples))
    return out


# ---------------------------------------------------------------- split and chat

def is_heldout(source: str, doc_id: str, heldout_per_mille: int) -> bool:
    """Deterministic document-level split: hash of (source, id), independent of order and of other docs."""
    h = int.from_bytes(hashlib.sha256(f"{source}\x00{doc_id}".encode()).digest()[:8], "big")
    return h % 1000 < heldout_per_mille


def render_chat(turns: list[tuple[str, str]], system: str | None = None) -> str:
    """Conversation in the model's chat template (tokenizer_config.json's chat_template), each turn closed."""
    parts = [f"<|system|>\n{system}<|end|>\n"] if system else []
    for role, content in turns:
        if role not in ("user", "assistant"):
            raise ValueError(f"role must be user or assistant, got {role!r}")
        parts.append(f"<|{role}|>\n{defuse_special_tokens(content)}<|end|>\n")
    return "".join(parts)


def dedupe(docs: list[Document]) -> tuple[list[Document], int]:
    """Drop documents whose text already occurred (exact, after normalisation); keeps first."""
    seen: set[bytes] = set()
    out = []
    for d in docs:
        h = hashlib.sha256(d.text.encode()).digest()
        if h not in seen:
            seen.add(h)
            out.append(d)
    return out, len(docs) - len(out)
