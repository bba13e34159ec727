"""Pre-flight: what no settings object can know, checked before a model loads, each mistake one ``SettingsError``.

    from sarashina_grpo.preflight import check_run
    checked = check_run(settings, artifact_dir=Path("artifact"))  # CheckedRun(settings, rows, eval_rows) or an error

The settings check themselves as they are built (``config.Settings.__post_init__``: TRL's checks of its fields, the
project's of its own). This module checks what needs the disk, the machine or the registry: the rewards (your own
imported), the prompt and held-out files, the device, the model folder or hub id (through ``model_checks``), the
artifact folder, a resumed run's recorded settings (``check_run``; ``check_model`` for ``infer`` and ``eval``), and
the other commands' own options and output folders. The run folder's own promises (name, lock, data hash, steps
left) are ``runs``'.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .best import RUN_INFO, resolve_best
from .data import check_prompts
from .model_checks import check_device, check_lora_targets, check_model_name, check_push_to_hub
from .project import SettingsError, field_label, finite_number, is_whole, project_path

if typing.TYPE_CHECKING:
    from .config import Settings

logger = logging.getLogger(__name__)

# Warm-up steps beyond which no realistic run of this project gets to its full learning rate (the article's run:
# 500 steps, 50 of warm-up); a longer one usually comes from a huge --max-steps meant as "until I stop it".
BASE_MODEL = "base_model"  # run.json's record of the weights the adapter trains on (pipeline.record_base_model)
REALISTIC_WARMUP_STEPS = 1_000
# LoRA weights are fp32 of order 1e-2; fp32 resolves ~1e-7 relative, i.e. ~1e-9 absolute. An Adam step moves a
# weight by about the learning rate, so below this every update rounds to no change at all.
NO_UPDATE_LEARNING_RATE = 1e-9
# Below this the completions of a group are (nearly) identical; GRPO learns only from differences within a group.
NEAR_GREEDY_TEMPERATURE = 0.1
# Settings a resumed run may change (they do not alter the maths of the steps already taken), with a warning.
RESUMABLE_CHANGES = {"max_steps", "save_steps", "logging_steps", "load_in_4bit", "use_vllm",
                     "vllm_gpu_memory_utilization", "max_seq_length", "data_path", "system_prompt_file",
                     "log_completions", "num_completions_to_print", "backend", "eval_steps", "eval_data", "eval_limit",
                     "report_to", "save_total_limit", "run_name", "logging_first_step", "disable_tqdm", "use_cpu",
                     "bf16", "fp16", "best_metric", "patience"}
# More threads than cores only adds switching; a few times the cores still runs, far beyond is a typo.
MAX_THREADS_PER_CORE = 4
ARTIFACT_FOLDERS = {"outputs": "checkpoints of each run", "logs": "TensorBoard logs of each run",
                    "eval": "evaluations"}
# report_to names and the module each needs (transformers.integrations); "none" and "all" need nothing.
REPORT_MODULES = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow", "comet_ml": "comet_ml",
                  "clearml": "clearml", "neptune": "neptune", "dvclive": "dvclive", "codecarbon": "codecarbon",
                  "trackio": "trackio", "swanlab": "swanlab", "azure_ml": "azureml", "flyte": "flytekit"}


@dataclass
class CheckedRun:
    """Settings that passed every check, with the usable rows of their prompt file and, when the run evaluates
    during training (``eval_steps``), the held-out rows it scores."""

    settings: Settings
    rows: list = field(default_factory=list)
    eval_rows: list = field(default_factory=list)


def unwritable(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (made when missing), or None: a save that would fail fails now,
    not after hours of training."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as err:
        return err.strerror
    return None


# --- a training run


def check_rewards(names: list[str], max_completion_length: int | None = None) -> None:
    """Every reward is in the registry, or your own (``module:function``, ``file.py:function``), imported now; no
    function twice (under any spelling), no two rewards that TRL would log under one name."""
    from .rewards import check_reward_names

    try:
        check_reward_names(names, max_completion_length=max_completion_length)
    except KeyError as err:
        raise SettingsError(f"{field_label('reward_names')}: {err.args[0]}") from None


def check_rewards_have_columns(settings: Settings, rows) -> None:
    """Each reward finds the columns it needs in the prompt file (``rewards.check_reward_columns``)."""
    from .rewards import check_reward_columns

    columns = {"prompt", "lang", *(rows[0].extra if rows else {})}
    try:
        check_reward_columns(settings.reward_names, columns, settings.data_path)
    except KeyError as err:
        raise SettingsError(f"{field_label('reward_names')}: {err.args[0]}") from None


def check_report_to(report_to) -> None:
    """A ``report_to`` backend whose package is missing (transformers would raise after the model loads, leaving a
    run folder with nothing but run.json)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        module = REPORT_MODULES.get(name)
        if module and importlib.util.find_spec(module) is None:
            if name == "tensorboard" and importlib.util.find_spec("tensorboardX"):
                continue
            raise SettingsError(f"report_to {name!r} needs the {module} package, which is not installed: install "
                                f"it (uv pip install {module}) or drop it from report_to (e.g. report_to: "
                                "tensorboard).")


def warmup_steps(settings: Settings) -> int:
    """Steps of the learning-rate warm-up: ``warmup_steps`` below 1 is a share of max_steps (transformers 5)."""
    value = settings.warmup_steps
    return math.ceil(value * settings.max_steps) if value < 1 else int(value)


def settings_warnings(settings: Settings) -> list[str]:
    """Legal settings that are almost surely a mistake, each as one sentence saying what to change."""
    found = []
    warmup = warmup_steps(settings)
    if warmup > REALISTIC_WARMUP_STEPS:
        found.append(
            f"The learning-rate warm-up lasts {warmup:,} steps (warmup_steps {settings.warmup_steps:g} × max_steps "
            f"{settings.max_steps:,}): the learning rate stays below {settings.learning_rate:g} for all of them, "
            "which is the whole run if you stop it earlier. Set --max-steps to the steps you mean to run, or "
            "lower --warmup-steps."
        )
    if 0 < settings.learning_rate < NO_UPDATE_LEARNING_RATE:
        found.append(
            f"learning_rate {settings.learning_rate:g} is so small that every update rounds to no change in the "
            "weights: training would do nothing. The article's run uses 5e-06 (CLI --learning-rate)."
        )
    if 0 < settings.temperature < NEAR_GREEDY_TEMPERATURE:
        found.append(
            f"temperature {settings.temperature:g} makes the completions of a group nearly identical; GRPO learns "
            "only from their differences, so most steps would change nothing. Use about 0.7-1.0 (CLI --temperature)."
        )
    return found


def check_artifact_dir(artifact_dir: str | os.PathLike) -> None:
    """The artifact folder or one of its sub-folders is a file (else a traceback, and an empty run folder, halfway
    through creating them)."""
    root = Path(artifact_dir)
    if root.exists() and not root.is_dir():
        raise SettingsError(f"Artifact folder {root} is a file. Choose another with --artifact-dir, or move the file.")
    for name, holds in ARTIFACT_FOLDERS.items():
        folder = root / name
        if folder.exists() and not folder.is_dir():
            raise SettingsError(f"{folder} is a file, but it must be the folder of the {holds}. Move or rename the "
                                "file, or choose another --artifact-dir.")


def check_writable(folder: Path) -> None:
    check_artifact_dir(folder)
    if why := unwritable(folder):
        raise SettingsError(f"Artifact folder {folder} is not writable ({why}). Choose another with --artifact-dir "
                            "(notebook: ARTIFACT_DIR) or fix its permissions.")


def read_run_info(run_dir: Path) -> dict | None:
    """The run's saved ``{"settings": …, "data": …}``, or None for runs saved before it was recorded."""
    path = Path(run_dir) / RUN_INFO
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(info.get("settings"), dict):
            raise ValueError("no 'settings' mapping")
    except (ValueError, AttributeError) as err:
        raise SettingsError(f"{path} is damaged ({err}); the run's settings cannot be read. Start a new run, or "
                            f"restore {RUN_INFO} from a backup.") from None
    return info


def check_resume_settings(settings: Settings, run_dir: Path) -> None:
    """Refuse to continue a run with settings that change its maths; warn on harmless changes."""
    info = read_run_info(run_dir)
    if info is None:
        return
    before, now = info["settings"], settings.asked()
    changed = {k: (before.get(k), now[k]) for k in now if k in before and before[k] != now[k]}
    hard = {k: v for k, v in changed.items() if k not in RESUMABLE_CHANGES}
    if hard:
        listed = "; ".join(f"{k}: run used {a!r}, now {b!r}" for k, (a, b) in hard.items())
        raise SettingsError(
            f"Resuming {run_dir.name} with different settings ({listed}). Resume with the run's own settings "
            f"(the CLI takes them from {run_dir / RUN_INFO} for every flag you do not pass), or start a new run."
        )
    for k, (a, b) in changed.items():
        logger.warning("Resuming with %s = %r (the run started with %r).", k, b, a)


def check_run(settings: Settings, *, artifact_dir: Path, run_dir: Path | None = None,
              check_model_files: bool = True) -> CheckedRun:
    """Every check of a training run, in the order a user would fix them; one ``SettingsError``/``DataError``.

    ``run_dir``: the run being resumed (its ``run.json`` must agree). ``check_model_files`` off: the caller brings
    its own loaded model (the benchmark, the learning proof)."""
    check_rewards(settings.reward_names, settings.max_completion_length)
    # values TRL's GRPOConfig takes as they are, which fail only after the model loads
    check_report_to(settings.report_to)
    check_push_to_hub(settings.push_to_hub)
    for warning in settings_warnings(settings):
        logger.warning(warning)
    # The files the user named come first: a missing prompt file is reported even where the model would not run
    # on this machine either, so that one fix is not hidden behind another.
    rows = check_prompts(project_path(settings.data_path))
    eval_rows = (check_prompts(project_path(settings.eval_data))[:settings.eval_limit]
                 if settings.eval_steps else [])
    check_rewards_have_columns(settings, rows)
    check_device(settings.model_name, load_in_4bit=settings.load_in_4bit, use_vllm=settings.use_vllm, training=True)
    if check_model_files:
        check_model_name(settings.model_name)
        check_lora_targets(settings.model_name, settings.lora_target_modules)
    check_writable(artifact_dir)
    if run_dir is not None:
        check_resume_settings(settings, run_dir)
    return CheckedRun(settings, rows, eval_rows)


def check_model(settings, *, training: bool):
    """Settings (or ``options.ModelOptions``, resolved here) whose model can load on this machine (what
    ``infer``/``eval`` need)."""
    from .options import ModelOptions

    if isinstance(settings, ModelOptions):
        settings = settings.resolved()
    best = resolve_best(settings.model_name)  # <run>/best: that run's best checkpoint
    if best != settings.model_name:
        settings = (dataclasses.replace(settings, model_name=best) if isinstance(settings, ModelOptions)
                    else settings.replace(model_name=best))
    check_device(settings.model_name, load_in_4bit=settings.load_in_4bit, use_vllm=settings.use_vllm,
                 training=training)
    check_model_name(settings.model_name)
    return settings


# --- the other commands' options and folders


def check_positive_integers(command: str, options, names) -> None:
    for name in names:
        value = getattr(options, name)
        if not is_whole(value):
            raise SettingsError(f"{command} --{name.replace('_', '-')} must be a positive integer, got {value!r}.")


def check_generation(max_new_tokens: int, sample: bool, temperature: float, top_p: float, batch_size: int,
                     samples_per_prompt: int = 1) -> None:
    """``infer``/``eval`` generation options (CLI flags named) that no generation can use."""
    for flag, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size),
                        ("--samples-per-prompt", samples_per_prompt)):
        if not is_whole(value):
            raise SettingsError(f"{flag} must be at least 1, got {value}.")
    # checked with or without --sample: a value no sampling could use is a mistake either way
    if not (finite_number(temperature) and 0 < temperature <= 10):
        raise SettingsError(f"--temperature must be in (0, 10] (it sets how random --sample is), got {temperature}; "
                            "for deterministic answers drop --sample (greedy decoding) instead of a temperature of 0.")
    if not (finite_number(top_p) and 0 < top_p <= 1):
        raise SettingsError(f"--top-p must be in (0, 1] (it applies with --sample), got {top_p}.")
    if samples_per_prompt > 1 and not sample:
        raise SettingsError(f"--samples-per-prompt {samples_per_prompt} needs --sample: greedy decoding gives the "
                            "same answer every time.")


def check_threads(threads: int | None) -> int | None:
    """``--threads`` of the commands that compute on a CPU: unset, or a positive count; returned as given."""
    if threads is None:
        return None
    if not is_whole(threads):
        raise SettingsError(f"--threads must be a positive integer, got {threads}.")
    cores = os.cpu_count() or 1
    if threads > MAX_THREADS_PER_CORE * cores:
        # 100,000 threads ran the machine out of memory while importing Unsloth, then crashed (SIGSEGV)
        raise SettingsError(f"--threads {threads} is far more than this machine's {cores} CPU core(s); give at most "
                            f"{MAX_THREADS_PER_CORE * cores} (usually the number of cores, or leave it out).")
    return threads


def check_eval_limit(limit: int | None) -> None:
    """``eval --limit``: a positive number of prompts, or None for all; an empty evaluation saved as a result would
    be compared as if it were one."""
    if limit is not None and not is_whole(limit):
        raise SettingsError(f"--limit must be at least 1 (prompts to evaluate), got {limit!r}; leave it out to "
                            "evaluate all.")


def metrics_problem(metrics) -> str | None:
    """Why a parsed ``metrics.json`` is not one an evaluation wrote: not an object, or a figure (every key but
    ``meta``) that is not a number (null is fine: an evaluation without answers has no accuracy)."""
    if not isinstance(metrics, dict):
        return f"holds a JSON {type(metrics).__name__}, not an evaluation's figures"
    for key, value in metrics.items():
        if key != "meta" and value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"has {key} = {value!r}, not a number"
    return None


def check_compare_names(names: list[str], artifact_dir: str | os.PathLike) -> None:
    """Every ``--compare`` evaluation exists and can be read, checked before an evaluation runs (not after it)."""
    eval_dir = Path(artifact_dir) / "eval"
    missing, damaged = [], []
    for name in names:
        path = Path(name) if (Path(name) / "metrics.json").exists() else eval_dir / str(name)
        metrics = path / "metrics.json"
        if not metrics.is_file():
            missing.append(str(name))
            continue
        try:
            problem = metrics_problem(json.loads(metrics.read_bytes()))
        except (UnicodeDecodeError, json.JSONDecodeError):
            problem = "is cut off or not valid JSON"
        if problem:
            damaged.append(f"{metrics} {problem}")
    if missing:
        known = sorted(p.name for p in eval_dir.glob("*") if (p / "metrics.json").is_file())
        raise SettingsError(
            f"--compare: no evaluation named {', '.join(map(repr, missing))} (looked in {eval_dir}). Evaluations "
            f"there: {known or 'none'}. Run `sarashina-grpo eval --name NAME` first, or give an evaluation folder."
        )
    if damaged:
        raise SettingsError(f"--compare: {'; '.join(damaged)}. Run that evaluation again (sarashina-grpo eval "
                            "--name …).")


def check_demo(demo, run_name: str | None = None) -> None:
    """``sarashina-grpo demo``'s options (a ``demo.DemoSettings``), before Unsloth is imported and the warm start
    runs: its threads, held-out limit and interval, run name and the GRPO settings it derives."""
    from .runs import check_run_name

    check_threads(demo.threads)
    check_positive_integers("demo", demo, [n for n in ("steps", "logging_steps", "eval_limit") if getattr(demo, n)
                                           is not None])
    if not is_whole(demo.eval_steps, 0):
        raise SettingsError(f"demo --eval-steps must be 0 (off) or a positive number of steps, got {demo.eval_steps}.")
    if run_name is not None:
        check_run_name(run_name)
    demo.settings(Path("tiny"))  # its GRPO settings (steps, logging steps, overrides), checked as they are built


def check_new_folder(folder: str | Path, label: str) -> Path:
    """``folder`` expanded, when it is new or an empty folder: nothing a command writes there overwrites anything.
    An empty path (an unset ``$OUT``) is refused: ``Path("")`` is the working folder."""
    if not str(folder).strip():
        raise SettingsError(f"{label} is an empty path (an unset variable?); give the folder to write to.")
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise SettingsError(f"{label} {folder} is a file; give a new folder to write to.")
    if folder.is_dir() and any(folder.iterdir()):
        raise SettingsError(f"{label} {folder} exists and is not an empty folder; give a new one (nothing is "
                            "overwritten).")
    return folder


def check_warm_start(recipe, examples_file: Path | None) -> None:
    """A warm start's recipe (``warmstart.WarmStart``): its examples file (None: synthetic examples) and the numbers
    of its supervised pass."""
    if examples_file is not None and not examples_file.is_file():
        raise SettingsError(f"warmstart --data: file not found: {examples_file}.")
    check_positive_integers("warmstart", recipe, ("steps", "batch_size"))
    if recipe.lora_rank < 0 or not 0 <= recipe.malformed_share <= 1 or not recipe.learning_rate > 0:
        raise SettingsError("warmstart: --lora-rank must be >= 0, --malformed-share in [0, 1], --learning-rate > 0.")


def check_warm_start_command(recipe) -> None:
    """What the ``warmstart`` command must be given besides a valid recipe: a model that loads here, threads, and
    an output folder that is new and can be written."""
    if not recipe.output:
        raise SettingsError("warmstart needs --output: the folder to write the warm-started model to.")
    check_threads(recipe.threads)
    check_model_name(recipe.model)
    out_dir = check_new_folder(recipe.output, "warmstart --output")
    if why := unwritable(out_dir.parent):
        raise SettingsError(f"warmstart --output {out_dir}: its folder cannot be written ({why}); choose another "
                            "place.")
