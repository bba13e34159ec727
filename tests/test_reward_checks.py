"""Rewards that carry no signal are refused before the model loads, or stop the run with one line naming the reward.

Before loading: one function given twice (under any spelling), two rewards logged under one name, a class, a file
that exits or parses the command line on import, a reward needing a column the prompt file lacks. During training
(``training_rewards``): a reward that raises, returns no list, the wrong length, text, inf/NaN, or (alone) None for
every completion. No test loads a model.

    .venv/bin/pytest tests/test_reward_checks.py
"""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import sys

import pytest

from sarashina_grpo.config import article_settings
from sarashina_grpo.errors import report
from sarashina_grpo.preflight import check_rewards, check_rewards_have_columns
from sarashina_grpo.project import SettingsError
from sarashina_grpo.reward_guard import RewardError, check_reward_values, training_rewards
from sarashina_grpo.rewards import (
    check_reward_columns,
    check_reward_names,
    correct_answer_reward,
    xmlcount_reward,
)

COMPLETIONS = [[{"role": "assistant", "content": "<think>\nx\n</think>\n<response>\n3\n</response>"}]] * 2


def refusal(names) -> str:
    with pytest.raises(KeyError) as info:
        check_reward_names(names)
    return info.value.args[0]


@pytest.fixture
def reward_file(tmp_path):
    """Write ``source`` to ``<name>.py`` under a fresh folder and return the reference ``path:function``."""
    def write(source: str, function: str = "r", name: str = "rew", folder: str = "") -> str:
        where = tmp_path / folder if folder else tmp_path
        where.mkdir(parents=True, exist_ok=True)
        path = where / f"{name}.py"
        path.write_text(source, encoding="utf-8")
        return f"{path}:{function}"
    return write


# --- one function, one metric ----------------------------------------------------------------------------------

def test_the_same_built_in_under_two_spellings_is_refused():
    # why: the old check compared strings; the function was weighted double and logged once
    message = refusal(["xmlcount", "sarashina_grpo.rewards:xmlcount_reward"])
    assert "names xmlcount_reward twice" in message and "same function" in message


def test_the_same_name_twice_is_refused():
    assert "names soft_format twice" in refusal(["soft_format", "soft_format"])


def test_two_files_with_one_function_name_are_refused(reward_file):
    # why: TRL logs rewards/<__name__>/mean, so both would be averaged into one metric
    a = reward_file("def score(completions, **kw):\n    return [0.0] * len(completions)\n", "score", folder="a")
    b = reward_file("def score(completions, **kw):\n    return [1.0] * len(completions)\n", "score", folder="b")
    message = refusal([a, b])
    assert "two functions named 'score'" in message and "rewards/score/mean" in message


def test_a_file_reward_named_like_a_built_in_is_refused(reward_file):
    ref = reward_file("def xmlcount_reward(completions, **kw):\n    return [1.0] * len(completions)\n",
                      "xmlcount_reward")
    assert "two functions named 'xmlcount_reward'" in refusal(["xmlcount", ref])


def test_distinct_rewards_keep_distinct_metric_names(reward_file):
    ref = reward_file("def length_reward(completions, **kw):\n    return [0.0] * len(completions)\n", "length_reward")
    funcs = training_rewards(["xmlcount", ref])
    assert [f.__name__ for f in funcs] == ["xmlcount_reward", "length_reward"]  # what TRL logs them under


def test_a_class_is_refused(reward_file):
    ref = reward_file("class R:\n    def __init__(self, completions, **kw):\n        pass\n", "R")
    assert "is a class; give a function" in refusal([ref])


def test_a_callable_object_without_a_name_is_refused(reward_file):
    ref = reward_file("class R:\n    def __call__(self, completions, **kw):\n        return [0.0]\nr = R()\n")
    assert "has no __name__" in refusal([ref])


# --- importing a reward file -----------------------------------------------------------------------------------

def test_a_file_that_exits_on_import_is_refused(reward_file):
    ref = reward_file("import sys\nsys.exit(3)\n")
    message = refusal([ref])
    assert "exited while being imported (exit code 3)" in message and "__main__" in message


def test_a_file_with_required_command_line_arguments_is_refused_naming_itself(reward_file, capsys):
    ref = reward_file("import argparse\np = argparse.ArgumentParser()\np.add_argument('--scale', required=True)\n"
                      "args = p.parse_args()\ndef r(completions, **kw):\n    return [0.0] * len(completions)\n")
    message = refusal([ref])
    assert "exited while being imported (exit code 2" in message and "--scale" in message
    assert "usage" not in capsys.readouterr().err  # argparse's usage line would read as sarashina-grpo's own


def test_a_file_parsing_optional_arguments_sees_none_of_ours(reward_file, monkeypatch):
    # why: sarashina-grpo's own flags (train --model tiny …) are not the reward file's
    monkeypatch.setattr(sys, "argv", ["sarashina-grpo", "train", "--model", "tiny"])
    ref = reward_file("import argparse\np = argparse.ArgumentParser()\np.add_argument('--scale', default=2.0)\n"
                      "SCALE = float(p.parse_args().scale)\n"
                      "def r(completions, **kw):\n    return [SCALE] * len(completions)\n")
    (func,) = check_reward_names([ref])
    assert func(completions=COMPLETIONS) == [2.0, 2.0]
    assert sys.argv == ["sarashina-grpo", "train", "--model", "tiny"]  # given back


def test_a_relative_import_is_explained(reward_file):
    reward_file("BONUS = 1\n", name="helpers")
    ref = reward_file("from .helpers import BONUS\ndef r(completions, **kw):\n    return [BONUS]\n")
    assert "relative imports" in refusal([ref])


def test_a_folder_named_like_a_python_file_is_called_a_folder(tmp_path):
    (tmp_path / "dir_named.py").mkdir()
    assert "is a folder, not a Python file" in refusal([f"{tmp_path}/dir_named.py:r"])


def test_a_path_cut_at_a_comma_says_that_commas_separate_rewards(tmp_path):
    # why: --rewards "dir/a,b/rew.py:r" is split into "dir/a" and "b/rew.py:r"
    message = refusal([f"{tmp_path}/a", "b/rew.py:r"])
    assert "Commas separate rewards" in message


def test_an_unknown_plain_name_gets_no_comma_hint():
    assert "Commas" not in refusal(["xmlcount", "strict"])


def test_settings_refuse_a_duplicate_before_any_model_loads():
    with pytest.raises(SettingsError, match="same function"):
        check_rewards(["strict_format", "sarashina_grpo.rewards:strict_format_reward"])


# --- columns a reward needs ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("source", "columns", "missing"),
    [
        ("def r(completions, answer, **kw): ...", {"prompt", "lang"}, "answer"),  # required positional
        ("def r(completions, *, answer, **kw): ...", {"prompt", "lang"}, "answer"),  # required keyword-only
        ("def r(completions, answer, unit, **kw): ...", {"prompt", "lang", "unit"}, "answer"),  # one of two
        ("def r(prompts, completions, trainer_state, **kw): ...", {"prompt", "lang"}, None),  # TRL passes these
        ("def r(completions, answer=None, **kw): ...", {"prompt", "lang"}, None),  # has a default: optional
        ("def r(completions, answer, **kw): ...", {"prompt", "lang", "answer"}, None),  # present
        ("def r(completions, prompt, **kw): ...", {"prompt", "lang"}, "prompt"),  # TRL passes `prompts`, not this
    ],
)
def test_a_reward_needing_a_missing_column_is_refused(reward_file, source, columns, missing):
    ref = reward_file(source + "\n")
    if missing is None:
        check_reward_columns([ref], columns)
        return
    with pytest.raises(KeyError, match=f"needs the column\\(s\\) {missing},"):
        check_reward_columns([ref], columns, "data.csv")


def test_correct_answer_needs_an_answer_column():
    # why: without it every completion scores 0 and the run learns nothing from it, without a word
    with pytest.raises(KeyError, match="reward correct_answer needs the column\\(s\\) answer"):
        check_reward_columns(["xmlcount", "correct_answer"], {"prompt", "lang"})
    check_reward_columns(["correct_answer"], {"prompt", "lang", "answer"})


def test_the_run_check_reads_the_columns_of_the_prompt_file(tmp_path):
    from sarashina_grpo.data import check_prompts

    path = tmp_path / "p.csv"
    path.write_text("prompt,lang\n1+1は?,ja\n", encoding="utf-8")
    settings = article_settings(model_name="tiny", reward_names=("correct_answer",), data_path=str(path))
    with pytest.raises(SettingsError, match=f"which the prompt file {path} lacks"):
        check_rewards_have_columns(settings, check_prompts(path))
    path.write_text("prompt,lang,answer\n1+1は?,ja,2\n", encoding="utf-8")
    check_rewards_have_columns(settings, check_prompts(path))


def test_an_answer_column_without_a_single_number_is_refused_for_correct_answer(tmp_path):
    from sarashina_grpo.data import check_prompts

    path = tmp_path / "capitals.csv"
    path.write_text("prompt,lang,answer\n日本の首都は？,ja,東京\nフランスの首都は？,ja,パリ\n", encoding="utf-8")
    settings = article_settings(model_name="tiny", reward_names=("xmlcount", "correct_answer"), data_path=str(path))
    # why: correct_answer reads numbers only; the run scored 0 on every completion, exit 0, without a word
    with pytest.raises(SettingsError, match=r"none of the 2 answers in .*capitals.csv is one \(e.g. '東京'\)"):
        check_rewards_have_columns(settings, check_prompts(path))
    path.write_text("prompt,lang,answer\n3と4の和は？,ja,7\n日本の首都は？,ja,東京\n", encoding="utf-8")
    check_rewards_have_columns(settings, check_prompts(path))  # one number is enough: mixed files are the user's


def test_trls_length_bound_reward_passes_the_run_check(tmp_path):
    from sarashina_grpo.data import check_prompts

    path = tmp_path / "p.csv"
    path.write_text("prompt,lang\n週末は何をしよう？,ja\n", encoding="utf-8")
    settings = article_settings(model_name="tiny", reward_names=("xmlcount", "soft_overlong_punishment"),
                                data_path=str(path))
    check_rewards_have_columns(settings, check_prompts(path))  # built for the run's max_completion_length


# --- what a reward returns during training ---------------------------------------------------------------------

def wrapped(source: str, reward_file, others: tuple = ()):
    ref = reward_file(source)
    return training_rewards([ref, *others])[0]


class State:
    global_step = 4


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("return 0.5", "returned a float at step 5, not a list"),  # a scalar
        ("return ['0.5'] * len(completions)", "returned '0.5' (str) for completion 1 at step 5, not a number"),
        ("return [0.0] * (len(completions) + 1)", "returned 3 value(s) for 2 completion(s) at step 5"),
        ("return [float('inf')] * len(completions)", "returned inf for completion 1 at step 5"),
        # why: finite in Python, inf in TRL's float32 tensor: the run logged reward inf and learned nothing
        ("return [1e39] * len(completions)", "returned 1e+39 for completion 1 at step 5: a reward that is beyond"),
        ("return [0.0, float('nan')]", "returned nan for completion 2 at step 5"),
        ("return [None] * len(completions)", "returned None for all 2 completions at step 5: it is the only reward"),
        ("completions.clear()\n    return []", "returned 0 value(s) for 2 completion(s)"),
        ("return {'a': 1}", "returned a dict"),
    ],
)
def test_a_reward_without_usable_values_stops_the_run_naming_it(reward_file, body, expected):
    func = wrapped(f"def r(completions, **kw):\n    {body}\n", reward_file)
    with pytest.raises(RewardError, match="^Reward .*rew.py:r ") as info:
        func(completions=list(COMPLETIONS), trainer_state=State())
    assert expected in str(info.value)


def test_a_reward_that_raises_is_named_with_its_line(reward_file):
    func = wrapped("def r(completions, **kw):\n    raise ValueError('bad input')\n", reward_file)
    with pytest.raises(RewardError) as info:
        func(completions=COMPLETIONS, trainer_state=State())
    assert "raised ValueError: bad input" in str(info.value) and "rew.py, line 2) at step 5" in str(info.value)


def test_a_reward_parsing_json_is_not_blamed_on_a_damaged_file(reward_file):
    # why: a JSONDecodeError used to read "A JSON file is cut off or damaged"; the cause is the reward
    func = wrapped("import json\ndef r(completions, **kw):\n    return [json.loads('x')] * 2\n", reward_file)
    with pytest.raises(RewardError) as info:
        func(completions=COMPLETIONS)
    stream = io.StringIO()
    assert report(info.value, stream=stream) == 2
    line = stream.getvalue()
    assert line.startswith("error: Reward ") and "JSONDecodeError" in line and "damaged" not in line
    assert line.count("\n") == 1


def test_a_reward_cannot_change_what_the_next_reward_sees(reward_file):
    clearing = wrapped("def r(completions, **kw):\n    n = len(completions)\n    completions.clear()\n"
                       "    return [0.0] * n\n", reward_file)
    batch = list(COMPLETIONS)
    clearing(completions=batch)
    assert len(batch) == 2 and training_rewards(["xmlcount"])[0](completions=batch) == xmlcount_reward(COMPLETIONS)


def test_none_beside_other_rewards_is_reported_every_time(reward_file, caplog):
    func = wrapped("def r(completions, **kw):\n    return [None] * len(completions)\n", reward_file, ("xmlcount",))
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert func(completions=COMPLETIONS) == [None, None]
    assert sum("returned None for all 2 completions" in r.getMessage() for r in caplog.records) == 2


def test_a_reward_taking_prompts_first_is_called_by_keyword_as_trl_calls_it(reward_file):
    # why: a positional completions argument landed in `prompts` ("got multiple values for argument 'prompts'")
    func = wrapped("def r(prompts, completions, **kw):\n    return [float(len(prompts))] * len(completions)\n",
                   reward_file)
    assert func(prompts=["a", "b"], completions=COMPLETIONS) == [2.0, 2.0]


def test_some_none_values_are_fine(reward_file):
    # why: None means "does not apply to this row" in TRL's multi-task rewards
    func = wrapped("def r(completions, **kw):\n    return [None, 1]\n", reward_file)
    assert func(completions=COMPLETIONS) == [None, 1.0]


@pytest.mark.parametrize("values", [[0.5, 1], (0.5, 1), [True, False]])
def test_ordinary_values_pass_as_floats(values):
    assert check_reward_values("r", values, 2) == [float(v) for v in values]


def test_numpy_and_torch_values_pass():
    import numpy as np
    import torch

    assert check_reward_values("r", np.array([0.5, 1.0]), 2) == [0.5, 1.0]
    assert check_reward_values("r", torch.tensor([0.5, 1.0]), 2) == [0.5, 1.0]


def test_built_in_rewards_give_the_same_values_through_the_check():
    funcs = training_rewards(["xmlcount", "correct_answer"])
    assert funcs[0](completions=COMPLETIONS) == xmlcount_reward(COMPLETIONS)
    assert funcs[1](completions=COMPLETIONS, answer=["3", "4"]) == correct_answer_reward(COMPLETIONS, answer=["3", "4"])


def test_an_async_reward_stays_async_and_is_checked(reward_file):
    func = wrapped("async def r(completions, **kw):\n    return [float('inf')] * len(completions)\n", reward_file)
    assert inspect.iscoroutinefunction(func)  # TRL awaits it
    with pytest.raises(RewardError, match="returned inf"):
        asyncio.run(func(completions=COMPLETIONS))


def test_a_reward_error_is_one_line(reward_file):
    err = RewardError("Reward r returned inf for completion 1 at step 1: …")
    stream = io.StringIO()
    assert report(err, stream=stream) == 2 and stream.getvalue() == f"error: {err}\n"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_training_with_an_infinite_reward_stops_with_one_line(tmp_path, reward_file, write_csv, repo_root):
    # why: the run used to finish with exit 0, reward inf and loss 0 at every step (TRL zeroes NaN advantages)
    import subprocess

    ref = reward_file("def r(completions, **kw):\n    return [float('inf')] * len(completions)\n")
    data = write_csv("prompt,lang\nこんにちは,ja\n元気ですか,ja\n")
    result = subprocess.run(
        [sys.executable, "-m", "sarashina_grpo.cli", "train", "--model", "tiny", "--num-generations", "2",
         "--batch-size", "2", "--max-completion-length", "8", "--max-steps", "2", "--threads", "1",
         "--no-log-completions", "--data", str(data), "--artifact-dir", str(tmp_path / "a"), "--rewards", ref],
        capture_output=True, text=True, timeout=280, cwd=repo_root)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and "returned inf for completion 1 at step 1" in errors[0]
    # why: the error was written onto the progress bar's open line, and the bar drawn again after it
    assert result.stderr.splitlines()[-1].startswith("error: ")
