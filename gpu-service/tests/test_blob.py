"""Cache blob codec: bit-exact round trip, every corruption class, fuzzing."""
import dataclasses
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_model, tiny_cfg
from lckv_service import blob
from lckv_service.cache import CacheState, KVCache
from lckv_service.checkpoint import model_identity
from lckv_service.errors import BlobError
from lckv_service.server import protocol as P

CFG = tiny_cfg(2)
IDENT = "ab" * 32


def _state(dtype=torch.float32, n=7, seen=None):
    g = torch.Generator().manual_seed(n)
    shape = (len(CFG.kv_layers), n, CFG.num_kv_heads, CFG.head_dim)
    return CacheState(k=torch.randn(shape, generator=g).to(dtype), v=torch.randn(shape, generator=g).to(dtype),
                      token_ids=torch.randint(0, CFG.vocab_size, (n,), generator=g).tolist(),
                      tokens_seen=seen if seen is not None else n + 5)


def _reseal(data: bytes) -> bytes:
    body = data[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_bit_exact(dtype):
    s = _state(dtype)
    data = blob.encode(s, CFG, IDENT)
    n = len(s.token_ids)
    esize = torch.empty(0, dtype=dtype).element_size()
    assert len(data) == 68 + 4 * n + 2 * s.k.numel() * esize + 4       # the documented size
    assert data[:8] == b"LCKVBLOB" and data[12:44] == bytes.fromhex(IDENT)
    out = blob.decode(data, CFG, IDENT)
    assert out.k.dtype == dtype and torch.equal(out.k.view(torch.int16 if esize == 2 else torch.int32),
                                                s.k.view(torch.int16 if esize == 2 else torch.int32))
    assert torch.equal(out.v, s.v) and out.token_ids == s.token_ids and out.tokens_seen == s.tokens_seen


def test_empty_cache_round_trip():
    s = _state(n=0, seen=3)
    out = blob.decode(blob.encode(s, CFG, IDENT), CFG, IDENT)
    assert out.k.shape[1] == 0 and out.token_ids == [] and out.tokens_seen == 3


def test_real_cache_round_trip_with_model_identity(tmp_path):
    model = make_model(CFG, dtype=torch.bfloat16)
    ident = model_identity(model)
    cache = KVCache(CFG, 2, 32, dtype=torch.bfloat16)
    model.prefill(cache, [0], [torch.arange(12)])
    cache.evict(0, sinks=4, keep_recent=4)
    data = blob.encode(cache.export(0), CFG, ident)
    other = KVCache(CFG, 1, 32, dtype=torch.bfloat16)
    other.restore(0, blob.decode(data, CFG, ident))
    t = torch.tensor([3])
    assert torch.equal(model.decode(cache, torch.tensor([0]), t), model.decode(other, torch.tensor([0]), t))
    # other weights -> another identity -> refused
    other_model = make_model(CFG, dtype=torch.bfloat16, seed=1)
    with pytest.raises(BlobError) as e:
        blob.decode(data, CFG, model_identity(other_model))
    assert e.value.code == "blob_model_mismatch"


def _flip(data, i):
    b = bytearray(data)
    b[i] ^= 0x40
    return bytes(b)


@pytest.mark.parametrize("mutate, code", [
    (lambda d: d[:-1], "blob_invalid"),                               # truncated
    (lambda d: d[:30], "blob_invalid"),                               # truncated inside the header
    (lambda d: b"", "blob_invalid"),
    (lambda d: d + b"\0", "blob_invalid"),                            # trailing garbage
    (lambda d: _flip(d, 200), "blob_invalid"),                        # payload bit flip -> checksum
    (lambda d: _flip(d, len(d) - 2), "blob_invalid"),                 # checksum itself
    (lambda d: _flip(d, 70), "blob_invalid"),                         # token ids
    (lambda d: b"NOTABLOB" + d[8:], "blob_invalid"),                  # magic
    (lambda d: _reseal(d[:8] + struct.pack("<H", 2) + d[10:]), "blob_version"),
    (lambda d: d[:8] + struct.pack("<H", 0) + d[10:], "blob_version"),
    (lambda d: _reseal(d[:10] + b"\x09" + d[11:]), "blob_invalid"),   # unknown dtype code
    (lambda d: _reseal(d[:11] + b"\x01" + d[12:]), "blob_invalid"),   # reserved byte
    (lambda d: _reseal(d[:12] + bytes(32) + d[44:]), "blob_model_mismatch"),
    (lambda d: _flip(d, 20), "blob_invalid"),                         # identity flip without reseal
    (lambda d: _reseal(d[:60] + struct.pack("<Q", 1) + d[68:]), "blob_invalid"),  # tokens_seen < n
    (lambda d: _reseal(d[:60] + struct.pack("<Q", 2 ** 64 - 1) + d[68:]), "blob_invalid"),  # tokens_seen > 2^53-1
    (lambda d: _reseal(d[:68] + struct.pack("<I", 10 ** 6) + d[72:]), "blob_invalid"),  # id >= vocab
    (lambda d: _reseal(d[:52] + struct.pack("<II", 4, 8) + d[60:]), "blob_invalid"),    # heads/head_dim swapped
    (lambda d: _reseal(d[:48] + struct.pack("<I", 6) + d[52:]), "blob_invalid"),        # n disagrees with size
])
def test_corruptions_rejected_with_code(mutate, code):
    data = blob.encode(_state(), CFG, IDENT)
    with pytest.raises(BlobError) as e:
        blob.decode(mutate(data), CFG, IDENT)
    assert e.value.code == code and e.value.param == "blob"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["k", "v"])
def test_non_finite_payload_rejected(dtype, bad, where):
    s = _state()
    s = dataclasses.replace(s, k=s.k.to(dtype), v=s.v.to(dtype))
    getattr(s, where)[-1, -1, -1, -1] = bad
    with pytest.raises(BlobError) as e:
        blob.decode(blob.encode(s, CFG, IDENT), CFG, IDENT)
    assert e.value.code == "blob_invalid"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_extreme_finite_values_accepted(dtype):
    # the largest finite value and subnormals share exponent bits with neither inf nor nan
    s = _state()
    info = torch.finfo(dtype)
    k = s.k.to(dtype)
    k[0, 0, 0, 0], k[0, 0, 0, 1], k[0, 0, 0, 2] = info.max, -info.max, info.tiny / 4
    s = dataclasses.replace(s, k=k, v=s.v.to(dtype))
    out = blob.decode(blob.encode(s, CFG, IDENT), CFG, IDENT)
    assert torch.equal(out.k, k)


def test_other_layout_is_a_model_mismatch():
    # same shapes, other kv_source layout -> other fingerprint -> other identity
    m2 = make_model(CFG, dtype=torch.float32)
    m0 = make_model(tiny_cfg(0), dtype=torch.float32)
    assert model_identity(m2) != model_identity(m0)
    data = blob.encode(_state(), CFG, model_identity(m2))
    with pytest.raises(BlobError) as e:
        blob.decode(data, tiny_cfg(0), model_identity(m0))
    assert e.value.code == "blob_model_mismatch"


@pytest.mark.parametrize("seen", [6, 7, blob.MAX_TOKENS_SEEN, blob.MAX_TOKENS_SEEN + 1])
def test_writer_and_reader_bound_tokens_seen_alike(seen):
    s = _state(n=7, seen=7)
    data = blob.encode(s, CFG, IDENT)
    patched = _reseal(data[:60] + struct.pack("<Q", seen) + data[68:])
    ok = 7 <= seen <= blob.MAX_TOKENS_SEEN
    try:
        blob.encode(dataclasses.replace(s, tokens_seen=seen), CFG, IDENT)
        written = True
    except ValueError:
        written = False
    try:
        read = blob.decode(patched, CFG, IDENT).tokens_seen == seen
    except BlobError as e:
        assert e.code == "blob_invalid"
        read = False
    assert written == read == ok


def test_check_room_refuses_a_turn_the_writer_could_not_encode():
    s = _state(n=7, seen=blob.MAX_TOKENS_SEEN - 5)
    blob.check_room(s, 5)
    with pytest.raises(BlobError) as e:
        blob.check_room(s, 6)
    assert e.value.code == "blob_invalid"


def test_dtype_is_checked_against_the_model():
    data = blob.encode(_state(torch.bfloat16), CFG, IDENT)
    assert blob.decode(data, CFG, IDENT, dtype=torch.bfloat16).k.dtype == torch.bfloat16
    with pytest.raises(BlobError) as e:
        blob.decode(data, CFG, IDENT, dtype=torch.float32)
    assert e.value.code == "blob_model_mismatch" and "bfloat16" in e.value.message


def test_encode_rejects_bad_arguments():
    with pytest.raises(ValueError):
        blob.encode(_state(), CFG, "xyz")
    with pytest.raises(ValueError):
        blob.encode(_state(), tiny_cfg(0), IDENT)      # 3 K/V layers into a 1-layer model
    with pytest.raises(ValueError):
        blob.encode(_state(torch.float64), CFG, IDENT)
    with pytest.raises(ValueError):
        blob.decode(b"", CFG, "not-hex")


BASE = blob.encode(_state(torch.bfloat16, n=5), CFG, IDENT)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, len(BASE) - 1), st.integers(1, 255)), max_size=6),
       cut=st.integers(0, len(BASE)), extra=st.binary(max_size=8))
def test_fuzz_only_blob_errors(flips, cut, extra):
    b = bytearray(BASE)
    for i, x in flips:
        b[i] ^= x
    data = bytes(b[:cut]) + extra
    try:
        out = blob.decode(data, CFG, IDENT)
    except BlobError as e:
        assert e.code in ("blob_invalid", "blob_model_mismatch", "blob_version")
        return
    assert data == BASE and out.token_ids == blob.decode(BASE, CFG, IDENT).token_ids  # only the original decodes


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400))
def test_fuzz_random_bytes(data):
    with pytest.raises(BlobError):
        blob.decode(data, CFG, IDENT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_encode_parts_are_the_blob_with_k_and_v_read_in_place(dtype):
    """A server writes the blob as parts: joined they are exactly encode()'s bytes, and K and V are
    views of the state's own memory (a 22 MB standard-model blob is not copied to be sent)."""
    s = _state(dtype)
    parts = blob.encode_parts(s, CFG, IDENT)
    assert b"".join(parts) == blob.encode(s, CFG, IDENT)
    for part, t in ((parts[2], s.k), (parts[3], s.v)):
        assert np.frombuffer(part, np.uint8).ctypes.data == t.data_ptr() and len(part) == t.numel() * t.element_size()
    frames = P.FrameReader().feed(b"".join(P.blob_frames(parts)))
    assert all(k == P.B and len(p) <= P.BLOB_CHUNK for k, p in frames)
    assert b"".join(p for _, p in frames) == b"".join(parts)
