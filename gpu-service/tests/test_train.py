"""Training loop, resume, evaluation and config parsing on a tiny model and synthetic token shards (CPU)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lckv_service.checkpoint import load_model, save_model
from lckv_service.config import ModelConfig
from lckv_service.errors import ConfigError
from lckv_service.model import LCKVModel
from lckv_service.train.config import TrainConfig, load_run_config
from lckv_service.train.data import TokenShard
from lckv_service.train.evaluate import evaluate
from lckv_service.train.train import get_lr, main, train

VOCAB = 61
MODEL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=4, num_heads=2, num_kv_heads=1,
             max_position_embeddings=64, forward_passes=2, backward_passes=2)


def write_shards(folder, n_train=6000, n_val=600, seed=0):
    """Documents that follow x[t+1] = (a * x[t] + c) mod (VOCAB - 1) + 1 with a per-document (a, c):
    learnable in a few steps (the model has to infer (a, c) in context), separated by id 0."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("val", n_val)):
        out = []
        while len(out) < n:
            a, c, x = (int(v) for v in rng.integers(1, 7, 3))
            doc = [x]
            for _ in range(int(rng.integers(20, 60))):
                doc.append((a * doc[-1] + c) % (VOCAB - 1) + 1)
            out += doc + [0]
        np.asarray(out[:n], dtype=np.uint16).tofile(folder / f"{name}.bin")
    return folder


def tiny_cfg(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(out_dir=str(tmp_path / name), data_dir=str(tmp_path / "tokens"), batch_size=8, block_size=32,
                max_iters=20, lr=1e-2, min_lr=1e-3, warmup_iters=2, lr_decay_iters=20, eval_interval=10,
                eval_iters=2, log_interval=1, seed=7)
    return TrainConfig(**{**base, **kw})


def read_log(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("data") / "tokens")


def test_get_lr_warmup_cosine_floor():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    lrs = [get_lr(i, cfg) for i in range(130)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))            # warmup rises
    assert lrs[10] == pytest.approx(1e-3)                               # peak right after warmup
    assert lrs[60] == pytest.approx(0.5 * (1e-3 + 1e-4))                # cosine midpoint
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))        # then decays monotonically
    assert lrs[110:] == [pytest.approx(1e-4)] * 20                      # and stays at the floor
    assert get_lr(5, cfg) == get_lr(5, cfg)                              # pure


def test_loss_decreases_and_resume_matches_uninterrupted(tmp_path, shards):
    (tmp_path / "tokens").symlink_to(shards)
    mcfg = ModelConfig.lckv(2, **MODEL)
    full = train(mcfg, tiny_cfg(tmp_path, "full"))
    log = [r for r in read_log(full.out_dir / "log.jsonl") if r["type"] == "train"]
    losses = [r["loss"] for r in log]
    assert len(losses) == 20
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.5, losses    # it learns
    evals = [r["val_loss"] for r in read_log(full.out_dir / "log.jsonl") if r["type"] == "eval"]
    assert evals[0] == pytest.approx(math.log(VOCAB), abs=0.3)          # untrained: about uniform
    assert evals[-1] == full.final_val_loss < evals[0] - 0.4             # held-out loss falls too

    # 10 iterations, then resume to 20 from the checkpoint: identical trajectory (optimizer, data RNG restored)
    train(mcfg, tiny_cfg(tmp_path, "split", max_iters=10))
    res = train(None, tiny_cfg(tmp_path, "split", max_iters=20), resume=True)
    split = [r for r in read_log(res.out_dir / "log.jsonl") if r["type"] == "train"]
    assert [r["iter"] for r in split] == list(range(1, 21))
    np.testing.assert_allclose([r["loss"] for r in split], losses, rtol=1e-5)
    assert res.final_val_loss == pytest.approx(full.final_val_loss, rel=1e-5)

    # the final model folder loads and gives the training model's logits (bf16 weights)
    model = load_model(full.model_dir, dtype=torch.float32)
    assert model.cfg == mcfg
    ckpt = torch.load(full.out_dir / "ckpt.pt", weights_only=False)
    assert ckpt["iter"] == 20 and ckpt["model_config"] == mcfg.to_dict()


def test_evaluate_exact_matches_theorem1_and_differs_from_iterative(tmp_path, shards):
    torch.manual_seed(0)
    model = LCKVModel(ModelConfig.lckv(2, **MODEL)).eval()
    shard = TokenShard(shards / "val.bin", 16)
    res = evaluate(model, shard, methods=("exact", "iterative", "theorem1"), block_size=16, max_tokens=160,
                   batch_size=4, chunk=4)
    # exact (KV-cache prefill, chunks of 4 with 4 passes) vs Theorem 1 (forward with T passes): two code paths
    assert res["exact"]["tokens"] == res["theorem1"]["tokens"] == 160
    assert res["exact"]["loss"] == pytest.approx(res["theorem1"]["loss"], abs=1e-5)
    assert res["theorem1"]["nll_abs_diff_vs_exact"]["max"] < 1e-4          # token by token, not just on average
    assert res["iterative"]["nll_abs_diff_vs_exact"]["mean"] > 1e-6          # random weights: 4 passes are not exact
    assert res["iterative"]["iterations"] == 4 and res["iterative"]["loss"] != pytest.approx(res["exact"]["loss"], abs=1e-6)

    llama = LCKVModel(ModelConfig.llama(**MODEL)).eval()
    res = evaluate(llama, shard, methods=("exact", "iterative"), block_size=16, max_tokens=160, batch_size=4)
    assert res["exact"]["loss"] == pytest.approx(res["iterative"]["loss"], abs=1e-5)


def test_max_minutes_stops_cleanly_with_model_folder(tmp_path, shards):
    (tmp_path / "tokens").symlink_to(shards)
    res = train(ModelConfig.llama(**MODEL), tiny_cfg(tmp_path, "capped", max_iters=10_000), max_minutes=0.01)
    assert res.stopped_early and res.iters < 10_000
    assert (res.model_dir / "model.safetensors").is_file() and (res.out_dir / "ckpt.pt").is_file()
    end = read_log(res.out_dir / "log.jsonl")[-1]
    assert end["type"] == "end" and end["stopped_early"] is True


def test_init_from_llama_converted_to_lckv(tmp_path, shards):
    (tmp_path / "tokens").symlink_to(shards)
    torch.manual_seed(1)
    save_model(LCKVModel(ModelConfig.llama(**MODEL)), tmp_path / "llama", dtype=torch.float32)
    res = train(None, tiny_cfg(tmp_path, "cpt", max_iters=3, init_from=str(tmp_path / "llama"), convert_warmup=2))
    assert load_model(res.model_dir).cfg.warmup_layers == 2


def write_toml(path, text):
    path.write_text(text, encoding="utf-8")
    return path


MODEL_TOML = """[model]
variant = "lckv"
warmup_layers = 2
vocab_size = 61
hidden_size = 32
intermediate_size = 64
num_layers = 4
num_heads = 2
num_kv_heads = 1
max_position_embeddings = 64
forward_passes = 2
backward_passes = 2
"""


def test_cli_tokens_budget_and_probe(tmp_path, shards, capsys):
    cfg = write_toml(tmp_path / "run.toml", MODEL_TOML + f"""[train]
out_dir = "{tmp_path / 'cli'}"
data_dir = "{shards}"
batch_size = 4
block_size = 32
eval_iters = 1
eval_interval = 0
log_interval = 2
""")
    assert main(["--config", str(cfg), "--tokens", "640"]) == 0          # 640 / (4 * 32) = 5 iterations
    end = read_log(tmp_path / "cli" / "log.jsonl")[-1]
    assert end["type"] == "end" and end["iter"] == 5 and end["tokens"] == 640
    assert main(["--config", str(cfg), "--probe", "2", "--out-dir", str(tmp_path / "probe")]) == 0
    probe = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert probe["tokens_per_s"] > 0 and probe["tokens_per_iter"] == 128
    assert main(["--config", str(cfg), "--tokens", "0"]) == 2


@pytest.mark.parametrize("body, param", [
    (MODEL_TOML + "[train]\nlr = \"fast\"\n", "train.lr"),
    (MODEL_TOML + "[train]\nlr = 2.0\n", "train.lr"),
    (MODEL_TOML + "[train]\nlearning_rate = 0.1\n", "train.learning_rate"),
    (MODEL_TOML + "[train]\nbatch_size = 0\n", "train.batch_size"),
    (MODEL_TOML + "[train]\ncompile = 1\n", "train.compile"),
    (MODEL_TOML.replace("warmup_layers = 2", "warmup_layers = 3") + "[train]\n", "model.warmup_layers"),
    (MODEL_TOML.replace("num_kv_heads = 1", "num_kv_heads = 3") + "[train]\n", "model.num_kv_heads"),
    (MODEL_TOML.replace('variant = "lckv"', 'variant = "gpt"') + "[train]\n", "model.variant"),
    (MODEL_TOML + "dropout = 0.1\n[train]\n", "model.dropout"),
    ("[train]\nlr = 0.001\n", "model"),
    ("[train\nlr = 0.001\n", "config"),
    (MODEL_TOML + "[optimizer]\nlr = 0.1\n", "optimizer"),
])
def test_bad_config_names_the_field(tmp_path, body, param):
    with pytest.raises(ConfigError) as e:
        load_run_config(write_toml(tmp_path / "bad.toml", body))
    assert e.value.param == param


def test_shipped_configs_parse_and_fit_the_size_budget():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    sizes = {}
    for v in ("llama", "w2", "w6"):
        mcfg, tcfg = load_run_config(root / "configs" / f"lckv-tiny-{v}.toml")
        with torch.device("meta"):
            sizes[v] = sum(p.numel() for p in LCKVModel(mcfg).parameters())
        assert sizes[v] * 2 <= 32e6                                      # bf16 safetensors <= 32 MB
        assert tcfg.block_size <= mcfg.max_position_embeddings
    assert ModelConfig.from_dict(load_run_config(root / "configs" / "lckv-tiny-w6.toml")[0].to_dict()).warmup_layers == 6
    mcfg, tcfg = load_run_config(root / "configs" / "lckv-tiny-w2-cpt.toml")
    assert mcfg is None and tcfg.init_from and tcfg.convert_warmup == 2


def test_token_shard_rejects_bad_files(tmp_path):
    np.asarray([1, 2, 3], dtype=np.uint16).tofile(tmp_path / "short.bin")
    with pytest.raises(ConfigError) as e:
        TokenShard(tmp_path / "short.bin", 16)
    assert e.value.param == "train.block_size"
    np.asarray([1, 2, 300] * 20, dtype=np.uint16).tofile(tmp_path / "big.bin")
    with pytest.raises(ConfigError) as e:
        TokenShard(tmp_path / "big.bin", 16, vocab_size=256)
    assert e.value.param == "model.vocab_size"
    with pytest.raises(ConfigError):
        TokenShard(tmp_path / "missing.bin", 16)


def test_budget_sync_gives_every_peer_the_same_max_iters(tmp_path):
    import threading
    from lckv_service.train.budget import BudgetSync
    results = {}

    def run(name, seconds_per_iter):
        b = BudgetSync(tmp_path / "sync", name, peers=2, minutes=10, measure_from=5, measure_to=25)
        b.observe(5, 10.0, 0.0, 1000, 30)
        b.observe(25, 10.0 + 20 * seconds_per_iter, 0.0, 1000, 30)
        results[name] = b.poll(block=True)

    threads = [threading.Thread(target=run, args=("fast", 0.01)), threading.Thread(target=run, args=("slow", 0.04))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # slowest: 20 iters * 1000 tokens / 0.8 s = 25,000 tok/s; left = 600 - 10.8 - 30 = 559.2 s
    assert results["fast"] == results["slow"]
    assert abs(results["fast"] - (25 + 25_000 * 559.2 * 0.85 / 1000)) < 2   # floor of a float product


def test_budget_fixed_inside_training_ends_the_run(tmp_path, shards):
    from lckv_service.train.budget import BudgetSync
    (tmp_path / "tokens").symlink_to(shards)
    budget = BudgetSync(tmp_path / "sync", "only", peers=1, minutes=0.01, measure_from=2, measure_to=4)
    res = train(ModelConfig.llama(**MODEL), tiny_cfg(tmp_path, "budget", max_iters=10**9, warmup_iters=5,
                                                        eval_interval=0), budget=budget)
    log = read_log(res.out_dir / "log.jsonl")
    assert [r for r in log if r["type"] == "budget"][0]["max_iters"] == 4     # no time left: stop at the probe
    assert res.iters == 4 and not res.stopped_early


def test_compile_failure_falls_back_to_eager_once():
    from lckv_service.train.train import CompiledOrEager
    model = LCKVModel(ModelConfig.llama(**MODEL)).eval()
    fwd = CompiledOrEager(model, compile=False)

    def broken(*args, **kw):
        raise RuntimeError("inductor failed")
    fwd.fn = broken                                   # what a failing torch.compile wrapper does at first call
    x = torch.zeros(1, 4, dtype=torch.long)
    logits = fwd.run(lambda f: f(x)[0])
    assert not fwd.compiled and torch.equal(logits, model(x)[0])
    with pytest.raises(RuntimeError):                 # eager errors are real errors: no second fallback
        fwd.run(lambda f: f(torch.zeros(1, 4)))


def test_report_table_and_plot(tmp_path):
    from lckv_service.train.report import eval_table, loss_curves, plot_losses
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"type": "start", "iter": 0}, {"type": "eval", "iter": 0, "tokens": 0, "val_loss": 9.0},
        {"type": "train", "iter": 1, "tokens": 100, "loss": 8.5}, {"type": "eval", "iter": 1, "tokens": 100, "val_loss": 8.0},
        {"type": "start", "iter": 1, "resumed": True}, {"type": "train", "iter": 2, "tokens": 200, "loss": 7.5}]) + "\n")
    assert loss_curves({"w2": log})["w2"] == {"train": [(100, 8.5), (200, 7.5)], "val": [(0, 9.0), (100, 8.0)]}
    assert plot_losses({"w2": log}, tmp_path / "loss.png") and (tmp_path / "loss.png").stat().st_size > 1000
    ev = {"name": "w2", "warmup_layers": 2, "kv_layers": 3, "num_layers": 12, "kv_bytes_per_token_bf16": 3072,
          "params": 13_048_064, "block_size": 1024,
          "methods": {"exact": {"ppl": 20.0, "tokens": 1023}, "iterative": {"ppl": 20.5, "tokens": 1023}}}
    table = eval_table([ev])
    assert "| w2 | 2 | 3/12 | 3,072 | 13.05M | 20.000 | 20.500 | +2.50% |" in table


def test_budget_does_not_wait_for_a_withdrawn_or_missing_peer(tmp_path):
    import time
    from lckv_service.train.budget import BudgetSync
    alive = BudgetSync(tmp_path, "alive", peers=2, minutes=10, measure_from=0, measure_to=10, timeout_s=60)
    alive.observe(0, 0.0, 0.0, 100, 0)
    alive.observe(10, 1.0, 0.0, 100, 0)
    assert alive.poll(block=False) is None                            # the peer has not reported: keep training
    BudgetSync(tmp_path, "crashed", peers=2, minutes=10).withdraw()
    assert abs(alive.poll(block=False) - (10 + 1000 * 599 * 0.85 / 100)) < 2
    late = BudgetSync(tmp_path / "other", "late", peers=3, minutes=10, measure_from=0, measure_to=10, timeout_s=60)
    late.observe(0, 0.0, 0.0, 100, 0)
    late.observe(10, 1.0, 0.0, 100, 0)
    t0 = time.time()
    assert late.poll(block=True, wait_until=time.time() + 1) is not None   # peers never come: bounded wait
    assert time.time() - t0 < 5


def test_samples_greedy_equals_full_recompute(tmp_path):
    """samples.py generates with the serving computation (exact prefill + decode); every token must
    be the argmax of a from-scratch forward over the whole text with T passes (exact by Theorem 1)."""
    import shutil
    from pathlib import Path
    from conftest import tiny_cfg
    from lckv_service.train import samples as S
    shipped = Path(__file__).resolve().parents[1] / "models" / "lckv-tiny"
    cfg = tiny_cfg(2, layers=4, vocab_size=8192)
    torch.manual_seed(0)
    save_model(LCKVModel(cfg), tmp_path / "m", dtype=torch.float32)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(shipped / f, tmp_path / "m" / f)
    out = tmp_path / "s.json"
    assert S.main(["--model", f"tiny={tmp_path / 'm'}", "--max-new", "5", "--out", str(out),
                   "--md", str(tmp_path / "s.md")]) == 0
    rows = json.loads(out.read_text())["tiny"]
    assert [r["kind"] for r in rows] == ["prose"] * len(S.PROSE) + ["chat"] * len(S.CHAT)
    assert "| prose |" in (tmp_path / "s.md").read_text()
    model = load_model(tmp_path / "m", dtype=torch.float64).eval()
    tok = S.ChatTokenizer.from_folder(tmp_path / "m")
    ids = tok.encode(S.PROSE[0])
    got = S.greedy(load_model(tmp_path / "m", dtype=torch.float32).eval(), ids, 5, frozenset({0}))
    ref = []
    with torch.no_grad():
        for _ in range(len(got)):
            x = torch.tensor([ids + ref])
            ref.append(int(model(x, iterations=x.shape[1])[0][0, -1].argmax()))
            if ref[-1] == 0:
                break
    assert got == ref
    with pytest.raises(SystemExit):
        S.main(["--model", "no-equals-sign", "--out", str(out)])
    with pytest.raises(SystemExit):
        S.main(["--model", f"tiny={tmp_path / 'm'}", "--max-new", "0", "--out", str(out)])
    missing = tmp_path / "missing.json"   # a bad folder: exit 2 with a message, nothing written
    assert S.main(["--model", f"x={tmp_path / 'nope'}", "--out", str(missing)]) == 2
    assert not missing.exists()
