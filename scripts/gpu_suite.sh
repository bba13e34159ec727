#!/usr/bin/env bash
# The GPU test suite in one go (at most ~10 minutes): the production path that CI's CPU never reaches.
#
#   bash scripts/gpu_suite.sh [extra pytest arguments]          # on a machine with one or more CUDA GPUs
#
# It uses the project's environment when Unsloth imports; otherwise it unpacks a bundle of the training stack
# (.gpusite/gpusite.tgz, made by a maintainer for a GPU machine without a package registry). It builds the
# Sarashina 2.2 3B shape once (random weights, kept in $SARASHINA_GRPO_3B, default /tmp/sarashina-3b), runs
# `pytest -m gpu tests/gpu` and prints a summary line to paste into docs/gpu-tests.md. Tests that need two GPUs
# skip on a machine with one. With four GPUs the groups run side by side; SUITE_PARALLEL=1 does that on fewer.
# It uses the GPUs CUDA_VISIBLE_DEVICES names (all by default), e.g. CUDA_VISIBLE_DEVICES=1 next to a benchmark on 0.
# The real-weights checks run when SARASHINA_GRPO_REAL_MODEL names a convert-gguf folder (docs/real-model.md).
# Set GIT_COMMIT to record the commit where the tree carries no .git folder.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
out=${OUT:-/tmp/gpu-suite}; mkdir -p "$out"

if ! python3 -c "import unsloth" >/dev/null 2>&1; then
  if [ ! -f .gpusite/gpusite.tgz ]; then
    echo "error: Unsloth is not importable and there is no .gpusite/gpusite.tgz bundle; install the project (uv sync)." >&2
    exit 2
  fi
  mkdir -p /tmp/site && tar xzf .gpusite/gpusite.tgz -C /tmp/site
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# NVLink multicast stays off: on shared hosts it can take the GPUs out of service.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

export SARASHINA_GRPO_3B=${SARASHINA_GRPO_3B:-/tmp/sarashina-3b}
if [ ! -f "$SARASHINA_GRPO_3B/config.json" ]; then
  python3 -m sarashina_grpo build-tiny "$SARASHINA_GRPO_3B" --shape sarashina-3b >/dev/null || exit 1
fi
echo "suite: 3B shape ready after $(( $(date +%s) - start )) s"

suite() {  # suite NAME GPUS PYTEST-ARGS...: one pytest run on the given GPUs, its log and junit in $out
  local name=$1 gpus=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpus python3 -m pytest -v -p no:cacheprovider -o addopts="" -rA \
    --junitxml "$out/gpu-suite-$name.xml" "$@" >"$out/gpu-suite-$name.log" 2>&1
}
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then ids=(${CUDA_VISIBLE_DEVICES//,/ }); else ids=($(seq 0 $(( $(nvidia-smi -L 2>/dev/null | wc -l) - 1 )))); fi
gpus=${#ids[@]}
if [ "$gpus" -ge 4 ]; then
  # Three groups side by side on their own GPUs (each needs at most two): the suite fits one 10-minute call.
  suite 3b "${ids[0]}" tests/gpu/test_gpu_trainer.py -m gpu "$@" & p1=$!
  suite one-gpu "${ids[1]}" tests/gpu --ignore=tests/gpu/test_gpu_trainer.py -m "gpu and not two_gpus" "$@" & p2=$!
  suite two-gpus "${ids[2]},${ids[3]}" tests/gpu -m "gpu and two_gpus" "$@" & p3=$!
  rc=0; for p in $p1 $p2 $p3; do wait "$p" || rc=1; done
elif [ "${SUITE_PARALLEL:-0}" = 1 ]; then
  # Fewer GPUs: the 3B group and the single-GPU group share GPU 0 (about 20 GB together, timings are not the point).
  suite 3b "${ids[0]}" tests/gpu/test_gpu_trainer.py -m gpu "$@" & p1=$!
  suite one-gpu "${ids[0]}" tests/gpu --ignore=tests/gpu/test_gpu_trainer.py -m "gpu and not two_gpus" "$@" & p2=$!
  rc=0; for p in $p1 $p2; do wait "$p" || rc=1; done
  if [ "$gpus" -ge 2 ]; then suite two-gpus "${ids[0]},${ids[1]}" tests/gpu -m "gpu and two_gpus" "$@" || rc=1; fi
else
  suite all "$(IFS=,; echo "${ids[*]}")" tests/gpu -m gpu "$@"; rc=$?
fi

device=$(nvidia-smi --query-gpu=name --format=csv,noheader -i "$(IFS=,; echo "${ids[*]}")" 2>/dev/null | sort | uniq -c | sed 's/^ *//' | paste -sd, -)
commit=${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
for log in "$out"/gpu-suite-*.log; do
  grep -E '^(PASSED|FAILED|ERROR|SKIPPED)' "$log"
  result=$(grep -E '^=+ .*(passed|failed|error|skipped).* =+$' "$log" | tail -1 | tr -d '=' | sed 's/^ *//;s/ *$//')
  echo "| $(date -u +%Y-%m-%d) | ${device:-no GPU} | $commit | $(basename "$log" .log) | ${result:-no result} |"
done | tee "$out/summary.md"
echo "suite: $(( $(date +%s) - start )) s in all"
exit "$rc"
