"""The arithmetic task: how a response's answer is read, the correct-answer reward, and the generated data sets.

    uv run pytest tests/test_arithmetic.py -q        # seconds; no model
"""

import csv
import math
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sarashina_grpo.arithmetic import CORRECT_REWARD, extract_answer, is_correct
from sarashina_grpo.data import load_prompts
from sarashina_grpo.evaluation import score_text, score_texts, summarize
from sarashina_grpo.rewards import REWARD_FUNCS, correct_answer_reward, get_reward_funcs


def reply(response: str, think: str = "考えます。") -> str:
    return f"<think>\n{think}\n</think>\n<response>\n{response}\n</response>"


# --- reading the answer: one case per line ----------------------------------------------------------------------


def test_plain_integer():
    assert extract_answer(reply("答えは42です。")) == 42  # the number in the response


def test_number_only_in_think_does_not_count():
    assert extract_answer(reply("わかりません。", think="300×4=1200")) is None  # thinking is not the answer


def test_think_numbers_are_ignored_when_response_has_one():
    assert extract_answer(reply("7個です。", think="3+4=7、いや8？")) == 7  # only the response is read


def test_no_response_section():
    assert extract_answer("<think>\n答えは5\n</think>\n答えは5です") is None  # no <response>: no answer


def test_response_without_number():
    assert extract_answer(reply("ごめんなさい、計算できません。")) is None  # nothing to read


def test_last_of_several_numbers():
    assert extract_answer(reply("300円が4個なので、合計は1200円です。")) == 1200  # the final number is the answer


def test_trailing_yen():
    assert extract_answer(reply("1200円")) == 1200  # unit right after the number


def test_thousands_separator():
    assert extract_answer(reply("合計は1,200円です。")) == 1200  # comma between groups of three


def test_full_width_digits_and_separator():
    assert extract_answer(reply("合計は１，２００円です。")) == 1200  # NFKC: full-width digits and comma


def test_full_width_decimal_point():
    assert extract_answer(reply("１２．５ｍ")) == 12.5  # full-width period


def test_long_thousands_groups():
    assert extract_answer(reply("12,345,678円")) == 12345678  # several groups


def test_comma_not_followed_by_three_digits_separates_numbers():
    assert extract_answer(reply("候補は3,4です")) == 4  # "3,4" is a list, not 34


def test_comma_group_of_four_digits_is_not_a_separator():
    assert extract_answer(reply("1,2345")) == 2345  # a group must be exactly three digits


def test_negative_ascii():
    assert extract_answer(reply("夜の気温は-15度です。")) == -15  # minus sign


def test_negative_unicode_minus():
    assert extract_answer(reply("−３度")) == -3  # U+2212 minus and a full-width digit


def test_negative_full_width_hyphen():
    assert extract_answer(reply("－８")) == -8  # U+FF0D full-width hyphen-minus


def test_negative_in_words():
    assert extract_answer(reply("マイナス4度になります。")) == -4  # the word for minus


def test_range_dash_is_not_a_minus():
    assert extract_answer(reply("3-5個")) == 5  # a dash after a digit is a range, not a sign


def test_decimal():
    assert extract_answer(reply("2.5時間かかります。")) == 2.5  # decimal point


def test_sentence_final_period_is_not_a_decimal():
    assert extract_answer(reply("答えは5.")) == 5  # "5." followed by nothing is 5


def test_percent():
    assert extract_answer(reply("25%引きでした。")) == 25  # percentages read as the number before %


def test_minutes_unit():
    assert extract_answer(reply("全部で90分です")) == 90  # trailing 分


def test_counter_unit():
    assert extract_answer(reply("12個")) == 12  # trailing 個


def test_latin_unit():
    assert extract_answer(reply("170km進みます。")) == 170  # km after the number


def test_man_with_remainder():
    assert extract_answer(reply("1万2,000円です")) == 12000  # 万 multiplies, the rest is added


def test_man_with_decimal():
    assert extract_answer(reply("1.2万円")) == 12000  # 1.2 × 10,000


def test_unclosed_response_is_read_to_the_end():
    assert extract_answer("<think>\nx\n</think>\n<response>\n答えは8") == 8  # truncated completion still judged


def test_not_a_string():
    assert extract_answer(None) is None  # odd input reads as no answer


# --- correctness and the reward -----------------------------------------------------------------------------------


def test_correct_compares_numerically():
    assert is_correct(reply("1,200.0円"), "1200")  # 1,200.0 equals 1200


def test_correct_tolerates_float_rounding():
    assert is_correct(reply("0.30000000000000004"), "0.3")  # binary rounding is not a wrong answer


def test_wrong_answer():
    assert not is_correct(reply("1201円"), "1200")  # off by one is wrong


@pytest.mark.parametrize("answer", ["−6", "－6", "-6"])
def test_the_answer_column_is_read_as_the_response_is(answer):
    # why: the response's minus signs and full-width digits were normalised, the answer cell's were not
    assert is_correct(reply("-6度"), answer) and is_correct(reply("−6度"), answer)
    assert is_correct(reply("1,200円"), "１，２００")


def test_unusable_expected_answer_is_never_correct():
    assert not is_correct(reply("5"), "たくさん")  # an answer cell that is not a number


def chat(text):
    return [{"role": "assistant", "content": text}]


def test_reward_scores_each_completion_against_its_own_answer():
    completions = [chat(reply("1200円")), chat(reply("3")), chat("1200")]
    assert correct_answer_reward(completions, answer=["1200", "4", "1200"]) == [CORRECT_REWARD, 0.0, 0.0]


def test_reward_without_answer_column_is_zero():
    assert correct_answer_reward([chat(reply("5"))]) == [0.0]  # a data set without `answer`


def test_reward_with_short_answer_column_scores_the_rest_zero():
    assert correct_answer_reward([chat(reply("5")), chat(reply("5"))], answer=["5"]) == [CORRECT_REWARD, 0.0]


def test_reward_is_registered():
    assert REWARD_FUNCS["correct_answer"] is correct_answer_reward
    assert get_reward_funcs("soft_format,correct_answer")[1].__name__ == "correct_answer_reward"  # TRL's log name


@given(st.text(), st.one_of(st.none(), st.text(), st.integers(), st.floats(allow_nan=True)))
def test_reward_never_raises_and_is_zero_or_one(text, answer):
    assert correct_answer_reward([chat(text), text], answer=[answer, answer]) in (
        [a, b] for a in (0.0, CORRECT_REWARD) for b in (0.0, CORRECT_REWARD))


@given(st.text())
def test_extract_never_raises_and_is_finite_or_none(text):
    value = extract_answer(text)
    assert value is None or isinstance(value, float)


@given(st.integers(-10**9, 10**9), st.text(alphabet="円個分kmです。 ", max_size=5))
def test_any_integer_written_with_separators_and_a_unit_is_read_back(n, unit):
    assert extract_answer(reply(f"答えは{n:,}{unit}")) == n


@given(st.decimals(min_value=-10**6, max_value=10**6, places=2, allow_nan=False, allow_infinity=False))
def test_any_short_decimal_is_read_back(value):
    assert math.isclose(extract_answer(reply(f"{value}")), float(value))


# --- evaluation --------------------------------------------------------------------------------------------------


def test_evaluation_reports_answer_accuracy_over_rows_with_answers():
    scores = [score_text(reply("12"), "12"), score_text(reply("13"), "12"), score_text(reply("x"), None)]
    assert summarize(scores)["answer_accuracy"] == 0.5  # the row without an answer is not judged


def test_evaluation_without_answers_has_no_accuracy():
    assert score_texts([reply("12")])["answer_accuracy"] is None  # e.g. datasets/eval.csv


# --- the data sets -----------------------------------------------------------------------------------------------


def read(path):
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_committed_files_are_what_the_script_writes(repo_root, tmp_path):
    subprocess.run([sys.executable, str(repo_root / "scripts" / "make_arithmetic.py"), "--out-dir", str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("arithmetic.csv", "arithmetic_eval.csv"):
        assert (tmp_path / name).read_bytes() == (repo_root / "datasets" / name).read_bytes(), name


def test_sizes_columns_and_no_overlap(repo_root):
    train = read(repo_root / "datasets" / "arithmetic.csv")
    held_out = read(repo_root / "datasets" / "arithmetic_eval.csv")
    assert len(train) >= 300 and len(held_out) >= 100
    assert list(train[0]) == ["prompt", "lang", "answer"]
    prompts = [r["prompt"] for r in train + held_out]
    assert len(set(prompts)) == len(prompts)  # unique within and across the two files


def test_answers_are_exact_short_numbers_with_negatives_and_decimals(repo_root):
    rows = read(repo_root / "datasets" / "arithmetic.csv") + read(repo_root / "datasets" / "arithmetic_eval.csv")
    answers = [r["answer"] for r in rows]
    assert all(float(a) == float(f"{float(a):.2f}") for a in answers)  # at most two decimal places
    assert any("." in a for a in answers) and any(a.startswith("-") for a in answers)


@pytest.mark.parametrize("name", ["arithmetic.csv", "arithmetic_eval.csv"])
def test_loader_keeps_every_row_and_passes_the_answer_column(repo_root, name):
    dataset = load_prompts(repo_root / "datasets" / name)
    rows = read(repo_root / "datasets" / name)
    assert len(dataset) == len(rows)  # nothing skipped as blank, duplicate or foreign
    assert dataset[0]["answer"] == rows[0]["answer"]  # TRL will hand this column to correct_answer_reward


def test_the_arithmetic_recipe_trains_on_the_arithmetic_set_with_format_and_correctness_rewards(repo_root):
    from sarashina_grpo.config import load_settings

    settings = load_settings(recipe=repo_root / "configs" / "recipes" / "arithmetic.yaml")
    assert settings.data_path == "datasets/arithmetic.csv" and (repo_root / settings.data_path).exists()
    assert {"strict_format", "correct_answer"} <= set(settings.reward_names)
