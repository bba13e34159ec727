"""Checks of the commands' own options (``infer``/``eval`` generation, threads, ``eval --limit``, ``demo``, the
``warmstart`` recipe) and of the new-or-empty folder an export, a conversion or a warm start writes to,
before anything heavy is imported or loaded. Plain values in, one ``SettingsError`` out; a run's ``Settings`` are
checked by ``validation``.

    from sarashina_grpo.command_checks import check_threads
    check_threads(0)   # SettingsError: --threads must be a positive integer, got 0.
"""

from __future__ import annotations

import os
from pathlib import Path

from .project import SettingsError, finite_number

# More threads than cores only adds switching; a few times the cores still runs, far beyond is a typo.
MAX_THREADS_PER_CORE = 4


def check_generation(max_new_tokens: int, sample: bool, temperature: float, top_p: float, batch_size: int,
                     samples_per_prompt: int = 1) -> None:
    """``infer``/``eval`` generation options (CLI flags named) that no generation can use."""
    for flag, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size),
                        ("--samples-per-prompt", samples_per_prompt)):
        if value < 1:
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
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise SettingsError(f"--threads must be a positive integer, got {threads}.")
    cores = os.cpu_count() or 1
    if threads is not None and threads > MAX_THREADS_PER_CORE * cores:
        # 100,000 threads ran the machine out of memory while importing Unsloth, then crashed (SIGSEGV)
        raise SettingsError(f"--threads {threads} is far more than this machine's {cores} CPU core(s); give at most "
                            f"{MAX_THREADS_PER_CORE * cores} (usually the number of cores, or leave it out).")
    return threads


def check_demo(demo, run_name: str | None = None) -> None:
    """``sarashina-grpo demo``'s options (a ``demo.DemoSettings``), before Unsloth is imported and the warm start
    runs: its threads, held-out limit and interval, run name and the GRPO settings it derives."""
    from .runs import check_run_name

    check_threads(demo.threads)
    check_positive_integers("demo", demo, [n for n in ("steps", "logging_steps", "eval_limit") if getattr(demo, n)
                                           is not None])
    if isinstance(demo.eval_steps, bool) or not isinstance(demo.eval_steps, int) or demo.eval_steps < 0:
        raise SettingsError(f"demo --eval-steps must be 0 (off) or a positive number of steps, got {demo.eval_steps}.")
    if run_name is not None:
        check_run_name(run_name)
    demo.settings(Path("tiny"))  # its GRPO settings (steps, logging steps, overrides), checked as they are built


def check_eval_limit(limit: int | None) -> None:
    """``eval --limit`` (``evaluation.evaluate``'s ``limit``): a positive number of prompts, or None for all; an
    empty evaluation saved as a result would be compared as if it were one."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SettingsError(f"--limit must be at least 1 (prompts to evaluate), got {limit!r}; leave it out to "
                            "evaluate all.")


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


def check_positive_integers(command: str, options, names) -> None:
    for name in names:
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SettingsError(f"{command} --{name.replace('_', '-')} must be a positive integer, got {value!r}.")


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
    import tempfile

    from .model_checks import check_model_name

    if not recipe.output:
        raise SettingsError("warmstart needs --output: the folder to write the warm-started model to.")
    check_threads(recipe.threads)
    check_model_name(recipe.model)
    out_dir = check_new_folder(recipe.output, "warmstart --output")
    try:  # a folder that cannot be written fails now, not after the training pass
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir.parent):
            pass
    except OSError as err:
        raise SettingsError(f"warmstart --output {out_dir}: its folder cannot be written ({err.strerror}); "
                            "choose another place.") from None
