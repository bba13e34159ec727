"""Checks of the commands' own options (``infer``/``eval`` generation, threads, ``eval --limit``, ``demo``), before
anything heavy is imported or loaded. Plain values in, one ``SettingsError`` out; a run's ``Settings`` are checked by
``validation``.

    from sarashina_grpo.command_checks import check_threads
    check_threads(0)   # SettingsError: --threads must be a positive integer, got 0.
"""

from __future__ import annotations

from pathlib import Path

from .config import SettingsError, finite_number


def check_generation(max_new_tokens: int, sample: bool, temperature: float, top_p: float, batch_size: int,
                     samples_per_prompt: int = 1) -> None:
    """``infer``/``eval`` generation options (CLI flags named) that no generation can use."""
    for flag, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size),
                        ("--samples-per-prompt", samples_per_prompt)):
        if value < 1:
            raise SettingsError(f"{flag} must be at least 1, got {value}.")
    if sample and not (finite_number(temperature) and 0 < temperature <= 10):
        raise SettingsError(f"--temperature must be in (0, 10] when sampling, got {temperature}; for deterministic "
                            "answers drop --sample (greedy decoding) instead of a temperature of 0.")
    if sample and not (finite_number(top_p) and 0 < top_p <= 1):
        raise SettingsError(f"--top-p must be in (0, 1], got {top_p}.")
    if samples_per_prompt > 1 and not sample:
        raise SettingsError(f"--samples-per-prompt {samples_per_prompt} needs --sample: greedy decoding gives the "
                            "same answer every time.")


def check_threads(threads: int | None) -> int | None:
    """``--threads`` of the commands that compute on a CPU: unset, or a positive count; returned as given."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise SettingsError(f"--threads must be a positive integer, got {threads}.")
    return threads


def check_demo(demo, run_name: str | None = None) -> None:
    """``sarashina-grpo demo``'s options (a ``demo.DemoSettings``), before Unsloth is imported and the warm start
    runs: its threads, held-out limit and interval, run name and the GRPO settings it derives."""
    from .runs import check_run_name

    check_threads(demo.threads)
    for name in ("steps", "logging_steps", "eval_limit"):
        value = getattr(demo, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SettingsError(f"demo --{name.replace('_', '-')} must be a positive integer, got {value}.")
    if isinstance(demo.eval_steps, bool) or not isinstance(demo.eval_steps, int) or demo.eval_steps < 0:
        raise SettingsError(f"demo --eval-steps must be 0 (off) or a positive number of steps, got {demo.eval_steps}.")
    if run_name is not None:
        check_run_name(run_name)
    demo.settings(Path("tiny"))  # its GRPO settings (steps, logging steps, overrides), checked by check_settings


def check_eval_limit(limit: int | None) -> None:
    """``eval --limit`` (``evaluation.evaluate``'s ``limit``): a positive number of prompts, or None for all; an
    empty evaluation saved as a result would be compared as if it were one."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SettingsError(f"--limit must be at least 1 (prompts to evaluate), got {limit!r}; leave it out to "
                            "evaluate all.")
