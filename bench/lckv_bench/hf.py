"""The paper's baseline: Hugging Face transformers `generate` on the same standard Llama shape
(random bf16 weights, SDPA attention, default dynamic cache, greedy, no EOS)."""
from __future__ import annotations

import time

import torch

from .common import GIB, build_on_device, fits_in_memory, free_mem_bytes, now
from .ours import GenResult, extrapolate
from .shapes import Cost


def build_hf(shape: dict, max_positions: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
                      intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_layers"],
                      num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_kv_heads"],
                      rms_norm_eps=shape["rms_norm_eps"], rope_theta=shape["rope_theta"],
                      max_position_embeddings=max_positions, tie_word_embeddings=False,
                      attn_implementation="sdpa", bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return build_on_device(lambda: LlamaForCausalLM(cfg), device, dtype, seed)


def _gen_config(gen: int):
    from transformers import GenerationConfig
    return GenerationConfig(max_new_tokens=gen, min_new_tokens=gen, do_sample=False, use_cache=True,
                            eos_token_id=None, bos_token_id=None, pad_token_id=0)


class _Clock:
    """A stopping criterion that timestamps every generated token and stops at the deadline."""

    def __init__(self, device, deadline: float, min_steps: int):
        self.device, self.deadline, self.min_steps, self.times = device, deadline, min_steps, []

    def __call__(self, input_ids, scores, **kwargs):
        t = now(self.device)
        self.times.append(t)
        stop = t > self.deadline and len(self.times) > self.min_steps
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def _criteria(clock):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Crit(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return clock(input_ids, scores, **kwargs)
    return StoppingCriteriaList([Crit()])


def generate(model, batch: int, prompt: int, gen: int, device, *, deadline: float, seed: int = 0,
             min_steps: int = 128, mark_every: int = 64) -> GenResult:
    """One FlexGen-protocol run of `generate`; past the deadline it stops and the remaining steps
    are extrapolated from the measured per-step times (as for our engine)."""
    vocab = model.config.vocab_size
    g = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, prompt), generator=g).to(device)
    clock = _Clock(device, deadline, min_steps)
    with torch.no_grad():
        t0 = now(device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=_gen_config(gen),
                             stopping_criteria=_criteria(clock))
        now(device)
    produced = out.shape[1] - prompt
    del out
    times = clock.times
    prefill = times[0] - t0 if times else float("nan")          # prompt pass + first token
    marks = [(i, t - times[0]) for i, t in enumerate(times) if i]  # cumulative decode time per step
    steps = produced - 1
    decode_s = marks[-1][1] if marks else 0.0
    marks = _thin(marks, mark_every)
    total_dec = extrapolate(marks, gen - 1, prompt) if steps < gen - 1 else decode_s
    return GenResult(batch=batch, prefill_s=prefill, decode_s=decode_s, steps_done=steps, steps_total=gen - 1,
                     total_s=prefill + total_dec, extrapolated=steps < gen - 1, marks=marks)


def _thin(marks, every: int):
    return [m for m in marks if m[0] % every == 0] + ([marks[-1]] if marks and marks[-1][0] % every else [])


def fits(model, batch: int, prompt: int, gen: int, cost: Cost, device) -> bool:
    """Does `generate` fit at `batch`? The dynamic cache grows to prompt+gen tokens; we hold a
    ballast of the growth (gen tokens of K/V per sequence) while prefilling the real prompt and
    generating two tokens. Conservative: prefill activations coexist with the full-size ballast."""
    def attempt():
        ballast = torch.empty(batch * gen * cost.kv_bytes_per_token, dtype=torch.uint8, device=device)
        ids = torch.randint(1, model.config.vocab_size, (batch, prompt), device=device)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=_gen_config(2))
        del ballast   # held through the generation
    return fits_in_memory(attempt, device)


def max_batch(model, cost: Cost, prompt: int, gen: int, device, *, reserve_bytes: int, limit: int | None = None,
              deadline: float | None = None) -> dict:
    free = free_mem_bytes(device)
    per_seq = cost.kv_bytes_per_token * (prompt + gen)
    implied = (limit or 1) if free is None else max(1, int((free - reserve_bytes) // per_seq))
    hi = min(implied, limit) if limit else implied
    tries = [(hi, fits(model, hi, prompt, gen, cost, device))]
    lo = hi if tries[-1][1] else 0
    if not tries[-1][1]:
        while hi - lo > max(1, hi // 50) and len(tries) < 8:
            if deadline is not None and time.perf_counter() > deadline:
                break
            mid = (lo + hi) // 2 if lo else max(1, hi * 3 // 4)
            ok = fits(model, mid, prompt, gen, cost, device)
            tries.append((mid, ok))
            lo, hi = (mid, hi) if ok else (lo, mid)
    return {"max_batch": lo, "mem_implied_batch": implied, "search_tries": tries,
            "free_gib": None if free is None else round(free / GIB, 2), "reserve_gib": round(reserve_bytes / GIB, 2),
            "cache_bytes_per_seq": per_seq}
