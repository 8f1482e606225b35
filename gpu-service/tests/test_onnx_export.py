"""The in-browser engine's ONNX decode step (export_onnx.py) against the PyTorch model.

Reference: LCKVModel.prefill/decode with KVCache (the serving path, itself tested against
reference.py). The ONNX graph runs in onnxruntime (CPU, float32) exactly as the page drives it:
token by token, condensed cache of capacity sinks+window, evicting the oldest non-sink token when
full. Tolerance (float32, two kernels' summation orders): |onnx - torch| <= 1e-5 + 1e-4·|torch|
for logits and K/V rows (observed ~2e-7 absolute on logits of magnitude ~0.6); greedy tokens identical.
"""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lckv_service.cache import KVCache
from lckv_service.config import ModelConfig
from lckv_service.errors import ConfigError
from lckv_service.export_onnx import INPUTS, MANIFEST_FORMAT, OUTPUTS, export_decode_step, export_folder
from lckv_service.model import LCKVModel, PrefillMode
from lckv_service.testmodel import train_tokenizer, write_tokenizer_files
from lckv_service.tokenizer import ChatTokenizer

TOL = dict(atol=1e-5, rtol=1e-4)
SHARD = 64 * 1024
SHAPE = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
             max_position_embeddings=128)

CONFIGS = {
    # the paper's sandwich (w=2): bottom + top standard, middle two read the target (layer 2)
    "lckv-w2": lambda: ModelConfig.lckv(2, **SHAPE),
    # every layer reads the last layer, and the authors' no-diagonal-anywhere switch
    "lckv-w0-nodiag": lambda: ModelConfig.lckv(0, nodiag_everywhere=True, **SHAPE),
    # general form: layer 1 reuses layer 0's K/V (downward, diagonal seen), layer 2 reads layer 3 (cyclic)
    "mixed": lambda: ModelConfig(kv_source=(0, 0, 3, 3), **SHAPE),
    # w = L: plain Llama
    "llama": lambda: ModelConfig.llama(**SHAPE),
}


class OnnxDriver:
    """Drives the exported graph like public/js/local/engine.js + cache.js do."""

    def __init__(self, path, cfg: ModelConfig, sinks: int, window: int):
        self.sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.sinks, self.cap = sinks, sinks + window
        shape = (len(cfg.kv_layers), self.cap, cfg.num_kv_heads, cfg.head_dim)
        self.k, self.v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        self.n = 0

    def step(self, token: int):
        if self.n == self.cap:  # drop the oldest token after the sinks (keys are un-rotated: a slice)
            for buf in (self.k, self.v):
                buf[:, self.sinks:-1] = buf[:, self.sinks + 1:].copy()
            self.n -= 1
        logits, nk, nv = self.sess.run(None, {"input_ids": np.array([token], np.int64),
                                              "past_length": np.array([self.n], np.int64),
                                              "past_key": self.k, "past_value": self.v})
        self.k[:, self.n], self.v[:, self.n] = nk[:, 0], nv[:, 0]
        self.n += 1
        return logits[0], nk[:, 0], nv[:, 0]


@pytest.fixture(scope="module", params=list(CONFIGS))
def exported(request, tmp_path_factory):
    torch.manual_seed(1234)
    cfg = CONFIGS[request.param]()
    model = LCKVModel(cfg).eval()
    with torch.no_grad():  # sharper attention than at init (scores ~N(0, 1.6²)), so positions matter
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(8.0)
    # small weight shards, so every parity test also runs the sharded external-data layout
    path, *shards = export_decode_step(model, tmp_path_factory.mktemp(request.param) / "decode.onnx",
                                       shard_bytes=SHARD)
    assert len(shards) > 1 and all(p.stat().st_size <= SHARD for p in shards)
    return cfg, model, path


def test_graph_signature(exported):
    cfg, _, path = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ins = {i.name: i for i in sess.get_inputs()}
    outs = {o.name: o for o in sess.get_outputs()}
    assert tuple(ins) == INPUTS and tuple(outs) == OUTPUTS
    Lkv = len(cfg.kv_layers)
    assert ins["past_key"].type == "tensor(float)" and ins["input_ids"].type == "tensor(int64)"
    assert ins["past_key"].shape[0] == Lkv and isinstance(ins["past_key"].shape[1], str)  # dynamic capacity
    assert outs["logits"].shape == [1, cfg.vocab_size]
    assert outs["new_key"].shape == [Lkv, 1, cfg.num_kv_heads, cfg.head_dim]


def test_prefill_logits_and_kv_match_pytorch(exported):
    """Token-by-token through the graph == the model's (parallel, exact) prefill: every row's logits
    and every cached K/V row, from the empty cache on (token 0's no-diagonal rows are all-masked)."""
    cfg, model, path = exported
    prompt = torch.randint(0, cfg.vocab_size, (20,), generator=torch.Generator().manual_seed(7))
    cache = KVCache(cfg, num_slots=1, capacity=32)
    ref = model.prefill(cache, [0], [prompt], PrefillMode(kind="exact", chunk=20), all_logits=True)[0]
    drv = OnnxDriver(path, cfg, sinks=4, window=28)
    got = np.stack([drv.step(int(t))[0] for t in prompt])
    np.testing.assert_allclose(got, ref.numpy(), **TOL)
    np.testing.assert_allclose(drv.k[:, :20], cache.k[:, 0, :20].numpy(), **TOL)
    np.testing.assert_allclose(drv.v[:, :20], cache.v[:, 0, :20].numpy(), **TOL)


def test_greedy_tokens_identical_across_eviction(exported):
    """A fixed prompt, then 24 greedy tokens with a 4-sink + 12-token window: the cache fills at
    token 16 and evicts on every later step; ONNX and PyTorch pick the same token every time."""
    cfg, model, path = exported
    sinks, window = 4, 12
    prompt = [int(t) for t in torch.randint(0, cfg.vocab_size, (10,), generator=torch.Generator().manual_seed(3))]
    cache = KVCache(cfg, num_slots=1, capacity=sinks + window)
    drv = OnnxDriver(path, cfg, sinks, window)
    ref_tokens, got_tokens = [], []
    ref_logits = got_logits = None
    for t in prompt:
        ref_logits = model.decode(cache, torch.tensor([0]), torch.tensor([t]))[0]
        got_logits = drv.step(t)[0]
    evictions = 0
    for _ in range(24):
        np.testing.assert_allclose(got_logits, ref_logits.numpy(), **TOL)
        r, g = int(ref_logits.argmax()), int(np.argmax(got_logits))
        ref_tokens.append(r)
        got_tokens.append(g)
        if cache.length(0) == cache.capacity:
            cache.evict(0, sinks, window - 1)
            evictions += 1
        ref_logits = model.decode(cache, torch.tensor([0]), torch.tensor([r]))[0]
        got_logits = drv.step(g)[0]
    assert got_tokens == ref_tokens
    assert evictions == 10 + 24 - (sinks + window)   # the window really did slide
    assert drv.n == cache.length(0) == sinks + window
    np.testing.assert_allclose(drv.k, cache.k[:, 0].numpy(), **TOL)


def test_eviction_changes_the_output(exported):
    """Guards the test above: after evicting, the next logits differ from the unevicted cache's,
    so matching them checks the eviction, not just the model."""
    cfg, model, path = exported
    toks = [int(t) for t in torch.randint(0, cfg.vocab_size, (16,), generator=torch.Generator().manual_seed(5))]
    full, evicted = OnnxDriver(path, cfg, 4, 28), OnnxDriver(path, cfg, 4, 12)
    for t in toks:
        full.step(t)
        evicted.step(t)
    a, b = full.step(1)[0], evicted.step(1)[0]
    assert np.abs(a - b).max() > 100 * (TOL["atol"] + TOL["rtol"] * np.abs(a).max())


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lckv-tiny")
    write_tokenizer_files(train_tokenizer(), folder)
    return folder


def test_export_folder_writes_manifest_and_tokenizer(model_folder, tmp_path):
    cfg = ModelConfig.lckv(2, **{**SHAPE, "vocab_size": ChatTokenizer.from_folder(model_folder).vocab_size})
    out = tmp_path / "generated"
    m = export_folder(model_folder, out, sinks=4, window=60, model=LCKVModel(cfg))
    assert m["format"] == MANIFEST_FORMAT and m["model_id"] == model_folder.name
    assert m["fingerprint"] == cfg.fingerprint()
    assert m["model"] == {"kv_layers": 3, "num_layers": 4, "num_kv_heads": 2, "head_dim": 16,
                          "vocab_size": cfg.vocab_size, "max_position_embeddings": 128}
    assert (m["sinks"], m["window"]) == (4, 60)
    assert json.loads((out / "manifest.json").read_text()) == m
    for name in ("decode.onnx", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).is_file(), name
    assert m["files"]["onnx_data"] == ["decode.onnx.data0"]  # a tiny model: one shard
    assert m["onnx_bytes"] == sum((out / f).stat().st_size for f in ("decode.onnx", "decode.onnx.data0"))
    assert (out / "decode.onnx").stat().st_size < 100_000 < m["onnx_bytes"]  # the graph file holds no weights
    tok = ChatTokenizer.from_folder(model_folder)
    assert m["chat"]["stop_token_ids"] == sorted(tok.stop_token_ids)
    assert tok.decode(m["chat"]["end_of_turn_ids"]) == "<|end|>\n"   # the project template's turn end


@pytest.mark.parametrize("kwargs, param", [
    (dict(window=1), "window"),
    (dict(sinks=-1), "sinks"),
    (dict(window=126), "window"),      # 4 + 126 > max_position_embeddings (128)
    (dict(window=True), "window"),
    (dict(vocab_size=50, window=60), "vocab_size"),  # a tokenizer with ids the model has no rows for
])
def test_bad_window_is_refused_before_writing(model_folder, tmp_path, kwargs, param):
    out = tmp_path / "out"
    shape = {**SHAPE, "vocab_size": kwargs.pop("vocab_size", 400)}
    with pytest.raises(ConfigError) as e:
        export_folder(model_folder, out, model=LCKVModel(ModelConfig.lckv(2, **shape)), **kwargs)
    assert e.value.param == param
    assert not out.exists()


def test_tensor_larger_than_a_shard_is_refused(tmp_path):
    model = LCKVModel(ModelConfig.lckv(2, **SHAPE))  # the embedding alone is 96·64·4 = 24 KiB
    with pytest.raises(ConfigError) as e:
        export_decode_step(model, tmp_path / "decode.onnx", shard_bytes=16 * 1024)
    assert e.value.param == "shard_bytes"
    assert list(tmp_path.iterdir()) == []


def test_missing_tokenizer_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        export_folder(tmp_path, tmp_path / "out", window=60, model=LCKVModel(ModelConfig.lckv(2, **SHAPE)))
    assert e.value.param == "tokenizer.json"
    assert not (tmp_path / "out").exists()
