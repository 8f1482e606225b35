"""Reproduce Fig. 3 of the LCKV paper: how fast the target layer's K/V converge over iterations.

For each model, runs the parallel forward with N passes over the iterated block and records, per
pass k, the mean squared change of the target K/V (before RoPE) from pass k-1 (pass 0 = zeros).
Default: random TinyLlama-shaped models (w in {0, 2, 4}) on 2048 random tokens; --checkpoint adds
a trained model (and its random-weight twin) for comparison. Writes kv_convergence.json and
kv_convergence.png into --out.

  GPU (full size):  python scripts/kv_convergence.py --out out/kv_convergence
  CPU quick check:  python scripts/kv_convergence.py --shape tiny-test --tokens 64 --iterations 12 --out /tmp/kvc
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from lckv_service.checkpoint import load_model, read_config  # noqa: E402
from lckv_service.config import PRESETS, ModelConfig  # noqa: E402
from lckv_service.model import LCKVModel  # noqa: E402

log = logging.getLogger("kv_convergence")


def kv_changes(model: LCKVModel, idx: torch.Tensor, iterations: int) -> list[float]:
    """Mean squared change of the cyclic targets' K/V (k before RoPE, v) at each pass."""
    passes: list[list[torch.Tensor]] = []
    hooks = []
    for t in model.cfg.cyclic_targets:
        attn = model.model.layers[t].self_attn
        for proj in (attn.k_proj, attn.v_proj):  # called once per pass on the target layer
            hooks.append(proj.register_forward_hook(lambda m, i, out: passes[-1].append(out.float())))

    def new_pass(module, args):  # the iterated block's first layer starts every pass
        passes.append([])

    lo, _ = model.cfg.iter_block
    hooks.append(model.model.layers[lo].register_forward_pre_hook(new_pass))
    try:
        with torch.no_grad():
            model(idx, iterations=iterations)
    finally:
        for h in hooks:
            h.remove()
    prev = [torch.zeros_like(x) for x in passes[0]]
    out = []
    for cur in passes:
        sq = sum(((c - p) ** 2).sum().item() for c, p in zip(cur, prev))
        out.append(sq / sum(c.numel() for c in cur))
        prev = cur
    return out


def random_model(cfg: ModelConfig, device, dtype, seed: int) -> LCKVModel:
    torch.manual_seed(seed)
    with torch.device(device):
        return LCKVModel(cfg).to(dtype).eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("out/kv_convergence"))
    ap.add_argument("--shape", default="tinyllama-1.1b", choices=sorted(PRESETS))
    ap.add_argument("--warmup", type=int, nargs="+", default=[0, 2, 4], help="w values for random models")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--checkpoint", type=Path, help="also measure this trained checkpoint (and a random twin)")
    ap.add_argument("--token-file", type=Path, help="token ids (whitespace-separated ints or .npy) instead of random")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    dtype = getattr(torch, args.dtype)
    args.out.mkdir(parents=True, exist_ok=True)

    models: list[tuple[str, callable]] = [
        (f"random w={w}", lambda w=w: random_model(ModelConfig.preset(args.shape, f"lckv-w{w}"), args.device, dtype,
                                                   args.seed)) for w in args.warmup]
    if args.checkpoint:
        trained = lambda: load_model(args.checkpoint, device=args.device, dtype=dtype)  # noqa: E731
        models += [("trained " + args.checkpoint.name, trained),
                   ("random twin of " + args.checkpoint.name,
                    lambda: random_model(read_config(args.checkpoint)[0], args.device, dtype, args.seed))]
    runs = []
    for label, make in models:
        t0 = time.perf_counter()
        model = make()
        cfg = model.cfg
        if not cfg.is_cyclic:
            log.info("%s: no cyclic K/V target, skipped", label)
            continue
        idx = load_tokens(args, cfg.vocab_size)
        log.info("%s: %d layers, kv_layers %s, %d tokens, %d passes on %s/%s", label, cfg.num_layers,
                 list(cfg.kv_layers), idx.shape[1], args.iterations, args.device, args.dtype)
        mse = kv_changes(model, idx, args.iterations)
        below = {f"{th:g}": next((k + 1 for k, v in enumerate(mse) if v < th), None) for th in (1e-2, 1e-3, 1e-4, 1e-6)}
        log.info("%s: done in %.1fs; first pass below threshold: %s; last %.3e", label,
                 time.perf_counter() - t0, below, mse[-1])
        runs.append({"label": label, "warmup_layers": cfg.warmup_layers, "kv_source": list(cfg.kv_source),
                     "mse": mse, "first_pass_below": below})
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    result = {"shape": args.shape, "tokens": args.tokens, "iterations": args.iterations, "device": args.device,
              "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
              "dtype": args.dtype, "torch": torch.__version__,
              "metric": "mean squared change of the target K/V (pre-RoPE k and v) from the previous pass",
              "runs": runs}
    (args.out / "kv_convergence.json").write_text(json.dumps(result, indent=1))
    log.info("wrote %s", args.out / "kv_convergence.json")
    plot(result, args.out / "kv_convergence.png")
    return 0


def load_tokens(args, vocab: int) -> torch.Tensor:
    if args.token_file:
        if args.token_file.suffix == ".npy":
            import numpy as np
            ids = torch.from_numpy(np.load(args.token_file).astype("int64").ravel())
        else:
            ids = torch.tensor([int(x) for x in args.token_file.read_text().split()], dtype=torch.long)
        ids = ids[: args.tokens]
        if ids.numel() == 0 or int(ids.max()) >= vocab or int(ids.min()) < 0:
            raise SystemExit(f"--token-file must hold ids in [0, {vocab})")
    else:
        ids = torch.randint(0, vocab, (args.tokens,), generator=torch.Generator().manual_seed(args.seed))
    return ids[None].to(args.device)


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot (the JSON has the numbers)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in result["runs"]:
        ax.plot(range(1, len(run["mse"]) + 1), [max(v, 1e-30) for v in run["mse"]], marker=".", label=run["label"])
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean squared change of target K/V")
    ax.set_title(f"KV convergence ({result['shape']}, {result['tokens']} tokens, {result['dtype']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    log.info("wrote %s", path)


if __name__ == "__main__":
    raise SystemExit(main())
