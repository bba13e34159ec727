"""The prompt CSV loader and the shipped datasets."""

import csv
import logging

import pytest
import regex

from sarashina_grpo.config import SYSTEM_PROMPT
from sarashina_grpo.data import DataError, load_prompts, read_rows

JAPANESE = regex.compile(r"[\p{Hiragana}\p{Katakana}\p{Han}]")


def test_rows_become_system_user_chat_prompts(write_csv):
    ds = load_prompts(write_csv("prompt,lang\nこんにちは,ja\n"))
    assert ds[0]["prompt"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "こんにちは"},
    ]


def test_only_japanese_rows_are_kept(write_csv):
    ds = load_prompts(write_csv("prompt,lang\nこんにちは,ja\nHello,en\nおはよう,ja\n"))
    assert [p[1]["content"] for p in ds["prompt"]] == ["こんにちは", "おはよう"]


def test_quoted_commas_and_newlines_survive(write_csv):
    ds = load_prompts(write_csv('prompt,lang\n"はい、そう,です\n二行目",ja\n'))
    assert ds[0]["prompt"][1]["content"] == "はい、そう,です\n二行目"


def test_custom_system_prompt(write_csv):
    ds = load_prompts(write_csv("prompt,lang\nこんにちは,ja\n"), system_prompt="短く答えて")
    assert ds[0]["prompt"][0]["content"] == "短く答えて"


def test_utf8_bom_just_works(write_csv):
    ds = load_prompts(write_csv("\ufeffprompt,lang\nこんにちは,ja\n".encode()))
    assert len(ds) == 1


def test_blank_prompts_are_skipped_with_a_count(write_csv, caplog):
    with caplog.at_level(logging.WARNING):
        ds = load_prompts(write_csv("prompt,lang\nこんにちは,ja\n,ja\n  ,ja\n"))
    assert len(ds) == 1 and "skipped 2 blank prompt(s) on line(s) 3, 4" in caplog.text


def test_no_japanese_rows_is_an_error_naming_the_file(write_csv):
    path = write_csv("prompt,lang\nHello,en\n")
    with pytest.raises(DataError, match="no rows with lang == 'ja'"):
        load_prompts(path)


# the shipped datasets
def test_smalltalk_has_549_rows_520_japanese_29_english(repo_root):
    langs = [r.lang for r in read_rows(repo_root / "datasets" / "smalltalk.csv")]
    assert (len(langs), langs.count("ja"), langs.count("en")) == (549, 520, 29)


def test_smalltalk_has_no_duplicates(repo_root):
    prompts = [r.prompt for r in read_rows(repo_root / "datasets" / "smalltalk.csv")]
    assert len(set(prompts)) == len(prompts)


def test_smalltalk_languages_match_their_text(repo_root):
    rows = read_rows(repo_root / "datasets" / "smalltalk.csv")
    assert all(bool(JAPANESE.search(r.prompt)) == (r.lang == "ja") for r in rows)


def test_smalltalk_header_is_prompt_lang(repo_root):
    with open(repo_root / "datasets" / "smalltalk.csv", encoding="utf-8") as f:
        assert next(csv.reader(f)) == ["prompt", "lang"]


def test_eval_prompts_are_held_out(repo_root):
    train = {r.prompt for r in read_rows(repo_root / "datasets" / "smalltalk.csv")}
    held_out = read_rows(repo_root / "datasets" / "eval.csv")
    assert len(held_out) >= 100 and all(r.lang == "ja" and r.prompt not in train for r in held_out)


def test_full_dataset_loads_520_prompts(repo_root):
    assert len(load_prompts(repo_root / "datasets" / "smalltalk.csv")) == 520
