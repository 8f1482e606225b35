#!/usr/bin/env bash
# GPU run of the model core: the pytest suite with CUDA visible (device-parametrized tests then
# also run on cuda / bf16), then the full-size KV-convergence experiment (paper Fig. 3).
#
#   OUT=/path/to/results bash gpu-service/scripts/gpu_suite.sh      (from anywhere; OUT defaults to ./out)
#
# Writes into $OUT: env.txt, pytest-core.txt, pytest-core.xml, kv_convergence/{kv_convergence.json,png}.
# Needs: torch with CUDA, numpy, safetensors, pytest, hypothesis, transformers; matplotlib for the PNG.
set -euo pipefail
OUT="${OUT:-./out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"      # gpu-service/
PY="${PYTHON:-python3}"
cd "$HERE"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'PYEOF' | tee "$OUT/env.txt"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
for m in ("pytest", "hypothesis", "transformers", "safetensors", "matplotlib"):
    try:
        print(m, importlib.import_module(m).__version__)
    except ImportError:
        print(m, "MISSING")
PYEOF

status=0
"$PY" -m pytest tests/test_config.py tests/test_model.py tests/test_prefill_decode.py tests/test_cache.py \
    tests/test_blob.py tests/test_checkpoint.py tests/test_kv_convergence.py \
    -q -rs --durations=15 --junitxml="$OUT/pytest-core.xml" 2>&1 | tee "$OUT/pytest-core.txt" || status=$?

# KVC_ARGS overrides the experiment's size (e.g. "--shape tiny-test --tokens 64" for a CPU smoke run)
# shellcheck disable=SC2086
"$PY" scripts/kv_convergence.py --out "$OUT/kv_convergence" \
    ${KVC_ARGS:---shape tinyllama-1.1b --tokens 2048 --warmup 0 2 4 --iterations 40 --dtype float32} \
    2>&1 | tee "$OUT/kv_convergence.log"

echo "pytest exit status: $status" | tee -a "$OUT/env.txt"
exit "$status"
