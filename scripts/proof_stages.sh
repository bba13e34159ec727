# Sourced by the proof scripts (real_model_proof.sh, japanese_proof.sh) after they set ROOT, WORK, PY, BUDGET,
# RESERVE and STEPS (grpo also reads final): the
# package from this checkout, the run folder, and stages that run once and record their wall time, so that a
# script cut off by a device call's time limit is simply called again and goes on where it stopped.
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" SARASHINA_GRPO_HOME="$ROOT"
[ -n "${THREADS:-}" ] && export OMP_NUM_THREADS=$THREADS
start=$(date +%s)
mkdir -p "$WORK"
times="$WORK/times.txt"            # "stage seconds" lines; GRPO adds one per call (the summary sums them)
sg() { "$PY" -m sarashina_grpo "$@"; }
stage() {  # stage NAME DONE-FILE COMMAND...: run COMMAND unless DONE-FILE exists; record its wall time
  local name=$1 done_file=$2; shift 2
  if [ -e "$done_file" ]; then echo "== $name: done before ($done_file)"; return; fi
  echo "== $name"
  local t0; t0=$(date +%s)
  "$@"
  echo "$name $(( $(date +%s) - t0 ))" >> "$times"
}
besides=()                         # "name pid log" of the stages running beside the others
beside() {  # beside NAME DONE-FILE COMMAND...: stage, in the background (the GPU is mostly idle during these stages:
  # generation is host-bound), its output in $WORK/NAME.log; settle waits for it, and so does any exit of the script
  local name=$1 done_file=$2
  if [ -e "$done_file" ]; then echo "== $name: done before ($done_file)"; return; fi
  echo "== $name: beside the next stages (log: $WORK/$name.log)"
  stage "$@" > "$WORK/$name.log" 2>&1 &
  besides+=("$name $! $WORK/$name.log")
}
settle() {  # wait for the stages started by beside; stop the script if one failed
  local entry name pid log failed=0
  for entry in "${besides[@]}"; do
    read -r name pid log <<< "$entry"
    if wait "$pid"; then echo "== $name: done beside the others"; tail -n 3 "$log"
    else echo "== $name failed beside the others; its log, $log, ends:"; tail -n 20 "$log"; failed=1; fi
  done
  besides=()
  [ "$failed" -eq 0 ] || exit 1
}
trap 'wait' EXIT                   # a call that stops early (exit 3) still leaves no stage half-run behind it
grpo() {  # grpo TRAIN-FLAGS...: this call's share of GRPO towards $final (run "grpo", resumed when it exists); it
  # records its own time, since a cut-off call never reaches stage's record, and exits 3 ("call again") until done
  local resume=() t0 rc left=$(( BUDGET - RESERVE - ($(date +%s) - start) ))
  [ -d "$WORK/outputs/grpo" ] && resume=(--resume grpo)
  if [ "$left" -lt 90 ]; then echo "GRPO: only ${left}s left in this call; call again."; exit 3; fi
  t0=$(date +%s)
  set +e
  timeout --preserve-status -s INT -k 60 "$left" "$PY" -m sarashina_grpo train --no-4bit --no-log-completions \
    --artifact-dir "$WORK" --run-name grpo "$@" "${resume[@]}"
  rc=$?
  set -e
  echo "grpo $(( $(date +%s) - t0 ))" >> "$times"
  if [ ! -e "$final/checkpoint_complete" ]; then echo "GRPO stopped (exit $rc) before step $STEPS; call again."; exit 3; fi
}
