"""Tokenizer + chat-template rendering + UTF-8-safe streaming detokenization. Nothing else.

Everything model-specific (vocabulary, special tokens, template, end-of-sequence ids) is read from the
model folder in Hugging Face layout: tokenizer.json, tokenizer_config.json (`chat_template`,
`bos_token`, `eos_token`, `pad_token`, `add_bos_token`, `add_eos_token`; or a chat_template.jinja
file), optional generation_config.json and config.json. The way transformers does it:
- the template sees `messages`, `tools`, `documents`, `add_generation_prompt`, every special token
  (`bos_token`, `eos_token`, `unk_token`, `pad_token`), `raise_exception` and `strftime_now`, in
  transformers' Jinja settings (undefined names render empty, not an error);
- a completions prompt gets BOS/EOS as tokenizer.json's post-processor adds them (what transformers 5's
  `tokenizer(prompt)` does); `add_bos_token`/`add_eos_token`, where the config has them, win (transformers 4
  rebuilt the post-processor from them; in published folders the two agree);
- generation stops at `eos_token` and at generation_config's `eos_token_id` (int or list); without
  that file at config.json's `eos_token_id`, else at `pad_token` (the project's tokenizers pad with
  the document separator, which a model must never continue past).
A folder without a chat template (a base model) serves completions; chat then needs a template passed
by the operator (`serve --chat-template FILE`) and is refused with a typed error otherwise.
Special-token text inside a message or a completions prompt is text, never a control token.
"""
from __future__ import annotations

import json
import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer, decoders, pre_tokenizers

from .errors import ConfigError, RequestError

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_text(v: Any) -> str | None:
    # tokenizer_config stores special tokens either as a string or as an AddedToken dict
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _raise_exception(message: str):
    raise TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' tojson: no HTML escaping, json.dumps options exposed
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _compile_template(chat_template: str):
    # transformers renders chat templates with exactly these settings; keep them for identical text
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(chat_template)
    except TemplateError as e:
        raise ConfigError(f"chat_template does not compile: {e}", param="chat_template") from e


def _eos_ids(v: Any, field: str, vocab_size: int) -> list[int]:
    ids = [v] if isinstance(v, int) and not isinstance(v, bool) else v if isinstance(v, list) else []
    if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size for i in ids):
        raise ConfigError(f"{field} eos_token_id {str(v)[:80]} is not a list of ids in the vocabulary",
                          param="eos_token_id")
    return ids


def _as_transformers_loads(tok: Tokenizer, cfg: dict) -> Tokenizer:
    """transformers' LlamaTokenizer replaces a SentencePiece-style tokenizer.json's normalizer and
    pre-tokenizer (Llama-2, TinyLlama) with a Metaspace that prefixes "▁" to the first piece only
    (`legacy: false`, its default) or to every piece after a special token (`legacy: true`); a
    byte-level tokenizer.json (Llama-3) is used as written. Do the same, so ids are transformers'."""
    cls = cfg.get("tokenizer_class")
    if not isinstance(cls, str) or cls.removesuffix("Fast") != "LlamaTokenizer":
        return tok
    d = json.loads(tok.to_str())
    if any(isinstance(part, dict) and "ByteLevel" in json.dumps(part) for part in (d.get("pre_tokenizer"),
                                                                                   d.get("decoder"))):
        return tok
    prefix = cfg.get("add_prefix_space")
    prefix = True if prefix is None else bool(prefix)
    scheme = ("always" if cfg.get("legacy", False) else "first") if prefix else "never"
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme, split=False)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1)] if prefix else []))
    return tok


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path.name} is not readable JSON: {type(e).__name__}", param=path.name) from e
    if not isinstance(d, dict):
        raise ConfigError(f"{path.name} must hold a JSON object", param=path.name)
    return d


class ChatTokenizer:
    def __init__(self, tokenizer: Tokenizer, chat_template: str | None, eos_token: str | None,
                 extra_stop_ids: tuple[int, ...] = (), document_separator_id: int | None = None,
                 special_tokens: dict[str, str] | None = None, add_bos_token: bool | None = None,
                 add_eos_token: bool | None = None):
        self.tokenizer = tokenizer
        self.eos_token = eos_token
        # what an empty completions prompt starts from when the tokenizer adds no BOS (OpenAI: "as if
        # from the beginning of a new document"): the pad token, the project's document separator
        self.document_separator_id = document_separator_id
        eos_id = tokenizer.token_to_id(eos_token) if eos_token is not None else None
        if eos_token is not None and eos_id is None:
            raise ConfigError(f"eos_token {eos_token!r} is not in the vocabulary", param="eos_token")
        if eos_id is None and not extra_stop_ids:
            raise ConfigError("the folder names no end-of-sequence token (tokenizer_config.json eos_token or "
                              "generation_config.json eos_token_id)", param="eos_token")
        self.eos_token_id = eos_id if eos_id is not None else extra_stop_ids[0]
        self.stop_token_ids = frozenset((self.eos_token_id, *extra_stop_ids))
        named = {"eos_token": eos_token} | (special_tokens or {})
        self.special_tokens = {k: v for k, v in named.items() if v is not None}
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        for name, flag in (("bos_token", add_bos_token), ("eos_token", add_eos_token)):
            tok = self.special_tokens.get(name)
            if flag and (tok is None or tokenizer.token_to_id(tok) is None):
                raise ConfigError(f"add_{name} is true but {name} is not in the vocabulary", param=f"add_{name}")
        # message and prompt text is data: a copy that reads special-token strings as plain text
        self._plain = Tokenizer.from_str(tokenizer.to_str())
        self._plain.encode_special_tokens = True
        # text after a special token: a Metaspace that prefixes "▁" to the input's first piece only
        # (Llama's `legacy: false`) must not prefix it (the tokenizer does not, encoding the whole text)
        # and text that continues a session (it follows the cached tokens, never starts the document)
        self._plain_after_special, self._continued = self._plain, tokenizer
        pre = json.loads(tokenizer.to_str()).get("pre_tokenizer") or {}
        if pre.get("type") == "Metaspace" and pre.get("prepend_scheme") == "first":
            never = pre_tokenizers.Metaspace(replacement=pre.get("replacement", "\u2581"), prepend_scheme="never",
                                             split=pre.get("split", False))
            self._plain_after_special = Tokenizer.from_str(self._plain.to_str())
            self._plain_after_special.pre_tokenizer = never
            self._continued = Tokenizer.from_str(tokenizer.to_str())
            self._continued.pre_tokenizer = never
        specials = {a.content: i for i, a in tokenizer.get_added_tokens_decoder().items() if a.special}
        self._special_ids = specials
        self._special_re = re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))) \
            if specials else None
        self._template = _compile_template(chat_template) if chat_template else None

    @classmethod
    def from_folder(cls, folder: str | Path, chat_template: str | None = None) -> "ChatTokenizer":
        """`chat_template`: the operator's template, used instead of the folder's."""
        folder = Path(folder)
        try:
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # OSError; tokenizers raises plain Exception on a bad file
            raise ConfigError(f"cannot load tokenizer from {folder.name}: {type(e).__name__}",
                              param="tokenizer.json") from e
        if not (folder / "tokenizer_config.json").is_file():
            raise ConfigError(f"{folder.name} has no tokenizer_config.json", param="tokenizer_config.json")
        cfg = _read_json(folder / "tokenizer_config.json")
        tok = _as_transformers_loads(tok, cfg)
        template = chat_template if chat_template is not None else cfg.get("chat_template")
        if isinstance(template, list):  # HF's named-template form
            template = next((t.get("template") for t in template
                             if isinstance(t, dict) and t.get("name") == "default"), None)
        jinja_file = folder / "chat_template.jinja"
        if template is None and jinja_file.exists():
            template = jinja_file.read_text(encoding="utf-8")
        if template is not None and not isinstance(template, str):
            raise ConfigError("chat_template must be a string", param="chat_template")
        special = {name: _token_text(cfg.get(name)) for name in SPECIAL_TOKEN_NAMES}
        flags = {}
        for name in ("add_bos_token", "add_eos_token"):
            flags[name] = cfg.get(name)
            if flags[name] is not None and not isinstance(flags[name], bool):
                raise ConfigError(f"{name} must be a boolean", param=name)
        V = tok.get_vocab_size()
        if (folder / "generation_config.json").exists():
            extra = _eos_ids(_read_json(folder / "generation_config.json").get("eos_token_id"),
                             "generation_config.json", V)
        elif (folder / "config.json").exists() and \
                (ids := _eos_ids(_read_json(folder / "config.json").get("eos_token_id"), "config.json", V)):
            extra = ids
        elif (pad := special["pad_token"]) is not None and tok.token_to_id(pad) is not None:
            extra = [tok.token_to_id(pad)]
        else:
            extra = []
        pad = special["pad_token"]
        return cls(tok, template or None, special["eos_token"], tuple(extra),
                   tok.token_to_id(pad) if pad is not None else None, special, **flags)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def encode(self, text: str, continues: bool = False) -> list[int]:
        # the template already wrote every special token; never add BOS/EOS on top
        return (self._continued if continues else self.tokenizer).encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        """A completions prompt: special-token text stays text (OpenAI treats the prompt as text), and
        BOS/EOS are added as the tokenizer config says (or its post-processor, where it says nothing)."""
        if self.add_bos_token is None and self.add_eos_token is None:
            return self._plain.encode(text, add_special_tokens=True).ids
        ids = self._encode_plain(text)
        if self.add_bos_token:
            ids = [self.tokenizer.token_to_id(self.special_tokens["bos_token"]), *ids]
        if self.add_eos_token:
            ids = [*ids, self.tokenizer.token_to_id(self.special_tokens["eos_token"])]
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool,
               tools: list[dict] | None = None) -> str:
        if self._template is None:
            raise RequestError("this model has no chat template (a base model): use /v1/completions, or "
                               "serve it with a chat template (--chat-template FILE)", param="messages",
                               code="chat_template_missing")
        try:
            return self._template.render(messages=messages, tools=tools, documents=None,
                                         add_generation_prompt=add_generation_prompt, **self.special_tokens)
        except TemplateError as e:
            raise RequestError(f"chat template rejected the messages: {str(e)[:200]}",
                               param="messages", code="invalid_value") from e

    def encode_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True,
                    continues: bool = False) -> list[int]:
        """The rendered chat, with special tokens only where the template wrote them.

        A special token's text inside a message (say "<|end|>\n<|assistant|>") stays text, as at OpenAI:
        otherwise a user could close their own turn and write the system's or the assistant's. The
        template is rendered with a placeholder per message; its special tokens are split out, and the
        text between them (with the messages put back) is encoded with special tokens read as text.
        Without special-token text in the messages this equals encode(render(...)): the tokenizer
        itself encodes the pieces between special tokens separately (`_encode_plain(after_special)`
        keeps the one difference a piece's place makes).

        `continues`: the messages follow a session's cached turns. They are rendered as the tail of a
        conversation (after a stand-in earlier turn), since templates write the document's start only
        once (Llama-3's BOS), and their text never starts the document.
        """
        earlier = self._stand_in(messages, add_generation_prompt) if continues else []
        head = self.render(earlier, False) if earlier else ""

        def text_of(msgs: list[dict[str, str]]) -> str:
            return self.render(earlier + msgs, add_generation_prompt)[len(head):]

        if self._special_re is None:
            return self.encode(text_of(messages), continues)
        nonce = secrets.token_hex(8)
        marks = {f"\ue000{nonce}.{i}\ue001": m.get("content", "") for i, m in enumerate(messages)}
        with_marks = text_of([{**m, "content": mark} for m, mark in zip(messages, marks)])
        mark_re = re.compile("|".join(re.escape(m) for m in marks))

        def put_back(text: str) -> str:
            return mark_re.sub(lambda hit: marks[hit.group(0)], text)

        if put_back(with_marks) != text_of(messages):
            # a template that rewrites message text (trims it, say) can't be split by placeholders: refuse
            # special-token text in messages rather than read it as control tokens
            for i, m in enumerate(messages):
                hit = self._special_re.search(m.get("content", ""))
                if hit:
                    raise RequestError(f"messages[{i}].content holds the control token {hit.group(0)!r}, which "
                                       "this model's chat template cannot keep as text",
                                       param=f"messages[{i}].content", code="invalid_value")
            return self.encode(text_of(messages), continues)
        ids: list[int] = []
        pos = 0
        for hit in self._special_re.finditer(with_marks):
            ids += self._encode_plain(put_back(with_marks[pos:hit.start()]), after_special=pos > 0 or continues)
            ids.append(self._special_ids[hit.group(0)])
            pos = hit.end()
        ids += self._encode_plain(put_back(with_marks[pos:]), after_special=pos > 0 or continues)
        return ids

    def _stand_in(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[dict[str, str]]:
        """An earlier turn the template accepts before `messages` and renders as a plain prefix, or []."""
        first = messages[0].get("role") if messages else None
        earlier = [{"role": "user", "content": "."}] + \
            ([{"role": "assistant", "content": "."}] if first != "assistant" else [])
        try:
            head = self.render(earlier, False)
            whole = self.render(earlier + messages, add_generation_prompt)
        except RequestError:
            return []
        return earlier if whole.startswith(head) else []

    def _encode_plain(self, text: str, after_special: bool = False) -> list[int]:
        tok = self._plain_after_special if after_special else self._plain
        return tok.encode(text, add_special_tokens=False).ids if text else []

    def text_stream(self, stop: tuple[str, ...] = ()) -> "TextStream":
        return TextStream(self, stop)


class TextStream:
    """Turns generated ids into text that is safe to send: whole characters only, stop strings cut.

    Text that could still be the start of a stop string is held back until it is not. Decoding is
    incremental over a short window of ids (decode(window + new) minus decode(window)), so decoders
    that strip a leading space or fall back to bytes (Llama's) give the text a whole decode gives;
    text ending in U+FFFD is an unfinished UTF-8 sequence and waits for its next bytes.
    """

    def __init__(self, tok: ChatTokenizer, stop: tuple[str, ...]):
        self._tok = tok
        self._ids: list[int] = []
        self._prefix = self._read = 0   # window: ids[_prefix:_read] decoded, ids[_read:] not yet sent
        self._stop = stop
        self._stop_chars = frozenset("".join(stop))   # a held suffix ends in one of these
        self._text = ""          # decoded so far (whole characters only)
        self.emitted = ""        # handed out so far
        self.stopped = False     # a stop string was found

    def _decode_step(self, token_id: int) -> str:
        self._ids.append(token_id)
        window = self._tok.decode(self._ids[self._prefix:self._read])
        text = self._tok.decode(self._ids[self._prefix:])
        if len(text) > len(window) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(window):]
        return ""

    def push(self, token_id: int) -> str:
        """Feed one generated id; returns the newly sendable text ('' if none yet)."""
        if self.stopped:
            return ""
        chunk = self._decode_step(token_id)
        if not self._stop:           # nothing is ever held back: the new text goes out as it is
            self._text += chunk
            self.emitted = self._text
            return chunk
        if not chunk:                # no new text: nothing new to send or to match
            return ""
        self._text += chunk
        pending = self._text[len(self.emitted):]
        cut = -1
        for s in self._stop:
            i = pending.find(s)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
        if cut >= 0:
            out = pending[:cut]
            self.stopped = True
        else:
            out = pending[:len(pending) - self._held(pending)]
        self.emitted += out
        return out

    def flush(self) -> str:
        """At the end of generation: release held-back text (a stop-string prefix that never completed).

        A trailing incomplete UTF-8 sequence is dropped, never sent as half a character.
        """
        if self.stopped:
            return ""
        tail = self._tok.decode(self._ids[self._prefix:])[len(self._tok.decode(self._ids[self._prefix:self._read])):]
        self._text += tail.rstrip("\ufffd")
        self._read = len(self._ids)
        out = self._text[len(self.emitted):]
        self.emitted += out
        return out

    def _held(self, pending: str) -> int:
        # longest suffix of `pending` that is a proper prefix of some stop string
        if not pending or pending[-1] not in self._stop_chars:   # the usual case, at once
            return 0
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(pending)), best, -1):
                if pending.endswith(s[:n]):
                    best = n
                    break
        return best
