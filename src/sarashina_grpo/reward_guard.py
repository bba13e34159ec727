"""Rewards as training calls them: a reward that raises, or returns anything but one finite number (or None) per
completion, stops the run with one line naming it (``RewardError``) instead of a traceback or a run that trains on no
signal. The checks before a model loads are ``rewards.check_reward_names``/``check_reward_columns``.

    from sarashina_grpo.reward_guard import training_rewards
    funcs = training_rewards(["xmlcount", "my_rewards.py:length_reward"])
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import numbers
import traceback
from collections.abc import Sequence

from .rewards import RewardFunc, get_reward_funcs
from .tables import notebook_lines

logger = logging.getLogger(__name__)
# TRL scores in float32: a reward whose square (the group variance) overflows it becomes inf there.
REWARD_LIMIT = 1e18


class RewardError(RuntimeError):
    """A reward broke during training (raised, or returned no usable values); the message names it."""

    _render_traceback_ = notebook_lines


def training_rewards(names: Sequence[str], *, max_completion_length: int | None = None) -> list[RewardFunc]:
    """``get_reward_funcs(names)``, each wrapped as the module docstring says; each gets its own completions list."""
    funcs = get_reward_funcs(list(names), max_completion_length=max_completion_length)
    return [_checked(name, func, alone=len(funcs) == 1) for name, func in zip(names, funcs, strict=True)]


def _checked(name: str, func: RewardFunc, *, alone: bool) -> RewardFunc:
    if inspect.iscoroutinefunction(func):  # TRL awaits async rewards; the wrapper must stay one
        @functools.wraps(func)
        async def checked_async(completions, **kwargs):
            batch = list(completions)
            with _raised_as_reward_error(name, kwargs):
                values = await func(completions=list(batch), **kwargs)  # by keyword, as TRL calls it
            return check_reward_values(name, values, len(batch), step=_step(kwargs), alone=alone)

        return checked_async

    @functools.wraps(func)
    def checked(completions, **kwargs):
        batch = list(completions)
        with _raised_as_reward_error(name, kwargs):
            values = func(completions=list(batch), **kwargs)
        return check_reward_values(name, values, len(batch), step=_step(kwargs), alone=alone)

    return checked


def _step(kwargs) -> int | None:
    step = getattr(kwargs.get("trainer_state"), "global_step", None)
    return step + 1 if isinstance(step, int) else None  # the step being computed, as the progress bar counts


def _at(step: int | None) -> str:
    return f" at step {step}" if step is not None else ""


@contextlib.contextmanager
def _raised_as_reward_error(name: str, kwargs):
    try:
        yield
    except Exception as err:
        frames = traceback.extract_tb(err.__traceback__)
        where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
        text = " ".join(str(err).split())[:200]
        raise RewardError(f"Reward {name} raised {type(err).__name__}: {text}{where}{_at(_step(kwargs))}. Fix the "
                          "reward (it must return one number per completion; --debug shows the traceback).") from err


def check_reward_values(name: str, values, expected: int, *, step: int | None = None,
                        alone: bool = False) -> list[float | None]:
    """``values`` as one float (or None: does not apply) per completion, else ``RewardError`` naming the reward; None
    everywhere is an error from the only reward, and a warning beside others."""
    fix = "A reward returns a list of one float per completion (None where it does not apply)."
    if hasattr(values, "tolist") and not isinstance(values, str | bytes):  # numpy arrays, torch tensors
        values = values.tolist()
    if not isinstance(values, list | tuple):
        raise RewardError(f"Reward {name} returned a {type(values).__name__}{_at(step)}, not a list. {fix}")
    if len(values) != expected:
        raise RewardError(f"Reward {name} returned {len(values)} value(s) for {expected} completion(s){_at(step)}. "
                          f"{fix}")
    for i, value in enumerate(values):
        if value is not None and not isinstance(value, numbers.Real):  # bools count as 0/1, as TRL reads them
            raise RewardError(f"Reward {name} returned {value!r} ({type(value).__name__}) for completion {i + 1}"
                              f"{_at(step)}, not a number. {fix}")
        if value is not None and not abs(value) <= REWARD_LIMIT:  # NaN too
            what = (f"beyond ±{REWARD_LIMIT:g} (TRL's float32 overflows with it)" if math.isfinite(value)
                    else "not finite")
            raise RewardError(f"Reward {name} returned {value} for completion {i + 1}{_at(step)}: a reward that is "
                              f"{what} wipes out the advantage of its whole group, and the step learns nothing. Return "
                              "a finite number (None where the reward does not apply).")
    if values and all(v is None for v in values):
        message = f"Reward {name} returned None for all {expected} completions{_at(step)}"
        if alone:
            raise RewardError(f"{message}: it is the only reward, so the step has no signal. Return a number where "
                              "the reward applies.")
        logger.warning("%s: it gives no signal this step.", message)
    return [None if v is None else float(v) for v in values]
