"""The main job on a CPU: watch GRPO teach a tiny model the think/response layout, in minutes, offline.

    sarashina-grpo demo                            # about 3 minutes alone on a CPU (docs/demo.md)
    tensorboard --logdir artifact/logs             # eval/strict_format_rate: the held-out rate during GRPO

The learning proof (docs/learning.md) once: warm-start the tiny model (random weights never write a tag), evaluate
it on the held-out prompts, run GRPO, evaluate again; the table, reward curve and ``demo.json`` go to the run folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import Settings, load_settings
from .data import check_prompts
from .evaluation import DEFAULT_EVAL_DATA, generate_outputs, rounded, write_eval
from .inference import GenerationSettings
from .preflight import check_model
from .project import DEFAULT_REWARDS, artifact_root, project_path, setting
from .tiny import build_model
from .warmstart import DEMO_RECIPE, WarmStart, warm_start

logger = logging.getLogger("sarashina_grpo.demo")  # not "__main__" under `python -m`

TRAIN_DATA = "datasets/smalltalk.csv"  # relative to the project folder (project.project_path)
TABLE_KEYS = ("strict_format_rate", "soft_format_rate", "xmlcount_mean", "think_purity_mean", "purity_mean")
# What the reward-curve plot draws from trainer.state.log_history (TRL's names).
CURVE_KEYS = ("rewards/strict_format_reward/mean", "rewards/soft_format_reward/mean",
              "rewards/xmlcount_reward/mean", "reward")
# The held-out evaluation during GRPO (callbacks.HeldOutEval; TensorBoard eval/<metric>): the table's own figures.
HELD_OUT_CURVE_KEYS = ("eval_strict_format_rate", "eval_soft_format_rate", "eval_think_purity_mean")
EVAL_SEED_OFFSET = 10_000  # the evaluations' sampling seed is demo.seed + this, apart from training's


@dataclass
class DemoSettings:
    """The demo's recipe: the learning proof's tiny-model GRPO settings (docs/learning.md), one run."""

    seed: int = setting(0, "seed of the tiny model, its warm start, GRPO and the evaluation's sampling")
    steps: int = setting(100, "GRPO steps")
    logging_steps: int = setting(5, "log (and plot) the rewards every N steps")
    reward_names: tuple[str, ...] = DEFAULT_REWARDS
    warm_start: WarmStart = field(default_factory=lambda: dataclasses.replace(DEMO_RECIPE))
    eval_samples_per_prompt: int = 2  # 135 held-out prompts × 2 sampled outputs
    eval_limit: int | None = setting(None, "evaluate on the first N held-out prompts only; unset: all 135")
    eval_steps: int = setting(20, "during GRPO, score the held-out prompts every N steps exactly as the before/after "
                              "table does (TensorBoard eval/strict_format_rate; the curve's ends are the table's)")
    # On a busy machine two threads' OpenMP spinning made 10 GRPO steps take 238 s instead of 17.5 s.
    threads: int = setting(1, "CPU threads for torch (more only helps on an idle machine with a bigger model)")
    overrides: dict = field(default_factory=dict)  # further Settings fields, e.g. {"loss_type": "dapo", "beta": 0}

    def settings(self, model_dir: Path) -> Settings:
        # Shorter completions and a larger learning rate than the 3B run: a 1 MB model learns in 100 steps.
        return load_settings(dict(
            model_name=str(model_dir), load_in_4bit=False, max_seq_length=1024, learning_rate=2e-3,
            num_generations=8, per_device_train_batch_size=8, max_prompt_length=512, max_completion_length=64,
            max_steps=self.steps, save_steps=10_000, logging_steps=self.logging_steps, seed=self.seed,
            reward_names=list(self.reward_names), data_path=str(project_path(TRAIN_DATA)),
            log_completions=False,  # a table every few steps would bury the progress bar; see eval/*/generations.jsonl
            **self.overrides,
        ), source="demo")

    def generation(self) -> GenerationSettings:
        # The training temperature and length: greedy decoding of a tiny model repeats one output everywhere.
        return GenerationSettings(max_new_tokens=64, do_sample=True, temperature=1.0, top_p=1.0, batch_size=135)


@dataclass
class DemoResult:
    before: dict
    after: dict
    run_dir: Path
    log_dir: Path
    curve_png: Path
    seconds: dict
    log_history: list[dict]

    @property
    def table(self) -> str:
        return demo_table(self.before, self.after)


def warm_model(artifact_dir: Path, demo: DemoSettings) -> Path:
    """The warm-started tiny model, cached under a hash of the recipe (built aside: a cut build is no cache hit)."""
    recipe = dataclasses.replace(demo.warm_start, seed=demo.seed)
    digest = hashlib.sha1(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode()).hexdigest()[:8]
    cached = Path(artifact_dir) / "models" / f"tiny-warm-seed{demo.seed}-{digest}"
    if (cached / "config.json").exists():
        logger.info("Using the cached warm-started model %s", cached)
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".building-") as tmp:
        base = build_model(Path(tmp) / "tiny", "tiny", seed=demo.seed)
        recipe = dataclasses.replace(recipe, model=str(base), output=str(Path(tmp) / "warm"))
        shutil.move(str(warm_start(recipe)), str(cached))  # synthetic over the training prompts (TRAIN_DATA)
    return cached


def sampled_outputs(model, tokenizer, demo: DemoSettings, prompts: list[str]) -> list[dict]:
    """Held-out outputs sampled with a fixed seed, so before and after see the same sampling noise."""
    import torch

    torch.manual_seed(demo.seed + EVAL_SEED_OFFSET)
    return generate_outputs(model, tokenizer, prompts, demo.generation(), demo.eval_samples_per_prompt, progress=False)


def run_demo(artifact_dir: str | Path | None = None, demo: DemoSettings | None = None, *,
             run_name: str | None = None) -> DemoResult:
    """Warm start (cached), evaluate, GRPO, evaluate; write the curve and tables into the run's folder."""
    from .callbacks import CompactProgress, HeldOutEval
    from .modeling import cpu_threads, load_model
    from .pipeline import train

    demo = demo or DemoSettings()
    artifact_dir = artifact_root(artifact_dir)
    with cpu_threads(demo.threads):
        seconds, started = {}, time.monotonic()
        warm = warm_model(artifact_dir, demo)
        seconds["warm_start"] = round(time.monotonic() - started, 1)

        settings = demo.settings(warm)
        mark = time.monotonic()
        model, tokenizer = load_model(check_model(settings, training=False), lora=False)
        held_out = check_prompts(project_path(DEFAULT_EVAL_DATA))[:demo.eval_limit]
        before_outputs = sampled_outputs(model, tokenizer, demo, [r.prompt for r in held_out])
        del model
        seconds["eval_before"] = round(time.monotonic() - mark, 1)

        mark = time.monotonic()
        callbacks = [CompactProgress()]  # the project's one training path, as `sarashina-grpo train` takes it
        if demo.eval_steps:
            callbacks.append(HeldOutEval(held_out, every=demo.eval_steps, system_prompt=settings.system_prompt,
                                         max_new_tokens=settings.max_completion_length, gen=demo.generation(),
                                         samples_per_prompt=demo.eval_samples_per_prompt,
                                         seed=demo.seed + EVAL_SEED_OFFSET))
        trainer = train(settings, artifact_dir=artifact_dir, run_name=run_name, callbacks=callbacks)
        seconds["grpo"] = round(time.monotonic() - mark, 1)
        paths = trainer.run.paths
        if trainer.interrupted:  # Ctrl-C saved a checkpoint; the table below then shows the steps that ran
            logger.warning("GRPO stopped by %s at step %d of %d.", trainer.interrupted, trainer.state.global_step,
                           demo.steps)

        mark = time.monotonic()
        trainer.model.eval()
        after_outputs = sampled_outputs(trainer.model, trainer.processing_class, demo, [r.prompt for r in held_out])
        seconds["eval_after"] = round(time.monotonic() - mark, 1)
        meta = {"model": str(warm), "data": str(project_path(DEFAULT_EVAL_DATA)),
                "generation": dataclasses.asdict(demo.generation()), "samples_per_prompt": demo.eval_samples_per_prompt}
        before = write_eval(before_outputs, paths.output_dir / "eval" / "before", {**meta, "stage": "before"})
        after = write_eval(after_outputs, paths.output_dir / "eval" / "after", {**meta, "stage": "after GRPO"})
        seconds["total"] = round(time.monotonic() - started, 1)

        history = list(trainer.state.log_history)
        result = DemoResult(before, after, paths.output_dir, paths.log_dir,
                            reward_curve(history, paths.output_dir / "reward_curve.png"), seconds, history)
        write_summary(result, demo)
        logger.info("Demo finished in %.0f s (GRPO %.0f s); before/after table in %s", seconds["total"],
                    seconds["grpo"], result.run_dir / "demo.md")
        return result


def demo_table(before: dict, after: dict) -> str:
    """Markdown: one row per metric of ``TABLE_KEYS``, before and after GRPO and the change."""
    lines = ["| metric | before | after | change |", "|---|---:|---:|---:|"]
    for key in TABLE_KEYS:
        a, b = before.get(key), after.get(key)
        change = "n/a" if a is None or b is None else f"{round(b, 2) - round(a, 2):+.2f}"  # of the figures shown
        lines.append(f"| {key} | {rounded(a, 2)} | {rounded(b, 2)} | {change} |")
    return "\n".join(lines) + "\n"


def held_out_table(held_out_curve: dict[str, dict]) -> str:
    """Markdown: the held-out rates during GRPO (``demo.json``'s ``held_out_curve``), one column per evaluated step."""
    rows = {key: values for key, values in held_out_curve.items() if values}
    if not rows:
        return ""
    steps = sorted({int(step) for values in rows.values() for step in values})
    lines = ["| held-out, step | " + " | ".join(map(str, steps)) + " |", "|---|" + "---:|" * len(steps)]
    for key, values in rows.items():
        by_step = {int(step): value for step, value in values.items()}
        lines.append(f"| {key} | " + " | ".join(f"{by_step[s]:.2f}" if s in by_step else "–" for s in steps) + " |")
    return "\n".join(lines) + "\n"


def curve(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged metric; the final summary entry (no such key) is skipped."""
    points = [(h["step"], h[key]) for h in history if key in h and "step" in h]
    return [s for s, _ in points], [v for _, v in points]


def reward_curve(history: list[dict], path: Path) -> Path:
    """Plot the logged reward means (left) and the held-out rates (right, when evaluated) against the step."""
    from matplotlib.figure import Figure  # not pyplot: no display or backend needed, no figure left open

    panels = [(CURVE_KEYS, "rewards/", "mean reward of the step's completions",
               "training reward (strict_format: 0.5 when the layout is exact)")]
    if any(HELD_OUT_CURVE_KEYS[0] in h for h in history):
        panels.append((HELD_OUT_CURVE_KEYS, "eval_", "share of held-out outputs (0–1)",
                       "held-out rates, as in the before/after table"))
    fig = Figure(figsize=(6 * len(panels) + 1, 4), layout="tight")
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (keys, prefix, ylabel, title) in zip(axes[0], panels, strict=True):
        for key in keys:
            steps, values = curve(history, key)
            if steps:
                ax.plot(steps, values, marker="o", markersize=3, label=key.removeprefix(prefix),
                        linewidth=2.5 if "strict" in key else 1.2)
        ax.set(xlabel="GRPO step", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if prefix == "eval_":
            ax.set_ylim(0, 1)
    fig.savefig(path, dpi=100)
    return Path(path)


def write_summary(result: DemoResult, demo: DemoSettings) -> None:
    def points(key: str) -> dict:
        return dict(zip(*curve(result.log_history, key), strict=True))

    summary = {"before": result.before, "after": result.after, "seconds": result.seconds,
               "demo": dataclasses.asdict(demo), "strict_format_reward_curve": points(CURVE_KEYS[0]),
               "held_out_curve": {key.removeprefix("eval_"): points(key) for key in HELD_OUT_CURVE_KEYS}}
    (result.run_dir / "demo.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2, default=str) + "\n",
                                              encoding="utf-8")
    (result.run_dir / "demo.md").write_text(result.table, encoding="utf-8")
