"""Specification of the Japanese purity metrics and the japanese_purity reward (purity.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sarashina_grpo.purity import (
    consistency_score,
    has_latin_run,
    japanese_purity,
    script_counts,
    split_sections,
)
from sarashina_grpo.rewards import FORMAT_REWARD as PURITY_REWARD
from sarashina_grpo.rewards import REWARD_FUNCS, get_reward_funcs, japanese_purity_reward

JA = "今日はいい天気ですね。"
EN = "It is a nice day today."


def layout(think: str, response: str = "はい。") -> str:
    return f"<think>\n{think}\n</think>\n<response>\n{response}\n</response>"


# --- the metric -------------------------------------------------------------------------------------------------


def test_all_japanese_is_pure():
    assert japanese_purity("ひらがな、カタカナ、漢字。ラーメン") == 1.0  # kana, kanji, 、。 and ー are Japanese


def test_all_english_is_zero():
    assert japanese_purity(EN) == 0.0  # only Latin letters


def test_mixed_text_is_the_share_of_japanese_characters():
    assert japanese_purity("日本 abc") == 2 / 5  # 2 kanji against 3 Latin letters


def test_digits_symbols_and_whitespace_are_neutral():
    assert japanese_purity("合計は 1,234 円 (+5%) です!") == 1.0  # none of 1,234 +5% ( ) ! is a letter


def test_units_are_allowed_latin():
    assert japanese_purity("毎朝5km走って、体重は60kgです。") == 1.0  # km and kg are units, not English


def test_a_unit_inside_an_english_word_is_not_allowed():
    assert script_counts("kmart").foreign == 5  # only whole tokens are allowed


def test_full_width_latin_is_foreign():
    assert japanese_purity("ＡＢＣ") == 0.0  # full-width letters are still Latin script


def test_other_scripts_are_foreign():
    assert japanese_purity("안녕하세요") == 0.0  # Hangul is not Japanese


def test_text_without_letters_has_no_purity():
    assert japanese_purity("123 !?") is None  # nothing to judge: metrics skip it rather than count it pure


def test_tags_are_ignored():
    assert japanese_purity("<think>\nはい\n</think>") == 1.0  # the XML tags are layout, not English


def test_three_latin_words_make_a_run():
    assert has_latin_run("まず、Let me think について。")  # the drift the article reports


def test_two_latin_words_are_not_a_run():
    assert not has_latin_run("Wi-Fi と USB Type-C を使う。")  # product names between Japanese words


def test_sections_are_split():
    assert split_sections(layout("考え", "答え")) == ("\n考え\n", "\n答え\n")  # think and response contents


def test_unclosed_section_runs_to_the_end():
    assert split_sections("<think>\n途中で切れた") == ("\n途中で切れた", None)  # truncated outputs are still judged


# --- the reward -------------------------------------------------------------------------------------------------


def test_reward_is_registered():
    assert get_reward_funcs(["japanese_purity"]) == [REWARD_FUNCS["japanese_purity"]]  # selectable by name


def test_japanese_thinking_earns_the_full_reward():
    assert japanese_purity_reward([layout(JA)]) == [PURITY_REWARD]  # pure think and response


def test_english_thinking_earns_nothing():
    assert japanese_purity_reward([layout(EN)]) == [0.0]  # the drift the reward exists to remove


def test_no_think_section_earns_nothing():
    assert japanese_purity_reward([JA]) == [0.0]  # gated on the layout: pure text without thinking is not enough


def test_english_response_lowers_the_reward():
    assert japanese_purity_reward([layout(JA, EN)]) == [0.0]  # the lower of think and response counts


def test_chat_message_completions_are_read():
    assert japanese_purity_reward([[{"role": "assistant", "content": layout(JA)}]]) == [PURITY_REWARD]  # TRL form


def test_odd_completions_score_zero():
    assert japanese_purity_reward([None, 3, {}, []]) == [0.0, 0.0, 0.0, 0.0]  # never raises on bad input


# --- properties ---------------------------------------------------------------------------------------------------

japanese_chars = st.sampled_from(list("あいうえおかきくアイウエオカキク日本語漢字考、。ー"))
# Letters that spell none of the allowed unit tokens (km, kcal, …), so every word built from them is foreign.
latin_letters = st.sampled_from(list("defijnopqruxyz"))


@given(st.text())
def test_purity_never_raises_and_is_bounded(text):
    purity = japanese_purity(text)
    assert purity is None or 0.0 <= purity <= 1.0


@given(st.text())
def test_reward_never_raises_and_is_bounded(text):
    (reward,) = japanese_purity_reward([text])
    assert 0.0 <= reward <= PURITY_REWARD


@given(st.text(), japanese_chars)
def test_adding_japanese_never_lowers_purity(text, char):
    before, after = japanese_purity(text), japanese_purity(text + char)
    assert after is not None and (before is None or after >= before)


@given(st.text(), st.text(latin_letters, min_size=4, max_size=12))
def test_adding_an_english_word_never_raises_purity(text, word):
    before, after = japanese_purity(text), japanese_purity(text + " " + word)
    assert after is not None and (before is None or after <= before)


@given(st.lists(st.one_of(japanese_chars, latin_letters), min_size=1, max_size=40), st.integers(0, 39))
def test_reward_is_monotone_in_think_purity(chars, k):
    # Replacing one Latin letter of the thinking by a kana can only raise the reward.
    think = "".join(chars)
    latin = [i for i, c in enumerate(chars) if c.isascii()]
    if not latin:
        return
    i = latin[k % len(latin)]
    purer = think[:i] + "あ" + think[i + 1:]
    assert consistency_score(layout(purer)) >= consistency_score(layout(think))
