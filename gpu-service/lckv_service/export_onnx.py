"""Export an LCKV model to ONNX for the in-browser engine (public/js/local/), plus its manifest.

One graph, the decode step: given one token, its in-cache position and the condensed cache (the
cached layers' keys BEFORE RoPE and values, [kv_layers, capacity, kv_heads, head_dim], of which the
first `past_length` rows are valid), it returns the token's logits and its new K/V rows. Prefill
runs token by token through the same graph; for LCKV that is exact (one token = one pass, LCKV.md §3).

The step is the model's own forward (LCKVModel.run_layers: bottom layers, one pass of the iterated
block whose cyclic targets' new K/V become visible only after it, top layers) over an export KV
backend, so the layer rules, weights and numerics are the model's; tests/test_onnx_export.py checks it
against LCKVModel.prefill/decode, across a StreamingLLM eviction too.

    python -m lckv_service.export_onnx MODEL_DIR OUT_DIR [--window 508] [--sinks 4]

writes OUT_DIR/{decode.onnx, decode.onnx.data0.., manifest.json, tokenizer.json, tokenizer_config.json
[, generation_config.json]}.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

import onnx
import onnx.numpy_helper
import torch
import torch.nn as nn
from onnx import external_data_helper

from .config import ModelConfig
from .errors import ConfigError, LCKVError
from .model import KVBackend, LCKVModel, apply_rope, rope_table
from .tokenizer import ChatTokenizer

MANIFEST_FORMAT = "lckv-onnx/1"
INPUTS = ("input_ids", "past_length", "past_key", "past_value")
OUTPUTS = ("logits", "new_key", "new_value")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
OPSET = 18
SHARD_BYTES = 16 * 2**20  # weight files stay well under the 25 MiB per-file limit of Workers static assets
INLINE_BYTES = 1024       # smaller initializers (shapes, scalars) stay in the graph file


class DecodeStep(nn.Module):
    """input_ids [1] int64, past_length [1] int64, past_key/past_value [Lkv, Cap, Hkv, D] float32
    -> logits [1, V], new_key/new_value [Lkv, 1, Hkv, D] (keys not rotated, like the cache)."""

    def __init__(self, model: LCKVModel):
        super().__init__()
        self.model, cfg = model, model.cfg
        self.cfg = cfg
        self.layer_index = {layer: i for i, layer in enumerate(cfg.kv_layers)}
        # the model's own RoPE table (float64 angles, cast): positions are gathered, never recomputed
        cos, sin = rope_table(cfg.max_position_embeddings, cfg.rope_inv_freq(), "cpu", torch.float32)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, input_ids, past_length, past_key, past_value):
        cfg = self.cfg
        cap = past_key.shape[1]
        pos = past_length.view(1, 1)                                       # [1, 1]
        q_rope = (self.cos[pos], self.sin[pos])                            # [1, 1, D]
        kv = ExportKV(self, past_key, past_value, q_rope, (self.cos[None, :cap], self.sin[None, :cap]),
                      torch.arange(cap, device=past_key.device) < past_length)   # valid keys [Cap]
        x = self.model.model.embed_tokens(input_ids.view(1, 1))            # [1, 1, C]
        x = self.model.run_layers(x, kv, q_rope)
        logits = self.model.lm_head(self.model.model.norm(x))[:, 0]        # [1, V]
        ks = torch.cat([kv.new[layer][0] for layer in cfg.kv_layers])     # [Lkv, 1, Hkv, D]
        vs = torch.cat([kv.new[layer][1] for layer in cfg.kv_layers])
        return logits, ks, vs


class ExportKV(KVBackend):
    """The model's KV backend for the exported step (model.py, "KV backends"): the past K/V are graph
    inputs, the token's own K/V graph outputs; attention written with ops every ONNX runtime has."""

    def __init__(self, step: DecodeStep, past_key, past_value, q_rope, k_rope, valid):
        super().__init__(step.cfg)
        self.step, self.past_key, self.past_value = step, past_key, past_value
        self.q_rope, self.k_rope, self.valid = q_rope, k_rope, valid
        self.new: dict[int, tuple] = {}       # layer -> its K/V of this token [1, 1, Hkv, D]

    def write(self, layer, k, v):
        self.new[layer] = (k, v)

    def attend(self, layer, source, q, nodiag):                            # q: [1, 1, H, D]
        _, _, H, D = q.shape
        li = self.step.layer_index[source]
        k = apply_rope(self.past_key[li][None], *self.k_rope)             # [1, Cap, Hkv, D]
        v = self.past_value[li][None]
        mask = self.valid                                                  # [Cap]
        if not nodiag:  # the token sees its own K/V (its source already computed them this step)
            kn, vn = self.new[source]                                      # [1, 1, Hkv, D]
            k = torch.cat([k, apply_rope(kn, *self.q_rope)], dim=1)
            v = torch.cat([v, vn], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:1])])
        Hkv = k.shape[2]
        q = q.view(Hkv, H // Hkv, D)                                       # query groups per kv head
        k, v = k[0].transpose(0, 1), v[0].transpose(0, 1)                  # [Hkv, S, D]
        scores = (q @ k.transpose(1, 2)) * D ** -0.5                       # [Hkv, H/Hkv, S]
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        y = torch.softmax(scores, dim=-1) @ v                              # [Hkv, H/Hkv, D]
        y = y * mask.any().to(y.dtype)  # no key at all (token 0 without diagonal): output exactly 0
        return y.reshape(1, 1, H * D)


def check_window(cfg: ModelConfig, sinks: int, window: int) -> None:
    for name, v, low in (("sinks", sinks, 0), ("window", window, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}", param=name)
    if sinks + window > cfg.max_position_embeddings:
        raise ConfigError(f"sinks + window = {sinks + window} exceeds max_position_embeddings="
                          f"{cfg.max_position_embeddings} (in-cache positions must stay in the RoPE table)",
                          param="window")


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs about absent torchvision ops and axis renames: not ours to act on."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def export_decode_step(model: LCKVModel, path: str | Path, shard_bytes: int = SHARD_BYTES) -> list[Path]:
    """Write the decode-step graph (float32, dynamic cache capacity) to `path`, its weights to
    `path`.data0, .data1, ... of at most `shard_bytes` each (static hosting caps file sizes; ONNX's
    external data lets every tensor name its own file). Returns the files written, graph first."""
    cfg = model.cfg
    if any(p.dtype != torch.float32 for p in model.parameters()):  # never convert the caller's model
        model = copy.deepcopy(model).float()
    step = DecodeStep(model).eval()
    cap = 8  # example capacity; the exported axis is dynamic
    example = (torch.tensor([1]), torch.tensor([3]),
               torch.zeros(len(cfg.kv_layers), cap, cfg.num_kv_heads, cfg.head_dim),
               torch.zeros(len(cfg.kv_layers), cap, cfg.num_kv_heads, cfg.head_dim))
    capacity = torch.export.Dim("capacity", min=2, max=cfg.max_position_embeddings)
    path = Path(path)
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            step, example, dynamo=True, opset_version=OPSET, input_names=list(INPUTS), output_names=list(OUTPUTS),
            dynamic_shapes={"input_ids": None, "past_length": None, "past_key": {1: capacity},
                            "past_value": {1: capacity}},
            optimize=True, verbose=False)
    proto = program.model_proto
    for node in proto.graph.node:  # exporter notes (stack traces with local paths) are not for a public file
        del node.metadata_props[:]
        node.doc_string = ""
    shards = _shard_weights(proto, path, shard_bytes)
    onnx.save_model(proto, str(path))
    return [path, *shards]


def _shard_weights(proto: onnx.ModelProto, path: Path, shard_bytes: int) -> list[Path]:
    """Move the bytes of every initializer of >= INLINE_BYTES into shard files next to `path` (in
    graph order, a new shard whenever the next tensor would overflow this one)."""
    for t in proto.graph.initializer:  # check first: nothing is written for a model that cannot fit
        n = onnx.numpy_helper.to_array(t).nbytes
        if n > shard_bytes:
            raise ConfigError(f"tensor {t.name} has {n} bytes, more than a weight shard ({shard_bytes})",
                              param="shard_bytes")
    shards: list[Path] = []
    f, used = None, 0
    try:
        for t in proto.graph.initializer:
            data = onnx.numpy_helper.to_array(t).tobytes()
            if len(data) < INLINE_BYTES:  # shape constants stay inline: shape inference reads them
                continue
            if f is None or used + len(data) > shard_bytes:
                if f is not None:
                    f.close()
                shards.append(path.with_name(f"{path.name}.data{len(shards)}"))
                f, used = open(shards[-1], "wb"), 0
            f.write(data)
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                t.ClearField(field)
            t.raw_data = data  # set_external_data insists on raw_data being present
            external_data_helper.set_external_data(t, location=shards[-1].name, offset=used, length=len(data))
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            used += len(data)
    finally:
        if f is not None:
            f.close()
    return shards


def end_of_turn_ids(tok: ChatTokenizer) -> list[int]:
    """What the chat template writes after an assistant reply's text (e.g. "<|end|>\\n"): the
    browser engine feeds it after every reply so the next turn continues after a closed turn."""
    marker = "\x01reply\x01"
    text = tok.render([{"role": "assistant", "content": marker}], add_generation_prompt=False)
    return tok.encode(text[text.index(marker) + len(marker):])


def export_folder(model_dir: str | Path, out_dir: str | Path, sinks: int = 4, window: int = 508,
                  model: LCKVModel | None = None) -> dict:
    """Export MODEL_DIR (checkpoint + tokenizer files) to OUT_DIR for the browser; returns the manifest."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if model is None:
        from .checkpoint import load_model  # the checkpoint format is checkpoint.py's business
        model = load_model(model_dir, device="cpu", dtype=torch.float32)
    cfg = model.cfg
    check_window(cfg, sinks, window)
    for name in TOKENIZER_FILES[:2]:
        if not (model_dir / name).is_file():
            raise ConfigError(f"{model_dir} has no {name}", param=name)
    tok = ChatTokenizer.from_folder(model_dir)  # the service's own reading of the folder
    if tok.vocab_size > cfg.vocab_size:
        raise ConfigError(f"the tokenizer has {tok.vocab_size} tokens, the model only {cfg.vocab_size}",
                          param="vocab_size")
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, *weights = export_decode_step(model, out_dir / "decode.onnx")
    files = {"onnx": onnx_path.name, "onnx_data": [w.name for w in weights]}
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out_dir / name)
            files[name.removesuffix(".json")] = name
    manifest = {
        "format": MANIFEST_FORMAT,
        "model_id": model_dir.name,
        "fingerprint": cfg.fingerprint(),
        "files": files,
        "onnx_bytes": sum(p.stat().st_size for p in (onnx_path, *weights)),
        "inputs": list(INPUTS), "outputs": list(OUTPUTS),
        "model": {"kv_layers": len(cfg.kv_layers), "num_layers": cfg.num_layers, "num_kv_heads": cfg.num_kv_heads,
                  "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size,
                  "max_position_embeddings": cfg.max_position_embeddings},
        "sinks": sinks,
        "window": window,
        # generation stops and turns close exactly as the service decides (tokenizer.py)
        "chat": {"stop_token_ids": sorted(tok.stop_token_ids), "end_of_turn_ids": end_of_turn_ids(tok)},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lckv_service.export_onnx", description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="model folder (config.json, model.safetensors, tokenizer files)")
    ap.add_argument("out_dir", help="output folder, e.g. public/generated/model")
    ap.add_argument("--sinks", type=int, default=4, help="attention sinks kept by the browser cache (default 4)")
    ap.add_argument("--window", type=int, default=508, help="recent tokens kept after the sinks (default 508)")
    args = ap.parse_args(argv)
    try:
        m = export_folder(args.model_dir, args.out_dir, sinks=args.sinks, window=args.window)
    except LCKVError as e:  # config, checkpoint or tokenizer problems: one clear line, no traceback
        print(f"export_onnx: {e}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out_dir) / m['files']['onnx']} + {len(m['files']['onnx_data'])} weight file(s) "
          f"({m['onnx_bytes'] / 2**20:.1f} MiB) and manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
