"""Reward functions for the <think>/<response> format, their registry, and your own by reference
(``--rewards xmlcount,my_rewards.py:length_reward``). TRL passes the completions plus every dataset column by name.

Rewards never raise: malformed input scores as empty text. Bounds (property-tested): xmlcount at most 0.5 and at
least ``-0.001 × len(text)`` (no floor, as in the article); soft/strict format exactly 0.0 or 0.5; japanese_purity
in [0, 0.5]; correct_answer exactly 0.0 or 1.0.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import inspect
import io
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from .arithmetic import CORRECT_REWARD, is_correct  # number parsing lives in arithmetic.py
from .purity import consistency_score
from .tables import file_problem

TAGS = ("<think>", "</think>", "<response>", "</response>")
TAG_REWARD = 0.125  # four tags × 0.125 = 0.5, the same ceiling as each format reward
TRAILING_PENALTY_PER_CHAR = 0.001
FORMAT_REWARD = 0.5

# The definition (and test oracle) of is_soft_format: the four tags in order, anything around them.
SOFT_FORMAT_RE = re.compile(r"<think>.*?</think>.*?<response>.*?</response>", re.DOTALL)
# Strict: exactly "<think>\n…\n</think>\n<response>\n…\n</response>", nothing before or after.
STRICT_FORMAT_RE = re.compile(r"<think>\n.*\n</think>\n<response>\n.*\n</response>", re.DOTALL)

RewardFunc = Callable[..., list[float]]


def completion_text(completion) -> str:
    """The generated text of one completion: a string, a message dict, or a list of messages (last one wins); a
    ``content`` may be a list of parts (``[{"type": "text", "text": …}]``); anything else reads as empty text."""
    try:
        if isinstance(completion, Sequence) and not isinstance(completion, str | bytes | bytearray) and completion:
            completion = completion[-1]
        content = completion.get("content", "") if isinstance(completion, Mapping) else completion
        if isinstance(content, list):
            return "".join(p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
        return content if isinstance(content, str) else ""
    except Exception:  # a reward must never stop a run over one odd completion
        return ""


def texts_of(completions: Iterable) -> list[str]:
    """One text per completion; ``None`` or a non-iterable batch reads as no completions."""
    try:
        return [completion_text(c) for c in completions]
    except Exception:
        return []


def xmlcount_score(text: str) -> float:
    score = sum((TAG_REWARD for tag in TAGS if text.count(tag) == 1), 0.0)  # 0.0, not int 0, with no tag
    end = text.rfind("</response>")
    return score - (TRAILING_PENALTY_PER_CHAR * len(text[end + len("</response>"):]) if end != -1 else 0.0)


def is_soft_format(text: str) -> bool:
    """Same answer as ``SOFT_FORMAT_RE.search``, in linear time: three lazy ``.*?`` backtrack in O(n⁴) on text
    that repeats the tags without closing them (2,500 such characters took 2 s), which would stall a step."""
    position = 0
    for tag in TAGS:
        position = text.find(tag, position)
        if position == -1:
            return False
        position += len(tag)
    return True


def is_strict_format(text: str) -> bool:
    # Each tag once first: cheap, and it keeps the greedy `.*` from swallowing a second <response> block.
    return all(text.count(tag) == 1 for tag in TAGS) and STRICT_FORMAT_RE.fullmatch(text) is not None


def xmlcount_reward(completions, **kwargs) -> list[float]:
    """0.125 for each of the four tags that occurs exactly once, minus 0.001 per character after </response>."""
    return [xmlcount_score(t) for t in texts_of(completions)]


def soft_format_reward(completions, **kwargs) -> list[float]:
    """0.5 when <think>, </think>, <response>, </response> occur in this order, anything between."""
    return [FORMAT_REWARD if is_soft_format(t) else 0.0 for t in texts_of(completions)]


def strict_format_reward(completions, **kwargs) -> list[float]:
    """0.5 only for exactly "<think>\\n…\\n</think>\\n<response>\\n…\\n</response>", each tag once."""
    return [FORMAT_REWARD if is_strict_format(t) else 0.0 for t in texts_of(completions)]


def japanese_purity_reward(completions, **kwargs) -> list[float]:
    """0.5 × Japanese purity of the <think> section (the lower of think and response purity); 0 without <think>."""
    return [FORMAT_REWARD * consistency_score(t) for t in texts_of(completions)]


def correct_answer_reward(completions, answer=None, **kwargs) -> list[float]:
    """1.0 when the last number in <response> equals the row's ``answer`` column, else 0.0."""
    texts = texts_of(completions)
    try:
        answers = list(answer) if answer is not None and not isinstance(answer, str | bytes) else [answer] * len(texts)
    except TypeError:  # a lone number, not one per completion
        answers = [answer] * len(texts)
    answers += [None] * (len(texts) - len(answers))  # a short column scores the rest as wrong, never raises
    return [CORRECT_REWARD if is_correct(t, a) else 0.0 for t, a in zip(texts, answers, strict=False)]


REWARD_FUNCS: dict[str, RewardFunc] = {
    "xmlcount": xmlcount_reward,
    "soft_format": soft_format_reward,
    "strict_format": strict_format_reward,
    "japanese_purity": japanese_purity_reward,  # language consistency of the thinking, see docs/purity-reward.md
    "correct_answer": correct_answer_reward,  # needs an `answer` column (datasets/arithmetic.csv)
}


def get_reward_funcs(names: Iterable[str], *, max_completion_length: int | None = None) -> list[RewardFunc]:
    """Reward functions by name: ``REWARD_FUNCS``, then ``TRL_REWARDS`` (built for ``max_completion_length``), or
    your own as ``module:function``/``path/to/file.py:function``; ``KeyError`` listing the valid names otherwise."""
    # In a string commas separate rewards (a path holding a comma cannot be given).
    names = [n.strip() for n in names.split(",") if n.strip()] if isinstance(names, str) else list(names)
    funcs = []
    for name in names:
        if ":" in name:
            funcs.append(load_reward(name))
        elif name in REWARD_FUNCS:
            funcs.append(REWARD_FUNCS[name])
        elif name in TRL_REWARDS:
            funcs.append(trl_reward(name, max_completion_length=max_completion_length))
        else:
            raise KeyError(unknown_reward_message(name, several=len(names) > 1))
    return funcs


def unknown_reward_message(name: str, *, several: bool = False) -> str:
    close = difflib.get_close_matches(name, [*REWARD_FUNCS, *TRL_REWARDS], n=1, cutoff=0.6)
    message = f"Unknown reward {name!r}{f' (did you mean {close[0]}?)' if close else ''}."
    if several and ("/" in name or "\\" in name or name.endswith(".py")):
        # what is left of a path cut at a comma: "dir/a,b/rew.py:r" reads as the rewards "dir/a" and "b/rew.py:r"
        message += (" Commas separate rewards, so a path holding a comma is cut there: move or rename the file to a "
                    "path without commas.")
    return (f"{message} Valid rewards: {', '.join(sorted(REWARD_FUNCS))}; TRL's: {', '.join(sorted(TRL_REWARDS))}, "
            "or your own as module:function or path/to/file.py:function.")


# --- checks of the chosen rewards before a model loads (preflight calls them) ---------------------------------

# What TRL passes every reward besides the dataset's columns (TRL 1.15 GRPOTrainer._calculate_rewards).
TRL_REWARD_ARGUMENTS = frozenset({"prompts", "completions", "completion_ids", "trainer_state", "log_extra",
                                  "log_metric", "environments"})
# Columns a built-in reward reads, which its signature cannot tell (the parameter has a default).
BUILT_IN_COLUMNS = {"correct_answer_reward": ("answer",)}


def check_reward_names(names: Sequence[str], *, max_completion_length: int | None = None) -> list[RewardFunc]:
    """The rewards ``names`` stand for, after refusing (``KeyError``) an unknown name, a reward that cannot load,
    one function given twice (under any spelling), and two rewards TRL would log under one metric name."""
    if not names:
        raise KeyError("no reward given: GRPO needs at least one reward.")
    funcs = get_reward_funcs(list(names), max_completion_length=max_completion_length)
    for i, func in enumerate(funcs):
        for j in range(i):
            if funcs[j] is func:
                twice = (f"names {names[i]} twice" if names[i] == names[j] else
                         f"names {func.__name__} twice ({names[j]} and {names[i]} are the same function)")
                raise KeyError(f"{twice}; to weigh a reward more, give --reward-weights (one number per reward) "
                               "instead.")
            if funcs[j].__name__ == func.__name__:
                raise KeyError(f"{names[j]} and {names[i]} are two functions named {func.__name__!r}: TRL would log "
                               f"both as rewards/{func.__name__}/mean and they could not be told apart. Rename one.")
    return funcs


def check_reward_columns(names: Sequence[str], columns: Iterable[str], data_path: str | None = None,
                         max_completion_length: int | None = None) -> None:
    """``KeyError`` when a reward needs a column the prompt file lacks, which would otherwise fail at step 1 after the
    model loads, or (``BUILT_IN_COLUMNS``) score every completion 0 without a word."""
    columns = {c for c in columns if c != "prompt"}  # the prompt reaches rewards as `prompts`
    funcs = get_reward_funcs(list(names), max_completion_length=max_completion_length)
    for name, func in zip(names, funcs, strict=True):
        needed = list(BUILT_IN_COLUMNS.get(func.__name__, ())) if func in REWARD_FUNCS.values() else []
        with contextlib.suppress(TypeError, ValueError):  # no signature to read (a builtin)
            needed += [p.name for p in inspect.signature(func).parameters.values() if p.default is p.empty
                       and p.name not in TRL_REWARD_ARGUMENTS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        missing = [c for c in needed if c not in columns]
        if missing:
            where = f"the prompt file {data_path}" if data_path else "the prompt file"
            raise KeyError(f"reward {name} needs the column(s) {', '.join(missing)}, which {where} lacks (its "
                           f"columns: {', '.join(sorted(columns | {'prompt'}))}). Add the column, or drop the "
                           "reward.")


_LOADED: dict[str, RewardFunc] = {}  # one module object per reference: settings check and trainer share it


def load_reward(reference: str) -> RewardFunc:
    """The reward ``module:function`` or ``path/to/file.py:function`` names; ``KeyError`` saying what is wrong."""
    if reference in _LOADED:
        return _LOADED[reference]
    target, _, name = reference.rpartition(":")
    func = getattr(_import_target(reference, target), name, None)
    if not callable(func):
        raise KeyError(f"Reward {reference!r}: {target} has no function {name!r}.")
    if inspect.isclass(func):
        raise KeyError(f"Reward {reference!r}: {name} is a class; give a function, e.g. def my_reward(completions, "
                       "**kwargs) -> list[float] (calling a class makes an object, not a list of rewards).")
    if not isinstance(getattr(func, "__name__", None), str):
        raise KeyError(f"Reward {reference!r}: {name} has no __name__, which TRL logs it under; wrap it in a def.")
    with contextlib.suppress(TypeError, ValueError):  # a builtin or C function: nothing to inspect, TRL will call it
        params = inspect.signature(func).parameters.values()
        if "completions" not in {p.name for p in params} or not any(p.kind is p.VAR_KEYWORD for p in params):
            raise KeyError(f"Reward {reference!r}: {func.__name__}{inspect.signature(func)} must accept completions "
                           "and **kwargs, e.g. def my_reward(completions, **kwargs) -> list[float] (TRL passes every "
                           "dataset column by name).")
    _LOADED[reference] = func
    return func


def _import_target(reference: str, target: str):
    try:
        if not target.endswith(".py"):
            return _run_module(reference, target, lambda: importlib.import_module(target))
        path = Path(target).expanduser()
        if problem := file_problem(path):  # a FIFO would block the import; it is there, so not "no such file"
            said = {"is a folder": f"{path} is a folder, not a Python file", "not found": f"no such file {path}"}
            raise KeyError(f"Reward {reference!r}: {said.get(problem, f'{path} {problem}; give a Python file')}.")
        spec = importlib.util.spec_from_file_location(f"sarashina_grpo_user_rewards.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        _run_module(reference, path, lambda: spec.loader.exec_module(module))
        return module
    except KeyError:
        raise
    except Exception as err:  # the user's module failed to import: say why, in one line
        # The installed `sarashina-grpo` command does not put the working folder on sys.path.
        hint = (f" For a file of your own give its path: {target.replace('.', '/')}.py:{reference.rpartition(':')[2]}."
                if isinstance(err, ModuleNotFoundError) and err.name == target.split(".")[0] else "")
        if isinstance(err, ImportError) and "sarashina_grpo_user_rewards" in str(err):
            hint = (" A reward file given by path is no package, so relative imports (from .helpers import …) do not "
                    "work in it: put what it needs in the file, or make it an installed module and give "
                    "module:function.")
        raise KeyError(f"Reward {reference!r}: cannot import {target} ({type(err).__name__}: {err}).{hint}") from None


def _run_module(reference: str, where, load):
    """Import a reward's module by ``load`` with ``sys.argv`` holding only its name (no sarashina-grpo flags to parse
    at import); its exit becomes a ``KeyError``."""
    argv, sys.argv = sys.argv, [str(where)]
    said, exited = io.StringIO(), None
    try:
        with contextlib.redirect_stderr(said):
            return load()
    except SystemExit as exit_:
        exited = exit_
    finally:
        sys.argv = argv
        if exited is None:  # what the module printed on import reaches the user as before
            sys.stderr.write(said.getvalue())
    last = (said.getvalue().strip().splitlines() or [""])[-1]
    raise KeyError(f"Reward {reference!r}: {where} exited while being imported (exit code {exited.code}"
                   f"{': ' + last if last else ''}). Code that parses the command line or exits belongs under "
                   "if __name__ == '__main__':.")


# --- TRL's ready-made rewards, built only with a trainer (importing TRL is slow). Its accuracy rewards are left out:
# they need a LaTeX `solution` column and the math_verify package.
TRL_REWARDS = {
    "soft_overlong_punishment": "0 up to max_completion_length minus a fifth of it, then falling linearly to -1 at "
                                "max_completion_length and beyond (DAPO's overlong reward shaping)",
    "repetition_penalty": "minus the share of repeated token 3-grams in the completion, from 0 to -1",
    "think_format": "1.0 when the completion opens with one <think>…</think> block, else 0.0",
}
# DAPO's L_cache: the last share of max_completion_length over which the overlong penalty grows (4096 of 20480).
OVERLONG_CACHE_SHARE = 0.2


def trl_reward(name: str, *, max_completion_length: int | None = None) -> RewardFunc:
    """TRL's reward ``name`` (a key of ``TRL_REWARDS``), built with TRL's defaults and the run's completion length."""
    from trl import rewards as trl_rewards

    if name == "soft_overlong_punishment":
        if not max_completion_length:
            raise KeyError("Reward 'soft_overlong_punishment' needs the run's max_completion_length.")
        cache = max(1, round(OVERLONG_CACHE_SHARE * max_completion_length))
        return trl_rewards.get_soft_overlong_punishment(max_completion_len=max_completion_length,
                                                        soft_punish_cache=cache)
    if name == "repetition_penalty":
        return trl_rewards.get_repetition_penalty_reward()
    return trl_rewards.think_format_reward  # get_reward_funcs passes only TRL_REWARDS' names
