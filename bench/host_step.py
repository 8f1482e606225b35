"""Host (Python) time of one serving decode step, on CPU (issue 14).

    .venv/bin/python bench/host_step.py                  # batch 64/256/1024, ~15 s on one core
    .venv/bin/python bench/host_step.py --vocab 16       # sampling columns without the vocabulary math
    .venv/bin/python bench/host_step.py --batches 256 --profile   # + cProfile's top entries

One `FastDecode` step (gathered slots, a padding slot as in serving) and one `sample()` call of its
logits, with a model so small (2 layers, hidden 16, vocabulary 256, float32, one thread) that what is
left is mostly the host's bookkeeping. Per step, median µs:
- `check`: FastDecode.__call__ less the two parts below (slot/length/token checks, bucket, key, the
  slot index upload, the token write);
- `commit`: KVCache.commit (host mirrors of lengths and device lengths);
- `model`: FastDecode._step, the tensor work (on CUDA a graph replay or the eager launches: not host
  bookkeeping, reported so the rest can be read against it);
- `sample`: sample() for greedy rows, temperature 0.8 rows (top_p 1) and temperature 0.8 / top_p 0.9
  rows (on CPU this includes the softmax and nucleus math over the vocabulary: `--vocab 16` makes
  that negligible, so the columns read as host time).
CPU caches go cold while the model step runs, so each host operation costs several times what a
timeit loop of it alone shows: these numbers, not a loop's, are what a serving step pays.

`--update` measures the other host phase instead: the engine's update of a step (sampled ids to
detokenized text, stop checks, events, metrics), per step and per token, with B streams decoding at
once through the real Engine, the demo model's tokenizer and the service's Prometheus metrics.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gpu-service"))

import torch  # noqa: E402

from lckv_service.cache import KVCache  # noqa: E402
from lckv_service.config import ModelConfig  # noqa: E402
from lckv_service.kernels import FastDecode  # noqa: E402
from lckv_service.model import LCKVModel  # noqa: E402
from lckv_service.sampling import SamplingParams, make_stream, sample  # noqa: E402

MIXES = {"greedy": {}, "temp": {"temperature": 0.8}, "top_p": {"temperature": 0.8, "top_p": 0.9}}


def tiny_model(vocab: int = 256) -> LCKVModel:
    cfg = ModelConfig.lckv(0, vocab_size=vocab, hidden_size=16, intermediate_size=32, num_layers=2,
                           num_heads=2, num_kv_heads=1)
    torch.manual_seed(0)
    return LCKVModel(cfg).eval()


class Timed:
    """Replaces obj.name with a wrapper that adds its wall time to `self.ns`."""

    def __init__(self, obj, name: str):
        self.ns, fn = 0, getattr(obj, name)

        def timed(*args, **kwargs):
            t = time.perf_counter_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                self.ns += time.perf_counter_ns() - t
        setattr(obj, name, timed)

    def take(self) -> int:
        ns, self.ns = self.ns, 0
        return ns


def bench_batch(model: LCKVModel, B: int, steps: int, capacity: int) -> dict[str, float]:
    cache = KVCache(model.cfg, B + 1, capacity)
    fd = FastDecode(model, cache, bucket=16, compile=False, pad_slot=B)
    step_t, commit_t = Timed(fd, "_step"), Timed(cache, "commit")
    g = torch.Generator().manual_seed(B)
    slots = torch.randperm(B, generator=g)                 # the scheduler's order: not a slot range
    params = {k: [SamplingParams(**kw)] * B for k, kw in MIXES.items()}
    rows: dict[str, list[float]] = {k: [] for k in ("check", "commit", "model", *MIXES)}
    tokens = torch.randint(0, model.cfg.vocab_size, (B,), generator=g)
    warmup = 5
    for i in range(warmup + steps):
        if cache.length(int(slots[0])) + 1 >= capacity:
            for s in range(B):
                cache.reset(s)
        t = time.perf_counter_ns()
        logits = fd(slots, tokens)          # kept until sampled: freeing it is not the step's cost
        total = time.perf_counter_ns() - t
        model_ns, commit_ns = step_t.take(), commit_t.take()
        sample_ns = {}
        for k, p in params.items():
            streams = [make_stream(x) for x in p]
            t = time.perf_counter_ns()
            sample(logits, p, streams)
            sample_ns[k] = time.perf_counter_ns() - t
        if i >= warmup:
            rows["check"].append(total - model_ns - commit_ns)
            rows["commit"].append(commit_ns)
            rows["model"].append(model_ns)
            for k, ns in sample_ns.items():
                rows[k].append(ns)
    return {k: statistics.median(v) / 1000 for k, v in rows.items()}


class StepTimes:
    """The service's metrics, recording each step's update seconds as well."""

    def __init__(self):
        from lckv_service.server.metrics import ServiceMetrics
        self.inner, self.update = ServiceMetrics(), []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def observe_step(self, schedule_s, run_s, update_s, device_s):
        self.update.append(update_s)
        self.inner.observe_step(schedule_s, run_s, update_s, device_s)


def bench_update(B: int, steps: int, stop: tuple[str, ...] = ()) -> dict[str, float]:
    from lckv_service.engine.engine import Engine
    from lckv_service.engine.request import Request
    from lckv_service.engine.runner import ModelRunner
    from lckv_service.engine.scheduler import Scheduler, SchedulerConfig
    from lckv_service.model import PrefillMode
    from lckv_service.tokenizer import ChatTokenizer
    folder = Path(__file__).resolve().parent.parent / "gpu-service" / "models" / "lckv-tiny"
    tok = ChatTokenizer.from_folder(folder)
    model = tiny_model(tok.vocab_size)
    sc = SchedulerConfig(num_slots=B, window=steps + 32, max_batched_tokens=B * 8, max_waiting=B)
    metrics = StepTimes()
    engine = Engine(Scheduler(sc), ModelRunner(model, B, sc.capacity, 4, PrefillMode("exact")), tok, metrics)
    for i in range(B):   # sampled at temperature 1 from a random model: varied text, no early stops
        r = Request(f"u{i}", tok.encode_prompt("Once upon a time"),
                    SamplingParams(max_tokens=steps + 1, temperature=1.0, seed=i, stop=stop))
        r.emit = lambda ev: None
        engine.add(r)
    while engine.step():
        pass
    decode = metrics.update[2:-1]     # past the prefill steps, before the last
    us = statistics.median(decode) * 1e6
    return {"update": us, "per_token": us / B}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--capacity", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--profile", action="store_true", help="cProfile the runs, print the top entries")
    ap.add_argument("--update", action="store_true", help="measure the engine's update phase instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.update:
        print(f"torch {torch.__version__}, CPU; engine update phase, median over {args.steps} decode steps")
        for B in args.batches:
            for stop in ((), ("zzqx",)):   # a stop string that never matches still has to be looked for
                r = bench_update(B, args.steps, stop)
                print(f"batch {B:>5}, {'a stop string' if stop else 'no stop string'}: {r['update']:8.1f} µs per "
                      f"step, {r['per_token']:5.2f} µs per token", flush=True)
        return
    model = tiny_model(args.vocab)
    prof = cProfile.Profile() if args.profile else None
    print(f"torch {torch.__version__}, CPU, one thread, vocabulary {args.vocab}; "
          f"median µs per step over {args.steps} steps")
    print(f"{'batch':>6} {'check':>8} {'commit':>8} {'model':>8} "
          f"{'greedy':>8} {'temp':>8} {'top_p':>8}  (sample: greedy / temperature / top_p rows)")
    for B in args.batches:
        if prof:
            prof.enable()
        r = bench_batch(model, B, args.steps, args.capacity)
        if prof:
            prof.disable()
        print(f"{B:>6} {r['check']:>8.1f} {r['commit']:>8.1f} {r['model']:>8.1f} "
              f"{r['greedy']:>8.1f} {r['temp']:>8.1f} {r['top_p']:>8.1f}", flush=True)
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
