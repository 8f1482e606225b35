#!/usr/bin/env bash
# GPU-service suite for a GPU machine (also runs on CPU): the service tests with the engine and server on
# cuda where available, then a short serving run (bench/run.py --suite serving: the real server under
# concurrent streams vs the engine alone). Everything lands in $OUT (default ./gpu-suite-out):
#   env.txt               torch / CUDA / package versions seen
#   pytest.txt, junit.xml the test run (LCKV_TEST_DEVICE=cuda|cpu)
#   serving.jsonl         tiny shape on CPU, or TinyLlama-1.1B shape (bf16) on cuda: tokens/s, TTFT, ITL,
#                         nothing lost or duplicated, the engine alone in the same row
# Usage (from the repository root): bash gpu-service/scripts/gpu_service_suite.sh
# Needs torch plus the packages in gpu-service/pyproject.toml (+ test extras). On a machine without
# network, point WHEELHOUSE at a folder of wheels made elsewhere with
#   pip download -d WHEELHOUSE pytest==9.2.0 hypothesis==6.170.15 jinja2==3.1.6 prometheus-client==0.26.0 \
#     aiohttp==3.14.5 tokenizers==0.23.3 safetensors==0.8.0 transformers==5.23.0
# (matching the machine's Python version) and they are installed from there first.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${OUT:-$PWD/gpu-suite-out}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"   # absolute: the script changes directory below
PY="${PYTHON:-python3}"
export PYTHONPATH="$root/gpu-service${PYTHONPATH:+:$PYTHONPATH}"
cd "$root/gpu-service"

if [ -n "${WHEELHOUSE:-}" ]; then
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELHOUSE" \
    pytest hypothesis jinja2 prometheus-client aiohttp tokenizers safetensors transformers 2>&1 | tail -3
fi

"$PY" - > "$OUT/env.txt" 2>&1 <<'PYEOF'
import importlib.metadata as md, platform
import torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for m in ("tokenizers", "safetensors", "jinja2", "aiohttp", "prometheus-client", "pytest", "hypothesis", "transformers"):
    try:
        print(m, md.version(m))
    except md.PackageNotFoundError:
        print(m, "MISSING")
PYEOF
cat "$OUT/env.txt"

device=cpu
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then device=cuda; fi

LCKV_TEST_DEVICE=$device "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT/junit.xml" \
  tests/test_tokenizer.py tests/test_sampling.py tests/test_scheduler.py tests/test_engine.py tests/test_server*.py \
  tests/test_runner_decode.py \
  2>&1 | tee "$OUT/pytest.txt"
rc=${PIPESTATUS[0]}

if [ $device = cuda ]; then
  serving=(--shapes tinyllama-1.1b --variants llama,lckv-w2 --streams 128 --settings 512+128 --arrivals burst)
else
  serving=(--tiny --variants lckv-w2 --streams 16 --arrivals burst)
fi
"$PY" "$root/bench/run.py" --suite serving:300 "${serving[@]}" --device $device --out "$OUT/serving.jsonl" \
  2>&1 | tail -5 | tee "$OUT/serving.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
echo "gpu_service_suite: device=$device rc=$rc (results in $OUT)"
exit $rc
