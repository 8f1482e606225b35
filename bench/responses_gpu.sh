#!/usr/bin/env bash
# Issue 16's GPU row in one device call (under 4 minutes on an H100, model folder and server start included):
#   bash bench/responses_gpu.sh [run.py args...]
# The GPU service alone (TinyLlama-1.1B shape, lckv-w2, random bf16 weights, cache window 2048) driven
# with the Worker's upstream requests: turn N by previous_response_id vs the whole history sent
# statelessly, at 1k/4k/16k tokens of history (bench/lckv_bench/suites/responses.py). A GPU host has
# no Node, so the Worker cannot run there; its share is the CPU row (bench/responses_ttft.mjs).
# Writes $OUT/responses-gpu.jsonl, $OUT/responses-ttft-gpu.md (copy both into bench/results/) and
# $OUT/responses-gpu.log. Carry .whl (prometheus-client, jinja2: the machine has no internet); no
# pytest needed. Env: HISTORY (default 1000,4000,16000), REPEATS (3), SUITE_S (the suite's seconds,
# 190: a stateless request that would outlive them is cut and reported as a lower bound), BUDGET (225).
source "$(dirname "$0")/gpu_env.sh"
log="$out/responses-gpu.log"
nvidia-smi --query-gpu=name,memory.total --format=csv >"$log" 2>&1
# the suite bounds itself (SUITE_S); the outer timeout only guards against a hang
timeout --signal=INT --kill-after=15 "${BUDGET:-225}" "$py" bench/run.py --suite "responses:${SUITE_S:-190}" \
  --shapes tinyllama-1.1b --variants lckv-w2 --history "${HISTORY:-1000,4000,16000}" --repeats "${REPEATS:-3}" \
  --label gpu --out "$out/responses-gpu.jsonl" "$@" >>"$log" 2>&1 || echo "run.py exited with $?" >>"$log"
cat "$out/responses-ttft-gpu.md" 2>/dev/null || echo "no table: see $log"
