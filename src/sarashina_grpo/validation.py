"""The one place a run's inputs are checked, before anything heavy is imported or loaded.

    from sarashina_grpo.validation import check_run
    checked = check_run(settings, artifact_dir=Path("artifact"))  # CheckedRun(settings, rows, eval_rows) or an error

``check_run`` takes settings read by ``config.read_settings`` (typed) and the run's inputs (model, prompt file,
artifact folder, the run being resumed) and either returns them checked or raises one error naming the field, file
or row and the fix: types and ranges, choices (TRL's loss and scheduler names, the reward registry, your own rewards
by reference), the device, the model folder or hub id (cached or reachable), the prompt file and the held-out file
scored during training, the folders, and a resumed run's recorded settings. ``check_model`` does the same for the
model of ``infer`` and ``eval``. The model and device checks take plain values and live in ``model_checks.py``; the
commands' own options are checked in ``command_checks.py``. Everything below (modeling, pipeline, data's dataset
building, TRL) trusts what passed here. Nothing here imports transformers, TRL or Unsloth; the device check asks
torch whether CUDA is there.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import config
from .best import resolve_best
from .config import FIELDS, Settings, SettingsError, field_label, finite_number, project_path
from .data import check_prompts
from .errors import check_artifact_dir
from .grpo_fields import grpo_fields, loss_types, scheduler_names
from .model_checks import check_device, check_lora_targets, check_model_name

logger = logging.getLogger(__name__)

POSITIVE_INTEGERS = (
    "max_seq_length", "lora_rank", "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps",
    "max_prompt_length", "max_completion_length", "max_steps", "save_steps", "logging_steps", "num_iterations",
    "num_completions_to_print", "eval_limit",
)
# (field, lowest, highest, lowest allowed itself, highest allowed itself)
NUMERIC_RANGES = (
    ("learning_rate", 0.0, 1.0, False, True),  # above 1 every Adam step moves each weight by ~1: instant divergence
    ("max_grad_norm", 0.0, math.inf, False, False),
    ("temperature", 0.0, 10.0, False, True),  # beyond 10 sampling is uniform noise over the vocabulary
    ("beta", 0.0, math.inf, True, False),  # KL coefficient; 0 switches the reference model off (TRL's default)
    ("epsilon", 0.0, 1.0, False, False),  # clip range of the policy ratio
    ("epsilon_high", 0.0, math.inf, False, False),
    ("adam_beta1", 0.0, 1.0, True, False),
    ("adam_beta2", 0.0, 1.0, True, False),
    ("weight_decay", 0.0, math.inf, True, False),
    ("warmup_ratio", 0.0, 1.0, True, False),
    ("gpu_memory_utilization", 0.0, 1.0, False, True),
)
# Warm-up steps beyond which no realistic run of this project gets to its full learning rate (the article's run:
# 500 steps, 50 of warm-up); a longer one usually comes from a huge --max-steps meant as "until I stop it".
REALISTIC_WARMUP_STEPS = 1_000
# LoRA weights are fp32 of order 1e-2; fp32 resolves ~1e-7 relative, i.e. ~1e-9 absolute. An Adam step moves a
# weight by about the learning rate, so below this every update rounds to no change at all.
NO_UPDATE_LEARNING_RATE = 1e-9
# Below this the completions of a group are (nearly) identical; GRPO learns only from differences within a group.
NEAR_GREEDY_TEMPERATURE = 0.1
RUN_INFO = "run.json"  # every setting of the run, written at its start; resume compares with it
# Settings a resumed run may change (they do not alter the maths of the steps already taken), with a warning.
RESUMABLE_CHANGES = {"max_steps", "save_steps", "logging_steps", "load_in_4bit", "use_vllm", "gpu_memory_utilization",
                     "max_seq_length", "data_path", "system_prompt_file", "log_completions",
                     "num_completions_to_print", "backend", "held_out_eval_steps", "eval_data", "eval_limit",
                     "best_metric", "patience"}
@dataclass
class CheckedRun:
    """Settings that passed every check, with the usable rows of their prompt file and, when the run evaluates
    during training (``held_out_eval_steps``), the held-out rows it scores."""

    settings: Settings
    rows: list = field(default_factory=list)
    eval_rows: list = field(default_factory=list)


# --- settings


def check_ranges(settings: Settings) -> None:
    for name in POSITIVE_INTEGERS:
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SettingsError(f"{field_label(name)} must be a positive integer, got {value!r}.")
    steps = settings.held_out_eval_steps
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise SettingsError(f"{field_label('held_out_eval_steps')} must be 0 (off) or a positive integer, got "
                            f"{steps!r}.")
    for name in ("patience", "dynamic_sampling_max_rounds"):  # issue 32's settings: 0 is allowed (off / none extra)
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SettingsError(f"{field_label(name)} must be 0 or a positive integer, got {value!r}.")
    if settings.lora_alpha is not None and (not isinstance(settings.lora_alpha, int) or settings.lora_alpha < 1):
        raise SettingsError(f"{field_label('lora_alpha')} must be a positive integer, got {settings.lora_alpha!r}.")
    if not isinstance(settings.seed, int) or isinstance(settings.seed, bool) or settings.seed < 0:
        raise SettingsError(f"{field_label('seed')} must be a whole number ≥ 0 (numpy's seeds are), got "
                            f"{settings.seed!r}.")
    for name, low, high, low_ok, high_ok in NUMERIC_RANGES:
        value = getattr(settings, name)
        if value is None:
            continue
        above = (value >= low) if low_ok else (value > low)
        below = (value <= high) if high_ok else (value < high)
        if not (finite_number(value) and above and below):
            wanted = f"{'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}".replace("inf)", "∞)")
            raise SettingsError(f"{field_label(name)} must be a finite number in {wanted}, got {value!r}.")
    if settings.epsilon_high is not None and settings.epsilon_high < settings.epsilon:
        raise SettingsError(f"{field_label('epsilon_high')} ({settings.epsilon_high}) must be at least epsilon "
                            f"({settings.epsilon}).")


def check_choices(settings: Settings) -> None:
    from .rewards import check_reward_names

    choices = {name: f.metadata["choices"] for name, f in FIELDS.items() if f.metadata.get("choices")}
    choices["loss_type"], choices["lr_scheduler_type"] = loss_types(), scheduler_names()
    for name, allowed in choices.items():
        value = getattr(settings, name)
        if value not in allowed:
            raise SettingsError(f"{field_label(name)} must be one of {', '.join(map(repr, allowed))}, got "
                                f"{value!r}{config.did_you_mean(str(value), allowed)}.")
    try:  # unknown names, files that do not load, one function twice, two rewards logged under one name
        check_reward_names(settings.reward_names, max_completion_length=settings.max_completion_length)
    except KeyError as err:
        raise SettingsError(f"{field_label('reward_names')}: {err.args[0]}") from None
    targets = settings.lora_target_modules
    if not targets or not all(t.isidentifier() for t in targets):
        raise SettingsError(f"{field_label('lora_target_modules')} must be module names such as q_proj,v_proj, got "
                            f"{targets!r}.")


def check_grpo_args(settings: Settings) -> None:
    """``extra_grpo_args``: known ``GRPOConfig`` names, finite numbers, and combinations the project supports."""
    extra = settings.extra_grpo_args
    if "eval_steps" in extra:
        # TRL's own evaluation loop needs an eval dataset the trainer is never given; ours is held_out_eval_steps.
        raise SettingsError("eval_steps is TRL's evaluation loop, which this project does not run. For the held-out "
                            "evaluation during training give Settings.held_out_eval_steps (CLI --eval-steps, "
                            "notebook EVAL_STEPS).")
    for key, value in extra.items():
        if key not in grpo_fields():
            raise SettingsError(f"{field_label('extra_grpo_args')}: {key!r} is no field of TRL's GRPOConfig"
                                f"{config.did_you_mean(key, grpo_fields())}.")
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingsError(f"Settings.extra_grpo_args[{key!r}] must be a finite number, got {value!r}.")
    weights = extra.get("reward_weights")
    if weights is not None and len(weights) != len(settings.reward_names):
        raise SettingsError(f"reward_weights has {len(weights)} value(s) for {len(settings.reward_names)} rewards "
                            f"({', '.join(settings.reward_names)}): give one weight per reward.")
    if extra.get("vllm_mode") == "server" and (not settings.use_vllm or settings.backend == "unsloth"):
        # TRL's client to a separate `trl vllm-serve` GPU; Unsloth generates through its own colocated vLLM.
        raise SettingsError("vllm_mode 'server' needs --vllm and --backend trl-peft (TRL's own vLLM client talks "
                            "to `trl vllm-serve`).")


def check_consistency(settings: Settings) -> None:
    if settings.patience and (not settings.held_out_eval_steps or settings.best_metric == "none"):
        raise SettingsError(f"{field_label('patience')} counts held-out evaluations without a new best: it needs "
                            "--eval-steps N and a --best-metric other than 'none'.")
    if settings.num_generations < 2:
        raise SettingsError(f"{field_label('num_generations')} must be at least 2 (GRPO compares completions within "
                            f"a group), got {settings.num_generations}.")
    completions = settings.per_device_train_batch_size * settings.gradient_accumulation_steps
    if completions % settings.num_generations:
        lower = completions - completions % settings.num_generations
        fits = f"{lower} or {lower + settings.num_generations}" if lower else f"{settings.num_generations}"
        raise SettingsError(
            f"Settings.per_device_train_batch_size × gradient_accumulation_steps ({completions}) must be a multiple "
            f"of num_generations ({settings.num_generations}): every prompt needs its whole group of completions. "
            f"Use a batch size of {fits} (CLI --batch-size), or change num_generations (CLI --num-generations)."
        )
    if settings.max_prompt_length + settings.max_completion_length > settings.max_seq_length:
        raise SettingsError(
            f"max_prompt_length ({settings.max_prompt_length}) + max_completion_length "
            f"({settings.max_completion_length}) exceeds max_seq_length ({settings.max_seq_length}): raise "
            "max_seq_length (CLI --max-seq-length) or lower one of the two (--max-prompt-length, "
            "--max-completion-length)."
        )
    if settings.loss_type == "luspo" and settings.importance_sampling_level != "sequence":
        raise SettingsError("loss_type 'luspo' needs importance_sampling_level 'sequence' (CLI "
                            "--importance-sampling-level sequence).")
    if settings.use_vllm and settings.rollout != "default":
        raise SettingsError(
            f"Settings.rollout={settings.rollout!r} and use_vllm are alternatives: vLLM is its own rollout engine. "
            "Keep rollout='default' with use_vllm, or turn use_vllm off."
        )
    if not settings.system_prompt.strip() and not settings.system_prompt_file:
        raise SettingsError(f"{field_label('system_prompt')} is empty: it tells the model the format.")


def check_settings(settings: Settings) -> Settings:
    """Raise ``SettingsError`` naming the field (and its flag) for any value no run can use; return ``settings``."""
    # Settings built by hand (a notebook, a script) rather than by read_settings are typed here too.
    settings = settings.replace(**{name: config.typed_setting(name, getattr(settings, name)) for name in FIELDS})
    check_ranges(settings)
    check_choices(settings)
    check_grpo_args(settings)
    check_consistency(settings)
    return settings


def warmup_steps(settings: Settings) -> int:
    """Steps of the learning-rate warm-up: a ratio of max_steps, or a step count passed through to GRPOConfig."""
    explicit = settings.extra_grpo_args.get("warmup_steps")
    if isinstance(explicit, int) and explicit >= 1:
        return explicit
    ratio = explicit if isinstance(explicit, float) else settings.warmup_ratio
    return math.ceil(ratio * settings.max_steps)


def settings_warnings(settings: Settings) -> list[str]:
    """Legal settings that are almost surely a mistake, each as one sentence saying what to change."""
    found = []
    warmup = warmup_steps(settings)
    if warmup > REALISTIC_WARMUP_STEPS:
        found.append(
            f"The learning-rate warm-up lasts {warmup:,} steps (warmup_ratio {settings.warmup_ratio} × max_steps "
            f"{settings.max_steps:,}): the learning rate stays below {settings.learning_rate:g} for all of them, "
            "which is the whole run if you stop it earlier. Set --max-steps to the steps you mean to run, or "
            "lower --warmup-ratio."
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


def check_model(settings: Settings, *, training: bool) -> Settings:
    """Resolved, checked settings whose model can load on this machine (what ``infer``/``eval`` need)."""
    settings = check_settings(settings).resolved()
    settings = settings.replace(model_name=resolve_best(settings.model_name))  # <run>/best: its best checkpoint
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
    before, now = info["settings"], settings.to_dict()
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
    # Checked before resolving: resolving asks torch about CUDA, seconds that a typo should not cost.
    from .errors import check_report_to, check_seed
    from .model_checks import check_push_to_hub

    settings = check_settings(settings).resolved()
    # values TRL's GRPOConfig takes as they are, which fail only after the model loads
    check_seed(settings.seed)
    check_report_to(settings.extra_grpo_args.get("report_to", "tensorboard"))
    check_push_to_hub(settings.extra_grpo_args.get("push_to_hub"))
    for warning in settings_warnings(settings):
        logger.warning(warning)
    # The files the user named come first: a missing prompt file is reported even where the model would not run
    # on this machine either, so that one fix is not hidden behind another.
    rows = check_prompts(project_path(settings.data_path))
    eval_rows = (check_prompts(project_path(settings.eval_data))[:settings.eval_limit]
                 if settings.held_out_eval_steps else [])
    check_rewards_have_columns(settings, rows)
    check_device(settings.model_name, load_in_4bit=settings.load_in_4bit, use_vllm=settings.use_vllm, training=True)
    if check_model_files:
        check_model_name(settings.model_name)
        check_lora_targets(settings.model_name, settings.lora_target_modules)
    check_writable(artifact_dir)
    if run_dir is not None:
        check_resume_settings(settings, run_dir)
    return CheckedRun(settings, rows, eval_rows)
