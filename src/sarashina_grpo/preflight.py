"""Pre-flight: what no settings object can know (the disk, the machine, the hub, the other commands' options and
folders), checked before a model loads, each mistake one ``SettingsError``. The model checks take plain values, so
that ``export``, ``warmstart`` and ``modeling`` share them.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import logging
import math
import os
import re
import socket
import tempfile
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from . import project
from .arithmetic import expected_value
from .best import RUN_INFO, resolve_best
from .checkpoints import ADAPTER_CONFIG, check_loadable, folder_kind, newest_complete_in, step_of
from .data import DataError, check_prompts, text_problem
from .errors import hub_route, hub_unreachable_message, proxy_for
from .options import GenerateOptions, ModelOptions
from .project import HOME_VARIABLE, SettingsError, field_label, finite_number, is_whole, project_dir, project_path
from .rewards import check_reward_columns, check_reward_names
from .runs import check_run_name, read_json, trained_prompt
from .tables import file_problem, folder_problem

if typing.TYPE_CHECKING:
    from .config import Settings

logger = logging.getLogger(__name__)

BASE_MODEL = "base_model"  # run.json's record of the weights the adapter trains on (pipeline.record_base_model)
# A longer warm-up (the article's: 50 of 500 steps) usually comes from a huge --max-steps meant as "until I stop it".
REALISTIC_WARMUP_STEPS = 1_000
# An Adam step moves a weight by about the learning rate; fp32 LoRA weights (~1e-2) round away steps below this.
NO_UPDATE_LEARNING_RATE = 1e-9
# Below this the completions of a group are (nearly) identical; GRPO learns only from differences within a group.
NEAR_GREEDY_TEMPERATURE = 0.1
# Settings a resumed run may change, with a warning: they do not alter the maths of the steps already taken.
RESUMABLE_CHANGES = {"max_steps", "save_steps", "logging_steps", "load_in_4bit", "use_vllm",
                     "vllm_gpu_memory_utilization", "max_seq_length", "data_path", "system_prompt_file",
                     "log_completions", "num_completions_to_print", "backend", "eval_steps", "eval_data", "eval_limit",
                     "report_to", "save_total_limit", "run_name", "logging_first_step", "disable_tqdm", "use_cpu",
                     "bf16", "fp16", "best_metric", "patience", "rollout", "offload_activations"}
# Tokens of room for the prompt in the context ``check_context`` suggests (the default max_prompt_length).
PROMPT_ROOM = 1024
# More threads than cores only adds switching; a few times the cores still runs, far beyond is a typo.
MAX_THREADS_PER_CORE = 4
ARTIFACT_FOLDERS = {"outputs": "checkpoints of each run", "logs": "TensorBoard logs of each run", "eval": "evaluations"}
# Held-out metrics scored only from a column of the eval file (evaluation.attach_answers); without it they are null.
METRIC_COLUMNS = {"answer_accuracy": "answer"}
PATHS = str | os.PathLike  # what a folder or file setting may be
# report_to names and the module each needs (transformers.integrations); "none" and "all" need nothing.
REPORT_MODULES = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow", "comet_ml": "comet_ml",
                  "clearml": "clearml", "neptune": "neptune", "dvclive": "dvclive", "codecarbon": "codecarbon",
                  "trackio": "trackio", "swanlab": "swanlab", "azure_ml": "azureml", "flyte": "flytekit"}


@dataclass
class CheckedRun:
    """Settings that passed every check, the rows of their prompt file, and the held-out rows."""

    settings: Settings
    rows: list
    eval_rows: list


def unwritable(folder: Path) -> str | None:
    """Why no file can be created in ``folder``, or None: a save fails now, not after hours. The folders it makes to
    find out are removed again, so that a command refused later leaves nothing behind."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=folder).close()
    except OSError as err:
        return err.strerror
    finally:
        for path in made:
            with contextlib.suppress(OSError):
                path.rmdir()
    return None


# --- a training run


def check_rewards(names: list[str], max_completion_length: int | None = None) -> None:
    """Every reward is known or your own (imported now); none twice, no two that TRL would log under one name."""
    try:
        check_reward_names(names, max_completion_length=max_completion_length)
    except KeyError as err:
        raise SettingsError(f"{field_label('reward_names')}: {err.args[0]}") from None


def check_rewards_have_columns(settings: Settings, rows) -> None:
    """Each reward finds the columns it needs in the prompt file (``rewards.check_reward_columns``)."""
    columns = {"prompt", "lang", *(rows[0].extra if rows else {})}
    try:
        check_reward_columns(settings.reward_names, columns, settings.data_path, settings.max_completion_length)
    except KeyError as err:
        raise SettingsError(f"{field_label('reward_names')}: {err.args[0]}") from None
    if "correct_answer" in settings.reward_names:
        check_numeric_answers(rows, f"{settings.label('reward_names')}: reward correct_answer", settings.data_path)


def check_best_metric_has_column(settings: Settings, eval_rows) -> None:
    """A best metric the held-out rows cannot score: never a best, and --patience stops at the first evaluation."""
    column = METRIC_COLUMNS.get(settings.best_metric)
    if settings.eval_steps and column and not any(column in row.extra for row in eval_rows):
        raise SettingsError(f"{settings.label('best_metric')} {settings.best_metric} needs an {column!r} column in "
                            f"the held-out prompts, which {settings.label('eval_data')} ({settings.eval_data}) lacks "
                            f"in its first {settings.eval_limit} rows: add the column, point --eval-data at a file "
                            "that has it, or choose another --best-metric (e.g. strict_format_rate).")
    if settings.eval_steps and column:
        check_numeric_answers(eval_rows, f"{settings.label('best_metric')} {settings.best_metric}", settings.eval_data)


def check_numeric_answers(rows, needs: str, path) -> None:
    """An ``answer`` column none of whose cells is a number: every answer would be scored wrong, without a word."""
    answers = [row.extra["answer"] for row in rows if "answer" in row.extra]
    if answers and all(expected_value(a) is None for a in answers):
        raise SettingsError(f"{needs} reads the 'answer' column as numbers, but none of the {len(answers)} answers in "
                            f"{path} is one (e.g. {answers[0]!r}), so every completion would be scored wrong. Write "
                            "the answers as numbers (1200, -6, 0.5), or drop it.")


def check_report_to(report_to) -> None:
    """A ``report_to`` backend unknown to transformers or not installed (it would fail only after the model loads)."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in [report_to] if isinstance(report_to, str) else list(report_to or []):
        if name not in ("none", "all", *INTEGRATION_TO_CALLBACK):
            raise SettingsError(f"{field_label('report_to')} {name!r} is not an integration transformers knows; "
                                f"choose from none, all, {', '.join(INTEGRATION_TO_CALLBACK)}"
                                f"{project.did_you_mean(name, INTEGRATION_TO_CALLBACK)}.")
        module = REPORT_MODULES.get(name)  # tensorboardX stands in for tensorboard
        if module and importlib.util.find_spec(module) is None and not (
                name == "tensorboard" and importlib.util.find_spec("tensorboardX")):
            raise SettingsError(f"report_to {name!r} needs the {module} package, which is not installed: install it "
                                f"(uv pip install {module}) or drop it from report_to (e.g. report_to: tensorboard).")


def check_optimizer(settings: Settings) -> None:
    """The optimizer and learning-rate schedule transformers builds at the first step, tried now (the schedule on one
    dummy weight): a missing optimizer package, unreadable optim_args or a scheduler argument it does not take would
    fail only after the model loaded."""
    import torch
    from transformers import Trainer, get_scheduler

    try:
        Trainer.get_optimizer_cls_and_kwargs(settings)
    except ImportError as err:
        raise SettingsError(f"{field_label('optim')} {settings.optim.value!r}: {err}; or choose another --optim.") \
            from None
    except (ValueError, TypeError) as err:  # without optim_args: a choice that needs the model (GaLore), checked then
        if settings.optim_args:
            raise SettingsError(f"{field_label('optim_args')} {settings.optim_args!r} cannot be read ({err}): give "
                                "comma-separated key=value pairs, e.g. 'betas=(0.9,0.99)'.") from None
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=settings.learning_rate)
    try:
        get_scheduler(settings.lr_scheduler_type, dummy, num_warmup_steps=warmup_steps(settings),
                      num_training_steps=settings.max_steps, scheduler_specific_kwargs=settings.lr_scheduler_kwargs)
    except (ValueError, TypeError) as err:
        raise SettingsError(f"{field_label('lr_scheduler_type')} {settings.lr_scheduler_type.value!r} with "
                            f"lr_scheduler_kwargs {settings.lr_scheduler_kwargs or {}}: transformers refuses it "
                            f"({err}).") from None
    if settings.use_liger_kernel and importlib.util.find_spec("liger_kernel") is None:
        raise SettingsError(f"{field_label('use_liger_kernel')} needs the liger-kernel package, which is not "
                            "installed: install it (uv pip install liger-kernel) or turn it off.")


def warmup_steps(settings: Settings) -> int:
    """Steps of the learning-rate warm-up: ``warmup_steps`` below 1 is a share of max_steps (transformers 5)."""
    value = settings.warmup_steps
    return math.ceil(value * settings.max_steps) if value < 1 else int(value)


def settings_warnings(settings: Settings) -> list[str]:
    """Legal settings that are almost surely a mistake, each as one sentence saying what to change."""
    found = []
    if (warmup := warmup_steps(settings)) > REALISTIC_WARMUP_STEPS:
        found.append(f"The learning-rate warm-up lasts {warmup:,} steps (warmup_steps {settings.warmup_steps:g} × "
                     f"max_steps {settings.max_steps:,}): the learning rate stays below {settings.learning_rate:g} "
                     "for all of them, which is the whole run if you stop it earlier. Set --max-steps to the steps "
                     "you mean to run, or lower --warmup-steps.")
    elif settings.warmup_steps >= 1 and warmup >= settings.max_steps:  # a share (below 1) is of the run by design
        found.append(f"The learning-rate warm-up ({warmup:,} steps, warmup_steps) is not shorter than the run "
                     f"(max_steps {settings.max_steps:,}): the learning rate never reaches {settings.learning_rate:g}. "
                     "Lower --warmup-steps below --max-steps, or give it as a share of the run (e.g. 0.1).")
    if 0 < settings.learning_rate < NO_UPDATE_LEARNING_RATE:
        found.append(f"learning_rate {settings.learning_rate:g} is so small that every update rounds to no change in "
                     "the weights: training would do nothing. The article's run uses 5e-06 (CLI --learning-rate).")
    if settings.save_total_limit is not None and settings.save_total_limit <= 0:
        found.append(f"save_total_limit {settings.save_total_limit} keeps every checkpoint: transformers reads 0 or "
                     "less as no limit, not as none kept. Give 1 or more to keep that many, or leave it unset "
                     "(CLI --save-total-limit).")
    if 0 < settings.temperature < NEAR_GREEDY_TEMPERATURE:
        found.append(f"temperature {settings.temperature:g} makes the completions of a group nearly identical; GRPO "
                     "learns only from their differences, so most steps would change nothing. Use about 0.7-1.0 "
                     "(CLI --temperature).")
    return found


def check_writable(root: Path) -> None:
    """The artifact folder can be written, and neither it nor a sub-folder is a file (else a traceback halfway)."""
    if root.exists() and not root.is_dir():
        raise SettingsError(f"Artifact folder {root} is a file. Choose another with --artifact-dir, or move the file.")
    for name, holds in ARTIFACT_FOLDERS.items():
        if (folder := root / name).exists() and not folder.is_dir():
            raise SettingsError(f"{folder} is a file, but it must be the folder of the {holds}. Move or rename the "
                                "file, or choose another --artifact-dir.")
    if why := unwritable(root):
        raise SettingsError(f"Artifact folder {root} is not writable ({why}). Choose another with --artifact-dir "
                            "(notebook: ARTIFACT_DIR) or fix its permissions.")


def read_run_info(run_dir: Path, *, settings_used: bool = False) -> dict | None:
    """The run's saved ``{"settings": …, "data": …}``, or None for runs saved before it was recorded. With
    ``settings_used`` (a resume rebuilds the run from them) settings without a model are damage too: every field
    they lack would silently take the article's value, the 3B model first."""
    if not (path := Path(run_dir) / RUN_INFO).exists():
        return None
    if path.is_dir():
        raise SettingsError(f"{path} is a folder, not the run's settings file; move it away and restore {RUN_INFO} "
                            "(from a backup), or start a new run.")
    try:
        info = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: an editor's BOM is no damage
        if not isinstance(info.get("settings"), dict):
            raise ValueError("no 'settings' mapping")
        if settings_used and not info["settings"].get("model_name"):
            raise ValueError("its 'settings' name no model_name" if info["settings"] else "its 'settings' are empty")
    except (ValueError, AttributeError) as err:
        raise SettingsError(f"{path} is damaged ({err}); the run's settings cannot be read. Start a new run, or "
                            f"restore {RUN_INFO} from a backup.") from None
    return info


def check_resume_settings(settings: Settings, run_dir: Path) -> None:
    """Refuse to continue a run with settings that change its maths; warn on harmless changes."""
    if (info := read_run_info(run_dir)) is None:
        return
    before, now = info["settings"], settings.asked()
    changed = {k: (before.get(k), now[k]) for k in now if k in before and before[k] != now[k]}
    if hard := {k: v for k, v in changed.items() if k not in RESUMABLE_CHANGES}:
        listed = "; ".join(f"{k}: run used {a!r}, now {b!r}" for k, (a, b) in hard.items())
        raise SettingsError(f"Resuming {run_dir.name} with different settings ({listed}). Resume with the run's own "
                            f"settings (the CLI takes them from {run_dir / RUN_INFO} for every flag you do not pass), "
                            "or start a new run.")
    for k, (a, b) in changed.items():
        # 'auto' is resolved when training starts: say which engine the run used, which may be the one asked now
        ran = f", which ran {info['rollout']!r}" if k == "rollout" and info.get("rollout") not in (None, a) else ""
        logger.warning("Resuming with %s = %r (the run started with %r%s).", k, b, a, ran)
    if settings.system_prompt_file and "system_prompt_file" not in changed \
            and trained_prompt(info) not in (None, settings.system_prompt):
        logger.warning("Resuming under another system prompt than run %s trained under: %s has changed since. "
                       "Restore it to go on as the run began.", run_dir.name, settings.system_prompt_file)


def check_prompt_file(settings: Settings, name: str) -> list:
    """The usable rows of the prompt file field ``name`` names; errors name the setting (a path alone is ambiguous)."""
    given = getattr(settings, name)
    try:
        return check_prompts(project_path(given))
    except DataError as err:
        relative = ""
        if not Path(given).expanduser().is_absolute() and "Relative paths" not in str(err) \
                and file_problem(project_path(given)) == "not found":
            relative = (f" A relative path is read from the project folder, here {project_dir()} (${HOME_VARIABLE}, "
                        "else the working directory), not from a recipe's folder.")
        raise DataError(f"{settings.label(name)}: {err}{relative}") from None


def check_enough_prompts(settings: Settings, rows) -> None:
    """TRL's sampler makes only full generation batches of distinct prompts: with fewer, training ends at step 0."""
    needed = settings.generation_batch_size // settings.num_generations
    if len(rows) < needed:
        raise SettingsError(
            f"{settings.label('data_path')}: {settings.data_path} has {len(rows)} usable prompt(s), but one generation "
            f"batch takes {needed} different prompts (generation_batch_size {settings.generation_batch_size}: "
            f"--batch-size × processes × steps_per_generation, ÷ --num-generations {settings.num_generations}), so "
            "no step would train. Add prompts, or lower --batch-size or steps_per_generation.")


def shown(value) -> str:
    """A value as an error quotes it, with its type: ``'no' (str)``, ``5 (int)``."""
    return f"{value!r} ({type(value).__name__})"


def check_optional(label: str, value, kinds, wanted: str, unset: str) -> None:
    """``value`` is None (meaning ``unset``) or one of ``kinds``."""
    if value is not None and not isinstance(value, kinds):
        raise SettingsError(f"{label} must be {wanted}, got {shown(value)}; None: {unset}.")


def check_switch(label: str, value, wanted: str = "True or False") -> None:
    """``value`` is a bool: a text such as "no" or "False" is true, and would do what it means to refuse."""
    if not isinstance(value, bool):
        raise SettingsError(f"{label} must be {wanted}, got {shown(value)}.")


def check_run_options(settings_run_name: str | None, *, artifact_dir, resume, run_name, allow_data_change: bool,
                      resume_weights_only: bool = False) -> str | None:
    """``prepare``'s own arguments (``train``'s run flags, the notebook's), checked before anything is read or written.
    Returns the run's name: ``run_name``, else the settings' own; the two may not disagree."""
    for label, value, kinds, wanted, unset in (
            ("--artifact-dir (notebook: ARTIFACT_DIR)", artifact_dir, PATHS, "a folder", "the project's artifact/"),
            ("--resume (notebook: RESUME)", resume, PATHS, "'latest', a run name, or a run or checkpoint folder",
             "a new run"),
            ("--run-name (notebook: RUN_NAME)", run_name, str, "a plain folder name such as 'lr5e-6-seed1'",
             "a timestamp")):
        check_optional(label, value, kinds, wanted, unset)
        if value is not None and not str(value).strip():  # an unset variable in a script: not the default's stand-in
            raise SettingsError(f"{label} is empty (an unset variable?); give {wanted}, or leave it out (None: "
                                f"{unset}).")
    project.check_home_folder()  # the default artifact/ lives under it
    check_switch("--allow-data-change (notebook: ALLOW_DATA_CHANGE)", allow_data_change)
    check_switch("--resume-weights-only", resume_weights_only)
    # TRL's run_name (the CLI's --run-name) names the run's folders too: from SETTINGS or a recipe it is checked alike
    own, settings_label = settings_run_name, "Settings.run_name (CLI --run-name; notebook: SETTINGS or RECIPE)"
    if run_name is not None and own is not None and run_name != own:
        raise SettingsError(f"--run-name (notebook: RUN_NAME) {run_name!r} disagrees with {settings_label} {own!r}: "
                            "a run has one name. Give it once, as RUN_NAME.")
    if run_name is not None:
        check_run_name(run_name, "--run-name (notebook: RUN_NAME)")
    elif own is not None:
        check_run_name(own, settings_label)
    return run_name if run_name is not None else own


def check_run(settings: Settings, *, artifact_dir: Path, run_dir: Path | None = None,
              check_model_files: bool = True) -> CheckedRun:
    """Every check of a training run, in the order a user would fix them; ``run_dir``: the run being resumed."""
    if run_dir is not None:  # a setting changed since the run began is the cause of any refusal below it brings
        check_resume_settings(settings, run_dir)
    check_rewards(settings.reward_names, settings.max_completion_length)
    check_report_to(settings.report_to)  # values TRL takes as they are, which fail only after the model loads
    check_optimizer(settings)
    check_push_to_hub(settings.push_to_hub)
    for warning in settings_warnings(settings):
        logger.warning(warning)
    # The files named come first: a missing prompt file is not hidden behind a model that would not run here either.
    rows = check_prompt_file(settings, "data_path")
    check_enough_prompts(settings, rows)
    eval_rows = check_prompt_file(settings, "eval_data")[: settings.eval_limit] if settings.eval_steps else []
    check_rewards_have_columns(settings, rows)
    check_best_metric_has_column(settings, eval_rows)
    check_device(settings.model_name, load_in_4bit=settings.load_in_4bit, use_vllm=settings.use_vllm, training=True)
    if check_model_files:
        check_model_name(settings.model_name)
        check_lora_targets(settings.model_name, settings.lora_target_modules)
    check_writable(artifact_dir)
    return CheckedRun(settings, rows, eval_rows)


def check_model(settings, *, training: bool, max_new_tokens: int | None = None):
    """Settings (or ``options.ModelOptions``, resolved here) whose model loads here, with room for max_new_tokens."""
    check_context(max_new_tokens, settings.max_seq_length)
    if isinstance(settings, ModelOptions):  # <run>/best: that run's best checkpoint
        settings = dataclasses.replace(settings.resolved(), model_name=resolve_best(settings.model_name))
    elif (best := resolve_best(settings.model_name)) != settings.model_name:
        settings = settings.replace(model_name=best)
    check_device(settings.model_name, load_in_4bit=settings.load_in_4bit, use_vllm=settings.use_vllm, training=training)
    check_model_name(settings.model_name)
    return trained_system_prompt(settings) if isinstance(settings, ModelOptions) else settings


def trained_system_prompt(settings: ModelOptions) -> ModelOptions:
    """A checkpoint's default system prompt is the one its run trained under (``run.json``): it states the format."""
    if not isinstance(settings.system_prompt, str):
        raise SettingsError(f"The system prompt (--system-prompt; notebook: SYSTEM_PROMPT) must be text, got "
                            f"{settings.system_prompt!r}; None takes the run's (run.json), else the article's.")
    if settings.system_prompt != project.SYSTEM_PROMPT or settings.system_prompt_file \
            or not looks_like_path(settings.model_name):
        return settings
    run_dir = Path(settings.model_name).expanduser().parent
    trained = trained_prompt(read_json(run_dir / RUN_INFO) or {})  # damaged or absent: the default prompt
    if trained is None or trained == settings.system_prompt:
        return settings
    logger.info("System prompt: the one run %s trained under (%s); give --system-prompt (notebook: SYSTEM_PROMPT) "
                "to use another.", run_dir.name, run_dir / RUN_INFO)
    return dataclasses.replace(settings, system_prompt=trained)


# --- the other commands' options and folders


def check_whole(label: str, value, rule: str = "a positive integer", fix: str = "", lowest: int = 1) -> None:
    """``value`` is a whole number >= ``lowest``; else ``{label} must be {rule}, got {value}{fix}.``"""
    if not is_whole(value, lowest):
        raise SettingsError(f"{label} must be {rule}, got {value!r}{fix}.")


def check_generation(max_new_tokens: int, sample: bool, temperature: float, top_p: float, batch_size: int,
                     samples_per_prompt: int = 1) -> None:
    """``infer``/``eval`` generation options that no generation can use (the inference notebook's two too)."""
    for flag, value in (("--max-new-tokens (notebook: MAX_NEW_TOKENS)", max_new_tokens), ("--batch-size", batch_size),
                        ("--samples-per-prompt", samples_per_prompt)):
        check_whole(flag, value, "at least 1 (a whole number)")
    check_switch("--sample (notebook: DO_SAMPLE)", sample)
    if not (finite_number(temperature) and 0 < temperature <= 10):  # even without --sample: no sampling can use it
        raise SettingsError(f"--temperature must be in (0, 10] (it sets how random --sample is), got {temperature}; "
                            "for deterministic answers drop --sample (greedy decoding) instead of a temperature of 0.")
    if not (finite_number(top_p) and 0 < top_p <= 1):
        raise SettingsError(f"--top-p must be in (0, 1] (it applies with --sample), got {top_p}.")
    if samples_per_prompt > 1 and not sample:
        raise SettingsError(f"--samples-per-prompt {samples_per_prompt} needs --sample: greedy decoding gives the "
                            "same answer every time.")


def check_context(max_new_tokens: int | None, max_seq_length: int) -> None:
    """``--max-seq-length`` holds ``--max-new-tokens`` and a prompt: generation does not stop at the context's end."""
    check_whole("--max-seq-length", max_seq_length, "a positive integer (the tokens of prompt and answer together)",
                f"; leave it out for {ModelOptions.max_seq_length}")
    if is_whole(max_new_tokens) and max_new_tokens >= max_seq_length:
        raise SettingsError(f"--max-new-tokens (notebook: MAX_NEW_TOKENS) {max_new_tokens} does not fit within "
                            f"--max-seq-length {max_seq_length}: that context holds the prompt and the answer "
                            f"together, so the prompt needs room too. Lower --max-new-tokens well below "
                            f"{max_seq_length}, or raise --max-seq-length to {max_new_tokens} plus the prompt's length "
                            f"(e.g. {max_new_tokens + PROMPT_ROOM}).")


def check_threads(threads: int | None) -> int | None:
    """``--threads`` (unset or a positive count), returned as given; also an ``OMP_NUM_THREADS`` torch would ignore."""
    omp = os.environ.get("OMP_NUM_THREADS")
    if omp and omp.strip() and not re.fullmatch(r"0*[1-9]\d*(,\d+)*", omp.strip()):
        raise SettingsError(f"OMP_NUM_THREADS={omp!r} is not a number of threads; set it to a count such as 4, or "
                            "unset it (--threads sets torch's threads for one command).")
    if threads is None:
        return None
    check_whole("--threads", threads)
    if threads > MAX_THREADS_PER_CORE * (cores := os.cpu_count() or 1):
        # 100,000 threads ran the machine out of memory while importing Unsloth, then crashed (SIGSEGV)
        raise SettingsError(f"--threads {threads} is far more than this machine's {cores} CPU core(s); give at most "
                            f"{MAX_THREADS_PER_CORE * cores} (usually the number of cores, or leave it out).")
    return threads


def check_eval_limit(limit: int | None) -> None:
    """``eval --limit``: a positive number of prompts, or None for all (an empty evaluation would be compared)."""
    if limit is not None:
        check_whole("--limit (notebook: EVAL_LIMIT)", limit, "at least 1 (prompts to evaluate)",
                    "; leave it out (notebook: None) to evaluate all")


def metrics_problem(metrics) -> str | None:
    """Why a parsed ``metrics.json`` is no evaluation's: not an object, or a figure (but ``meta``) not number/null."""
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
        metrics = (Path(name) if (Path(name) / "metrics.json").exists() else eval_dir / str(name)) / "metrics.json"
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
        raise SettingsError(f"--compare: no evaluation named {', '.join(map(repr, missing))} (looked in {eval_dir}). "
                            f"Evaluations there: {known or 'none'}. Run `sarashina-grpo eval --name NAME` first, or "
                            "give an evaluation folder.")
    if damaged:
        raise SettingsError(f"--compare: {'; '.join(damaged)}. Run that evaluation again (sarashina-grpo eval "
                            "--name …).")


# The inference notebook's parameters by kind, each with what to give: text, a file or folder (each with what None
# means); True, False (or None); a list of texts.
NOTEBOOK_VALUES = {
    "MODEL_NAME": (str, "a hub id, a checkpoint folder or 'tiny'", "the 3B model with a CUDA GPU, 'tiny' without one"),
    "SYSTEM_PROMPT": (str, "text", "the one the checkpoint's run trained under, else the article's"),
    "ROLE": (str, "text, e.g. 'あなたは駅前のパン屋の店主です。'", "no role"),
    "ROLEPLAY_ROLE": (str, "text: the role of the role-play section", "no role"),
    "EVAL_NAME": (str, "a plain folder name such as 'base'", "named after the model"),
    "ROLE_FILE": (PATHS, "a UTF-8 text file holding the role", "ROLE"),
    "ARTIFACT_DIR": (PATHS, "a folder", "the project's artifact/"),
    "TRAINING_RUN": (PATHS, "a run name or run folder", "no completions from training"),
}
NOTEBOOK_SWITCHES = {"LOAD_IN_4BIT": "True, False or None (4-bit with a CUDA GPU, 16-bit without one)",
                     "USE_VLLM": "True or False", "EVAL_OVERWRITE": "True or False"}
NOTEBOOK_LISTS = {
    "PROMPTS": "the prompts to answer, e.g. ['こんにちは']",
    "CHAT_TURNS": "your turns of the chat, e.g. ['週末に京都へ行きます。']",
    "ROLEPLAY_TURNS": "the customer's turns of the role-play",
    "COMPARE_WITH": "names or folders of earlier evaluations, e.g. ['base']",
}


def check_inference_notebook(parameters: Mapping[str, object]) -> None:
    """The inference notebook's parameters (its ``globals()``), each of a kind its cells can use, before the model
    loads: otherwise the text "False" samples, and a bare string is one prompt per character."""
    given = {name: value for name, value in parameters.items() if name.isupper()}
    for name, value in given.items():
        if name in NOTEBOOK_VALUES:
            check_optional(name, value, *NOTEBOOK_VALUES[name])
            _, wanted, unset = NOTEBOOK_VALUES[name]
            if "ROLE" not in name and isinstance(value, str) and not value.strip():  # '' for a role: none, as --role ''
                raise SettingsError(f"{name} is empty; give {wanted} (None: {unset}).")
        if name in NOTEBOOK_SWITCHES and not (value is None and name == "LOAD_IN_4BIT"):
            check_switch(name, value, NOTEBOOK_SWITCHES[name])
        if name in NOTEBOOK_LISTS:
            if isinstance(value, str):
                raise SettingsError(f"{name} must be a list of texts, {NOTEBOOK_LISTS[name]}; got the text "
                                    f"{value!r}, which would be one item per character. Put it in brackets: "
                                    f"{name} = [{value!r}].")
            allowed = PATHS if name == "COMPARE_WITH" else str
            if not isinstance(value, list | tuple) or not all(isinstance(item, allowed) for item in value):
                raise SettingsError(f"{name} must be a list of texts, {NOTEBOOK_LISTS[name]}; got {shown(value)}.")
            blank = next((i for i, item in enumerate(value) if allowed is str and text_problem(item)), None)
            if blank is not None:  # it would be answered as if something were asked
                raise SettingsError(f"{name}[{blank}] is empty: write the text, or remove it from the list.")
    defaults = GenerateOptions()  # the notebook sets two of them; GenerationSettings' defaults are the same
    max_new_tokens = given.get("MAX_NEW_TOKENS", defaults.max_new_tokens)
    check_generation(max_new_tokens, given.get("DO_SAMPLE", defaults.sample), defaults.temperature, defaults.top_p,
                     defaults.batch_size)
    check_context(max_new_tokens, ModelOptions.max_seq_length)  # the notebook's context: the default one
    check_eval_limit(given.get("EVAL_LIMIT"))


def check_demo(demo, run_name: str | None = None) -> None:
    """``demo``'s options (``demo.DemoSettings``) and the GRPO settings it derives, before Unsloth is imported."""
    check_threads(demo.threads)
    for name in ("steps", "logging_steps", "eval_limit"):
        if getattr(demo, name) is not None:
            check_whole(f"demo --{name.replace('_', '-')}", getattr(demo, name))
    check_whole("demo --eval-steps", demo.eval_steps, "0 (off) or a positive number of steps", lowest=0)
    if run_name is not None:
        check_run_name(run_name)
    demo.settings(Path("tiny"))  # its GRPO settings (steps, logging steps, overrides), checked as they are built


def check_new_folder(folder: str | Path, label: str) -> Path:
    """``folder`` expanded, if new or empty (nothing is overwritten); an empty path (an unset ``$OUT``) is refused."""
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
    """A warm start's recipe (``warmstart.WarmStart``); ``examples_file`` None means synthetic examples."""
    if examples_file is not None and (problem := file_problem(examples_file)):  # a folder or a FIFO is no "not found"
        found = f"file not found: {examples_file}" if problem == "not found" else f"{examples_file} {problem}"
        give = "" if "pipe" in problem else " Give a JSONL file of examples (keys prompt, think, response), or " \
                                            "'synthetic'."
        raise SettingsError(f"warmstart --data: {found}.{give}")
    check_whole("warmstart --steps", recipe.steps)
    check_whole("warmstart --batch-size", recipe.batch_size)
    for flag, value, ok, rule in (("--lora-rank", recipe.lora_rank, recipe.lora_rank >= 0, ">= 0"),
                                  ("--malformed-share", recipe.malformed_share, 0 <= recipe.malformed_share <= 1,
                                   "in [0, 1]")):
        if not ok:
            raise SettingsError(f"warmstart {flag} must be {rule}, got {value:g}.")
    # train's rules (config.check_values): a seed torch and numpy take, a rank that fits memory, a learning rate that
    # can train (inf trained to NaN weights before a word)
    for flag, problem in (("--lora-rank", project.lora_rank_problem(recipe.lora_rank)),
                          ("--learning-rate", project.range_problem(project.LEARNING_RATE_RANGE, recipe.learning_rate)),
                          ("--seed", project.seed_problem(recipe.seed))):
        if problem:
            raise SettingsError(f"warmstart {flag} {problem}")


def check_build_tiny(options) -> None:
    """``build-tiny``'s options (``options.BuildTinyOptions``) before torch builds anything: a seed torch takes."""
    if problem := project.seed_problem(options.seed):
        raise SettingsError(f"build-tiny --seed {problem}")


def check_warm_start_command(recipe) -> None:
    """What ``warmstart`` needs besides a valid recipe: a model that loads here, and a new, writable output folder."""
    if not recipe.output:
        raise SettingsError("warmstart needs --output: the folder to write the warm-started model to.")
    check_threads(recipe.threads)
    check_model_name(recipe.model)
    out_dir = check_new_folder(recipe.output, "warmstart --output")
    if why := unwritable(out_dir.parent):
        raise SettingsError(f"warmstart --output {out_dir}: its folder cannot be written ({why}); choose another "
                            "place.")


# --- whether a model can load here: plain values in, one ModelNotFoundError (a SettingsError) out


HUB_PROBE_SECONDS = 3.0  # a reachable hub answers a TCP connect in well under a second; an offline one fails at DNS
PROXY_PORTS = {"http": 80, "https": 443}  # a proxy URL without a port (socks: 1080)


class ModelNotFoundError(SettingsError):
    """MODEL_NAME names a folder that is missing or holds no model/adapter files."""


def model_label(name: str) -> str:
    """How an error names the model setting: the value and the two places it is given."""
    return f"Model {name!r} (--model, notebook MODEL_NAME)"


def looks_like_path(name: str) -> bool:
    """A local folder rather than a hub id ("org/name", exactly one slash)."""
    return (name.startswith((".", "/", "~", "artifact/")) or "\\" in name or name.count("/") > 1
            or Path(name).expanduser().exists() or any(step_of(part) is not None for part in Path(name).parts))


def hub_reachable(endpoint: str, timeout: float = HUB_PROBE_SECONDS) -> bool:
    """The hub's host answers within ``timeout`` on the route a download takes: straight, through the SOCKS or HTTPS
    proxy set (its port answering), or through an HTTP proxy that grants a ``CONNECT`` tunnel to it."""
    import http.client

    url = urlparse(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    via = urlparse(proxy[1]) if (proxy := proxy_for(endpoint)) else None
    try:
        if via is not None and via.scheme == "http":
            headers = {}
            if via.username is not None:
                token = base64.b64encode(f"{unquote(via.username)}:{unquote(via.password or '')}".encode()).decode()
                headers["Proxy-Authorization"] = f"Basic {token}"
            with contextlib.closing(http.client.HTTPConnection(via.hostname, via.port or PROXY_PORTS["http"],
                                                               timeout=timeout)) as conn:
                conn.set_tunnel(host, port, headers)
                conn.connect()  # OSError unless the proxy answers the CONNECT with 200
        else:
            address = (host, port) if via is None else (via.hostname, via.port or PROXY_PORTS.get(via.scheme, 1080))
            socket.create_connection(address, timeout=timeout).close()
    except (OSError, ValueError, http.client.HTTPException):  # no DNS, no route, refused, timed out, no tunnel
        return False
    return True


def hub_unusable() -> str | None:
    """Why nothing can be uploaded to (or downloaded from) the hub now, in words, or None: ``HF_HUB_OFFLINE``, or its
    host not answering within seconds (``hub_reachable``) on the route the client takes."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if hub_reachable(constants.ENDPOINT):
        return None
    return f"the hub cannot be reached{hub_route(proxy_for(constants.ENDPOINT))}"


def check_push_to_hub(push_to_hub) -> None:
    """``push_to_hub`` on while the hub cannot be reached: the upload would fail only after the model trains."""
    if push_to_hub and (why := hub_unusable()):
        raise SettingsError(f"push_to_hub is on but {why}. Turn it off and upload later with sarashina-grpo export "
                            "CHECKPOINT OUT --push-to-hub REPO.")


def check_hub_model(name: str, *, label: str | None = None, instead: str | None = None) -> None:
    """Hub id ``name`` neither cached nor downloadable now: one line in seconds, not a traceback after retries.
    ``label`` names the setting (default: --model's), ``instead`` what to give in its place."""
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # cached: the loader reads it offline
    if constants.HF_HUB_OFFLINE:
        instead = instead or "the offline tiny model (CLI --model tiny, notebook MODEL_NAME = 'tiny'), a local model " \
                             "folder"
        raise ModelNotFoundError(
            f"{label or model_label(name)} is a hub id that is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set. Use {instead}, or unset HF_HUB_OFFLINE where the "
            "hub can be reached to download it once.")
    if not hub_reachable(constants.ENDPOINT):
        raise ModelNotFoundError(hub_unreachable_message(name, constants.ENDPOINT, cache=constants.HF_HUB_CACHE,
                                                         label=label, instead=instead))


def sibling_hint(missing: Path) -> str:
    """For a missing checkpoint folder: a sentence naming its run's newest finished checkpoint, where there is one."""
    newest = newest_complete_in(missing.parent) if missing.parent.is_dir() else None
    return f" Its run's newest finished checkpoint is {newest}." if newest else ""


def check_model_name(name: str) -> None:
    """``ModelNotFoundError``, saying what to give instead, for a folder that cannot load or an unobtainable hub id."""
    project.check_home_folder()  # `tiny` and every default path live under $SARASHINA_GRPO_HOME
    if name == "tiny":
        return
    if not looks_like_path(name):
        check_hub_model(name)
        return
    path = Path(name).expanduser()
    examples = ("Give a hub id such as 'sbintuitions/sarashina2.2-3b-instruct-v0.1', a finished checkpoint like "
                "'artifact/outputs/<run>/checkpoint-500', or 'tiny'.")
    if path.is_file() and path.suffix.lower() == ".gguf":
        raise ModelNotFoundError(f"{model_label(name)} is a GGUF file; convert it to a model folder first: "
                                 f"sarashina-grpo convert-gguf {path} OUT, then give --model OUT.")
    if problem := folder_problem(path):  # a file, a FIFO, a device: there, but no folder
        raise ModelNotFoundError(f"{model_label(name)} {problem.replace('a folder', 'a model folder')}. {examples}")
    if not path.is_dir():
        where = "" if path.is_absolute() else f" (a relative path is read from the working folder, {Path.cwd()})"
        raise ModelNotFoundError(f"{model_label(name)}: no such folder{where}.{sibling_hint(path) or ' ' + examples}")
    kind = folder_kind(path)
    if kind.adapter or kind.model:
        check_loadable(path)  # files cut off, overwritten or NaN: one message now, not a traceback after loading
        if kind.model and not kind.adapter and (problem := model_folder_problem(path)):
            raise ModelNotFoundError(f"{model_label(name)}: {problem}")
        if kind.adapter:
            check_base_model(path)
        return
    if kind.newest:  # a run folder: point at its newest finished checkpoint
        hint = f"It is a run folder; its newest finished checkpoint is {kind.newest}."
    elif kind.step is not None:
        hint = ("It looks like a half-written checkpoint (no checkpoint_complete marker): the run was cut off "
                "while saving. Use an earlier checkpoint-N of the same run.")
    else:
        hint = examples
    raise ModelNotFoundError(f"{model_label(name)} holds neither model files (config.json + model.safetensors) nor "
                             f"LoRA adapter files (adapter_config.json + adapter_model.safetensors). {hint}")


# Files a tokenizer loads from: the fast tokenizer's JSON, a SentencePiece model, or a BPE/WordPiece vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
                   "vocab.txt")
# config.json fields that are counts in every architecture loaded here: text or a fraction means a damaged file.
CONFIG_COUNTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings")


def model_folder_problem(folder: Path) -> str | None:
    """What keeps a full model folder (past ``check_loadable``) from loading: no tokenizer, a config.json no model's."""
    if not {p.name for p in folder.iterdir()} & set(TOKENIZER_FILES):
        return (f"{folder} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, …): the model cannot read or "
                "write text. Copy them from the model it came from (they are saved with every checkpoint).")
    model_config = json.loads((folder / "config.json").read_bytes())  # valid JSON: check_loadable read it first
    if not isinstance(model_config, dict):
        return f"{folder / 'config.json'} holds a JSON {type(model_config).__name__}, not a model configuration."
    for key in CONFIG_COUNTS:
        if (value := model_config.get(key)) is not None and not is_whole(value):
            return f"{folder / 'config.json'} has {key} = {value!r}, not a positive whole number; restore the file."
    return None


def nonfinite_parameters(model, limit: int = 3) -> list[str]:
    """Names of (up to ``limit``) floating-point parameters holding NaN or inf; quantised weights are skipped."""
    import torch

    with torch.no_grad():  # lazily: the pass stops at the ``limit``-th
        bad = (name for name, p in model.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all())
        return list(itertools.islice(bad, limit))


def check_finite_model(model, what: str, fix: str) -> None:
    """``SettingsError`` naming the first parameters of ``model`` that hold NaN or inf (it cannot answer)."""
    if bad := nonfinite_parameters(model):
        raise SettingsError(f"{what} holds NaN or inf weights ({', '.join(bad)}). {fix}")


def adapter_base(folder: Path) -> str | None:
    """``base_model_name_or_path`` of the adapter in ``folder``; None where it cannot be read."""
    try:
        base = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return base if isinstance(base, str) else None


def missing_local_model(name: str) -> bool:
    """``name`` is a local folder (not a hub id, not 'tiny') that holds no model (no config.json) here."""
    return (name != "tiny" and (looks_like_path(name) or Path(name).is_absolute())
            and not (Path(name).expanduser() / "config.json").is_file())


def check_base_model(adapter_dir: Path) -> None:
    """An adapter's local base model folder must be there (else the loader seeks it on the hub, failing obscurely)."""
    base = adapter_base(adapter_dir)  # None: check_loadable reports a damaged adapter; a missing entry is the default
    if base is not None and missing_local_model(base):
        raise ModelNotFoundError(f"{adapter_dir}: its base model folder {base} (adapter_config.json, "
                                 "base_model_name_or_path) does not exist here or has no config.json. Put the base "
                                 "model back there, or write its new place (a folder or hub id) into "
                                 f"{adapter_dir / 'adapter_config.json'}.")


def check_device(model_name: str, *, load_in_4bit: bool, use_vllm: bool, training: bool) -> None:
    """Fail before loading when the request cannot run on this machine, naming the route that can."""
    if use_vllm and importlib.util.find_spec("vllm") is None:
        raise SettingsError("USE_VLLM is on but vLLM is not installed. Install the extra (`uv sync --extra vllm`, "
                            "CUDA only) or set USE_VLLM=False / drop --vllm.")
    if project.cuda_available():
        project.precision()  # a bad $SARASHINA_GRPO_PRECISION is one error now, not after the model loaded
        return
    if load_in_4bit:
        raise SettingsError("4-bit loading (LOAD_IN_4BIT=True) needs a CUDA GPU and none is visible. On CPU set "
                            "LOAD_IN_4BIT=False (CLI: --no-4bit) and use a small model, e.g. --model tiny (inference "
                            "notebook: MODEL_NAME = 'tiny'; finetuning notebook: SETTINGS = {'model_name': 'tiny', "
                            "'load_in_4bit': False}).")
    if use_vllm:
        raise SettingsError("USE_VLLM needs a CUDA GPU and none is visible; set USE_VLLM=False (drop --vllm).")
    if training and not looks_like_path(model_name) and model_name != "tiny":
        raise SettingsError(f"Training {model_name} needs a CUDA GPU and none is visible. On CPU, train the offline "
                            "tiny model instead: sarashina-grpo train --model tiny --max-steps 5 (finetuning "
                            "notebook: SETTINGS = {'model_name': 'tiny', 'max_steps': 5}).")


# Each architecture's (config.json's model_type) decoder projections: what LoRA can target and the default means.
# Gemma 3 names them like Llama; an architecture not listed keeps the targets as given, unchecked.
PROJECTIONS = dict.fromkeys(("llama", "mistral", "gemma3_text"), project.LORA_TARGET_MODULES)


def model_type_of(name: str) -> str | None:
    """``model_type`` from config.json (an adapter's: its base model's), "llama" for tiny and the default; or None."""
    if name in ("tiny", project.DEFAULT_MODEL_NAME):
        return "llama"
    folder = Path(name).expanduser()
    if not (folder / "config.json").is_file() and (folder / ADAPTER_CONFIG).is_file():
        base = adapter_base(folder)
        return model_type_of(base) if base and base != name else None
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def check_lora_targets(model_name: str, targets: tuple[str, ...]) -> None:
    """LoRA targets that name no layer of the model: PEFT skips them without a word (or fails after loading)."""
    kind = model_type_of(model_name)
    if kind in PROJECTIONS and (unknown := [t for t in targets if t not in PROJECTIONS[kind]]):
        raise SettingsError(f"{field_label('lora_target_modules')}: {', '.join(unknown)} match no layer of this "
                            f"{kind} model{project.did_you_mean(unknown[0], PROJECTIONS[kind])}. Its layers are "
                            f"{', '.join(PROJECTIONS[kind])}.")


def lora_targets(model_name: str, targets: tuple[str, ...]) -> list[str]:
    """The modules LoRA wraps: ``targets``, but the project's default means this architecture's ``PROJECTIONS``."""
    kind = model_type_of(model_name)
    return list(PROJECTIONS[kind] if tuple(targets) == project.LORA_TARGET_MODULES and kind in PROJECTIONS else targets)


# --- which base weights an adapter was trained on

# A base model's fingerprint: sha256 over names, dtypes, shapes and 64 KiB from each end of 16 tensors spread over the
# sorted names, read from its safetensors files (~2 MiB, milliseconds, however large). A copy elsewhere, cached or
# resharded has the same one; other weights of the same shape, or the same ones in another dtype, do not.
FINGERPRINT_TENSORS = 16
FINGERPRINT_BYTES = 1 << 16


def weights_folder(name: str) -> Path | None:
    """The local folder (or cached snapshot) of the full weights ``name`` (an adapter: its base) stands for, or None."""
    folder = Path(name).expanduser()
    if (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file():
        base = adapter_base(folder)
        return weights_folder(base) if base and base != name else None
    if folder.is_dir():
        return folder
    if looks_like_path(name):
        return None
    from huggingface_hub import try_to_load_from_cache

    for index in ("model.safetensors.index.json", "model.safetensors"):
        if isinstance(cached := try_to_load_from_cache(name, index), str):
            return Path(cached).parent
    return None


def weights_fingerprint(name: str | Path) -> str | None:
    """The fingerprint of the full weights ``name`` stands for (``weights_folder``); None where they are unreadable."""
    if (folder := weights_folder(str(name))) is None:
        return None
    try:
        index = folder / "model.safetensors.index.json"
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())) \
            if index.is_file() else ["model.safetensors"]
        tensors = {}
        for file in files:
            with open(folder / file, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(length))
            tensors.update({key: (folder / file, 8 + length, entry) for key, entry in header.items()
                            if key != "__metadata__"})
        names = sorted(tensors)
        if not names:
            return None
        picked = sorted({names[i * (len(names) - 1) // (FINGERPRINT_TENSORS - 1)]
                         for i in range(min(FINGERPRINT_TENSORS, len(names)))})
        digest = hashlib.sha256(f"{len(names)} tensors\n".encode())
        for key in picked:
            path, data_start, entry = tensors[key]
            start, end = (data_start + offset for offset in entry["data_offsets"])
            digest.update(f"{key} {entry['dtype']} {entry['shape']}\n".encode())
            with open(path, "rb") as f:
                f.seek(start)
                digest.update(f.read(min(FINGERPRINT_BYTES, end - start)))
                f.seek(max(start, end - FINGERPRINT_BYTES))
                digest.update(f.read(end - max(start, end - FINGERPRINT_BYTES)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return digest.hexdigest()[:32]
