"""The inference notebook checks its parameters in its first code cell, before the model loads
(``preflight.check_inference_notebook``): a value of the wrong kind is one error naming the parameter and what to
give, never used silently (the text "False" would sample, a bare string is one prompt per character) nor a
traceback after minutes of loading. Nothing here loads a model.

    .venv/bin/pytest tests/test_notebook_parameters.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sarashina_grpo.inference import answer
from sarashina_grpo.preflight import check_inference_notebook
from sarashina_grpo.project import SettingsError


def notebook(repo_root: Path) -> dict:
    return json.loads((repo_root / "notebooks" / "inference.ipynb").read_text(encoding="utf-8"))


@pytest.fixture
def defaults(repo_root) -> dict:
    """The values of the inference notebook's ``parameters`` cell, as its kernel holds them."""
    cell = next(c for c in notebook(repo_root)["cells"] if "parameters" in c["metadata"].get("tags", []))
    values: dict = {}
    exec("".join(cell["source"]), values)
    return values


def test_the_notebooks_own_values_pass(defaults):
    assert "PROMPTS" in defaults and "MAX_NEW_TOKENS" in defaults
    check_inference_notebook(defaults)


@pytest.mark.parametrize("name, value", [
    ("MODEL_NAME", "artifact/outputs/r/checkpoint-500"),
    ("LOAD_IN_4BIT", True),
    ("LOAD_IN_4BIT", False),
    ("DO_SAMPLE", True),
    ("PROMPTS", ("おはよう",)),
    ("PROMPTS", []),
    ("ROLE", "あなたはパン屋の店主です。"),
    ("ROLE_FILE", Path("role.txt")),  # read_role takes a path
    ("EVAL_LIMIT", 3),
    ("COMPARE_WITH", ["base", Path("artifact/eval/base")]),
    ("ARTIFACT_DIR", Path("/tmp/artifact")),
])
def test_other_valid_values_pass(defaults, name, value):
    check_inference_notebook({**defaults, name: value})


@pytest.mark.parametrize("name, value, expected", [
    # was: one prompt per character
    ("PROMPTS", "こんにちは", "PROMPTS must be a list of texts, the prompts to answer, e.g. ['こんにちは']; got "
                            "the text 'こんにちは', which would be one item per character. Put it in brackets: "
                            "PROMPTS = ['こんにちは']."),
    ("CHAT_TURNS", "週末に京都へ行きます。", "CHAT_TURNS must be a list of texts"),
    ("ROLEPLAY_TURNS", [1, 2], "ROLEPLAY_TURNS must be a list of texts, the customer's turns of the role-play; got "
                               "[1, 2] (list)."),
    ("COMPARE_WITH", "base", "COMPARE_WITH must be a list of texts"),
    # was: a traceback from generate after the model loaded
    ("MAX_NEW_TOKENS", 0, "--max-new-tokens (notebook: MAX_NEW_TOKENS) must be at least 1 (a whole number), got 0."),
    ("MAX_NEW_TOKENS", "512", "--max-new-tokens (notebook: MAX_NEW_TOKENS) must be at least 1 (a whole number), got "
                              "'512'."),
    # was: generated on past the model's context (transformers only warns)
    ("MAX_NEW_TOKENS", 100_000, "--max-new-tokens (notebook: MAX_NEW_TOKENS) 100000 does not fit within "
                                "--max-seq-length 4096"),
    # was: answered as if something had been asked
    ("PROMPTS", ["こんにちは", " "], "PROMPTS[1] is empty: write the text, or remove it from the list."),
    ("CHAT_TURNS", [""], "CHAT_TURNS[0] is empty"),
    # was: sampled ("False" is true)
    ("DO_SAMPLE", "False", "--sample (notebook: DO_SAMPLE) must be True or False, got 'False' (str)."),
    ("ROLE", 5, "ROLE must be text, e.g. 'あなたは駅前のパン屋の店主です。', got 5 (int); None: no role."),
    ("MODEL_NAME", 5, "MODEL_NAME must be a hub id, a checkpoint folder or 'tiny', got 5 (int); None: the 3B model "
                      "with a CUDA GPU, 'tiny' without one."),
    ("MODEL_NAME", " ", "MODEL_NAME is empty"),
    # was: an empty EVAL_NAME became 'notebook-tiny' and an empty SYSTEM_PROMPT the article's, without a word
    ("EVAL_NAME", "", "EVAL_NAME is empty; give a plain folder name such as 'base' (None: named after the model)."),
    ("SYSTEM_PROMPT", "", "SYSTEM_PROMPT is empty; give text (None: the one the checkpoint's run trained under"),
    ("SYSTEM_PROMPT", ["x"], "SYSTEM_PROMPT must be text"),
    ("ROLE_FILE", 5, "ROLE_FILE must be a UTF-8 text file holding the role, got 5 (int); None: ROLE."),
    ("LOAD_IN_4BIT", "False", "LOAD_IN_4BIT must be True, False or None (4-bit with a CUDA GPU, 16-bit without one), "
                              "got 'False' (str)."),
    ("USE_VLLM", None, "USE_VLLM must be True or False, got None (NoneType)."),
    ("EVAL_OVERWRITE", 1, "EVAL_OVERWRITE must be True or False, got 1 (int)."),
    ("EVAL_LIMIT", "3", "--limit (notebook: EVAL_LIMIT) must be at least 1 (prompts to evaluate), got '3'"),
    ("EVAL_NAME", 5, "EVAL_NAME must be a plain folder name such as 'base', got 5 (int)"),
    ("TRAINING_RUN", True, "TRAINING_RUN must be a run name or run folder, got True (bool)"),
])
def test_a_parameter_of_the_wrong_kind_is_one_error_naming_it(defaults, name, value, expected):
    with pytest.raises(SettingsError, match=f"^{re.escape(expected)}"):
        check_inference_notebook({**defaults, name: value})


def test_the_notebook_checks_its_parameters_before_the_model_loads(repo_root):
    cells = ["".join(c["source"]) for c in notebook(repo_root)["cells"] if c["cell_type"] == "code"]
    first = cells[1]  # after the parameters cell
    assert "check_inference_notebook(globals())" in first and "load_for_inference(" in first
    assert first.index("check_inference_notebook(globals())") < first.index("model_for_this_machine(MODEL_NAME)")


def test_answer_refuses_a_bare_string_of_prompts():
    # why: iterated, "こんにちは" was five prompts of one character each, answered one by one
    with pytest.raises(SettingsError, match=r"^answer\(\) takes a list of prompts, got the text 'こんにちは'; for one "
                                            r"prompt give \[prompt\]\."):
        answer(None, None, "こんにちは")


def test_answer_refuses_a_blank_prompt():
    # why: it was answered as if something had been asked
    with pytest.raises(SettingsError, match=r"^The 2nd prompt is empty \(only spaces or invisible characters\): "
                                            r"write the text to answer, or leave it out\.$"):
        answer(None, None, ["こんにちは", " \u200b"])


def test_answer_refuses_a_role_that_is_not_text():
    # why: role=5 was an AttributeError from inside roles.with_role
    with pytest.raises(SettingsError, match=r"^The role \(CLI --role; notebook: ROLE\) must be text, got 5 \(int\)"):
        answer(None, None, ["こんにちは"], role=5)
