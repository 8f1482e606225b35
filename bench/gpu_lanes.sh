#!/usr/bin/env bash
# One device call on a 4-GPU host, four independent lanes, one GPU each (CUDA_VISIBLE_DEVICES), so a
# lane's timings never share a GPU with another lane. Ratios are still taken only inside one bench run
# (one lane's run.py call). carry: data/tokens, .gpu-wheels (plan c also runs/baseline_triton_decode.py)
#   bash bench/gpu_lanes.sh a    # (ran 2026-11-26 08:25)
#     lane 0: issue 5 training (three models concurrently, fixed equal token budget) + eval + report
#     lane 1: kernel tests on CUDA, then Llama-2-7B 512+1024 throughput: llama, lckv-w2, hf-llama (+ roofline)
#     lane 2: isolated training tokens/s of each model (probe), then Llama -> LCKV w=2 continued pretraining
#     lane 3: TinyLlama-1.1B throughput 512+1024 (all four variants), prefill, streaming, sessions
#   bash bench/gpu_lanes.sh b    # the throughput grid, LCKV prefill tokenwise
#     lane 0: Llama-2-7B 512+1024   lane 1: Llama-2-7B 2048+2048   (llama, lckv-w2, lckv-w10, hf-llama)
#     lane 2: the Llama of lane a retrained alone (24M tokens) for its eval + samples; Llama-2-7B 5+2043
#     lane 3: TinyLlama-1.1B 512+1024, 2048+2048, 5+2043
#   bash bench/gpu_lanes.sh c    # after the graph-stream fix, kernel autotune, FastPrefill, auto LCKV prefill
#     lane 0: CUDA tests (Triton kernel, FastDecode, FastPrefill), kernel sweep, sessions, prefill, streaming
#     lane 1: Llama-2-7B 2048+2048   lane 2: Llama-2-7B 512+1024   (llama, lckv-w2, lckv-w10, hf-llama)
#     lane 3: the GPU-service suite on CUDA (engine with FastDecode+Triton, load runs fast vs reference
#             decode); TinyLlama-1.1B 512+1024
plan=${1:?usage: bash bench/gpu_lanes.sh a|b|c}
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:?set OUT}
work=${WORK:-runs/lanes}; rm -rf "$work"; mkdir -p "$work"
export PYTHONPATH="$PWD/gpu-service:$PWD/bench" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
py=$(command -v python3)
"$py" -m pip install -q --no-index --find-links .gpu-wheels pytest hypothesis prometheus-client tqdm jinja2 >/dev/null 2>&1
nvidia-smi --query-gpu=index,name,memory.total --format=csv >"$work/gpus.txt" 2>&1
run_id=$(date -u +%Y%m%dT%H%M%S)
bench() { # $1 lane, $2 seconds, rest: run.py args
  local lane=$1 secs=$2; shift 2
  CUDA_VISIBLE_DEVICES=$lane timeout --signal=INT --kill-after=20 "$secs" "$py" bench/run.py "$@" \
    --run-id "$run_id-g$lane" --out "$work/bench-g$lane.jsonl" >>"$work/bench-g$lane.log" 2>&1 \
    || echo "run.py $* exited with $?" >>"$work/bench-g$lane.log"
}
lane0() {
  CUDA_VISIBLE_DEVICES=0 TOKENS=${TOKENS:-24000000} MINUTES=${MINUTES:-5.8} EVAL_MINUTES=1.2 RUN_DIR=runs/gpu \
    OUT="$work/train" bash gpu-service/scripts/train_gpu.sh all >"$work/train.log" 2>&1
}
lane1() {
  (cd gpu-service && CUDA_VISIBLE_DEVICES=1 timeout 100 "$py" -m pytest -q -p no:cacheprovider --tb=short \
    tests/test_bench_kernels.py tests/test_bench_triton.py -k "cuda or triton") >"$work/kernel-tests.log" 2>&1
  echo "kernel tests exit $?" >>"$work/kernel-tests.log"
  bench 1 385 --suite throughput:355,roofline:1 --shapes llama2-7b --settings 512+1024 --variants llama,lckv-w2,hf-llama
}
lane2() {
  for v in llama w2 w6; do
    CUDA_VISIBLE_DEVICES=2 timeout 90 "$py" -m lckv_service.train.train --config gpu-service/configs/lckv-tiny-$v.toml \
      --out-dir "$work/probe-$v" --probe 40 >"$work/probe-$v.log" 2>&1
  done
  for _ in $(seq 120); do grep -qs '"type": "end"' runs/gpu/llama/log.jsonl && [ -f runs/gpu/llama/model/model.safetensors ] && break; sleep 3; done
  CUDA_VISIBLE_DEVICES=2 MINUTES=2.2 CPT_TOKENS=${CPT_TOKENS:-8000000} RUN_DIR=runs/gpu OUT="$work/cpt" \
    bash gpu-service/scripts/train_gpu.sh cpt >"$work/cpt.log" 2>&1
}
lane3() {
  bench 3 230 --suite throughput:210,roofline:1 --shapes tinyllama-1.1b --settings 512+1024 --variants llama,lckv-w2,lckv-w10,hf-llama
  bench 3 190 --suite prefill:95,streaming:75 --shapes tinyllama-1.1b --variants llama,lckv-w2
  bench 3 80 --suite sessions:65 --shapes tinyllama-1.1b --variants llama,lckv-w2,lckv-w10
}
ALL=llama,lckv-w2,lckv-w10,hf-llama
b_lane0() { bench 0 530 --suite throughput:500,roofline:1 --shapes llama2-7b --settings 512+1024 --variants $ALL; }
b_lane1() { bench 1 530 --suite throughput:500,roofline:1 --shapes llama2-7b --settings 2048+2048 --variants $ALL; }
b_lane2() {
  CUDA_VISIBLE_DEVICES=2 timeout 150 "$py" -m lckv_service.train.train --config gpu-service/configs/lckv-tiny-llama.toml \
    --out-dir runs/llama24 --tokens 24000000 >"$work/llama24-train.log" 2>&1
  CUDA_VISIBLE_DEVICES=2 timeout 60 "$py" -m lckv_service.train.evaluate --model runs/llama24/model --name llama \
    --data data/tokens/val.bin --methods exact --block-size 1024 --batch-size 32 --max-tokens 131072 \
    --out "$work/llama24-eval.json" >"$work/llama24-eval.log" 2>&1
  cp runs/llama24/log.jsonl "$work/llama24-log.jsonl" 2>/dev/null
  CUDA_VISIBLE_DEVICES=2 timeout 60 "$py" -m lckv_service.train.samples --model llama=runs/llama24/model \
    --max-new 32 --out "$work/llama24-samples.json" >"$work/llama24-samples.log" 2>&1
  bench 2 $((520 - SECONDS)) --suite throughput:$((490 - SECONDS)),roofline:1 --shapes llama2-7b --settings 5+2043 --variants $ALL
}
b_lane3() { bench 3 530 --suite throughput:500,roofline:1 --shapes tinyllama-1.1b --settings 512+1024,2048+2048,5+2043 --variants $ALL; }
c_lane0() {
  (cd gpu-service && CUDA_VISIBLE_DEVICES=0 timeout 170 "$py" -m pytest -q -p no:cacheprovider --tb=short \
    tests/test_bench_kernels.py tests/test_bench_triton.py tests/test_fast_prefill.py tests/test_runner_decode.py \
    -k "cuda or triton or graph") >"$work/kernel-tests.log" 2>&1
  echo "kernel tests exit $?" >>"$work/kernel-tests.log"
  # the kernel before the autotune rewrite (git show <commit>:…/triton_decode.py > runs/baseline_triton_decode.py)
  base=(); [ -f runs/baseline_triton_decode.py ] && base=(--baseline runs/baseline_triton_decode.py)
  CUDA_VISIBLE_DEVICES=0 timeout 110 "$py" bench/kernel_sweep.py "${base[@]}" --out "$work/kernel-sweep.jsonl" \
    >"$work/kernel-sweep.log" 2>&1
  left=$((525 - SECONDS))
  bench 0 $left --suite sessions:$((left * 3 / 10)),prefill:$((left * 3 / 10)),streaming:$((left * 3 / 10)) \
    --shapes tinyllama-1.1b --variants llama,lckv-w2,lckv-w10
}
c_lane2() { bench 2 530 --suite throughput:500,roofline:1 --shapes llama2-7b --settings 512+1024 --variants $ALL; }
c_lane3() {
  CUDA_VISIBLE_DEVICES=3 OUT="$work/service-suite" timeout 230 bash gpu-service/scripts/gpu_service_suite.sh \
    >"$work/service-suite.log" 2>&1
  bench 3 $((530 - SECONDS)) --suite throughput:$((500 - SECONDS)),roofline:1 --shapes tinyllama-1.1b \
    --settings 512+1024 --variants $ALL
}
case "$plan" in
  a) lane0 & lane1 & lane2 & lane3 & ;;
  b) b_lane0 & b_lane1 & b_lane2 & b_lane3 & ;;
  # (the 2026-11-26 run used b_lane0 here, on GPU 0 beside c_lane0: a shared GPU. Each lane its own GPU now.)
  c) c_lane0 & b_lane1 & c_lane2 & c_lane3 & ;;
  *) echo "unknown plan $plan" >&2; exit 2 ;;
esac
# hard deadline for the lanes (the call's limit is 600 s and $OUT must be written before it)
while [ -n "$(jobs -rp)" ] && [ "$SECONDS" -lt "${LANES_S:-545}" ]; do sleep 2; done
for p in $(jobs -rp); do pkill -INT -P "$p" 2>/dev/null; done; sleep 5
for p in $(jobs -rp); do pkill -KILL -P "$p" 2>/dev/null; kill "$p" 2>/dev/null; done
if [ "$plan" = a ]; then
  # w2-cpt is trained by lane 2 while lane 0 may already be evaluating: evaluate it here if that missed it
  if [ -d runs/gpu/w2-cpt/model ] && [ ! -f runs/gpu/w2-cpt/eval.json ]; then
    CUDA_VISIBLE_DEVICES=2 timeout 50 "$py" -m lckv_service.train.evaluate --model runs/gpu/w2-cpt/model --name w2-cpt \
      --data data/tokens/val.bin --methods exact,iterative --block-size 1024 --batch-size 32 --max-tokens 131072 \
      --out runs/gpu/w2-cpt/eval.json >"$work/cpt-eval.log" 2>&1
  fi
  RUN_DIR=runs/gpu OUT="$work/train" bash gpu-service/scripts/train_gpu.sh report >>"$work/train.log" 2>&1
fi
# back: small results in one tarball; the LCKV models in <=15 MB parts
tar czf "$out/lanes.tgz" --exclude='*/model' --exclude='probe-*/ckpt.pt' "$work" runs/gpu/*/eval*.json 2>/dev/null
[ "$plan" = a ] && tar cf - runs/gpu/w6/model runs/gpu/w2/model 2>/dev/null | split -b 15M - "$out/models.tar."
ls -la "$out"; for f in "$work"/*.log; do echo "== $f"; tail -n 3 "$f"; done
