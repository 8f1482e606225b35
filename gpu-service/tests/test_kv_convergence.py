"""scripts/kv_convergence.py runs (tiny, CPU) and writes a sane JSON and a PNG."""
import importlib.util
import json
from pathlib import Path

import torch

from conftest import make_model, tiny_cfg
from lckv_service.checkpoint import save_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "kv_convergence.py"


def test_kv_convergence_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("kv_convergence", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    save_model(make_model(tiny_cfg(2), std=0.02), tmp_path / "ckpt", dtype=torch.float32)
    out = tmp_path / "out"
    assert mod.main(["--shape", "tiny-test", "--tokens", "24", "--iterations", "24", "--warmup", "0", "2",
                     "--checkpoint", str(tmp_path / "ckpt"), "--device", "cpu", "--dtype", "float64",
                     "--out", str(out)]) == 0
    res = json.loads((out / "kv_convergence.json").read_text())
    assert [r["label"] for r in res["runs"]][:2] == ["random w=0", "random w=2"] and len(res["runs"]) == 4
    for run in res["runs"]:
        mse = run["mse"]
        assert len(mse) == 24 and mse[0] > 0
        assert mse[-1] < 1e-9 * mse[0]   # passes -> tokens: the fixed point is reached (Theorem 1)
    assert (out / "kv_convergence.png").stat().st_size > 1000
