"""The wire between the edge Worker and this service (docs/internal-protocol.md, version 1). One file.

Bodies are frame streams: kind (1 byte: J JSON, B blob bytes, E end) + length (u32 big-endian) + payload.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from ..errors import RequestError
from ..sampling import SamplingParams

CONTENT_TYPE = "application/vnd.lckv.frames"
J, B, E = b"J", b"B", b"E"
MAX_FRAME = 64 * 2**20
BLOB_CHUNK = 2**20
_HEADER = struct.Struct(">cI")

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
REQUEST_FIELDS = {"request_id", "model", "kind", "messages", "prompt", "sampling", "return_blob"}
MAX_REQUEST_ID = 128


# ---- frames --------------------------------------------------------------------------------------
def frame(kind: bytes, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME:
        raise ValueError("frame payload over 64 MiB")
    return _HEADER.pack(kind, len(payload)) + payload


def json_frame(obj: dict) -> bytes:
    return frame(J, json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode())


def blob_frames(data) -> list:
    """A blob (bytes-like, or a list of bytes-like parts) as B frames of at most BLOB_CHUNK bytes:
    frame headers and views of the data, in order, nothing copied (b"".join makes the bytes)."""
    out = []
    for part in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
        view = memoryview(part)
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        for i in range(0, len(view), BLOB_CHUNK):
            piece = view[i:i + BLOB_CHUNK]
            out += [_HEADER.pack(B, len(piece)), piece]
    return out


def end_frame() -> bytes:
    return frame(E)


class FrameReader:
    """Whole frames out of a response stream that arrives in arbitrary pieces, for its clients.
    Linear in the bytes read: a frame's payload is copied out once, when it is complete (a 22 MB
    blob arrives as 1 MiB frames over many small reads)."""

    def __init__(self):
        self._buf = bytearray()
        self._need = _HEADER.size            # bytes the next frame needs before it can be parsed

    @property
    def pending(self) -> int:
        """Bytes held of a frame not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """Take the next piece of the stream; returns the frames it completes, as (kind, payload)."""
        self._buf += data
        out, off, buf = [], 0, self._buf
        while len(buf) - off >= self._need:
            kind, n = _HEADER.unpack_from(buf, off)
            end = off + _HEADER.size + n
            if len(buf) < end:
                self._need = end - off
                break
            out.append((kind, bytes(buf[off + _HEADER.size:end])))
            off, self._need = end, _HEADER.size
        if off:
            del buf[:off]
        return out


def _bad_frame(message: str) -> RequestError:
    return RequestError(message, param="body", code="invalid_frame")


def parse_frames(body: bytes) -> tuple[bytes, bytes | None]:
    """Request body -> (JSON payload, blob bytes or None): one J, then B*, then an optional empty E."""
    off, json_payload, blob = 0, None, []
    ended = False
    while off < len(body):
        if ended:
            raise _bad_frame("data after the E frame")
        if len(body) - off < _HEADER.size:
            raise _bad_frame("truncated frame header")
        kind, n = _HEADER.unpack_from(body, off)
        off += _HEADER.size
        if n > MAX_FRAME:
            raise _bad_frame("frame over 64 MiB")
        if len(body) - off < n:
            raise _bad_frame("truncated frame payload")
        payload = body[off:off + n]
        off += n
        if json_payload is None:
            if kind != J:
                raise _bad_frame("the first frame must be a J frame")
            json_payload = payload
        elif kind == B:
            blob.append(payload)
        elif kind == E:
            if n:
                raise _bad_frame("the E frame must be empty")
            ended = True
        else:
            raise _bad_frame(f"unexpected frame kind {kind!r}" if kind != J else "more than one J frame")
    if json_payload is None:
        raise _bad_frame("empty body: expected a J frame")
    return json_payload, (b"".join(blob) if blob else None)


# ---- request -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerateRequest:
    request_id: str
    model: str
    kind: str                                   # "chat" | "completion"
    messages: list[dict[str, str]] | None       # normalized: role in system/user/assistant, text content
    prompt: str | None
    sampling: SamplingParams
    return_blob: bool


def _invalid(param: str, message: str) -> RequestError:
    return RequestError(message, param=param, code="invalid_value")


def _unicode(s: str, param: str) -> str:
    # JSON can carry an unpaired surrogate ("\\ud83d"): not Unicode text, the tokenizer cannot take it
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(param, "the text contains an unpaired UTF-16 surrogate") from None
    return s


def _content_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return _unicode(content, param)
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            p = f"{param}[{j}]"
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _invalid(p, "content parts must be {\"type\": \"text\", \"text\": string} (text only)")
            if set(part) - {"type", "text"}:
                raise _invalid(p, "unknown field in a content part")
            parts.append(_unicode(part["text"], f"{p}.text"))
        return "".join(parts)
    raise _invalid(param, "content must be a string or an array of text parts")


def _messages(v: Any) -> list[dict[str, str]]:
    if not isinstance(v, list) or not v:
        raise _invalid("messages", "messages must be a non-empty array")
    out = []
    for i, m in enumerate(v):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _invalid(p, "each message must be an object")
        extra = set(m) - {"role", "content"}
        if extra:
            raise _invalid(f"{p}.{sorted(extra)[0][:64]}", "unknown field in a message")
        role = m.get("role")
        if role not in ROLES:
            raise _invalid(f"{p}.role", f"role must be one of {sorted(ROLES)}")
        out.append({"role": ROLES[role], "content": _content_text(m.get("content"), f"{p}.content")})
    return out


def parse_generate_request(payload: bytes, max_tokens_limit: int) -> GenerateRequest:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise RequestError("the J frame is not valid UTF-8 JSON", param="body", code="invalid_json") from e
    if not isinstance(obj, dict):
        raise RequestError("the request JSON must be an object", param="body", code="invalid_json")
    for k in obj:
        if k not in REQUEST_FIELDS:
            raise _invalid(str(k)[:64], f"unknown field {str(k)[:64]!r}")
    rid = obj.get("request_id", "")
    if not isinstance(rid, str) or len(rid) > MAX_REQUEST_ID or not rid.isprintable():
        raise _invalid("request_id", f"request_id must be a printable string of at most {MAX_REQUEST_ID} chars")
    model = obj.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "model must be a non-empty string")
    kind = obj.get("kind")
    if kind not in ("chat", "completion"):
        raise _invalid("kind", "kind must be 'chat' or 'completion'")
    messages = prompt = None
    if kind == "chat":
        if "prompt" in obj:
            raise _invalid("prompt", "prompt is for kind 'completion'; chat takes messages")
        messages = _messages(obj.get("messages"))
    else:
        if "messages" in obj:
            raise _invalid("messages", "messages is for kind 'chat'; completion takes prompt")
        prompt = obj.get("prompt")
        if not isinstance(prompt, str):
            raise _invalid("prompt", "prompt must be a string")
        _unicode(prompt, "prompt")
    return_blob = obj.get("return_blob", False)
    if not isinstance(return_blob, bool):
        raise _invalid("return_blob", "return_blob must be a boolean")
    sampling = SamplingParams.from_dict(obj.get("sampling"), max_tokens_limit)
    return GenerateRequest(rid, model, kind, messages, prompt, sampling, return_blob)


# ---- response events -----------------------------------------------------------------------------
def start_event(request_id: str, model: str, prompt_tokens: int, cached_tokens: int, created: int) -> dict:
    return {"type": "start", "request_id": request_id, "model": model, "prompt_tokens": prompt_tokens,
            "cached_tokens": cached_tokens, "created": created}


def delta_event(text: str, token_ids: list[int]) -> dict:
    return {"type": "delta", "text": text, "token_ids": token_ids}


def done_event(finish_reason: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int,
               blob_bytes: int, tokens_seen: int, cache_tokens: int) -> dict:
    return {"type": "done", "finish_reason": finish_reason,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens, "cached_tokens": cached_tokens},
            "blob_bytes": blob_bytes,
            "session": {"tokens_seen": tokens_seen, "cache_tokens": cache_tokens,
                        "evicted_tokens": tokens_seen - cache_tokens}}


def error_body(type_: str, message: str, param: str | None, code: str, limits: dict | None = None) -> dict:
    """An error object; context_length_exceeded adds `limits` {prompt_tokens, max_prompt_tokens}."""
    body = {"message": message, "type": type_, "param": param, "code": code}
    return {"error": {**body, "limits": limits} if limits is not None else body}


def error_event(type_: str, message: str, param: str | None, code: str) -> dict:
    return {"type": "error", **error_body(type_, message, param, code)}
