"""The prompt CSV loader and the shipped datasets."""

import csv
import logging

import pytest
import regex

from sarashina_grpo.data import DataError, load_prompts, read_rows
from sarashina_grpo.project import MAX_PROMPT_CHARS, SYSTEM_PROMPT

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



def test_a_row_with_more_fields_than_the_header_is_refused_not_cut(write_csv):
    # an unquoted comma in the last column: the text after it would be dropped without a word
    path = write_csv("prompt,lang,answer\nこんにちは,ja,3\n1+2は？,ja,3,です\n")
    with pytest.raises(DataError, match=r"line\(s\) 3 hold more fields than the header's 3 columns"):
        read_rows(path)


@pytest.mark.parametrize(("header", "named"), [("prompt;lang\nこんにちは;ja\n", "semicolons (';')"),
                                              ("prompt\tlang\nこんにちは\tja\n", "tabs")])
def test_a_csv_separated_by_semicolons_or_tabs_is_named_so(write_csv, header, named):
    # why: read with commas its header is one column 'prompt;lang', and "no 'prompt' column" hid why
    with pytest.raises(DataError) as info:
        read_rows(write_csv(header))
    assert f"the header (line 1) seems separated by {named}, not commas" in str(info.value)
    assert "comma-separated" in str(info.value) and "has no 'prompt'" not in str(info.value)


def test_a_role_cell_over_the_role_file_limit_is_refused_with_its_line(write_csv):
    # why: --role-file refuses a role over MAX_PROMPT_CHARS; the same text in the role column was put into the prompt
    role = "あ" * (MAX_PROMPT_CHARS + 1)
    path = write_csv(f"prompt,lang,role\nこんにちは,ja,短い役\nおはよう,ja,{role}\n")
    with pytest.raises(DataError) as info:
        read_rows(path)
    assert f"the 'role' cell of 1 row(s) is over the {MAX_PROMPT_CHARS:,} characters" in str(info.value)
    assert f"line 3: {MAX_PROMPT_CHARS + 1:,} characters" in str(info.value)


def test_a_role_cell_at_the_limit_is_read(write_csv):
    role = "あ" * MAX_PROMPT_CHARS
    assert read_rows(write_csv(f"prompt,lang,system\nこんにちは,ja,{role}\n"))[0].role == role


def test_trailing_empty_fields_are_no_extra_text(write_csv):
    assert [r.prompt for r in read_rows(write_csv("prompt,lang\nこんにちは,ja,\n"))] == ["こんにちは"]

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


# --- JSON Lines and Parquet: the same columns and checks as CSV ------------------------------------------------


def rows_of(path):
    return [(r.line, r.prompt, r.lang, r.extra, r.role) for r in read_rows(path)]


def test_jsonl_rows_read_like_the_csv_rows(write_csv):
    csv_rows = rows_of(write_csv("prompt,lang,answer\nこんにちは,ja,\n1+1は？,ja,2\n"))
    jsonl = write_csv('{"prompt": "こんにちは", "lang": "ja"}\n{"prompt": "1+1は？", "lang": "ja", "answer": 2}\n',
                      "prompts.jsonl")
    # why: a file's line numbers differ (JSONL has no header line), the contents do not
    assert [row[1:] for row in rows_of(jsonl)] == [row[1:] for row in csv_rows]


def test_parquet_rows_read_like_the_csv_rows(write_csv, tmp_path):
    import pandas as pd

    pd.DataFrame({"prompt": ["こんにちは", "おはよう"], "lang": ["ja", "ja"]}).to_parquet(tmp_path / "p.parquet")
    assert [(r.prompt, r.lang) for r in read_rows(tmp_path / "p.parquet")] == [("こんにちは", "ja"), ("おはよう", "ja")]


def test_a_jsonl_line_that_is_not_json_is_named(write_csv):
    path = write_csv('{"prompt": "こんにちは", "lang": "ja"}\n{"prompt": "おはよう", "lang": \n', "p.jsonl")
    with pytest.raises(DataError, match=r"p\.jsonl, line 2: not valid JSON"):
        read_rows(path)


def test_a_jsonl_line_that_is_not_an_object_is_named(write_csv):
    with pytest.raises(DataError, match=r"line 1: a JSON list"):
        read_rows(write_csv('["こんにちは", "ja"]\n', "p.jsonl"))


def test_a_bad_lang_in_jsonl_names_its_line(write_csv):
    path = write_csv('{"prompt": "こんにちは", "lang": "ja"}\n\n{"prompt": "おはよう", "lang": "jp"}\n', "p.jsonl")
    with pytest.raises(DataError, match=r"line 3: 'jp' \(did you mean 'ja'\?\)"):
        read_rows(path)


def test_parquet_without_a_lang_column_is_an_error(tmp_path):
    import pandas as pd

    pd.DataFrame({"prompt": ["こんにちは"]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(DataError, match="no 'lang' column"):
        read_rows(tmp_path / "p.parquet")


def test_a_file_that_is_not_parquet_is_an_error(write_csv):
    with pytest.raises(DataError, match="not readable as Parquet"):
        read_rows(write_csv("prompt,lang\nこんにちは,ja\n", "p.parquet"))
