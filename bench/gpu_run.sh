#!/usr/bin/env bash
# One GPU call per part (each stays under the 600 s per-call limit, model init included):
#   bash bench/gpu_run.sh part1   # kernel tests on CUDA; Llama-2-7B throughput 512+1024 (llama, lckv-w2,
#                                 # hf-llama) + roofline; sessions (TinyLlama)                 ~9.5 min
#   bash bench/gpu_run.sh part2   # Llama-2-7B 512+1024 (llama, lckv-w2; eager decoders) + roofline;
#                                 # sessions, prefill, streaming (TinyLlama)                   ~9.3 min
#   bash bench/gpu_run.sh tiny    # every suite on CPU with a toy shape, ~1 minute: checks this script
# Writes $OUT/<part>.jsonl (one JSON object per measurement, flushed per line), $OUT/<part>.log and,
# for part1, $OUT/tests.log. Each (shape, variant) runs in its own worker process (bench/run.py
# --isolate): a crash or device-side assert costs that case's rows, not the run.
# Carry .gpu-wheels (pytest, hypothesis: the machine has no internet) for the kernel tests.
set -uo pipefail
part=${1:?usage: bash bench/gpu_run.sh part1|part2|tiny}
cd "$(dirname "$0")/.."
out=${OUT:-bench/results}
mkdir -p "$out" && out=$(cd "$out" && pwd)
export PYTHONPATH="$PWD/gpu-service:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True   # same for every variant: less fragmentation
export TOKENIZERS_PARALLELISM=false
py=$(command -v python3 || command -v python)
log="$out/$part.log"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >"$log" 2>&1 || true
bench() {   # $1: seconds for the whole step; the rest: run.py arguments. SIGINT first: rows are on disk.
  local secs=$1; shift
  timeout --signal=INT --kill-after=20 "$secs" "$py" bench/run.py "$@" --out "$out/$part.jsonl" \
    >>"$log" 2>&1 || echo "run.py $* exited with $?" >>"$log"
}
case "$part" in
  part1)
    if [ -d .gpu-wheels ]; then
      "$py" -m pip install -q --no-index --find-links .gpu-wheels pytest hypothesis >"$out/tests.log" 2>&1
      (cd gpu-service && timeout 100 "$py" -m pytest -q -p no:logging -p no:cacheprovider --tb=long \
        tests/test_bench_kernels.py tests/test_bench_triton.py -k "cuda or triton" >>"$out/tests.log" 2>&1)
      echo "kernel tests exit $?" >>"$out/tests.log"
    fi
    bench 370 --suite throughput:330,roofline:1 --shapes llama2-7b --settings 512+1024 \
      --variants llama,lckv-w2,hf-llama
    bench 80 --suite sessions:60 --shapes tinyllama-1.1b --variants llama,lckv-w2,lckv-w10 ;;
  part2)
    # eager decoders (--graphs off): the same Triton/SDPA kernels without CUDA graphs, because in
    # part1 both of our 7B runs hit OOM after a search that captured graphs (see README)
    bench 340 --suite throughput:300,roofline:1 --shapes llama2-7b --settings 512+1024 \
      --variants llama,lckv-w2 --graphs off
    hwjson=$("$py" -c 'import json,sys; rows=[json.loads(l) for l in open(sys.argv[1])]; print(json.dumps([r for r in rows if r["suite"]=="hw"][-1]))' "$out/$part.jsonl" 2>/dev/null || echo "")
    hwarg=(); [ -n "$hwjson" ] && hwarg=(--hw-json "$hwjson")
    bench 110 --suite sessions:90 --shapes tinyllama-1.1b --variants llama,lckv-w2 "${hwarg[@]}"
    bench 100 --suite prefill:40,streaming:35 --shapes tinyllama-1.1b --variants llama,lckv-w2 "${hwarg[@]}" ;;
  tiny)
    bench 300 --tiny --device cpu --isolate on --suite throughput:40,roofline:2,prefill:20,streaming:20,sessions:20 ;;
  *) echo "unknown part '$part' (part1, part2 or tiny)" >&2; exit 2 ;;
esac
tail -n 5 "$log"
