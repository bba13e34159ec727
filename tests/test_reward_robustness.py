"""Rewards never break a run: whatever TRL (or a broken model) hands them, every registered reward returns one
finite float per completion within its documented bounds, and never raises.

Thousands of generated cases per property; runs in seconds.

    .venv/bin/pytest tests/test_reward_robustness.py
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sarashina_grpo.rewards import (
    REWARD_FUNCS,
    SOFT_FORMAT_RE,
    TAGS,
    completion_text,
    correct_answer_reward,
    is_soft_format,
    japanese_purity_reward,
    soft_format_reward,
    strict_format_reward,
    xmlcount_reward,
)

# 800 batches (up to 8 completions each) per reward, 1,000 cases per other property: ~8 s of CPU in all.
MANY = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BATCHES = settings(MANY, max_examples=800)


def within_bounds(reward, value: float, text: str) -> bool:
    """The bounds documented in rewards.py; a reward added to the registry must be listed here."""
    if reward is xmlcount_reward:
        return -0.001 * len(text) - 1e-9 <= value <= 0.5 + 1e-9
    if reward in (soft_format_reward, strict_format_reward):
        return value in (0.0, 0.5)
    if reward is japanese_purity_reward:
        return 0.0 <= value <= 0.5
    if reward is correct_answer_reward:
        return value in (0.0, 1.0)
    raise AssertionError(f"{reward.__name__} has no documented bounds in this test")


# Any unicode, surrogates and control characters included, and text built from the tags themselves.
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=200)
tag_soup = st.lists(st.one_of(st.sampled_from([*TAGS, "\n", " ", "<", ">", "/", "考え", "\x00"]), any_text),
                    max_size=16).map("".join)
texts = st.one_of(any_text, tag_soup)

# Every shape a completion has been seen (or could be imagined) to take.
message = st.fixed_dictionaries({"role": st.sampled_from(["assistant", "user", "", None])},
                                optional={"content": st.one_of(texts, st.none(), st.integers(), st.lists(texts),
                                                               st.lists(st.fixed_dictionaries(
                                                                   {"type": st.just("text"), "text": texts})))})
odd = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.binary(max_size=20), st.booleans(),
                st.just(object()), st.just({}), st.just([]), st.just([[]]), st.just([None]))
completion = st.one_of(texts, message, st.lists(message, max_size=3), st.lists(texts, max_size=3),
                       st.lists(st.lists(message, max_size=2), max_size=2), odd)
batches = st.lists(completion, max_size=8)


@pytest.mark.parametrize("reward", REWARD_FUNCS.values(), ids=REWARD_FUNCS.keys())
@BATCHES
@given(completions=batches)
def test_any_batch_gives_one_bounded_float_per_completion(reward, completions):
    values = reward(completions, prompts=[[]] * len(completions), lang=["ja"] * len(completions),
                    completion_ids=[[]] * len(completions), trainer_state=None)
    assert len(values) == len(completions)  # TRL pairs rewards with completions by position
    for value, c in zip(values, completions, strict=True):
        assert type(value) is float and math.isfinite(value) and within_bounds(reward, value, completion_text(c))


@MANY
@given(completion=completion)
def test_completion_text_is_always_a_string(completion):
    assert isinstance(completion_text(completion), str)


@pytest.mark.parametrize("reward", REWARD_FUNCS.values(), ids=REWARD_FUNCS.keys())
@pytest.mark.parametrize("completions", [None, [], 42, "", object()], ids=["None", "empty", "int", "str", "object"])
def test_degenerate_batches_give_no_error(reward, completions):
    assert isinstance(reward(completions), list)  # never raises, whatever the batch


@pytest.mark.parametrize("reward", REWARD_FUNCS.values(), ids=REWARD_FUNCS.keys())
@pytest.mark.parametrize(
    "completion",
    [
        [{"role": "assistant"}],  # missing content key
        [{"role": "assistant", "content": None}],  # content None
        [{"role": "assistant", "content": ""}],  # empty completion
        [],  # no messages at all
        [{"role": "assistant", "content": [{"type": "image"}]}],  # a part without text
    ],
)
def test_empty_or_missing_content_scores_as_empty_text(reward, completion):
    assert reward([completion]) == reward([""])  # one rule for everything that carries no text


def test_content_parts_are_read_as_their_text():
    parts = [{"type": "text", "text": "<think>\nx\n</think>\n"}, {"type": "text", "text": "<response>\ny\n</response>"}]
    assert strict_format_reward([[{"role": "assistant", "content": parts}]]) == [0.5]  # same as the joined string


@MANY
@given(text=texts)
def test_soft_format_agrees_with_its_regex_definition(text):
    assert is_soft_format(text) == (SOFT_FORMAT_RE.search(text) is not None)


@pytest.mark.timeout(30)
def test_repeated_unclosed_tags_do_not_stall_a_step():
    # 10,000 characters of tags without a closing </response>: the regex took minutes on this.
    text = "<think></think><response>" * 400
    assert (soft_format_reward([text]), soft_format_reward([text + "</response>"])) == ([0.0], [0.5])
