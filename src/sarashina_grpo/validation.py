"""What no settings object can know, checked before a model loads: the run's files, model, device, folders and
what it resumes.

    from sarashina_grpo.validation import check_run
    checked = check_run(settings, artifact_dir=Path("artifact"))  # CheckedRun(settings, rows, eval_rows) or an error

The settings themselves were checked when they were built (``config.Settings.__post_init__``: TRL's checks of its
fields, the project's of its own). ``check_run`` adds what needs the disk, the machine or the registry, in the
order a user would fix them: the rewards (the registry, your own by reference, imported now), the prompt file and
the held-out file, the device, the model folder or hub id (cached or reachable) and its LoRA targets, the artifact
folder, and a resumed run's recorded settings. ``check_model`` does the same for the model of ``infer`` and
``eval``. The model and device checks take plain values and live in ``model_checks.py``; the commands' own options
are checked in ``command_checks.py``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .best import resolve_best
from .data import check_prompts
from .errors import check_artifact_dir
from .model_checks import check_device, check_lora_targets, check_model_name
from .project import SettingsError, field_label, project_path

if typing.TYPE_CHECKING:
    from .config import Settings

logger = logging.getLogger(__name__)

# Warm-up steps beyond which no realistic run of this project gets to its full learning rate (the article's run:
# 500 steps, 50 of warm-up); a longer one usually comes from a huge --max-steps meant as "until I stop it".
REALISTIC_WARMUP_STEPS = 1_000
# LoRA weights are fp32 of order 1e-2; fp32 resolves ~1e-7 relative, i.e. ~1e-9 absolute. An Adam step moves a
# weight by about the learning rate, so below this every update rounds to no change at all.
NO_UPDATE_LEARNING_RATE = 1e-9
# Below this the completions of a group are (nearly) identical; GRPO learns only from differences within a group.
NEAR_GREEDY_TEMPERATURE = 0.1
RUN_INFO = "run.json"  # every setting of the run, written at its start; resume compares with it
BASE_MODEL = "base_model"  # run.json's record of the weights the adapter trains on (pipeline.record_base_model)
# Settings a resumed run may change (they do not alter the maths of the steps already taken), with a warning.
RESUMABLE_CHANGES = {"max_steps", "save_steps", "logging_steps", "load_in_4bit", "use_vllm",
                     "vllm_gpu_memory_utilization", "max_seq_length", "data_path", "system_prompt_file",
                     "log_completions", "num_completions_to_print", "backend", "eval_steps", "eval_data", "eval_limit",
                     "report_to", "save_total_limit", "run_name", "logging_first_step", "disable_tqdm", "use_cpu",
                     "bf16", "fp16", "best_metric", "patience"}


@dataclass
class CheckedRun:
    """Settings that passed every check, with the usable rows of their prompt file and, when the run evaluates
    during training (``eval_steps``), the held-out rows it scores."""

    settings: Settings
    rows: list = field(default_factory=list)
    eval_rows: list = field(default_factory=list)


# --- settings


def check_rewards(names: list[str], max_completion_length: int | None = None) -> None:
    """Every reward is in the registry, or your own (``module:function``, ``file.py:function``), imported now; no
    function twice (under any spelling), no two rewards that TRL would log under one name."""
    from .rewards import check_reward_names

    try:
        check_reward_names(names, max_completion_length=max_completion_length)
    except KeyError as err:
        raise SettingsError(f"{field_label('reward_names')}: {err.args[0]}") from None


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


# --- folders and the run being resumed


def check_writable(folder: Path) -> None:
    """Raise a clear error now rather than after hours of training when the first save fails."""
    check_artifact_dir(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise SettingsError(
            f"Artifact folder {folder} is not writable ({err.strerror}). Choose another with --artifact-dir "
            "(notebook: ARTIFACT_DIR) or fix its permissions."
        ) from None


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


def check_rewards_have_columns(settings: Settings, rows) -> None:
    """Each reward finds the columns it needs in the prompt file (``rewards.check_reward_columns``)."""
    from .rewards import check_reward_columns

    columns = {"prompt", "lang", *(rows[0].extra if rows else {})}
    try:
        check_reward_columns(settings.reward_names, columns, settings.data_path)
    except KeyError as err:
        raise SettingsError(f"{field_label('reward_names')}: {err.args[0]}") from None


def check_run(settings: Settings, *, artifact_dir: Path, run_dir: Path | None = None,
              check_model_files: bool = True) -> CheckedRun:
    """Every check of a training run, in the order a user would fix them; one ``SettingsError``/``DataError``.

    ``run_dir``: the run being resumed (its ``run.json`` must agree). ``check_model_files`` off: the caller brings
    its own loaded model (the benchmark, the learning proof)."""
    from .errors import check_report_to
    from .model_checks import check_push_to_hub

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
