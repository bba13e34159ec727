# Sourced by the proof scripts (real_model_proof.sh, japanese_proof.sh) after they set ROOT, WORK and PY: the
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
