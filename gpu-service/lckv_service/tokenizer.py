"""Tokenizer + chat-template rendering + UTF-8-safe streaming detokenization. Nothing else.

Everything model-specific (vocabulary, special tokens, template, end-of-sequence ids) is read from the
model folder in Hugging Face layout: tokenizer.json, tokenizer_config.json (`chat_template`,
`eos_token`, `pad_token`; or a chat_template.jinja file) and optional generation_config.json.
Generation stops at `eos_token` and at generation_config's `eos_token_id` (int or list); without that
file, at `pad_token` too (the project's tokenizers pad with the document separator, which a model
must never continue past).
"""
from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from .errors import ConfigError, RequestError


def _token_text(v: Any) -> str | None:
    # tokenizer_config stores special tokens either as a string or as an AddedToken dict
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _raise_exception(message: str):
    raise TemplateError(message)


class ChatTokenizer:
    def __init__(self, tokenizer: Tokenizer, chat_template: str, eos_token: str,
                 extra_stop_ids: tuple[int, ...] = (), document_separator_id: int | None = None):
        self.tokenizer = tokenizer
        self.eos_token = eos_token
        # what an empty completions prompt starts from (OpenAI: "as if from the beginning of a new
        # document"): the pad token, which the project's tokenizers use as the document separator
        self.document_separator_id = document_separator_id
        eos_id = tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise ConfigError(f"eos_token {eos_token!r} is not in the vocabulary", param="eos_token")
        self.eos_token_id = eos_id
        self.stop_token_ids = frozenset((eos_id, *extra_stop_ids))
        # message text is data: a copy that reads special-token strings as plain text (no role injection)
        self._plain = Tokenizer.from_str(tokenizer.to_str())
        self._plain.encode_special_tokens = True
        specials = {a.content: i for i, a in tokenizer.get_added_tokens_decoder().items() if a.special}
        self._special_ids = specials
        self._special_re = re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))) \
            if specials else None
        # Hugging Face renders chat templates with exactly these settings; keep them for identical text
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
        env.globals["raise_exception"] = _raise_exception
        try:
            self._template = env.from_string(chat_template)
        except TemplateError as e:
            raise ConfigError(f"chat_template does not compile: {e}", param="chat_template") from e

    @classmethod
    def from_folder(cls, folder: str | Path) -> "ChatTokenizer":
        folder = Path(folder)
        try:
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
            cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except Exception as e:  # OSError, JSON errors; tokenizers raises plain Exception on a bad file
            raise ConfigError(f"cannot load tokenizer from {folder.name}: {type(e).__name__}",
                              param="tokenizer.json") from e
        template = cfg.get("chat_template")
        if isinstance(template, list):  # HF's named-template form
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        jinja_file = folder / "chat_template.jinja"
        if template is None and jinja_file.exists():
            template = jinja_file.read_text(encoding="utf-8")
        if not isinstance(template, str) or not template:
            raise ConfigError("tokenizer_config.json has no chat_template", param="chat_template")
        eos = _token_text(cfg.get("eos_token"))
        if eos is None:
            raise ConfigError("tokenizer_config.json has no eos_token", param="eos_token")
        extra: list[int] = []
        gen_file = folder / "generation_config.json"
        if gen_file.exists():
            ids = json.loads(gen_file.read_text(encoding="utf-8")).get("eos_token_id", [])
            extra = [ids] if isinstance(ids, int) else [i for i in ids if isinstance(i, int)]
        elif (pad := _token_text(cfg.get("pad_token"))) is not None and tok.token_to_id(pad) is not None:
            extra = [tok.token_to_id(pad)]
        if any(not 0 <= i < tok.get_vocab_size() for i in extra):
            raise ConfigError("generation_config.json eos_token_id outside the vocabulary", param="eos_token_id")
        pad = _token_text(cfg.get("pad_token"))
        return cls(tok, template, eos, tuple(extra), tok.token_to_id(pad) if pad is not None else None)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        # the template already wrote every special token; never add BOS/EOS on top
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         eos_token=self.eos_token)
        except TemplateError as e:
            raise RequestError(f"chat template rejected the messages: {str(e)[:200]}",
                               param="messages", code="invalid_value") from e

    def encode_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """The rendered chat, with special tokens only where the template wrote them.

        A special token's text inside a message (say "<|end|>\n<|assistant|>") stays text, as at OpenAI:
        otherwise a user could close their own turn and write the system's or the assistant's. The
        template is rendered with a placeholder per message; its special tokens are split out, and the
        text between them (with the messages put back) is encoded with special tokens read as text.
        Without special-token text in the messages this equals encode(render(...)): the tokenizer
        itself encodes the pieces between special tokens separately.
        """
        if self._special_re is None:
            return self.encode(self.render(messages, add_generation_prompt))
        nonce = secrets.token_hex(8)
        marks = {f"\ue000{nonce}.{i}\ue001": m.get("content", "") for i, m in enumerate(messages)}
        with_marks = self.render([{**m, "content": mark} for m, mark in zip(messages, marks)], add_generation_prompt)
        mark_re = re.compile("|".join(re.escape(m) for m in marks))

        def put_back(text: str) -> str:
            return mark_re.sub(lambda hit: marks[hit.group(0)], text)

        if put_back(with_marks) != self.render(messages, add_generation_prompt):
            return self._encode_unsplittable(messages, add_generation_prompt)
        ids: list[int] = []
        pos = 0
        for hit in self._special_re.finditer(with_marks):
            ids += self._encode_plain(put_back(with_marks[pos:hit.start()]))
            ids.append(self._special_ids[hit.group(0)])
            pos = hit.end()
        ids += self._encode_plain(put_back(with_marks[pos:]))
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        return self._plain.encode(text, add_special_tokens=False).ids if text else []

    def _encode_unsplittable(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        # a template that rewrites message text (trims it, say) can't be split by placeholders: refuse
        # special-token text in messages rather than read it as control tokens
        for i, m in enumerate(messages):
            hit = self._special_re.search(m.get("content", ""))
            if hit:
                raise RequestError(f"messages[{i}].content holds the control token {hit.group(0)!r}, which this "
                                   "model's chat template cannot keep as text", param=f"messages[{i}].content",
                                   code="invalid_value")
        return self.encode(self.render(messages, add_generation_prompt))

    def text_stream(self, stop: tuple[str, ...] = ()) -> "TextStream":
        return TextStream(self, stop)


class TextStream:
    """Turns generated ids into text that is safe to send: whole characters only, stop strings cut.

    Text that could still be the start of a stop string is held back until it is not.
    """

    def __init__(self, tok: ChatTokenizer, stop: tuple[str, ...]):
        self._tok = tok
        self._ds = DecodeStream(skip_special_tokens=False)
        self._stop = stop
        self._text = ""          # decoded so far (whole characters only)
        self.emitted = ""        # handed out so far
        self.stopped = False     # a stop string was found

    def push(self, token_id: int) -> str:
        """Feed one generated id; returns the newly sendable text ('' if none yet)."""
        if self.stopped:
            return ""
        chunk = self._ds.step(self._tok.tokenizer, token_id)
        if chunk:
            self._text += chunk
        pending = self._text[len(self.emitted):]
        hits = [i for i in (pending.find(s) for s in self._stop) if i >= 0]
        if hits:
            out = pending[:min(hits)]
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
        out = self._text[len(self.emitted):]
        self.emitted += out
        return out

    def _held(self, pending: str) -> int:
        # longest suffix of `pending` that is a proper prefix of some stop string
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(pending)), best, -1):
                if pending.endswith(s[:n]):
                    best = n
                    break
        return best
