"""Dynamic sampling on the CPU demo: the same demo (seed, warm start, steps) with and without it; for each, the
held-out strict-format rate at every evaluation with the GRPO wall time to get there, and the extra rollouts spent.

    OMP_NUM_THREADS=1 uv run python scripts/dynamic_sampling_demo.py --steps 100 --eval-steps 10 --out /tmp/ds.json

Uses only the package's public functions (``demo.run_demo``); the timings are TensorBoard's event times. The
result (JSON) is what docs/dynamic-sampling.md reports.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def held_out_curve(log_dir) -> list[dict]:
    """(step, strict rate, seconds since the first evaluation) of every held-out evaluation during GRPO."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    points = events.Scalars("eval/strict_format_rate")
    start = points[0].wall_time
    return [{"step": p.step, "strict": round(p.value, 3), "seconds": round(p.wall_time - start, 1)} for p in points]


def one_run(artifact, steps: int, eval_steps: int, seed: int, dynamic: bool, rounds: int, rewards: tuple) -> dict:
    from sarashina_grpo.demo import DemoSettings, run_demo

    overrides = {"dynamic_sampling": True, "dynamic_sampling_max_rounds": rounds} if dynamic else {}
    demo = DemoSettings(seed=seed, steps=steps, eval_steps=eval_steps, overrides=overrides,
                        **({"reward_names": rewards} if rewards else {}))
    started = time.monotonic()
    result = run_demo(artifact, demo, run_name=f"ds-{'on' if dynamic else 'off'}")
    logged = [h for h in result.log_history if "dynamic_sampling/extra_rollouts" in h]
    per_log = demo.logging_steps  # TRL averages each figure over the steps of one log
    return {"dynamic_sampling": dynamic, "max_rounds": rounds if dynamic else 0, "grpo_seconds": result.seconds["grpo"],
            "total_seconds": round(time.monotonic() - started, 1), "held_out": held_out_curve(result.log_dir),
            "after_strict": result.after["strict_format_rate"], "before_strict": result.before["strict_format_rate"],
            "flat_groups": round(sum(h["dynamic_sampling/flat_groups"] for h in logged) * per_log),
            "extra_rollouts": round(sum(h["dynamic_sampling/extra_rollouts"] for h in logged) * per_log),
            "flat_kept": round(sum(h["dynamic_sampling/flat_kept"] for h in logged) * per_log)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rewards", default="", help="comma-separated reward names; default: the demo's three")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as artifact:
        rewards = tuple(n for n in args.rewards.split(",") if n)
        runs = [one_run(artifact, args.steps, args.eval_steps, args.seed, dynamic, args.rounds, rewards)
                for dynamic in (False, True)]
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"steps": args.steps, "eval_steps": args.eval_steps, "seed": args.seed,
                   "rewards": args.rewards or "demo default", "runs": runs}, f, indent=2)
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
