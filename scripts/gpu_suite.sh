#!/usr/bin/env bash
# The GPU test suite in one go (at most ~10 minutes): the production path that CI's CPU never reaches.
#
#   bash scripts/gpu_suite.sh [extra pytest arguments]          # on a machine with one or more CUDA GPUs
#
# It uses the project's environment when Unsloth imports; otherwise it unpacks a bundle of the training stack
# (.gpusite/gpusite.tgz, made by a maintainer for a GPU machine without a package registry). It builds the
# Sarashina 2.2 3B shape once (random weights, kept in $SARASHINA_GRPO_3B, default /tmp/sarashina-3b), runs
# `pytest -m gpu tests/gpu` and prints a summary line to paste into docs/gpu-tests.md. Tests that need two GPUs
# skip on a machine with one. Set GIT_COMMIT to record the commit where the tree carries no .git folder.
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

python3 -m pytest tests/gpu -m gpu -v -p no:cacheprovider -o addopts="" -rA --junitxml "$out/gpu-suite.xml" "$@" \
  2>&1 | tee "$out/gpu-suite.log"
rc=${PIPESTATUS[0]}

device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sort | uniq -c | sed 's/^ *//' | paste -sd, -)
commit=${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
result=$(grep -E '^=+ .*(passed|failed|error).* =+$' "$out/gpu-suite.log" | tail -1 | tr -d '=' | sed 's/^ *//;s/ *$//')
echo "| $(date -u +%Y-%m-%d) | ${device:-no GPU} | $commit | ${result:-no result} | $(( $(date +%s) - start )) s |" \
  | tee "$out/summary.md"
exit "$rc"
