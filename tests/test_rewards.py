"""The three format rewards, as tables of cases, plus properties that hold for any text."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sarashina_grpo.rewards import (
    REWARD_FUNCS,
    get_reward_funcs,
    soft_format_reward,
    strict_format_reward,
    xmlcount_reward,
)

PERFECT = "<think>\n天気を聞かれた。\n</think>\n<response>\n晴れです。\n</response>"


def chat(text):
    """A completion as TRL passes it for conversational datasets."""
    return [{"role": "assistant", "content": text}]


def score(reward, text):
    return reward([chat(text)])[0]


# xmlcount: 0.125 per tag that occurs exactly once, minus 0.001 per character after the last </response>
def test_xmlcount_perfect():
    assert score(xmlcount_reward, PERFECT) == pytest.approx(0.5)  # all four tags once, nothing after


def test_xmlcount_missing_tag():
    assert score(xmlcount_reward, PERFECT.replace("</think>", "")) == pytest.approx(0.375)  # three of four tags


def test_xmlcount_doubled_tag():
    assert score(xmlcount_reward, "<think>\n<think>\na\n</think>\n<response>\nb\n</response>") == pytest.approx(0.375)


def test_xmlcount_wrong_order_still_counts_tags():
    assert score(xmlcount_reward, "<response>\nb\n</response>\n<think>\na\n</think>") == pytest.approx(
        0.5 - 0.001 * len("\n<think>\na\n</think>")
    )  # counting ignores order; text after </response> is penalised


def test_xmlcount_trailing_text():
    assert score(xmlcount_reward, PERFECT + "\nおまけ") == pytest.approx(0.5 - 0.004)  # 4 characters after


def test_xmlcount_trailing_after_last_response_only():
    text = "<think>\na\n</think>\n<response>\nb\n</response>x</response>yz"
    assert score(xmlcount_reward, text) == pytest.approx(0.375 - 0.002)  # </response> twice; 2 chars after the last


def test_xmlcount_no_newlines():
    assert score(xmlcount_reward, "<think>a</think><response>b</response>") == pytest.approx(0.5)  # tags, not lines


def test_xmlcount_empty():
    assert score(xmlcount_reward, "") == 0.0  # nothing to count


def test_xmlcount_english_text_is_not_its_business():
    assert score(xmlcount_reward, "<think>\nHello\n</think>\n<response>\nHi\n</response>") == pytest.approx(0.5)


# soft: 0.5 when the four tags occur in order, anything between
def test_soft_perfect():
    assert score(soft_format_reward, PERFECT) == 0.5  # the strict layout is also in order


def test_soft_no_newlines():
    assert score(soft_format_reward, "<think>a</think><response>b</response>") == 0.5  # newlines optional


def test_soft_text_between_and_around():
    assert score(soft_format_reward, "はい。<think>a\nb</think>\nそして\n<response>c</response>以上") == 0.5


def test_soft_missing_tag():
    assert score(soft_format_reward, "<think>a</think><response>b") == 0.0  # no </response>


def test_soft_wrong_order():
    assert score(soft_format_reward, "<response>b</response><think>a</think>") == 0.0  # answer before thinking


def test_soft_empty():
    assert score(soft_format_reward, "") == 0.0


def test_soft_english():
    assert score(soft_format_reward, "<think>Let me see</think><response>Fine</response>") == 0.5  # format only


# strict: 0.5 only for exactly "<think>\n…\n</think>\n<response>\n…\n</response>"
def test_strict_perfect():
    assert score(strict_format_reward, PERFECT) == 0.5


def test_strict_multiline_thinking():
    assert score(strict_format_reward, "<think>\n一行目\n二行目\n</think>\n<response>\n答え\n</response>") == 0.5


def test_strict_no_newlines():
    assert score(strict_format_reward, "<think>a</think><response>b</response>") == 0.0  # newlines are required


def test_strict_missing_newline_between_blocks():
    assert score(strict_format_reward, "<think>\na\n</think><response>\nb\n</response>") == 0.0


def test_strict_trailing_text():
    assert score(strict_format_reward, PERFECT + "\nおまけ") == 0.0  # nothing may follow </response>


def test_strict_leading_text():
    assert score(strict_format_reward, "はい。\n" + PERFECT) == 0.0  # nothing may precede <think>


def test_strict_doubled_response_block():
    assert score(strict_format_reward, PERFECT + "\n<response>\nもう一度\n</response>") == 0.0  # each tag once


def test_strict_missing_tag():
    assert score(strict_format_reward, PERFECT.replace("<think>\n", "")) == 0.0


def test_strict_wrong_order():
    assert score(strict_format_reward, "<response>\nb\n</response>\n<think>\na\n</think>") == 0.0


def test_strict_empty():
    assert score(strict_format_reward, "") == 0.0


def test_strict_english():
    assert score(strict_format_reward, "<think>\nHmm\n</think>\n<response>\nYes\n</response>") == 0.5  # format only


# input shapes TRL may pass
def test_plain_string_completions():
    assert xmlcount_reward([PERFECT]) == [pytest.approx(0.5)]  # non-conversational datasets pass strings


def test_one_value_per_completion():
    assert len(strict_format_reward([chat(PERFECT), chat(""), chat("x")])) == 3


def test_missing_content_key_scores_as_empty():
    assert strict_format_reward([[{"role": "assistant"}]]) == [0.0]


def test_extra_dataset_columns_are_accepted():
    assert soft_format_reward([chat(PERFECT)], prompts=[[]], lang=["ja"]) == [0.5]  # TRL passes columns by name


# registry
def test_registry_names_match_function_names():
    assert all(fn.__name__ == f"{name}_reward" for name, fn in REWARD_FUNCS.items())


def test_get_reward_funcs_accepts_comma_string():
    assert get_reward_funcs("xmlcount,strict_format") == [xmlcount_reward, strict_format_reward]


def test_unknown_reward_lists_valid_names():
    with pytest.raises(KeyError, match="strict_format"):
        get_reward_funcs(["xmlcount", "nope"])


# properties for any text
FORMAT_REWARDS = [soft_format_reward, strict_format_reward]
tagged_text = st.lists(
    st.one_of(st.text(max_size=20), st.sampled_from(["<think>", "</think>", "<response>", "</response>", "\n"])),
    max_size=12,
).map("".join)


@given(text=st.one_of(st.text(), tagged_text))
def test_xmlcount_bounds(text):
    value = score(xmlcount_reward, text)
    assert -0.001 * len(text) - 1e-9 <= value <= 0.5 + 1e-9


@given(text=st.one_of(st.text(), tagged_text))
def test_format_rewards_are_zero_or_half(text):
    assert all(score(reward, text) in (0.0, 0.5) for reward in FORMAT_REWARDS)


@given(text=st.one_of(st.text(), tagged_text))
def test_strict_implies_soft(text):
    assert score(strict_format_reward, text) <= score(soft_format_reward, text)


@given(think=st.text().filter(lambda s: "<" not in s), response=st.text().filter(lambda s: "<" not in s))
def test_strict_layout_always_earns_full_format_reward(think, response):
    text = f"<think>\n{think}\n</think>\n<response>\n{response}\n</response>"
    assert (score(strict_format_reward, text), score(xmlcount_reward, text)) == (0.5, pytest.approx(0.5))


# --- your own rewards: module:function or path/to/file.py:function, checked before a model loads -----------------

MY_REWARDS = '''
def length_reward(completions, **kwargs):
    """0.01 per character."""
    return [0.01 * len(c[0]["content"]) for c in completions]

def no_kwargs_reward(completions):
    return [0.0 for _ in completions]

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def my_rewards(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(MY_REWARDS, encoding="utf-8")
    return path


def reward_error(name) -> str:
    from sarashina_grpo.rewards import get_reward_funcs

    with pytest.raises(KeyError) as info:
        get_reward_funcs([name])
    return info.value.args[0]


def test_a_reward_from_a_file_joins_the_built_in_ones(my_rewards):
    from sarashina_grpo.rewards import get_reward_funcs

    funcs = get_reward_funcs(["xmlcount", f"{my_rewards}:length_reward"])
    assert [f.__name__ for f in funcs] == ["xmlcount_reward", "length_reward"]  # TRL logs it under its own name


def test_a_reward_from_an_importable_module():
    from sarashina_grpo.rewards import get_reward_funcs, strict_format_reward

    assert get_reward_funcs(["sarashina_grpo.rewards:strict_format_reward"]) == [strict_format_reward]


def test_a_missing_reward_file_is_named(tmp_path):
    assert "no such file" in reward_error(f"{tmp_path}/nope.py:my_reward")


def test_a_missing_function_is_named(my_rewards):
    assert "has no function 'other_reward'" in reward_error(f"{my_rewards}:other_reward")


def test_a_value_that_is_not_a_function_is_refused(my_rewards):
    assert "has no function 'NOT_A_FUNCTION'" in reward_error(f"{my_rewards}:NOT_A_FUNCTION")


def test_a_reward_without_kwargs_is_refused_before_training(my_rewards):
    # why: TRL passes every dataset column by name; without **kwargs the first step would fail
    assert "must accept completions and **kwargs" in reward_error(f"{my_rewards}:no_kwargs_reward")


def test_an_unimportable_module_says_how_to_give_a_file():
    assert "give its path: my_rewards.py:length_reward" in reward_error("my_rewards:length_reward")


def test_a_reward_file_that_fails_to_import_says_why(tmp_path):
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n", encoding="utf-8")
    assert "cannot import" in reward_error(f"{tmp_path}/broken.py:f")


def test_the_preflight_checks_a_custom_reward_before_any_model_loads(my_rewards):
    from sarashina_grpo.preflight import check_rewards
    from sarashina_grpo.project import SettingsError

    with pytest.raises(SettingsError, match="must accept completions"):
        check_rewards([f"{my_rewards}:no_kwargs_reward"])


# TRL's ready-made rewards by name (rewards.TRL_REWARDS), called as GRPOTrainer calls every reward: by keyword.
def trl_score(name, ids, text="x", **built):
    (reward,) = get_reward_funcs([name], max_completion_length=built.get("max_completion_length", 10))
    return reward(prompts=["p"], completions=[chat(text)], completion_ids=[ids])[0]


def test_trl_overlong_is_free_below_the_last_fifth_of_max_completion_length():
    assert trl_score("soft_overlong_punishment", [1] * 8) == 0.0  # 8 ≤ 10 - 2


def test_trl_overlong_grows_over_the_last_fifth():
    assert trl_score("soft_overlong_punishment", [1] * 9) == pytest.approx(-0.5)  # (8 - 9) / 2


def test_trl_overlong_is_built_with_the_runs_own_length():
    assert trl_score("soft_overlong_punishment", [1] * 100, max_completion_length=512) == 0.0  # why: not TRL's 10


def test_trl_repetition_penalty_counts_repeated_token_trigrams():
    assert trl_score("repetition_penalty", [5, 5, 5, 5, 5]) == pytest.approx(-2 / 3)  # 3 trigrams, 1 unique


def test_trl_think_format_rewards_a_leading_think_block():
    assert trl_score("think_format", [1], text="<think>\n考え\n</think>\n答え") == 1.0


def test_trl_rewards_log_under_trls_own_names():
    funcs = get_reward_funcs(["soft_overlong_punishment", "repetition_penalty", "think_format"],
                             max_completion_length=64)
    assert [f.__name__ for f in funcs] == [f"{n}_reward" for n in ("soft_overlong_punishment", "repetition_penalty",
                                                                     "think_format")]


def test_the_overlong_reward_needs_the_runs_length():
    with pytest.raises(KeyError, match="max_completion_length"):
        get_reward_funcs(["soft_overlong_punishment"])


def test_trl_reward_names_pass_the_settings_check():
    from sarashina_grpo.config import article_settings
    from sarashina_grpo.preflight import check_rewards

    names = ["strict_format", "soft_overlong_punishment", "repetition_penalty"]
    check_rewards(names, max_completion_length=64)
    assert article_settings(reward_names=names).reward_names == names
