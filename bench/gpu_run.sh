#!/usr/bin/env bash
# One GPU call per part (each finishes in ~8.5 minutes including model init):
#   bash bench/gpu_run.sh part1   # Llama-2-7B throughput (2048+2048, 512+1024; 4 variants) + roofline
#   bash bench/gpu_run.sh part2   # TinyLlama throughput (3 settings) + prefill + streaming + sessions
#   bash bench/gpu_run.sh tiny    # every suite on CPU with a toy shape, ~1 minute: checks this script
# Writes $OUT/<part>.jsonl (one JSON object per measurement, flushed per line) and $OUT/<part>.log.
# Needs no carried paths: PyTorch/transformers come from the machine, our code from the tree.
set -euo pipefail
part=${1:?usage: bash bench/gpu_run.sh part1|part2|tiny}
cd "$(dirname "$0")/.."
out=${OUT:-bench/results}
mkdir -p "$out"
export PYTHONPATH="$PWD/gpu-service:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True   # same for every variant: less fragmentation
export TOKENIZERS_PARALLELISM=false
case "$part" in
  part1) args=(--suite throughput:450,roofline:5 --shapes llama2-7b --settings 2048+2048,512+1024) ;;
  part2) args=(--suite throughput:200,prefill:80,streaming:50,sessions:75,roofline:2 --shapes tinyllama-1.1b
               --settings 5+2043,512+1024,2048+2048) ;;
  tiny)  args=(--tiny --device cpu --suite throughput:40,roofline:2,prefill:20,streaming:20,sessions:20) ;;
  *) echo "unknown part '$part' (part1, part2 or tiny)" >&2; exit 2 ;;
esac
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >"$out/$part.log" 2>&1 || true
# SIGINT first so the recorder closes cleanly; every row is already on disk anyway
py=$(command -v python3 || command -v python)
timeout --signal=INT --kill-after=20 510 "$py" bench/run.py "${args[@]}" --out "$out/$part.jsonl" \
  >>"$out/$part.log" 2>&1 || echo "run.py exited with $?" >>"$out/$part.log"
tail -n 3 "$out/$part.log"
