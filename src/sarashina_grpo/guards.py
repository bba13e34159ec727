"""Guards against numbers that wreck a run: non-finite or absurd settings, NaN/inf during training.

Before the model loads, ``check_numeric_settings`` refuses settings no run can use (``--learning-rate inf``) and
``settings_warnings`` names legal ones that are surely a mistake (a warm-up longer than any realistic run). During
training, ``check_logs`` (called by ``callbacks.NonFiniteGuard`` on every log) stops the run with
``NonFiniteError`` at the first NaN/inf loss or gradient norm, before that step's weights are saved; and
``checkpoints.mark_complete`` never marks a checkpoint holding NaN/inf weights, so the last good checkpoint stays
the resume point.

Kept free of transformers/TRL imports: ``Settings.validate`` calls it before Unsloth is imported.
"""

from __future__ import annotations

import math
from pathlib import Path

from .config import SettingsError

# (field, lowest, highest, lowest allowed itself, highest allowed itself). Fields a Settings lacks are skipped.
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
    ("top_p", 0.0, 1.0, False, True),
)
# Warm-up steps beyond which no realistic run of this project gets to its full learning rate (the article's run:
# 500 steps, 50 of warm-up); a longer one usually comes from a huge --max-steps meant as "until I stop it".
REALISTIC_WARMUP_STEPS = 1_000
# LoRA weights are fp32 of order 1e-2; fp32 resolves ~1e-7 relative, i.e. ~1e-9 absolute. An Adam step moves a
# weight by about the learning rate, so below this every update rounds to no change at all.
NO_UPDATE_LEARNING_RATE = 1e-9
# Below this the completions of a group are (nearly) identical; GRPO learns only from differences within a group.
NEAR_GREEDY_TEMPERATURE = 0.1
WATCHED_LOGS = ("loss", "grad_norm", "learning_rate")


class NonFiniteError(SettingsError):
    """Training produced NaN or inf; it was stopped before anything non-finite became a resume point."""


def _flag(name: str) -> str:
    return f"Settings.{name} (CLI --{name.replace('_', '-')})"


def _finite_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_numeric_settings(settings) -> None:
    """Raise ``SettingsError`` naming the field for a NaN, infinite or absurd number, before any model loads."""
    for name, low, high, low_ok, high_ok in NUMERIC_RANGES:
        value = getattr(settings, name, None)
        if value is None:
            continue
        above = (value >= low) if low_ok else (value > low)
        below = (value <= high) if high_ok else (value < high)
        if not (_finite_number(value) and above and below):
            wanted = f"{'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"
            wanted = wanted.replace("inf)", "∞)")
            raise SettingsError(f"{_flag(name)} must be a finite number in {wanted}, got {value!r}.")
    epsilon, epsilon_high = getattr(settings, "epsilon", None), getattr(settings, "epsilon_high", None)
    if epsilon is not None and epsilon_high is not None and epsilon_high < epsilon:
        raise SettingsError(f"{_flag('epsilon_high')} ({epsilon_high}) must be at least epsilon ({epsilon}).")
    for key, value in (getattr(settings, "extra_grpo_args", None) or {}).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingsError(f"Settings.extra_grpo_args[{key!r}] must be a finite number, got {value!r}.")


def warmup_steps(settings) -> int:
    """Steps of the learning-rate warm-up: a ratio of max_steps, or a step count passed through to GRPOConfig."""
    explicit = (getattr(settings, "extra_grpo_args", None) or {}).get("warmup_steps")
    if isinstance(explicit, int) and explicit >= 1:
        return explicit
    ratio = explicit if isinstance(explicit, float) else getattr(settings, "warmup_ratio", 0.0)
    return math.ceil(ratio * settings.max_steps)


def settings_warnings(settings) -> list[str]:
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


def nonfinite_logs(logs: dict) -> dict:
    """The watched values of a Trainer log that are NaN or inf."""
    return {key: logs[key] for key in WATCHED_LOGS
            if isinstance(logs.get(key), int | float) and not math.isfinite(logs[key])}


def check_logs(logs: dict, step: int, output_dir: str | Path) -> None:
    """Raise ``NonFiniteError`` when a Trainer log holds a NaN/inf loss, gradient norm or learning rate.

    Called from ``on_log``, which the Trainer runs before it saves that step's checkpoint: raising here means the
    step's (by now non-finite) weights are never saved.
    """
    bad = nonfinite_logs(logs or {})
    if not bad:
        return
    from .checkpoints import newest_complete_in

    values = ", ".join(f"{key} = {value}" for key, value in bad.items())
    good = newest_complete_in(output_dir)
    kept = f"the last good checkpoint is {good}" if good else "no checkpoint had been saved yet"
    raise NonFiniteError(
        f"Training stopped at step {step}: {values}. The weights are no longer usable, so nothing from this step on "
        f"is saved or marked complete ({kept}). Usual causes: a learning rate too high for this model or a loose "
        "gradient clip; start a new run with a lower --learning-rate or --max-grad-norm (resuming keeps the run's "
        "settings and would meet the same numbers)."
    )
