"""Training loop in nanoGPT's shape for any ModelConfig (Llama or LCKV): memmapped token shards,
AdamW + warmup/cosine `get_lr`, grad clipping, periodic `estimate_loss`, checkpoint/resume, a
JSON-lines log, a wall-clock cap that stops cleanly, and the final model folder (bf16 safetensors
+ tokenizer files).

    python -m lckv_service.train.train --config configs/lckv-tiny-w2.toml [--tokens N] [--max-minutes M]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import ConfigError, LCKVError
from ..model import LCKVModel
from .config import TrainConfig, load_run_config
from .budget import BudgetSync
from .data import TokenShard

log = logging.getLogger("lckv.train")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def get_lr(it: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, cosine decay to cfg.min_lr at lr_decay_iters (default max_iters)."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={cfg.device} but CUDA is not available", param="train.device")
    return torch.device(cfg.device)


def autocast(device: torch.device, dtype: str):
    """bf16 autocast on CUDA (weights and optimizer stay fp32); plain fp32 on CPU unless asked."""
    if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not norms), fused kernel on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


@torch.no_grad()
def estimate_loss(model, shards: dict[str, TokenShard], cfg: TrainConfig, device, ctx_factory) -> dict[str, float]:
    """Mean loss over cfg.eval_iters batches per split, with the training-time (m+b) computation.
    The same batches every time (fixed generator), so successive evals are comparable."""
    was_training = model.training
    model.eval()
    out = {}
    for split, shard in shards.items():
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        losses = torch.zeros(cfg.eval_iters)
        for k in range(cfg.eval_iters):
            x, y = shard.get_batch(cfg.batch_size, gen, device)
            with ctx_factory():
                _, loss = model(x, y)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    model.train(was_training)
    return out


class CompiledOrEager:
    """The model's call, torch.compile'd if asked; falls back to eager once if compiling fails,
    because a compiler error must not cost a GPU run."""

    def __init__(self, model, compile: bool):
        self.model = model
        self.fn = torch.compile(model) if compile else model

    @property
    def compiled(self) -> bool:
        return self.fn is not self.model

    def run(self, use):
        """use(fn) -> result, with fn the compiled or the eager model."""
        try:
            return use(self.fn)
        except Exception as e:  # noqa: BLE001 - any compiler failure
            if not self.compiled:
                raise
            log.warning("torch.compile failed (%s: %s); continuing eager", type(e).__name__, e)
            self.fn = self.model
            return use(self.fn)


@dataclass
class TrainResult:
    out_dir: Path
    iters: int
    tokens: int
    final_val_loss: float | None
    stopped_early: bool
    model_dir: Path | None


class JsonlLog:
    def __init__(self, path: Path | None):
        self.path = path

    def write(self, **record):
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def _build_model(model_cfg: ModelConfig | None, cfg: TrainConfig, ckpt: dict | None) -> LCKVModel:
    if ckpt is not None:
        model = LCKVModel(ModelConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        return model
    if cfg.init_from:
        from ..checkpoint import convert_llama_to_lckv, load_model
        model = load_model(cfg.init_from, device="cpu", dtype=torch.float32)
        if cfg.convert_warmup >= 0:
            model = convert_llama_to_lckv(model, cfg.convert_warmup)
        return model
    if model_cfg is None:
        raise ConfigError("no model: give a [model] table or train.init_from", param="model")
    return LCKVModel(model_cfg)


def save_checkpoint(path: Path, model, opt, it: int, tokens: int, cfg: TrainConfig, gen: torch.Generator,
                    best_val: float | None):
    ckpt = {"model": model.state_dict(), "model_config": model.cfg.to_dict(), "train_config": cfg.to_dict(),
            "optimizer": opt.state_dict(), "iter": it, "tokens": tokens, "best_val": best_val,
            "rng": {"torch": torch.get_rng_state(), "batch": gen.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)   # atomic: a crash mid-save leaves the previous checkpoint intact


def write_model_folder(model, cfg: TrainConfig, folder: Path) -> Path:
    from ..checkpoint import save_model
    save_model(model, folder, dtype=torch.bfloat16)
    if cfg.tokenizer_dir:
        for name in TOKENIZER_FILES:
            src = Path(cfg.tokenizer_dir) / name
            if not src.is_file():
                raise ConfigError(f"{src} does not exist", param="train.tokenizer_dir")
            shutil.copyfile(src, folder / name)
    return folder


def train(model_cfg: ModelConfig | None, cfg: TrainConfig, *, resume: bool = False,
          max_minutes: float | None = None, probe_iters: int = 0, budget: BudgetSync | None = None
          ) -> TrainResult | dict:
    """Train until cfg.max_iters (or the wall-clock cap). probe_iters > 0: measure throughput only
    (a few warmup iterations, then probe_iters timed ones; nothing written but probe.json).
    budget: fix max_iters early from the throughput of this and its concurrent peer runs."""
    t_start = time.time()
    deadline = t_start + max_minutes * 60 if max_minutes else None
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ckpt_path = out / "ckpt.pt"
    ckpt = None
    if resume:
        if not ckpt_path.is_file():
            raise ConfigError(f"--resume: no checkpoint at {ckpt_path}", param="resume")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # our own file
    model = _build_model(model_cfg, cfg, ckpt).to(device)
    model.train()
    opt = make_optimizer(model, cfg, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    it, tokens, best_val = 0, 0, None
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        it, tokens, best_val = ckpt["iter"], ckpt["tokens"], ckpt["best_val"]
        gen.set_state(ckpt["rng"]["batch"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if ckpt["rng"]["cuda"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        del ckpt
    mcfg = model.cfg
    data = Path(cfg.data_dir)
    shards = {"train": TokenShard(data / "train.bin", cfg.block_size, mcfg.vocab_size),
              "val": TokenShard(data / "val.bin", cfg.block_size, mcfg.vocab_size)}
    ctx = lambda: autocast(device, cfg.dtype)  # noqa: E731
    if cfg.compile and device.type != "cuda":
        log.info("compile is only used on CUDA; running eager on %s", device)
    fwd = CompiledOrEager(model, cfg.compile and device.type == "cuda")
    jlog = JsonlLog(None if probe_iters else out / "log.jsonl")
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.model.embed_tokens.weight.numel() * (1 if mcfg.tie_word_embeddings else 2)
    log.info("model: %s, %.2fM params (%.2fM without embeddings), w=%s, kv layers %d/%d; %s, dtype %s",
             out.name, n_params / 1e6, (n_params - n_embed) / 1e6, mcfg.warmup_layers, len(mcfg.kv_layers),
             mcfg.num_layers, device, cfg.dtype)
    jlog.write(type="start", iter=it, resumed=resume, params=n_params, model_config=mcfg.to_dict(),
               train_config=cfg.to_dict(), device=str(device), time=time.time())

    def step(model_fn):
        opt.zero_grad(set_to_none=True)   # first, so a retry after a failed compile starts clean
        loss_sum = 0.0
        for _ in range(cfg.grad_accum):
            x, y = shards["train"].get_batch(cfg.batch_size, gen, device)
            with ctx():
                _, loss = model_fn(x, y)
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
        opt.step()
        return loss_sum / cfg.grad_accum, norm

    if probe_iters:
        return _probe(step, fwd, cfg, probe_iters, out, device)

    start_it, stopped_early = it, False
    iter_time, eval_time, t_log, it_log = 0.0, 0.0, time.time(), it
    try:
        while True:
            last = it >= cfg.max_iters
            if not last and deadline is not None and time.time() + 2 * iter_time + 2 * eval_time + 15 > deadline:
                log.info("stopping at iter %d: --max-minutes %.1f would be exceeded", it, max_minutes)
                stopped_early = True
            periodic = cfg.eval_interval and it % cfg.eval_interval == 0 and not (resume and it == start_it)
            if last or stopped_early or periodic:
                t0 = time.time()
                losses = fwd.run(lambda f: estimate_loss(f, shards, cfg, device, ctx))
                eval_time = time.time() - t0
                best_val = losses["val"] if best_val is None else min(best_val, losses["val"])
                log.info("eval iter %d: train %.4f val %.4f (%.1fs)", it, losses["train"], losses["val"], eval_time)
                jlog.write(type="eval", iter=it, tokens=tokens, train_loss=losses["train"], val_loss=losses["val"],
                           elapsed_s=time.time() - t_start)
                if last or stopped_early:
                    break
                save_checkpoint(ckpt_path, model, opt, it, tokens, cfg, gen, best_val)
                t_log += time.time() - t0   # tokens/s counts training time only
            for group in opt.param_groups:
                group["lr"] = lr = get_lr(it, cfg)
            t0 = time.time()
            loss, norm = fwd.run(step)
            it += 1
            tokens += cfg.tokens_per_iter
            if budget is not None and not budget.decided:
                if it in (budget.measure_from, budget.measure_to):
                    if device.type == "cuda":
                        torch.cuda.synchronize()   # time finished work, not queued kernels
                    budget.observe(it, time.time(), t_start, cfg.tokens_per_iter, 2 * eval_time + 30)
                t_wait = time.time()
                # keep training while peers report; block only before the warmup ends (the cosine needs max_iters)
                new_max = budget.poll(block=it + 1 >= cfg.warmup_iters,
                                      wait_until=None if deadline is None else deadline - 2 * eval_time - 30)
                t_log += time.time() - t_wait   # waiting for peers is not training time
                if new_max is not None:
                    cfg = cfg.replace(max_iters=max(new_max, it))
                    jlog.write(type="budget", iter=it, max_iters=cfg.max_iters,
                               tokens=cfg.max_iters * cfg.tokens_per_iter, elapsed_s=time.time() - t_start)
            if it % cfg.log_interval == 0 or it == cfg.max_iters:
                loss_v = loss.item()   # the only host sync of a logged step
                now = time.time()
                tps = (it - it_log) * cfg.tokens_per_iter / max(now - t_log, 1e-9)
                iter_time = (now - t_log) / max(it - it_log, 1)
                t_log, it_log = now, it
                log.info("iter %d/%d | loss %.4f | lr %.2e | %s tok/s | %.0fs", it, cfg.max_iters, loss_v, lr,
                         f"{tps:,.0f}", now - t_start)
                jlog.write(type="train", iter=it, tokens=tokens, loss=loss_v, lr=lr,
                           grad_norm=None if norm is None else float(norm), tok_per_s=tps, elapsed_s=now - t_start)
                if not math.isfinite(loss_v):
                    raise LCKVError(f"loss became {loss_v} at iter {it}", param="train.lr", code="diverged")
            elif it == start_it + 1:
                iter_time = time.time() - t0
            if cfg.ckpt_interval and it % cfg.ckpt_interval == 0:
                save_checkpoint(ckpt_path, model, opt, it, tokens, cfg, gen, best_val)
    finally:
        if budget is not None:
            budget.withdraw()   # ended before the budget was fixed: peers must not wait for this run

    save_checkpoint(ckpt_path, model, opt, it, tokens, cfg, gen, best_val)
    model_dir = write_model_folder(model, cfg, out / "model")
    final_val = losses["val"]
    jlog.write(type="end", iter=it, tokens=tokens, final_val_loss=final_val, best_val_loss=best_val,
               stopped_early=stopped_early, elapsed_s=time.time() - t_start, model_dir=str(model_dir))
    log.info("done: %d iters, %s tokens, val loss %.4f, %.0fs -> %s", it, f"{tokens:,}", final_val,
             time.time() - t_start, model_dir)
    return TrainResult(out, it, tokens, final_val, stopped_early, model_dir)


def _probe(step, fwd: "CompiledOrEager", cfg: TrainConfig, probe_iters: int, out: Path, device) -> dict:
    """Throughput of the full training step (the token budget for a time limit comes from this)."""
    warm = 3
    t_warm = time.time()
    for i in range(warm + probe_iters):
        if i == warm:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.time()
        fwd.run(step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.time() - t0
    res = {"tokens_per_s": probe_iters * cfg.tokens_per_iter / dt, "iter_s": dt / probe_iters,
           "warmup_s": t0 - t_warm, "tokens_per_iter": cfg.tokens_per_iter, "compiled": fwd.compiled,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}
    (out / "probe.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    log.info("probe: %s tok/s (%.3fs/iter, warmup %.0fs)", f"{res['tokens_per_s']:,.0f}", res["iter_s"],
             res["warmup_s"])
    return res


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lckv_service train", description="Train a Llama/LCKV model from a TOML config.")
    ap.add_argument("--config", required=True, type=Path, help="run TOML with [model] and [train] tables")
    ap.add_argument("--out-dir", help="override train.out_dir")
    ap.add_argument("--data-dir", help="override train.data_dir (train.bin, val.bin)")
    ap.add_argument("--tokenizer-dir", help="override train.tokenizer_dir")
    ap.add_argument("--tokens", type=int, help="token budget: sets max_iters = ceil(tokens / tokens_per_iter)")
    ap.add_argument("--max-iters", type=int, help="override train.max_iters")
    ap.add_argument("--max-minutes", type=float, help="stop cleanly (eval, checkpoint, model folder) before this")
    ap.add_argument("--resume", action="store_true", help="continue from out_dir/ckpt.pt")
    ap.add_argument("--init-from", help="continue pretraining from this Llama/LCKV model folder")
    ap.add_argument("--convert-warmup", type=int, help="with --init-from: convert to LCKV with w warmup layers")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile (CUDA)")
    ap.add_argument("--device", help="override train.device")
    ap.add_argument("--seed", type=int, help="override train.seed")
    ap.add_argument("--sync-budget", type=Path, metavar="DIR",
                    help="with --max-minutes: share one token budget with --peers concurrent runs via DIR")
    ap.add_argument("--peers", type=int, default=1, help="runs sharing --sync-budget (this one included)")
    ap.add_argument("--probe", type=int, default=0, metavar="N", help="only measure tokens/s over N iterations")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        model_cfg, cfg = load_run_config(args.config)
        changes = {k: v for k, v in (("out_dir", args.out_dir), ("data_dir", args.data_dir),
                                     ("tokenizer_dir", args.tokenizer_dir), ("max_iters", args.max_iters),
                                     ("device", args.device), ("seed", args.seed), ("compile", args.compile))
                   if v is not None}
        if args.init_from is not None:
            changes["init_from"] = args.init_from
            model_cfg = None
        if args.convert_warmup is not None:
            changes["convert_warmup"] = args.convert_warmup
        if args.tokens is not None:
            if args.tokens <= 0:
                raise ConfigError("--tokens must be positive", param="tokens")
            base = cfg.replace(**changes)
            changes["max_iters"] = max(1, math.ceil(args.tokens / base.tokens_per_iter))
        if args.max_minutes is not None and args.max_minutes <= 0:
            raise ConfigError("--max-minutes must be positive", param="max_minutes")
        if args.probe < 0:
            raise ConfigError("--probe must be >= 0", param="probe")
        cfg = cfg.replace(**changes)
        budget = None
        if args.sync_budget is not None:
            if args.max_minutes is None or args.tokens is not None:
                raise ConfigError("--sync-budget needs --max-minutes and replaces --tokens", param="sync_budget")
            budget = BudgetSync(args.sync_budget, Path(cfg.out_dir).name, args.peers, args.max_minutes)
            if budget.measure_to >= cfg.warmup_iters:
                log.warning("budget is fixed after the LR warmup (%d iters): the cosine starts from the "
                            "provisional max_iters", cfg.warmup_iters)
            cfg = cfg.replace(max_iters=10**9)   # provisional: replaced at iteration budget.measure_to
        try:
            res = train(model_cfg, cfg, resume=args.resume, max_minutes=args.max_minutes, probe_iters=args.probe,
                        budget=budget)
        finally:
            if budget is not None:
                budget.withdraw()   # whatever happened, peers must not wait for this run
    except LCKVError as e:
        log.error("error: %s", e)
        return 2
    if isinstance(res, dict):
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
