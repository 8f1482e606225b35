"""lckv_service: Layer-Condensed KV Cache (LCKV) models served over HTTP. See gpu-service/API.md."""
from .cache import CacheState, KVCache
from .config import ModelConfig
from .model import LCKVModel, PrefillMode

__all__ = ["CacheState", "KVCache", "LCKVModel", "ModelConfig", "PrefillMode"]
