# Sourced by the one-call GPU scripts (serving_gpu.sh, responses_gpu.sh): the output folder ($out), the
# Python ($py), the carried wheels (.whl: the GPU machine has no internet) and the import paths.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-bench/results}; mkdir -p "$out"; out=$(cd "$out" && pwd)
py=$(command -v python3)
if [ -d .whl ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/gpu-service:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
