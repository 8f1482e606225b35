#!/usr/bin/env bash
# The serving benchmark on a GPU machine (one device call each; writes $OUT/serving-<part>.jsonl/.log):
#   bash bench/serving_gpu.sh now       # CUDA graph tests, then this tree's service vs the engine alone
#   bash bench/serving_gpu.sh baseline  # the same load against another tree's service (.baseline/gpu-service)
#   bash bench/serving_gpu.sh max       # Llama-2-7B shape, as many streams as each variant's K/V pool holds
#   bash bench/serving_gpu.sh rows      # no tests: only the run.py arguments given
#   bash bench/serving_gpu.sh ab        # the run.py arguments given twice: the engine in its own process
#                                       # (the default) and, as the baseline, in the server's (serving-ab-off)
# Carry .whl (pytest, prometheus-client, jinja2, py-spy: the machine has no internet) and, for
# `baseline`, .baseline (`git archive <commit> gpu-service/lckv_service | tar -x -C .baseline`).
part=${1:?usage: bash bench/serving_gpu.sh now|baseline|max|rows [run.py args...]}; shift
source "$(dirname "$0")/gpu_env.sh"
export LCKV_BENCH_PYSPY=/tmp/site/bin/py-spy LCKV_BENCH_PYSPY_OUT="$out"
log="$out/serving-$part.log"
nvidia-smi --query-gpu=name,memory.total --format=csv >"$log" 2>&1
case "$part" in
  now)
    (cd gpu-service && timeout 60 "$py" -m pytest -q -p no:cacheprovider tests/test_bench_kernels.py \
      tests/test_runner_decode.py -k "cuda or graph or bucket" >>"$log" 2>&1) || echo "kernel tests failed" >>"$log"
    # the engine (serial and overlapped steps) and the server under load, on the GPU
    (cd gpu-service && LCKV_TEST_DEVICE=cuda timeout "${TESTS_S:-150}" "$py" -m pytest -q -x -p no:cacheprovider \
      tests/test_engine.py tests/test_server_load.py tests/test_engine_process.py >>"$log" 2>&1) \
      || echo "engine tests failed" >>"$log"
    src=() ;;
  baseline) src=(--server-src .baseline/gpu-service) ;;
  max) src=(--shapes llama2-7b --streams max --arrivals burst) ;;
  rows|ab) src=() ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
rows() {  # rows <name> [extra run.py args...]
  local name=$1; shift
  timeout --signal=INT --kill-after=20 "${BUDGET:-500}" "$py" bench/run.py --suite "serving:${SUITE_S:-470}" \
    --shapes tinyllama-1.1b --out "$out/serving-$name.jsonl" "${src[@]}" "$@" >>"$log" 2>&1 \
    || echo "run.py exited with $?" >>"$log"
}
rows "$part" "$@"
if [ "$part" = ab ]; then rows ab-off "$@" --server-args "--engine-process off"; fi
