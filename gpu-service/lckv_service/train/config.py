"""Training run configuration: a TOML file with a [model] and a [train] table, parsed into
ModelConfig + TrainConfig. Configs are data, never executed; every bad field raises
ConfigError naming it (e.g. param="train.lr").

    [model]                      # shape fields of ModelConfig, plus how the layers share K/V:
    variant = "lckv"             # "llama" | "lckv"
    warmup_layers = 2            # lckv only: the sandwich's w
    vocab_size = 8192 ...
    [train]
    batch_size = 32 ...          # fields of TrainConfig below
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import ConfigError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - older interpreters: pip's vendored copy of the same parser
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "runs/default"           # checkpoint, log.jsonl, final model folder
    data_dir: str = "data/tokens"            # train.bin / val.bin (uint16 token shards)
    tokenizer_dir: str = ""                  # copied into the final model folder if set
    batch_size: int = 32
    block_size: int = 512
    grad_accum: int = 1
    max_iters: int = 2000                    # overridden by --tokens (a token budget)
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0                  # 0: decay over max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0                   # 0 disables clipping
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    ckpt_interval: int = 0                   # 0: checkpoint only at evals and at the end
    seed: int = 1337
    device: str = "auto"                     # auto | cpu | cuda | cuda:N
    dtype: str = "auto"                      # auto (bf16 autocast on CUDA, fp32 on CPU) | float32 | bfloat16
    compile: bool = False                    # torch.compile the model (CUDA; falls back to eager on failure)
    init_from: str = ""                      # a Llama/LCKV model folder to continue pretraining from
    convert_warmup: int = -1                 # with init_from: convert to LCKV with this w (-1: keep as is)

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            want = {"int": int, "float": (int, float), "bool": bool, "str": str}[f.type]
            if isinstance(v, bool) != (f.type == "bool") or not isinstance(v, want):
                raise ConfigError(f"train.{f.name} must be of type {f.type}, got {v!r}", param=f"train.{f.name}")
            if f.type == "float" and not math.isfinite(v):
                raise ConfigError(f"train.{f.name} must be finite, got {v!r}", param=f"train.{f.name}")
        positive = ("batch_size", "block_size", "grad_accum", "max_iters", "eval_iters", "log_interval")
        non_negative = ("warmup_iters", "lr_decay_iters", "weight_decay", "grad_clip", "eval_interval",
                        "ckpt_interval", "seed", "min_lr")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}", param=f"train.{name}")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}", param=f"train.{name}")
        if not 0 < self.lr <= 1:
            raise ConfigError(f"train.lr must be in (0, 1], got {self.lr}", param="train.lr")
        if self.min_lr > self.lr:
            raise ConfigError("train.min_lr must not exceed train.lr", param="train.min_lr")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be in [0, 1)", param=f"train.{name}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"train.dtype must be auto, float32 or bfloat16, got {self.dtype!r}", param="train.dtype")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}",
                              param="train.device")
        if self.convert_warmup < -1 or (self.convert_warmup >= 0 and not self.init_from):
            raise ConfigError("train.convert_warmup needs train.init_from and must be >= 0 (or -1 for none)",
                              param="train.convert_warmup")

    @property
    def tokens_per_iter(self) -> int:
        return self.batch_size * self.block_size * self.grad_accum

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig(**{**asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ConfigError(f"unknown train field {key!r}; known: {sorted(known)}", param=f"train.{key}")
        return cls(**d)


_MODEL_SHAPE = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                "rope_theta", "rms_norm_eps", "max_position_embeddings", "forward_passes", "backward_passes")


def model_config_from_table(t: dict[str, Any]) -> ModelConfig:
    """The [model] table -> ModelConfig via ModelConfig.llama / ModelConfig.lckv."""
    if not isinstance(t, dict):
        raise ConfigError("[model] must be a table", param="model")
    t = dict(t)
    variant = t.pop("variant", None)
    warmup = t.pop("warmup_layers", None)
    for key in t:
        if key not in _MODEL_SHAPE:
            raise ConfigError(f"unknown model field {key!r}; known: {sorted(_MODEL_SHAPE + ('variant', 'warmup_layers'))}",
                              param=f"model.{key}")
    try:
        if variant == "llama":
            if warmup is not None:
                raise ConfigError("model.warmup_layers is only for variant = \"lckv\"", param="model.warmup_layers")
            return ModelConfig.llama(**t)
        if variant == "lckv":
            if warmup is None:
                raise ConfigError("variant \"lckv\" needs model.warmup_layers", param="model.warmup_layers")
            return ModelConfig.lckv(warmup, **t)
    except ConfigError as e:
        if e.param and not e.param.startswith("model."):
            raise ConfigError(e.message, param=f"model.{e.param}") from e
        raise
    except TypeError as e:   # a missing shape field
        raise ConfigError(f"[model] is incomplete: {e}", param="model") from e
    raise ConfigError(f"model.variant must be \"llama\" or \"lckv\", got {variant!r}", param="model.variant")


def load_run_config(path: str | Path) -> tuple[ModelConfig | None, TrainConfig]:
    """Parse a run TOML. [model] may be absent only when train.init_from names a model folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist", param="config") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}", param="config") from e
    for key in data:
        if key not in ("model", "train"):
            raise ConfigError(f"unknown table [{key}] in {path}; expected [model] and [train]", param=key)
    train_table = data.get("train", {})
    if not isinstance(train_table, dict):
        raise ConfigError("[train] must be a table", param="train")
    tcfg = TrainConfig.from_dict(train_table)
    if "model" in data:
        if tcfg.init_from:
            raise ConfigError("train.init_from takes the model from its folder; remove the [model] table",
                              param="model")
        return model_config_from_table(data["model"]), tcfg
    if not tcfg.init_from:
        raise ConfigError(f"{path} has no [model] table (and no train.init_from)", param="model")
    return None, tcfg
