"""Our engine's hot path, driven directly: LCKVModel + KVCache + a decode step (the model's own
`decode`, or kernels.FastDecode with or without CUDA graphs), the way engine/runner.py drives it.

The FlexGen protocol: B prompts of P random tokens are prefilled, then every sequence generates G
tokens (the first from the prefill logits, then G-1 decode steps, greedy, no EOS). Throughput =
B*G / (prefill + decode time).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from lckv_service.cache import KVCache
from lckv_service.config import ModelConfig
from lckv_service.kernels import FastDecode
from lckv_service.model import LCKVModel, PrefillMode

from .common import GIB, allocated_bytes, build_on_device, fits_in_memory, free_mem_bytes, now, release
from .shapes import Cost

# fast*: kernels.FastDecode; "-graph" replays CUDA graphs; "+triton" attends with the fused
# RoPE-in-attention kernel; "+eager" runs without compiled kernels (FastDecode(compile=False)).
DECODERS = ("model", "fast", "fast-graph", "fast+eager", "fast-graph+eager", "fast+triton",
            "fast-graph+triton")


def build_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> LCKVModel:
    return build_on_device(lambda: LCKVModel(cfg), device, dtype, seed)


def default_prefill_mode(cfg: ModelConfig) -> PrefillMode:
    """A non-cyclic model's prefill is one exact parallel pass; LCKV uses the paper's m+b iterations."""
    return PrefillMode(kind="iterative")


# Throughput prefill of LCKV models. "iterative": the paper's m+b parallel passes (~(m+b)x a standard
# prefill's FLOPs in the middle block). "tokenwise": every prompt token goes through the decode step,
# the whole batch at once: exact (Theorem 1 with one token per chunk), the FLOPs of a standard prefill,
# and at a large batch as matmul-efficient as a parallel prefill (LCKV.md section 3). Standard models
# always prefill in one parallel pass, which is already exact and 1x.
THROUGHPUT_PREFILLS = ("auto", "tokenwise", "iterative")   # auto: the cheaper one, measured


def prefill_tokenwise(step, slots: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Feed `prompts` [B, P] through the decode `step` one position at a time (slots 0..B-1 start
    empty); returns the greedy first generated token of each row [B]."""
    logits = None
    for t in range(prompts.shape[1]):
        logits = step(slots, prompts[:, t])
    return logits.argmax(-1)


def make_decoder(kind: str, model: LCKVModel, cache: KVCache, bucket: int = 256):
    if kind == "model":
        return lambda slots, toks: model.decode(cache, slots, toks)
    if kind in DECODERS:
        base, _, opt = kind.partition("+")
        return FastDecode(model, cache, bucket=bucket, graphs=base == "fast-graph", compile=opt != "eager",
                          attention="triton" if opt == "triton" else "sdpa")
    raise ValueError(f"decoder must be one of {DECODERS}, got {kind!r}")


def prefill_group_size(cost: Cost, prompt: int, hidden: int, inter: int, budget_bytes: int) -> int:
    """Sequences per prefill call so its transient memory (the model gathers and rotates the
    sources' K/V of the group, plus activations) stays within `budget_bytes`."""
    per_token = 3 * cost.kv_bytes_per_token + cost.elt * (8 * hidden + 3 * inter) + 4 * prompt
    return max(1, int(budget_bytes // max(1, per_token * prompt)))


def decode_transient_bytes(cfg: ModelConfig, batch: int, ctx: int, decoder: str, elt: int) -> int:
    """Device memory a decode step needs beyond the pool (rotated keys, copies, logits)."""
    per_src = batch * ctx * cfg.num_kv_heads * cfg.head_dim * elt
    logits = batch * cfg.vocab_size * 6
    if decoder == "model":   # keeps every source's rotated K and copied V until the step ends
        return 3 * len(cfg.kv_layers) * per_src + logits
    if decoder.endswith("+triton"):   # one split's fp32 partial (g real rows) + the output; no K/V copies
        return batch * cfg.num_heads * cfg.head_dim * 4 * 2 + logits
    return 2 * per_src + logits


def pick_decoder(model, cfg: ModelConfig, device, dtype, preferred: str, bucket: int = 256) -> tuple[str, str]:
    """The fastest decoder that works here: candidates are `preferred`, its variants, "fast", and
    finally the model's own decode.

    Each candidate is checked against `model.decode` on this device with a float32 proxy model of
    the same layer layout (kv_source) and head shape, so bf16 rounding cannot hide or fake a
    difference. When two candidates pass, both are timed on the real model and the faster wins.
    Returns (decoder, note)."""
    base = preferred.partition("+")[0]
    chain = list(dict.fromkeys(d for d in (preferred, base, base + "+eager", "fast", "fast+eager")
                               if d in DECODERS and (device.type == "cuda" or "+eager" not in d)))
    notes, ok = [], []
    for kind in chain:
        err = _check_decoder(kind, model, cfg, device, dtype, bucket)
        if err:
            notes.append(err)
            continue
        ok.append(kind)
        if len(ok) == 2:
            break
    if not ok:
        return "model", "; ".join(notes + ["model.decode"])
    if len(ok) == 2:
        times = {k: _time_decoder(k, model, cfg, device, dtype, bucket) for k in ok}
        notes.append("step ms " + ", ".join(f"{k} {1e3 * t:.2f}" for k, t in times.items()))
        ok.sort(key=times.get)
    return ok[0], "; ".join(notes + [f"{ok[0]} agrees with model.decode (fp32 proxy)"])


def _check_decoder(kind, model, cfg, device, dtype, bucket) -> str | None:
    proxy_cfg = ModelConfig(vocab_size=512, hidden_size=4 * cfg.head_dim, intermediate_size=8 * cfg.head_dim,
                            num_layers=cfg.num_layers, num_heads=4,
                            num_kv_heads=4 if cfg.num_kv_heads == cfg.num_heads else 2,
                            kv_source=cfg.kv_source, nodiag_everywhere=cfg.nodiag_everywhere,
                            rope_theta=cfg.rope_theta, max_position_embeddings=64)
    try:
        proxy = build_model(proxy_cfg, device, torch.float32, seed=1)
        caches = [KVCache(proxy_cfg, 3, 48, device, torch.float32) for _ in range(2)]
        toks = torch.randint(0, proxy_cfg.vocab_size, (3, 20), device=device)
        for c in caches:
            proxy.prefill(c, [0, 1, 2], [toks[0], toks[1, :7], toks[2, :1]], mode=default_prefill_mode(proxy_cfg))
        step = make_decoder(kind, proxy, caches[1], min(bucket, 16))
        t, worst = toks[:, -1], 0.0
        for _ in range(20):           # crosses bucket edges: several graphs
            ref = proxy.decode(caches[0], torch.arange(3), t)
            got = step(torch.arange(3), t)
            worst = max(worst, ((got - ref).abs().max() / ref.abs().max()).item())
            t = ref.argmax(-1)
        if worst > 1e-3:
            return f"{kind} rejected: max rel diff vs model.decode {worst:.1e}"
        _smoke(kind, model, cfg, device, dtype, bucket)   # the real model's dtype compiles too
        return None
    except Exception as e:  # noqa: BLE001 - any failure just rules the candidate out
        return f"{kind} failed: {e!r}"[:300]


def step_seconds(step, slots: torch.Tensor, tok: torch.Tensor, steps: int, device, warm: int = 1):
    """Seconds per call of the decode `step` (greedy tokens fed back): `warm` untimed calls first
    (kernels, autotune, graph capture), then `steps` timed ones. Returns (seconds, last tokens)."""
    for _ in range(warm):
        tok = step(slots, tok).argmax(-1)
    t0 = now(device)
    for _ in range(steps):
        tok = step(slots, tok).argmax(-1)
    return (now(device) - t0) / steps, tok


def _time_decoder(kind, model, cfg, device, dtype, bucket, batch: int = 16, ctx: int = 2000) -> float:
    """Seconds per decode step of the real model at (batch, context)."""
    cache = KVCache(cfg, batch, ctx + 64, device, dtype)
    cache.commit(list(range(batch)), [ctx] * batch, [ctx] * batch)
    step = make_decoder(kind, model, cache, bucket)
    tok, slots = torch.zeros(batch, dtype=torch.long, device=device), torch.arange(batch)
    dt, _ = step_seconds(step, slots, tok, 10, device, warm=3)
    del cache, step
    release(device)
    return dt


def _smoke(kind: str, model, cfg: ModelConfig, device, dtype, bucket: int) -> None:
    """One decode step of the real model through `kind` (compiles its dtype; must be finite)."""
    cache = KVCache(cfg, 2, 16, device, dtype)
    model.prefill(cache, [0], [torch.arange(5, device=device)], mode=default_prefill_mode(cfg))
    out = make_decoder(kind, model, cache, min(bucket, 16))(torch.arange(2), torch.tensor([1, 2], device=device))
    if not bool(torch.isfinite(out).all()):
        raise RuntimeError(f"{kind} produced non-finite logits")


@dataclass
class GenResult:
    batch: int
    prefill_s: float
    decode_s: float                 # measured decode time (steps_done steps)
    steps_done: int
    steps_total: int
    total_s: float                  # prefill + decode, extrapolated if steps_done < steps_total
    extrapolated: bool
    marks: list[tuple[int, float]] = field(default_factory=list)   # (steps done, seconds of decode)
    capture_s: float = 0.0


def prefill_all(model, cache, prompts: torch.Tensor, mode: PrefillMode, group: int) -> torch.Tensor:
    """Prefill rows of `prompts` [B, P] into slots 0..B-1, `group` sequences per call; returns the
    greedy first generated token of each [B]."""
    B = prompts.shape[0]
    firsts = []
    for a in range(0, B, group):
        slots = list(range(a, min(B, a + group)))
        logits = model.prefill(cache, slots, [prompts[s] for s in slots], mode=mode)
        firsts.append(logits.argmax(-1))
    return torch.cat(firsts)


def generate(model, cfg: ModelConfig, batch: int, prompt: int, gen: int, device, dtype, *,
             decoder: str, mode: PrefillMode, group: int, deadline: float, bucket: int = 256,
             mark_every: int = 64, seed: int = 0, tokenwise: bool = False) -> GenResult:
    """One FlexGen-protocol run. Decoding stops early at `deadline` (then the rest is extrapolated
    from the measured per-step times, which grow linearly with context)."""
    cache = KVCache(cfg, batch, prompt + gen, device, dtype)
    g = torch.Generator(device="cpu").manual_seed(seed)
    prompts = torch.randint(0, cfg.vocab_size, (batch, prompt), generator=g).to(device)
    step = make_decoder(decoder, model, cache, bucket)
    slots = torch.arange(batch)
    capture_s = 0.0
    if decoder.startswith("fast-graph"):   # capture every bucket up front: replays only while timed
        t = time.perf_counter()
        step.warm(list(range(batch)), ([*range(prompt)] if tokenwise else []) + [prompt + i for i in range(gen - 1)])
        capture_s = time.perf_counter() - t
    t0 = now(device)
    tok = prefill_tokenwise(step, slots, prompts) if tokenwise else prefill_all(model, cache, prompts, mode, group)
    t1 = now(device)
    marks: list[tuple[int, float]] = []
    done = 0
    for i in range(gen - 1):
        tok = step(slots, tok).argmax(-1)
        done = i + 1
        if done % mark_every == 0 or done == gen - 1:
            t = now(device)
            marks.append((done, t - t1))
            if t > deadline and done < gen - 1 and len(marks) >= 2:
                break
    decode_s = marks[-1][1] if marks else 0.0
    total_dec = extrapolate(marks, gen - 1, prompt) if done < gen - 1 else decode_s
    del cache, step
    return GenResult(batch=batch, prefill_s=t1 - t0, decode_s=decode_s, steps_done=done, steps_total=gen - 1,
                     total_s=(t1 - t0) + total_dec, extrapolated=done < gen - 1, marks=marks,
                     capture_s=capture_s)


def measure_prefills(model, cfg: ModelConfig, batch: int, prompt: int, device, dtype, *, decoder: str,
                     bucket: int, mode: PrefillMode, group: int, steps: int = 3) -> dict:
    """Measured seconds to prefill `batch` prompts of `prompt` tokens each way, so the throughput
    suite can run the cheaper one: "iterative" times model.prefill of one group of real prompts
    (scaled to the batch: it is compute-bound), "tokenwise" times decode steps at `batch` with every
    slot at prompt/2 (times `prompt`: step time is linear in the context)."""
    out = {}
    cache = step = None
    try:
        g = max(1, min(group, batch))
        cache = KVCache(cfg, g, prompt, device, dtype)
        toks = torch.randint(0, cfg.vocab_size, (g, prompt), device=device)
        prefill_all(model, cache, toks, mode, g)                              # warm-up (kernels, autotune)
        cache.commit(list(range(g)), [0] * g, [0] * g)
        t0 = now(device)
        prefill_all(model, cache, toks, mode, g)
        out["iterative"] = (now(device) - t0) * batch / g
        del cache, toks
        cache = KVCache(cfg, batch, prompt // 2 + steps + 2, device, dtype)
        step = make_decoder(decoder, model, cache, bucket)
        slots, tok = torch.arange(batch), torch.zeros(batch, dtype=torch.long, device=device)
        cache.commit(list(range(batch)), [prompt // 2] * batch, [0] * batch)
        out["tokenwise"] = step_seconds(step, slots, tok, steps, device)[0] * prompt
    finally:
        del cache, step
        release(device)
    return out


def probe_max_batch(model, cfg: ModelConfig, batch: int, prompt: int, gen: int, device, dtype, *, decoder: str,
                    bucket: int, steps: int = 5, tokenwise: bool = False) -> dict:
    """Decode step times at `batch` with every slot at the start, middle and end of generation
    (a few steps each, the pool allocated in full). Integrated over the gen-1 steps (piecewise
    linear in context) this projects the decode time of a full run at that batch; with `tokenwise`
    also the prompt's steps (context 0..prompt-1), i.e. the prefill time."""
    cache = step = None
    try:
        cache = KVCache(cfg, batch, prompt + gen, device, dtype)
        step = make_decoder(decoder, model, cache, bucket)
        slots, tok = torch.arange(batch), torch.zeros(batch, dtype=torch.long, device=device)
        ctxs = {prompt, prompt + (gen - 1) // 2, max(prompt, prompt + gen - 2 - steps)}
        if tokenwise:
            ctxs |= {0, prompt // 2}
        pts = []
        for ctx in sorted(ctxs):
            cache.commit(list(range(batch)), [ctx] * batch, [0] * batch)
            dt, tok = step_seconds(step, slots, tok, steps, device)
            pts.append((ctx + 1 + steps / 2, dt))

        def integrate(first: int, n: int) -> float:   # piecewise-linear in context, flat outside
            total = 0.0
            for c in range(first, first + n):
                lo = max([p for p in pts if p[0] <= c] or [pts[0]])
                hi = min([p for p in pts if p[0] >= c] or [pts[-1]])
                total += lo[1] if hi[0] == lo[0] else lo[1] + (hi[1] - lo[1]) * (c - lo[0]) / (hi[0] - lo[0])
            return total
        out = {"probe_step_s": [(round(c, 1), t) for c, t in pts], "decode_s_projected": integrate(prompt, gen - 1)}
        if tokenwise:
            out["prefill_s_projected"] = integrate(0, prompt)
        return out
    finally:
        del cache, step
        release(device)


def extrapolate(marks: list[tuple[int, float]], steps_total: int, ctx0: int) -> float:
    """Decode seconds for `steps_total` steps from cumulative marks: fit step time = a + b*ctx on
    the measured segments (the first is dropped when there are more: it holds warm-up) and add
    the fitted time of the steps not run to the measured time."""
    if not marks:
        return float("nan")
    pts, prev_n, prev_t = [], 0, 0.0
    for n, t in marks:
        if n > prev_n:
            pts.append((ctx0 + (prev_n + n) / 2, (t - prev_t) / (n - prev_n)))
        prev_n, prev_t = n, t
    if len(pts) > 2:
        pts = pts[1:]
    if len(pts) >= 2:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        b = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var) if var else 0.0
        a = my - b * mx
    else:
        a, b = pts[0][1], 0.0
    n_done, t_done = marks[-1]
    rest = steps_total - n_done
    mid_ctx = ctx0 + n_done + rest / 2       # same convention as the segments above
    return t_done + rest * (a + b * mid_ctx)


def fits(model, cfg: ModelConfig, batch: int, prompt: int, gen: int, device, dtype, *,
         decoder: str, mode: PrefillMode, group: int, bucket: int) -> bool:
    """Can `batch` sequences of prompt+gen live at once? Allocate the full pool, prefill one group
    of real prompts, then run decode steps with every slot at full length (the largest step)."""
    def attempt():
        cache = KVCache(cfg, batch, prompt + gen, device, dtype)
        g = min(group, batch)
        toks = torch.randint(0, cfg.vocab_size, (g, prompt), device=device)
        model.prefill(cache, list(range(g)), [toks[i] for i in range(g)], mode=mode)
        full = prompt + gen - 3
        cache.commit(list(range(batch)), [full] * batch, [0] * batch)
        step = make_decoder(decoder, model, cache, bucket)
        if decoder.startswith("fast-graph"):
            # every graph a run may replay (prompt steps included), captured now: their memory pool
            # holds a step's intermediates per graph (measured 5-8 MiB per sequence and graph at 7B),
            # which a single-graph check missed (the runs that hit OOM after a passing search)
            step.warm(list(range(batch)), list(range(0, prompt + gen - 1, bucket)) + [prompt + gen - 2])
        tok = torch.zeros(batch, dtype=torch.long, device=device)
        for _ in range(2):
            tok = step(torch.arange(batch), tok).argmax(-1)
    return fits_in_memory(attempt, device)


def max_batch(model, cfg: ModelConfig, cost: Cost, prompt: int, gen: int, device, dtype, *, decoder: str,
              mode: PrefillMode, group: int, bucket: int, reserve_bytes: int, limit: int | None = None,
              deadline: float | None = None) -> dict:
    """Memory-implied max batch from the shapes and free memory, verified by `fits` and bisected
    down on OOM. `limit` bounds the search (CPU runs)."""
    cap = prompt + gen
    free = free_mem_bytes(device)
    per_seq = cost.kv_bytes_per_token * cap
    per_seq_transient = decode_transient_bytes(cfg, 1, cap, decoder, cost.elt)
    if free is None:   # CPU: no memory model; take the limit as is
        implied = limit or 1
    else:
        implied = max(1, int((free - reserve_bytes) // (per_seq + per_seq_transient)))
    hi = min(implied, limit) if limit else implied
    tries = []
    held_before = allocated_bytes(device)
    ok = fits(model, cfg, hi, prompt, gen, device, dtype, decoder=decoder, mode=mode, group=group, bucket=bucket)
    tries.append((hi, ok))
    lo = hi if ok else 0
    if not ok:   # bisect in (lo, hi): lo fits (0 trivially), hi does not
        while hi - lo > max(1, hi // 50) and len(tries) < 8:
            if deadline is not None and time.perf_counter() > deadline:
                break
            mid = (lo + hi) // 2 if lo else max(1, hi * 3 // 4)
            ok = fits(model, cfg, mid, prompt, gen, device, dtype, decoder=decoder, mode=mode, group=group,
                      bucket=bucket)
            tries.append((mid, ok))
            lo, hi = (mid, hi) if ok else (lo, mid)
    held_after = allocated_bytes(device)
    return {"max_batch": lo, "mem_implied_batch": implied, "search_tries": tries,
            # memory still allocated after the search beyond what was before it: should be ~0; a
            # failed try that leaks (an OOM inside a CUDA graph capture, say) shows up here
            "leaked_gib": None if held_before is None else round((held_after - held_before) / GIB, 3),
            "free_gib": None if free is None else round(free / GIB, 2),
            "reserve_gib": round(reserve_bytes / GIB, 2),
            "cache_bytes_per_seq": per_seq}
