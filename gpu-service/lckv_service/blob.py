"""Cache blob codec: one sequence's condensed cache as compact, versioned, checksummed bytes.

Layout (all integers little-endian; byte-by-byte description in docs/cache-blob.md):

  0   8  magic b"LCKVBLOB"          44  4  u32 n_kv_layers        68       4n  token ids (u32)
  8   2  u16 format version (1)     48  4  u32 n tokens           68+4n    E   K (n_kv_layers, n, kv heads, head_dim)
  10  1  u8 dtype code              52  4  u32 kv heads           68+4n+E  E   V (same)
  11  1  u8 reserved (0)            56  4  u32 head_dim           end-4    4   u32 CRC-32 of all bytes before it
  12 32  model identity (sha256)    60  8  u64 tokens_seen

Every failure is a BlobError: blob_version (unknown format version), blob_model_mismatch
(another model's identity, or another dtype than the model computes in), blob_invalid (anything
else: truncated, corrupted, inconsistent).
"""
from __future__ import annotations

import struct
import zlib

import numpy as np
import torch

from .cache import CacheState
from .config import ModelConfig
from .errors import BlobError

MAGIC = b"LCKVBLOB"
VERSION = 1
_HEADER = struct.Struct("<8sHBB32sIIIIQ")   # 68 bytes
_CRC = struct.Struct("<I")
# dtype code -> (torch dtype, little-endian numpy dtype of the same width holding the raw bits)
_DTYPES = {1: (torch.float32, "<f4"), 2: (torch.bfloat16, "<i2"), 3: (torch.float16, "<f2")}
_CODES = {t: c for c, (t, _) in _DTYPES.items()}
# exponent bits per code: all ones means inf/nan. Checked on the raw bits with numpy because
# torch.isfinite on CPU bf16 runs at ~150 MB/s and dominated a session resume.
_EXP_MASK = {1: (np.uint32, 0x7F800000), 2: (np.uint16, 0x7F80), 3: (np.uint16, 0x7C00)}


def _identity_bytes(identity: str) -> bytes:
    try:
        raw = bytes.fromhex(identity)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError("identity must be a hex sha256 (64 hex digits)")
    return raw


def _le_view(t: torch.Tensor, np_dtype: str) -> memoryview:
    """The tensor's bytes, little-endian, as a byte view: no copy for a contiguous CPU tensor on a
    little-endian host (the engine exports into pinned CPU memory)."""
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: ship the raw 16-bit patterns
        t = t.view(torch.int16)
    return memoryview(t.numpy().astype(np_dtype, copy=False).reshape(-1).view(np.uint8))


# usage counts travel as JSON numbers: beyond 2^53 - 1 they would lose precision (no real session
# gets near it)
MAX_TOKENS_SEEN = 2 ** 53 - 1


def _counts_problem(n: int, tokens_seen: int) -> str | None:
    """The one bound on a blob's counters, applied by the writer and the reader alike."""
    if tokens_seen < n:
        return f"tokens_seen {tokens_seen} is smaller than the {n} cached tokens"
    if tokens_seen > MAX_TOKENS_SEEN:
        return f"tokens_seen {tokens_seen} is beyond {MAX_TOKENS_SEEN}"
    return None


def check_room(state: CacheState, new_tokens: int) -> None:
    """Refuse, before any work, a turn whose result the writer could not encode: the restored
    tokens_seen plus the turn's prompt and longest reply must stay within MAX_TOKENS_SEEN."""
    if state.tokens_seen + new_tokens > MAX_TOKENS_SEEN:
        raise BlobError(f"blob tokens_seen {state.tokens_seen} leaves no room for {new_tokens} more tokens "
                        f"(at most {MAX_TOKENS_SEEN})")


def encode(state: CacheState, cfg: ModelConfig, identity: str) -> bytes:
    return b"".join(encode_parts(state, cfg, identity))


def encode_parts(state: CacheState, cfg: ModelConfig, identity: str) -> list[memoryview]:
    """The blob as byte views in order (header, token ids, K, V, CRC), K and V views of the state's
    own memory: a server writes them out without copying megabytes; b"".join makes the bytes."""
    ident = _identity_bytes(identity)
    if state.k.dtype not in _CODES or state.v.dtype != state.k.dtype:
        raise ValueError(f"unsupported cache dtype {state.k.dtype} / {state.v.dtype}")
    n = len(state.token_ids)
    shape = (len(cfg.kv_layers), n, cfg.num_kv_heads, cfg.head_dim)
    if tuple(state.k.shape) != shape or tuple(state.v.shape) != shape:
        raise ValueError(f"cache state shape {tuple(state.k.shape)} does not match the model's {shape}")
    problem = _counts_problem(n, state.tokens_seen)
    if problem:
        raise ValueError(problem)
    code = _CODES[state.k.dtype]
    np_dtype = _DTYPES[code][1]
    header = _HEADER.pack(MAGIC, VERSION, code, 0, ident, *shape[:1], n, *shape[2:], state.tokens_seen)
    parts = [memoryview(header), memoryview(np.asarray(state.token_ids, dtype="<u4").tobytes()),
             _le_view(state.k, np_dtype), _le_view(state.v, np_dtype)]
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    return parts + [memoryview(_CRC.pack(crc))]


def decode(data: bytes, cfg: ModelConfig, identity: str, dtype: torch.dtype | None = None) -> CacheState:
    """Bytes -> CacheState for the model `cfg`/`identity`. A server passes the `dtype` it computes in:
    a blob of another dtype (made by a replica serving another precision) is a blob_model_mismatch."""
    ident = _identity_bytes(identity)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BlobError("blob must be bytes")
    data = bytes(data)
    if len(data) < _HEADER.size + _CRC.size:
        raise BlobError(f"blob truncated: {len(data)} bytes is shorter than its header")
    magic, version, code, reserved, blob_ident, n_layers, n, heads, head_dim, seen = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BlobError("not an LCKV cache blob (bad magic)")
    if version != VERSION:  # checked before the checksum: another version may lay bytes out differently
        raise BlobError(f"blob format version {version} is not supported (this service reads {VERSION})",
                        code="blob_version")
    if code not in _DTYPES or reserved != 0:
        raise BlobError(f"blob has unknown dtype code {code} or reserved byte {reserved}")
    blob_dtype, np_dtype = _DTYPES[code]
    elems = n_layers * n * heads * head_dim
    esize = np.dtype(np_dtype).itemsize
    expected = _HEADER.size + 4 * n + 2 * elems * esize + _CRC.size
    if len(data) != expected:
        raise BlobError(f"blob is {len(data)} bytes but its header describes {expected} (truncated or corrupted)")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if crc != zlib.crc32(memoryview(data)[:-_CRC.size]):
        raise BlobError("blob checksum mismatch (corrupted)")
    if blob_ident != ident:
        raise BlobError("blob was made by another model (identity differs)", code="blob_model_mismatch")
    shape = (len(cfg.kv_layers), n, cfg.num_kv_heads, cfg.head_dim)
    if (n_layers, n, heads, head_dim) != shape:
        raise BlobError(f"blob shape {(n_layers, n, heads, head_dim)} does not match the model's {shape}")
    if dtype is not None and blob_dtype != dtype:
        raise BlobError(f"blob holds {str(blob_dtype).removeprefix('torch.')} keys and values; this model computes in "
                        f"{str(dtype).removeprefix('torch.')}", code="blob_model_mismatch")
    problem = _counts_problem(n, seen)
    if problem:
        raise BlobError(f"blob {problem}")
    off = _HEADER.size
    ids = np.frombuffer(data, dtype="<u4", count=n, offset=off)
    if n and int(ids.max()) >= cfg.vocab_size:
        raise BlobError("blob holds token ids outside the model's vocabulary")
    off += 4 * n
    kv = []
    for _ in range(2):
        arr = np.frombuffer(data, dtype=np_dtype, count=elems, offset=off).astype(np_dtype[1:], copy=True)
        bits, mask = _EXP_MASK[code]
        if np.any(np.bitwise_and(arr.view(bits), mask) == mask):
            raise BlobError("blob holds non-finite K/V values")
        t = torch.from_numpy(arr)
        t = (t.view(torch.int16).view(torch.bfloat16) if blob_dtype == torch.bfloat16 else t).reshape(shape)
        kv.append(t)
        off += elems * esize
    return CacheState(k=kv[0], v=kv[1], token_ids=ids.tolist(), tokens_seen=seen)
