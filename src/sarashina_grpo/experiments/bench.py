"""``sarashina-grpo bench``: time GRPO steps of the project's own training path, one row per rollout configuration.

    sarashina-grpo bench                                    # CUDA: Sarashina-2.2-3B shape, writes docs/benchmarks/
    sarashina-grpo bench --configs default-6,fast-6 --steps 4
    sarashina-grpo bench --model tiny --max-completion-length 16 --steps 2   # CPU smoke run, writes to a tmp dir

A configuration is ``ROLLOUT-N[xS][-bf16]``: ``Settings.rollout``, N completions per optimizer step (groups of 6),
S = TRL ``steps_per_generation`` (one rollout feeds S steps), ``-bf16`` to skip 4-bit loading. Everything else is
the article's ``Settings``: the model is loaded by ``load_model`` and trained by ``build_trainer`` on
``datasets/smalltalk.csv`` with the project's rewards. The 3B shape has random weights, which never stop early, so
every completion is ``max_completion_length`` tokens long: the worst case. Numbers on CPU are meaningless.

Per configuration: first step and steady s/step, the generation / rest-of-step split (rest = rewards, log-probs and
the LoRA update), completion tokens/s over the steady steps, peak GPU memory allocated and reserved.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import compat
from ..config import project_path

logger = logging.getLogger(__name__)

HELP = "time GRPO steps of the training path per rollout configuration; write results.json/.md/.png"
DEFAULT_CONFIGS = "fast-6,fast-36,default-6,default-36"
CONFIG_RE = re.compile(r"^(?P<rollout>[a-z]+)-(?P<n>\d+)(?:x(?P<spg>\d+))?(?P<bf16>-bf16)?$")
TARGETS = {6: 1500, 36: 3000}  # completion tokens/s asked of the fast path on one H100 (issue 3)
GIB = 2**30


@dataclass
class BenchConfig:
    name: str
    rollout: str
    completions: int  # per optimizer step
    steps_per_generation: int = 1
    load_in_4bit: bool = True


def parse_configs(text: str, *, cuda: bool) -> list[BenchConfig]:
    from ..config import ROLLOUTS, SettingsError

    configs = []
    for name in (part.strip() for part in text.split(",") if part.strip()):
        match = CONFIG_RE.match(name)
        if not match or match["rollout"] not in ROLLOUTS:
            raise SettingsError(
                f"Bad bench config {name!r}: expected ROLLOUT-N[xS][-bf16], ROLLOUT in {list(ROLLOUTS)}."
            )
        configs.append(BenchConfig(name, match["rollout"], int(match["n"]), int(match["spg"] or 1),
                                   load_in_4bit=cuda and not match["bf16"]))
    return configs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated ROLLOUT-N[xS][-bf16]")
    parser.add_argument("--model", default=None,
                        help="'sarashina-3b' (random weights, exact config; default with CUDA), 'tiny' (default "
                             "without), or a model folder")
    parser.add_argument("--model-dir", default="artifact/models",
                        help="where the random-weight models are built")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per configuration (first + steady)")
    parser.add_argument("--max-completion-length", type=int, default=512)
    parser.add_argument("--data", default="datasets/smalltalk.csv")
    parser.add_argument("--out", default=None,
                        help="folder for results.json/.md/.png (default: docs/benchmarks with CUDA, a tmp dir without)")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _clock_callback():
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """Wall time of each optimizer step, the device drained at both ends."""

        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            _sync()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            self.times.append(time.perf_counter() - self._start)

    return StepClock()


def _time_method(trainer, name: str) -> dict[int, float]:
    """Wrap ``trainer.<name>`` so each call's time is booked to the optimizer step it runs in."""
    per_step: dict[int, float] = {}
    inner = getattr(trainer, name)

    def timed(*args, **kwargs):
        _sync()
        start = time.perf_counter()
        result = inner(*args, **kwargs)
        _sync()
        step = trainer.state.global_step
        per_step[step] = per_step.get(step, 0.0) + time.perf_counter() - start
        return result

    setattr(trainer, name, timed)
    return per_step


def resolve_bench_model(model: str | None, model_dir: Path, *, cuda: bool) -> str:
    from ..tiny import SHAPES, build_model

    model = model or ("sarashina-3b" if cuda else "tiny")
    if model not in SHAPES:
        return model
    folder = model_dir / model
    if not (folder / "config.json").exists():
        start = time.perf_counter()
        build_model(folder, model)
        logger.info("built %s in %.1f s", folder, time.perf_counter() - start)
    return str(folder)


def run_config(cfg: BenchConfig, model_name: str, data: str, steps: int, completion_length: int, work: Path,
               loaded: dict) -> dict:
    """Train ``steps`` GRPO steps with ``cfg`` and return its result row."""
    import torch

    from ..config import Settings
    from ..modeling import load_model
    from ..pipeline import build_trainer, prepare

    extra = {"steps_per_generation": cfg.steps_per_generation} if cfg.steps_per_generation > 1 else {}
    settings = Settings(
        model_name=model_name, load_in_4bit=cfg.load_in_4bit, rollout=cfg.rollout,
        per_device_train_batch_size=cfg.completions, max_steps=steps, save_steps=10**6,
        max_completion_length=completion_length, extra_grpo_args=extra, data_path=data, log_completions=False,
    )
    run = prepare(settings, artifact_dir=work, run_name=cfg.name, check_model=False)
    settings = run.settings
    cuda = torch.cuda.is_available()
    load_s = 0.0
    if cfg.load_in_4bit not in loaded:  # one load per precision: the model is the same for every rollout
        loaded.clear()
        gc.collect()
        start = time.perf_counter()
        loaded[cfg.load_in_4bit] = load_model(settings)
        load_s = time.perf_counter() - start
    model, tokenizer = loaded[cfg.load_in_4bit]
    clock = _clock_callback()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(run, model, tokenizer, callbacks=[clock], report_to="none")
    generation = _time_method(trainer, compat.GENERATE_METHOD)  # the rollout, default or fast
    prepare = _time_method(trainer, compat.SCORE_METHOD)  # rollout + rewards + old log-probs
    logger.info("bench %s: %d steps", cfg.name, steps)
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    times = clock.times
    gen = [generation.get(i, 0.0) for i in range(len(times))]
    steady = slice(1, None) if len(times) > 1 else slice(0, None)
    steady_times, steady_lengths = times[steady], (lengths[steady] or [completion_length])
    step_s = sum(steady_times) / len(steady_times)
    mean_length = sum(steady_lengths) / len(steady_lengths)
    gen_s = sum(gen[steady]) / len(steady_times)
    scoring_s = sum(prepare.get(i, 0.0) for i in range(len(times))[steady]) / len(steady_times) - gen_s
    row = dict(
        config=cfg.name, rollout=cfg.rollout, device=torch.cuda.get_device_name(0) if cuda else "cpu",
        num_gpus=1 if cuda else 0, load_in_4bit=cfg.load_in_4bit, completions_per_step=cfg.completions,
        num_generations=settings.num_generations, steps_per_generation=cfg.steps_per_generation,
        max_completion_length=completion_length, steps=len(times), first_step_s=round(times[0], 2),
        step_s=round(step_s, 3), generation_s=round(gen_s, 3), rest_of_step_s=round(step_s - gen_s, 3),
        scoring_s=round(scoring_s, 3), update_s=round(step_s - gen_s - scoring_s, 3),
        mean_completion_length=round(mean_length, 1),
        completion_tokens_per_s=round(cfg.completions * mean_length / step_s, 1),
        step_times_s=[round(t, 3) for t in times], generation_times_s=[round(t, 3) for t in gen],
        peak_allocated_gib=round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
        peak_reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 2) if cuda else None,
        # per decoded token position of a rollout (prefill and weight snapshot included)
        generation_ms_per_token=round(1000 * gen_s * cfg.steps_per_generation / max(1.0, mean_length), 2),
        model_load_s=round(load_s, 1),
    )
    del trainer
    gc.collect()
    logger.info("bench %s: %s", cfg.name, json.dumps(row))
    return row


def markdown_table(rows: list[dict]) -> str:
    head = ("| config | rollout | completions/step | steps/generation | steady s/step | first step s "
            "| generation s/step | rest of step s | completion tok/s | peak alloc GiB | peak reserved GiB |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [
        f"| {r['config']} | {r['rollout']} | failed: {r['error'][:200]} |" if "error" in r else
        f"| {r['config']} | {r['rollout']} | {r['completions_per_step']} | {r['steps_per_generation']} "
        f"| {r['step_s']:.2f} | {r['first_step_s']:.1f} | {r['generation_s']:.2f} | {r['rest_of_step_s']:.2f} "
        f"| {r['completion_tokens_per_s']:,.0f} | {r['peak_allocated_gib']} | {r['peak_reserved_gib']} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows)), 4.0))
    colors = ["tab:green" if r["rollout"] == "fast" else "tab:gray" for r in rows]
    bars = ax.bar([r["config"] for r in rows], [r["completion_tokens_per_s"] for r in rows], color=colors)
    ax.bar_label(bars, fmt="{:,.0f}")
    if rows and rows[0]["num_gpus"]:
        for n, target in TARGETS.items():
            ax.axhline(target, ls="--", lw=1, color="tab:red")
            ax.text(len(rows) - 0.5, target, f"target at {n}/step", ha="right", va="bottom", fontsize=8)
    ax.set_ylabel("completion tokens / s (steady)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(rows: list[dict], out: Path, meta: dict, *, with_plot: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2, ensure_ascii=False) + "\n")
    table = markdown_table(rows)
    (out / "results.md").write_text(
        f"# GRPO step benchmark\n\nDevice: {meta['device']}. Command:\n\n    {meta['command']}\n\n{table}", "utf-8")
    if with_plot:
        title = f"{meta['device']}, {meta['model']}, {meta['max_completion_length']}-token completions"
        plot(rows, out / "results.png", title)


def run(args: argparse.Namespace) -> None:
    import unsloth  # patches transformers and TRL: must be imported before them

    unsloth_version = getattr(unsloth, "__version__", None)
    import torch

    from ..modeling import cuda_available

    cuda = cuda_available()
    configs = parse_configs(args.configs, cuda=cuda)
    out = Path(args.out) if args.out else (project_path("docs/benchmarks") if cuda
                                          else Path(tempfile.mkdtemp(prefix="sarashina-bench-")))
    model_name = resolve_bench_model(args.model, project_path(args.model_dir), cuda=cuda)
    import transformers
    import trl

    meta = dict(
        command="sarashina-grpo " + " ".join(sys.argv[1:]),
        device=torch.cuda.get_device_name(0) if cuda else "cpu", model=Path(model_name).name,
        max_completion_length=args.max_completion_length, torch=torch.__version__,
        transformers=transformers.__version__, trl=trl.__version__, unsloth=unsloth_version,
        date=time.strftime("%Y-%m-%d %H:%M:%S"), config_order="as listed, one process, one model load per precision",
    )
    rows, loaded = [], {}
    with tempfile.TemporaryDirectory(prefix="sarashina-bench-run-") as work:
        for cfg in configs:
            # steady steps (all but the first) span whole rollouts: a multiple of steps_per_generation
            spg = cfg.steps_per_generation
            steps = 1 + -(-max(args.steps - 1, spg) // spg) * spg
            try:
                rows.append(run_config(cfg, model_name, args.data, steps, args.max_completion_length, Path(work),
                                       loaded))
            except Exception as err:  # a losing configuration that crashes is a result too; keep measuring
                logger.exception("bench %s failed", cfg.name)
                rows.append(dict(config=cfg.name, rollout=cfg.rollout, completions_per_step=cfg.completions,
                                 error=f"{type(err).__name__}: {err}"))
            write_results(rows, out, meta, with_plot=False)  # a run cut off later still leaves its rows
    write_results(rows, out, meta)
    print(markdown_table(rows))
    print(f"Wrote {out / 'results.json'}, results.md and results.png")
