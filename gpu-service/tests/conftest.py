"""Shared fixtures for the model-core tests: tiny models in float64 (exactness) or float32."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from lckv_service.config import ModelConfig
from lckv_service.model import LCKVModel

# Tiny shapes gain nothing from intra-op threads, and on a shared 2-core CI box the thread pools
# of parallel pytest processes thrash (measured here: 88 s -> 18 s for test_prefill_decode.py).
torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tiny_cfg(w: int | None = 2, *, nodiag: bool = False, gqa: bool = True, layers: int = 4, **over) -> ModelConfig:
    """tiny-test shape; w=None -> Llama. gqa=False -> as many KV heads as heads."""
    shape = dict(ModelConfig.preset("tiny-test", "llama").__dict__)
    shape.pop("kv_source")
    shape.update(num_layers=layers, num_kv_heads=2 if gqa else 4, nodiag_everywhere=nodiag, **over)
    return ModelConfig.llama(**shape) if w is None else ModelConfig.lckv(w, **shape)


def make_model(cfg: ModelConfig, dtype=torch.float64, seed: int = 0, std: float = 0.1, device="cpu") -> LCKVModel:
    """Random model. A larger init std makes attention and the K/V iteration non-trivial
    (with 0.02 the attention is almost uniform and every mode agrees too easily)."""
    torch.manual_seed(seed)
    model = LCKVModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
            else:  # norm weights: perturb so they are exercised
                p.uniform_(0.8, 1.2)
    return model.to(device=device, dtype=dtype).eval()


# the cache layouts the kernel tests cover: Llama (GQA, MHA), LCKV sandwiches, w=0, no-diagonal everywhere,
# the authors' force_nodiag=false rule
LAYOUTS = {
    "llama-gqa": dict(w=None),
    "llama-mha": dict(w=None, gqa=False),
    "lckv-w2": dict(w=2, layers=6),
    "lckv-w4-mha": dict(w=4, layers=8, gqa=False),
    "lckv-w0": dict(w=0),
    "lckv-nodiag-everywhere": dict(w=2, nodiag=True, layers=6),
    "lckv-w2-authors-rule": dict(w=2, layers=6, nodiag_rule="attends_above"),   # target sees its own token
}


def cache_pair(cfg: ModelConfig, model: LCKVModel, lens: list[int], capacity: int = 40, seed: int = 1,
               junk: bool = False):
    """Two float64 caches with identical contents: slot s prefilled with lens[s] random tokens. With
    `junk`, stale finite values fill each slot beyond its length first (a freed slot's leftovers),
    so a kernel that reads or writes past a row's length shows up."""
    from lckv_service.cache import KVCache
    g = torch.Generator().manual_seed(seed)
    caches = [KVCache(cfg, len(lens), capacity, dtype=torch.float64) for _ in range(2)]
    if junk:
        stale = torch.randn(caches[0].k.shape, generator=g, dtype=torch.float64)
        for c in caches:
            c.k.copy_(stale)
            c.v.copy_(stale.flip(0))
    for s, n in enumerate(lens):
        if n:
            t = torch.randint(0, cfg.vocab_size, (n,), generator=g)
            for c in caches:
                model.prefill(c, [s], [t])
    return caches


def replace(cfg: ModelConfig, **kw) -> ModelConfig:
    return dataclasses.replace(cfg, **kw)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
