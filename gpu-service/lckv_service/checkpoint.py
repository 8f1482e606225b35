"""Checkpoints in Hugging Face layout: config.json + model.safetensors (or a sharded index).

Reads three layouts (hf_config.py parses their config.json): our own (model_type "lckv",
`kv_source`), a Hugging Face Llama (LlamaForCausalLM: Llama-2, TinyLlama, Llama-3.x, SmolLM-style
tied embeddings), and the authors' lckv-llama (`layer_types`, `forward_passes`, `backward_passes`,
`force_nodiag`). Our module names are HF's, so tensors map 1:1; the rename table below holds the
exceptions and is applied once at load time, never in forward. A tied model's file holds the
embedding only (transformers drops lm_head.weight when saving it), and so do ours.
Loading builds the model on the meta device and assigns the (memory-mapped) tensors.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .hf_config import detect_layout
from .model import LCKVModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
TIED_NAME, EMBED_NAME = "lm_head.weight", "model.embed_tokens.weight"

# (pattern, replacement or None to drop) per layout, applied to every tensor name at load time
RENAMES: dict[str, list[tuple[str, str | None]]] = {
    "lckv": [],
    "llama": [(r"\.rotary_emb\.inv_freq$", None)],        # buffer saved by old transformers
    "lckv-llama": [(r"\.rotary_emb\.inv_freq$", None)],
}


def save_model(model: LCKVModel, folder, dtype: torch.dtype = torch.bfloat16) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()
               if not (model.cfg.tie_word_embeddings and k == TIED_NAME)}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    cfg = model.cfg.to_dict() | {"torch_dtype": str(dtype).removeprefix("torch.")}
    (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")


def read_config(folder) -> tuple[ModelConfig, str]:
    """(config, layout) from folder/config.json; layout in RENAMES."""
    path = Path(folder) / CONFIG_NAME
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"no {CONFIG_NAME} in {folder}", param=CONFIG_NAME) from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{CONFIG_NAME} is not valid JSON: {e}", param=CONFIG_NAME) from e
    if not isinstance(d, dict):
        raise ConfigError(f"{CONFIG_NAME} must hold a JSON object", param=CONFIG_NAME)
    layout = detect_layout(d)
    return ModelConfig.from_dict(d), layout


def _read_tensors(folder) -> dict[str, torch.Tensor]:
    folder = Path(folder)
    if (folder / WEIGHTS_NAME).exists():
        files = [WEIGHTS_NAME]
    elif (folder / INDEX_NAME).exists():
        try:
            files = sorted(set(json.loads((folder / INDEX_NAME).read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{INDEX_NAME} is malformed: {e}", param=INDEX_NAME) from e
        for name in files:  # shards live beside the index, nowhere else
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise CheckpointError(f"{INDEX_NAME} names a shard outside the folder: {str(name)[:100]!r}",
                                      param=INDEX_NAME)
    else:
        raise CheckpointError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {folder}", param=WEIGHTS_NAME)
    out = {}
    for name in files:
        try:
            with safe_open(str(folder / name), framework="pt") as f:  # memory-mapped
                for key in f.keys():
                    out[key] = f.get_tensor(key)
        except (OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"cannot read {name}: {e}", param=name) from e
        except Exception as e:  # safetensors raises its own SafetensorError on a corrupt header
            raise CheckpointError(f"cannot read {name}: {e}", param=name) from e
    return out


def _rename(sd: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in sd.items():
        new = name
        for pat, rep in RENAMES[layout]:
            if re.search(pat, new):
                new = None if rep is None else re.sub(pat, rep, new)
                if new is None:
                    break
        if new is not None:
            out[new] = t
    return out


def _assign(cfg: ModelConfig, sd: dict[str, torch.Tensor], device, dtype) -> LCKVModel:
    """Build on meta, check names and shapes (CheckpointError naming the tensor), assign."""
    with torch.device("meta"):
        model = LCKVModel(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        del expected[TIED_NAME]
        if TIED_NAME in sd:  # some tied checkpoints store the shared matrix twice: it must be the same
            if EMBED_NAME in sd and not torch.equal(sd[TIED_NAME], sd[EMBED_NAME]):
                raise CheckpointError(f"tie_word_embeddings is true but {TIED_NAME!r} differs from {EMBED_NAME!r}",
                                      param=TIED_NAME)
            sd = {k: v for k, v in sd.items() if k != TIED_NAME}
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} tensor(s), first {missing[0]!r}", param=missing[0])
    unexpected = sorted(set(sd) - set(expected))
    if unexpected:
        raise CheckpointError(f"checkpoint has {len(unexpected)} unexpected tensor(s), first {unexpected[0]!r} "
                              f"(does config.json match the weights?)", param=unexpected[0])
    for name, shape in expected.items():
        t = sd[name]
        if tuple(t.shape) != shape:
            raise CheckpointError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {shape}", param=name)
        if not t.is_floating_point():
            raise CheckpointError(f"tensor {name!r} has non-float dtype {t.dtype}", param=name)
    dtype = dtype or next(iter(sd.values())).dtype
    sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    if cfg.tie_word_embeddings:
        sd[TIED_NAME] = sd[EMBED_NAME]
    model.load_state_dict(sd, strict=True, assign=True)
    model.tie_weights()  # assign=True installs each name's tensor as its own Parameter: share them again
    return model


def load_model(folder, device="cpu", dtype: torch.dtype | None = None) -> LCKVModel:
    """Load our layout, a plain HF Llama (as Llama) or the authors' lckv-llama checkpoint."""
    cfg, layout = read_config(folder)
    return _assign(cfg, _rename(_read_tensors(folder), layout), device, dtype).eval()


def convert_llama_to_lckv(model: LCKVModel, warmup_layers: int, kv_init: str = "copy") -> LCKVModel:
    """Llama -> LCKV sandwich: copy every weight, drop the middle layers' W_K/W_V. The target keeps
    its own W_K/W_V ("copy") or takes their mean over the layers that share it ("mean")."""
    src = model.cfg
    if src.kv_layers != tuple(range(src.num_layers)):
        raise ConfigError("convert_llama_to_lckv needs a standard Llama model", param="kv_source")
    if kv_init not in ("copy", "mean"):
        raise ConfigError(f"kv_init must be 'copy' or 'mean', got {kv_init!r}", param="kv_init")
    shape = {k: getattr(src, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                                          "num_heads", "num_kv_heads", "rope_theta", "rms_norm_eps",
                                          "max_position_embeddings", "forward_passes", "backward_passes",
                                          "nodiag_everywhere", "nodiag_rule", "explicit_head_dim",
                                          "rope_scaling", "tie_word_embeddings")}
    cfg = ModelConfig.lckv(warmup_layers, **shape)
    old = model.state_dict()
    sd = {}
    for name in _param_names(cfg):
        if not (cfg.tie_word_embeddings and name == TIED_NAME):
            sd[name] = old[name].detach().clone()
    for t in cfg.cyclic_targets if kv_init == "mean" else ():
        sharing = [j for j, s in enumerate(cfg.kv_source) if s == t]
        for proj in ("k_proj", "v_proj"):
            stack = torch.stack([old[f"model.layers.{j}.self_attn.{proj}.weight"].float() for j in sharing])
            sd[f"model.layers.{t}.self_attn.{proj}.weight"] = stack.mean(0).to(old[f"model.layers.{t}.self_attn.{proj}.weight"].dtype)
    p = next(model.parameters())
    return _assign(cfg, sd, p.device, p.dtype)


def _param_names(cfg: ModelConfig) -> list[str]:
    """The tensor names a model of this config has (built on meta, no memory)."""
    with torch.device("meta"):
        return list(LCKVModel(cfg).state_dict())


def model_identity(model: LCKVModel) -> str:
    """hex sha256 over cfg.fingerprint() and every weight (name, dtype, shape, bytes): a cache blob
    made by another model, another layout or other weights is refused."""
    h = hashlib.sha256(model.cfg.fingerprint().encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()
