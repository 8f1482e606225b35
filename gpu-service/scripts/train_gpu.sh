#!/usr/bin/env bash
# Train the three lckv-tiny models (standard Llama, LCKV w=2, LCKV w=6) CONCURRENTLY on one GPU with
# one shared token budget, then evaluate each (exact vs iterative held-out perplexity) and plot.
#
# Run from the repository root on the GPU machine, with the token shards carried along:
#   carry: ["data/tokens"]          command: bash gpu-service/scripts/train_gpu.sh      ($OUT is set there)
# Stages (default "all" = train, eval, report): train | eval | report | all | cpt.
# Work happens in $RUN_DIR inside the tree (kept on a warm machine between calls), so the stages may also
# run as separate calls. "cpt" (optional, after "train"): continued pretraining of the trained Llama
# converted to LCKV w=2 (configs/lckv-tiny-w2-cpt.toml), CPT_TOKENS tokens (default 8,000,000) within
# MINUTES; run "eval" and "report" afterwards to include it.
#
# Environment:
#   OUT        where results are copied (required): runs/<name>/{log.jsonl,train.log,eval*.json,model/},
#              loss.png, eval.md, env.txt
#   MINUTES    wall-clock limit of each training run (default 7; the stop is clean: eval, checkpoint, model)
#   TOKENS     fixed token budget instead of the one measured at startup (default: measured)
#   COMPILE    1 to torch.compile (falls back to eager if compiling fails); default 0 (eager: predictable)
#   EVAL_TOKENS  held-out tokens per evaluation (default 131072; the val shard has ~271k)
#   RUN_DIR    working folder (default runs/gpu)
#   CONFIGS    folder of lckv-tiny-{llama,w2,w6}.toml (default gpu-service/configs; tiny ones for a CPU dry run)
#   EVAL_BLOCK evaluation window (default 1024, the training block size)
#   EVAL_MINUTES  time limit of each evaluation process (default 2)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:?set OUT to the folder that receives the results}"
MINUTES="${MINUTES:-7}"
COMPILE="${COMPILE:-0}"
EVAL_TOKENS="${EVAL_TOKENS:-131072}"
RUN_DIR="${RUN_DIR:-runs/gpu}"
CONFIGS="${CONFIGS:-gpu-service/configs}"
EVAL_BLOCK="${EVAL_BLOCK:-1024}"
EVAL_S=$(awk "BEGIN{print int(${EVAL_MINUTES:-2} * 60)}")
PY="${PYTHON:-python3}"
RUNS=(llama w2 w6)              # trained concurrently by "train"
ALL_RUNS=(llama w2 w6 w2-cpt)   # evaluated/collected/reported when present
STAGE="${1:-all}"
export PYTHONPATH="gpu-service${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUN_DIR"

for f in data/tokens/train.bin data/tokens/val.bin gpu-service/models/lckv-tiny/tokenizer.json; do
  [ -f "$f" ] || { echo "missing $f (carry data/tokens; see docs/training.md)" >&2; exit 2; }
done

collect() {  # copy what exists so far to $OUT (each stage calls it, so a later failure loses nothing)
  for v in "${ALL_RUNS[@]}"; do
    d="$RUN_DIR/$v"; [ -d "$d" ] || continue
    o="$OUT/runs/$v"; mkdir -p "$o"
    for f in log.jsonl train.log eval.json eval_chat.json eval.log; do [ -f "$d/$f" ] && cp "$d/$f" "$o/"; done
    [ -d "$d/model" ] && { rm -rf "$o/model"; cp -r "$d/model" "$o/model"; }
  done
  for f in loss.png eval.md env.txt; do [ -f "$RUN_DIR/$f" ] && cp "$RUN_DIR/$f" "$OUT/"; done
  return 0
}

stage_train() {
  { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$RUN_DIR/env.txt" 2>&1
  cat "$RUN_DIR/env.txt"
  rm -rf "$RUN_DIR/budget" "${RUN_DIR:?}/w2-cpt"
  budget_args=(--sync-budget "$RUN_DIR/budget" --peers "${#RUNS[@]}")
  [ -n "${TOKENS:-}" ] && budget_args=(--tokens "$TOKENS")
  compile_arg=--no-compile; [ "$COMPILE" = 1 ] && compile_arg=--compile
  pids=()
  for v in "${RUNS[@]}"; do
    rm -rf "${RUN_DIR:?}/$v"; mkdir -p "$RUN_DIR/$v"
    "$PY" -m lckv_service.train.train --config "$CONFIGS/lckv-tiny-$v.toml" \
      --out-dir "$RUN_DIR/$v" --max-minutes "$MINUTES" "${budget_args[@]}" "$compile_arg" \
      > "$RUN_DIR/$v/train.log" 2>&1 &
    pids+=($!)
  done
  status=0
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then echo "training ${RUNS[$i]} failed (see $RUN_DIR/${RUNS[$i]}/train.log)" >&2; status=1; fi
  done
  for v in "${RUNS[@]}"; do echo "== $v"; grep -E "budget|eval iter|done|error|Traceback" "$RUN_DIR/$v/train.log" | tail -6; done
  return $status
}

stage_eval() {
  pids=()
  for v in "${ALL_RUNS[@]}"; do
    [ -d "$RUN_DIR/$v/model" ] || continue
    ( timeout "$EVAL_S" "$PY" -m lckv_service.train.evaluate --model "$RUN_DIR/$v/model" --name "$v" --data data/tokens/val.bin \
        --methods exact,iterative --block-size "$EVAL_BLOCK" --batch-size 32 --max-tokens "$EVAL_TOKENS" \
        --out "$RUN_DIR/$v/eval.json" > /dev/null
      if [ -f data/tokens/val_chat.bin ]; then
        timeout "$EVAL_S" "$PY" -m lckv_service.train.evaluate --model "$RUN_DIR/$v/model" --name "$v" --data data/tokens/val_chat.bin \
          --methods exact,iterative --block-size "$EVAL_BLOCK" --batch-size 32 --out "$RUN_DIR/$v/eval_chat.json" > /dev/null
      fi ) > "$RUN_DIR/$v/eval.log" 2>&1 &
    pids+=($!)
  done
  status=0
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  for v in "${ALL_RUNS[@]}"; do [ -f "$RUN_DIR/$v/eval.log" ] && tail -4 "$RUN_DIR/$v/eval.log"; done
  return $status
}

stage_report() {
  run_args=(); eval_args=()
  for v in "${ALL_RUNS[@]}"; do
    [ -f "$RUN_DIR/$v/log.jsonl" ] && run_args+=(--run "$v=$RUN_DIR/$v/log.jsonl")
    [ -f "$RUN_DIR/$v/eval.json" ] && eval_args+=(--eval "$RUN_DIR/$v/eval.json")
  done
  "$PY" -m lckv_service.train.report "${run_args[@]}" "${eval_args[@]}" --png "$RUN_DIR/loss.png" --md "$RUN_DIR/eval.md"
}

stage_cpt() {
  [ -d "$RUN_DIR/llama/model" ] || { echo "no trained llama in $RUN_DIR/llama/model: run the train stage first" >&2; return 2; }
  rm -rf "${RUN_DIR:?}/w2-cpt"; mkdir -p "$RUN_DIR/w2-cpt"
  "$PY" -m lckv_service.train.train --config "$CONFIGS/lckv-tiny-w2-cpt.toml" --init-from "$RUN_DIR/llama/model" \
    --out-dir "$RUN_DIR/w2-cpt" --tokens "${CPT_TOKENS:-8000000}" --max-minutes "$MINUTES" \
    > "$RUN_DIR/w2-cpt/train.log" 2>&1 || { tail -20 "$RUN_DIR/w2-cpt/train.log"; return 1; }
  grep -E "eval iter|done" "$RUN_DIR/w2-cpt/train.log" | tail -4
}

rc=0
case "$STAGE" in
  train) stage_train || rc=$? ;;
  eval) stage_eval || rc=$? ;;
  report) stage_report || rc=$? ;;
  cpt) stage_cpt || rc=$? ;;
  all) stage_train || rc=$?; collect; stage_eval || rc=$?; collect; stage_report || rc=$? ;;
  *) echo "unknown stage $STAGE (train | eval | report | all | cpt)" >&2; exit 2 ;;
esac
collect
exit $rc
