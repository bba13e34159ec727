#!/usr/bin/env bash
# Scaling of GRPO training over GPUs: the same benchmark configuration per GPU on 1, 2, 4 … GPUs of one machine.
#
#   bash scripts/multi_gpu_bench.sh [GPU COUNTS, default "1 2 4"]        # CONFIGS, STEPS, OUT_DIR may be set
#
# Each count is one `python -m scripts.bench` run (under `accelerate launch` when > 1) on the Sarashina 2.2 3B shape;
# then `python -m scripts.multi_gpu_table` joins them into OUT_DIR/multi_gpu.json + .md (completions/s, tok/s,
# per-GPU efficiency against one GPU, peak memory). Every process runs the same configuration (data parallel).
set -uo pipefail
cd "$(dirname "$0")/.."
counts=${*:-1 2 4}
configs=${CONFIGS:-fast-36-real,default-6}
steps=${STEPS:-4}
dest=${OUT_DIR:-docs/benchmarks/multi_gpu}
# the repository root for `-m scripts.bench`, src/ for the package when it is not installed
export PYTHONPATH="$PWD:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # NVLink multicast stays off
model=${SARASHINA_GRPO_3B:-/tmp/sarashina-3b}
[ -f "$model/config.json" ] || python3 -m sarashina_grpo build-tiny "$model" --shape sarashina-3b >/dev/null || exit 1
mkdir -p "$dest"
for n in $counts; do
  start=$(date +%s)
  if [ "$n" -eq 1 ]; then
    launch=(python3)
  else
    launch=(python3 -m accelerate.commands.launch --config_file configs/accelerate/multi_gpu.yaml --num_processes "$n"
            --main_process_port $((29500 + n)))
  fi
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) "${launch[@]}" -m scripts.bench --model "$model" \
    --configs "$configs" --steps "$steps" --out "$dest/gpus-$n" >"$dest/gpus-$n.log" 2>&1
  echo "bench on $n GPU(s): exit $?, $(( $(date +%s) - start )) s"
done
python3 -m scripts.multi_gpu_table "$dest"
