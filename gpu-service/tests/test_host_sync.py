"""The serving step's host work never waits for the device: checked on CPU by running a decode step,
the cache's bookkeeping and greedy sampling with the model and the cache on the "meta" device (tensors
without data) under a dispatch mode that records every operation that would wait for the device on
CUDA: a read of a device value (`.item()`, `int(t)`, `.tolist()`, `if t:`, boolean-mask indexing,
which needs `nonzero`) or a copy of a host scalar into a device tensor (`t[i] = n`: on CUDA a
blocking copy from pageable memory, which drains the stream)."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import tiny_cfg
from lckv_service.cache import CacheState, KVCache
from lckv_service.kernels import FastDecode
from lckv_service.model import LCKVModel
from lckv_service.sampling import SamplingParams, make_stream, sample

DEVICE_READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::is_nonzero",
                "aten::equal", "aten::item"}


class HostWaits(TorchDispatchMode):
    """Records the operations that make the host wait for a CUDA device."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.name() in DEVICE_READS:
            self.seen.append(func.name())
        if func is torch.ops.aten.copy_.default and args[1].dim() == 0:
            self.seen.append(f"scalar copy into a {tuple(args[0].shape)} tensor")
        return func(*args, **(kwargs or {}))


def _meta_setup(num_slots: int = 6, capacity: int = 16):
    cfg = tiny_cfg(2, layers=6)
    with torch.device("meta"):
        model = LCKVModel(cfg)
    cache = KVCache(cfg, num_slots, capacity, device="meta")
    fd = FastDecode(model.eval(), cache, bucket=4, compile=False, pad_slot=num_slots - 1)
    return cfg, cache, fd


def test_the_recorder_sees_what_it_guards_against():
    t = torch.zeros(4, dtype=torch.long, device="meta")
    with HostWaits() as w:
        t[1] = 3
    assert w.seen == ["scalar copy into a () tensor"]
    with HostWaits() as w:
        t[1].fill_(3)
        t.index_put_((torch.tensor([0, 2], device="meta"),), torch.ones(2, dtype=torch.long, device="meta"))
    assert w.seen == []


def test_decode_step_bookkeeping_and_greedy_sampling_never_wait_for_the_device():
    cfg, cache, fd = _meta_setup()
    L, H, D = len(cfg.kv_layers), cfg.num_kv_heads, cfg.head_dim
    state = CacheState(k=torch.zeros(L, 3, H, D), v=torch.zeros(L, 3, H, D), token_ids=[1, 2, 3], tokens_seen=7)
    with HostWaits() as w:
        for s in range(5):
            cache.reset(s)
        cache.restore(2, state)
        cache.commit([0], [2], [2])                               # without device tensors: one upload
        for slots in ([0, 1, 2, 3, 4], [4, 1, 3], [1, 2, 3]):   # gathered and contiguous
            toks = torch.zeros(len(slots), dtype=torch.long, device="meta")
            logits = fd(torch.tensor(slots), toks)
            out = sample(logits, [SamplingParams()] * len(slots), [None] * len(slots))
        cache.evict(2, sinks=1, keep_recent=2)
    assert w.seen == []
    assert out.device.type == "meta" and out.shape == (3,)
    assert [cache.length(s) for s in range(5)] == [3, 3, 3, 3, 2]
    assert [cache.tokens_seen(s) for s in range(5)] == [3, 3, 9, 3, 2]


def test_sampling_without_top_p_never_waits_for_the_device():
    """Temperature rows (top_p = 1) too; the nucleus search syncs once per stage by design."""
    params = [SamplingParams(), SamplingParams(temperature=0.7, seed=1), SamplingParams(temperature=1.2)]
    streams = [make_stream(p) for p in params]
    logits = torch.zeros(3, 32, device="meta")
    with HostWaits() as w:
        out = sample(logits, params, streams)
        every = sample(logits[1:], params[1:], streams[1:])          # no greedy row: no scatter
    assert w.seen == [] and out.shape == (3,) and every.shape == (2,)
    assert [s.counter for s in streams[1:]] == [2, 2]
