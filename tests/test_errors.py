"""Bad input gets one named error that says where and what to do; recoverable input is skipped with a warning.

Each test is one case of docs/troubleshooting.md. None loads a model: device and vLLM situations are simulated.

    .venv/bin/pytest tests/test_errors.py
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
import stat
from pathlib import Path

import pytest
from checkpoint_files import make_checkpoint, write_adapter

from sarashina_grpo import modeling, preflight, project
from sarashina_grpo.cli import main
from sarashina_grpo.config import article_settings
from sarashina_grpo.data import DataError, check_prompts, load_prompts, prompts_dataset, read_rows
from sarashina_grpo.pipeline import train
from sarashina_grpo.preflight import ModelNotFoundError, check_device, check_model_name, check_rewards, check_writable
from sarashina_grpo.project import SettingsError

CPU_TINY = dict(model_name="tiny", load_in_4bit=False)


def error_of(func, *args, **kwargs) -> str:
    with pytest.raises((DataError, SettingsError)) as info:
        func(*args, **kwargs)
    return str(info.value)


def warnings_of(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


# --- the prompt CSV -------------------------------------------------------------------------------------------


def test_missing_file_names_the_path_and_the_expected_columns(tmp_path):
    message = error_of(read_rows, tmp_path / "nope.csv")
    assert str(tmp_path / "nope.csv") in message and "prompt,lang" in message


def test_a_folder_instead_of_a_file_is_named(tmp_path):
    assert "is a folder" in error_of(read_rows, tmp_path)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file_says_what_the_header_must_be(write_csv, content):
    message = error_of(read_rows, write_csv(content))
    assert "is empty" in message and "'prompt,lang'" in message


@pytest.mark.parametrize(
    ("header", "missing"),
    [("text,lang", "'prompt'"), ("prompt,language", "'lang'"), ("question,answer", "'prompt' or 'lang'")],
)
def test_header_without_a_required_column_names_it_and_what_was_found(write_csv, header, missing):
    message = error_of(read_rows, write_csv(f"{header}\nこんにちは,ja\n"))
    assert f"has no {missing} column" in message and header.split(",")[0] in message and "line 1" in message


def test_file_without_header_line_is_told_to_add_one(write_csv):
    message = error_of(read_rows, write_csv("こんにちは,ja\n元気？,ja\n"))
    assert "The first line must name the columns" in message


def test_header_only_file_asks_for_rows(write_csv):
    assert "has a header but no rows" in error_of(read_rows, write_csv("prompt,lang\n"))


def test_a_column_named_like_a_reward_argument_is_refused(write_csv):
    message = error_of(read_rows, write_csv("prompt,lang,completions\nこんにちは,ja,x\n"))
    # why: TRL passes every column to the rewards by name, where it would collide with their completions argument
    assert "column named 'completions'" in message and "Rename that column" in message


def test_extra_columns_and_header_case_are_fine(write_csv):
    rows = read_rows(write_csv("id, Prompt ,LANG,note\n1,こんにちは,ja,x\n2,元気？,ja\n"))
    assert [(r.prompt, r.lang) for r in rows] == [("こんにちは", "ja"), ("元気？", "ja")]


def test_blank_and_nan_prompts_are_skipped_with_one_warning_counting_them(write_csv, caplog):
    path = write_csv("prompt,lang\nこんにちは,ja\n,ja\nNaN,ja\n   ,ja\n元気？,ja\n")
    rows = check_prompts(path)
    assert [r.prompt for r in rows] == ["こんにちは", "元気？"]
    assert "skipped 3 blank prompt(s) on line(s) 3, 4, 5 (empty, spaces or NaN)" in warnings_of(caplog)


def test_rows_without_lang_are_skipped_with_a_warning(write_csv, caplog):
    rows = check_prompts(write_csv("prompt,lang\nこんにちは,ja\n元気？\nおはよう,\n"))
    assert len(rows) == 1 and "skipped 2 row(s) with no 'lang' on line(s) 3, 4" in warnings_of(caplog)


def test_unknown_lang_codes_are_an_error_listing_each_line_and_a_fix(write_csv):
    message = error_of(read_rows, write_csv("prompt,lang\nこんにちは,ja\n元気？,jp\nhello,english\nhola,xx\n"))
    assert "3 value(s) that are not ISO 639-1" in message
    assert "line 3: 'jp' (did you mean 'ja'?)" in message  # the usual slip: Japan's country code
    assert "line 4: 'english' (did you mean 'en'?)" in message and "line 5: 'xx'" in message


def test_many_unknown_lang_codes_are_counted_after_the_first_eight(write_csv):
    message = error_of(read_rows, write_csv("prompt,lang\n" + "".join(f"p{i},zz\n" for i in range(20))))
    assert "and 12 more" in message


def test_region_subtags_and_case_count_as_the_language(write_csv):
    rows = check_prompts(write_csv("prompt,lang\nこんにちは,ja-JP\n元気？,JA\nおはよう,ja_jp\nhello,en-US\n"))
    assert [r.prompt for r in rows] == ["こんにちは", "元気？", "おはよう"]


def test_no_japanese_rows_left_names_the_languages_found(write_csv):
    message = error_of(check_prompts, write_csv("prompt,lang\nhello,en\nhola,es\n,ja\n"))
    assert "no rows with lang == 'ja' and a non-blank prompt" in message and "['en', 'es']" in message


def test_shift_jis_file_is_decoded_with_a_warning(write_csv, caplog):
    text = "prompt,lang\nこんにちは、①番の髙橋です～,ja\n"  # ①, 髙 and ～ exist only in cp932, not plain Shift_JIS
    rows = read_rows(write_csv(text.encode("cp932")))
    assert rows[0].prompt == "こんにちは、①番の髙橋です～"
    assert "decoded it as Shift_JIS (cp932)" in warnings_of(caplog)


@pytest.mark.parametrize(
    "raw",
    [
        b"prompt,lang\n\x80\xff\xfe\x81,ja\n",  # bytes that are neither UTF-8 nor cp932
        b"prompt,lang\n\x80\xff,ja\n",  # cp932 would "decode" these to control/private-use characters
        "prompt,lang\ncafé à la crème,fr\n".encode("latin-1"),  # a European export
        "prompt,lang\nこんにちは,ja\n".encode("utf-16-le"),  # UTF-16 without its BOM
    ],
    ids=["garbage", "cp932-lookalike", "latin-1", "utf16-no-bom"],
)
def test_undecodable_file_says_which_encoding_was_expected(write_csv, raw):
    message = error_of(read_rows, write_csv(raw))
    assert "not valid UTF-8" in message and "nor Shift_JIS/cp932" in message and "Save the file as UTF-8" in message


def test_excel_workbook_is_told_to_export_csv(write_csv):
    assert "is an Excel workbook or zip, not a CSV" in error_of(read_rows, write_csv(b"PK\x03\x04\x14\x00", "p.xlsx"))


def compressed(kind: str, text: str) -> bytes:
    """``text`` compressed as ``kind`` (gzip, bzip2, xz, zip), as a user's ``.csv.gz`` or the like holds it."""
    import bz2
    import gzip
    import io
    import lzma
    import zipfile

    if kind == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("p.csv", text)
        return buffer.getvalue()
    return {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}[kind](text.encode())


@pytest.mark.parametrize(("kind", "name", "words"), [
    ("gzip", "p.csv.gz", "is gzip-compressed, not text: decompress it first (gunzip -k p.csv.gz)"),
    ("bzip2", "p.csv.bz2", "is bzip2-compressed, not text: decompress it first (bunzip2 -k p.csv.bz2)"),
    ("xz", "p.jsonl.xz", "is xz-compressed, not text: decompress it first (unxz -k p.jsonl.xz)"),
    ("zip", "p.csv", "is a zip archive or an Excel workbook, not text: unzip it (unzip p.csv)"),
])
def test_a_compressed_prompt_file_is_told_to_be_decompressed(write_csv, kind, name, words):
    message = error_of(read_rows, write_csv(compressed(kind, "prompt,lang\nこんにちは,ja\n" * 50), name))
    # why: it was "not valid UTF-8 … nor Shift_JIS/cp932. Save the file as UTF-8": the wrong cause and fix
    assert words in message and "UTF-8" not in message.replace("'CSV UTF-8'", "")


def test_text_that_starts_like_a_bzip2_header_is_still_text(tmp_path):
    (tmp_path / "prompt.txt").write_text("BZhは社名です。答える前に考えてください。")  # "BZh" alone is no bzip2 stream
    assert project.read_text_setting(tmp_path / "prompt.txt", "--system-prompt-file").startswith("BZh")


@pytest.mark.parametrize("kind", ["gzip", "xz"])
def test_compressed_prompt_role_and_recipe_files_are_told_to_be_decompressed_too(tmp_path, kind):
    from sarashina_grpo.roles import RoleError, read_role

    for name in ("prompt.txt", "role.txt", "recipe.yaml"):
        (tmp_path / f"{name}.z").write_bytes(compressed(kind, "learning_rate: 1e-5\n" * 20))
    problem = f"is {kind}-compressed, not text: decompress it first"
    # why: each said its file was not UTF-8 ("save it as UTF-8"), though it is compressed text
    assert problem in error_of(project.read_text_setting, tmp_path / "prompt.txt.z", "--system-prompt-file")
    with pytest.raises(RoleError, match=problem):
        read_role(tmp_path / "role.txt.z")
    assert problem in error_of(project.load_recipe, tmp_path / "recipe.yaml.z")


def test_utf8_bom_just_works(write_csv, caplog):
    rows = read_rows(write_csv("prompt,lang\nこんにちは,ja\n".encode("utf-8-sig")))
    assert [(r.prompt, r.lang) for r in rows] == [("こんにちは", "ja")] and not warnings_of(caplog)


def test_utf16_with_bom_just_works(write_csv):
    rows = read_rows(write_csv("prompt,lang\nこんにちは,ja\n".encode("utf-16")))
    assert rows[0].prompt == "こんにちは"


def test_duplicate_prompts_keep_the_first_and_warn_with_lines(write_csv, caplog):
    rows = check_prompts(write_csv("prompt,lang\nこんにちは,ja\n元気？,ja\nこんにちは,ja\n こんにちは ,ja\n"))
    assert [r.line for r in rows] == [2, 3]
    assert "skipped 2 duplicate prompt(s) on line(s) 4, 5" in warnings_of(caplog)


class CharTokenizer:
    """One token per character of the user prompt: enough to test the length limit without a model."""

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        return list(messages[-1]["content"])


def test_prompt_over_the_limit_is_skipped_with_its_line_not_truncated(write_csv, caplog):
    path = write_csv("prompt,lang\n短い,ja\n" + "長" * 50 + ",ja\nまた短い,ja\n")
    dataset = load_prompts(path, tokenizer=CharTokenizer(), max_prompt_length=10)
    assert [p[-1]["content"] for p in dataset["prompt"]] == ["短い", "また短い"]
    assert "skipped 1 prompt(s) longer than the prompt limit on line(s) 3 (they are not truncated)" in (
        warnings_of(caplog)
    )


def test_every_prompt_over_the_limit_is_an_error(write_csv):
    path = write_csv("prompt,lang\n" + "長" * 50 + ",ja\n")
    message = error_of(prompts_dataset, check_prompts(path), path, tokenizer=CharTokenizer(), max_prompt_length=10)
    assert "every prompt is longer than the prompt limit" in message and "--max-prompt-length" in message


def test_line_numbers_stay_right_after_blank_lines_and_multiline_prompts(write_csv):
    rows = read_rows(write_csv('prompt,lang\n\n"一行目\n二行目",ja\n\n三つ目,ja\n'))
    assert [r.line for r in rows] == [3, 6]


def test_unclosed_quote_names_the_line_where_the_row_starts(write_csv):
    message = error_of(read_rows, write_csv('prompt,lang\nこんにちは,ja\n"閉じていない,ja\n元気？,ja\n'))
    assert "line 3: not readable as CSV" in message and "Check the quoting" in message


# --- input hygiene: invisible characters, control characters, odd files ---------------------------------------


def test_prompts_made_only_of_invisible_characters_are_skipped_like_blank_ones(write_csv, caplog):
    # zero-width space, word joiner, BOM, and a mix with an ordinary space: str.strip() sees none of them
    path = write_csv("prompt,lang\nこんにちは,ja\n\u200b,ja\n\u2060,ja\n\ufeff,ja\n\u200b \u200c\u2060,ja\n")
    assert [r.prompt for r in check_prompts(path)] == ["こんにちは"]
    assert "skipped 4 prompt(s) made only of invisible characters" in warnings_of(caplog)
    assert "on line(s) 3, 4, 5, 6." in warnings_of(caplog)


def test_prompts_holding_control_characters_are_skipped_naming_line_and_character(write_csv, caplog):
    path = write_csv('prompt,lang\nこん\x00にちは,ja\n\x1b[31m赤\x1b[0m,ja\n"タブ\tと\n改行",ja\n')
    assert [r.prompt for r in check_prompts(path)] == ["タブ\tと\n改行"]  # tab and line break are ordinary text
    assert "skipped 2 prompt(s) holding control characters (line 2: U+0000; line 3: U+001B)" in warnings_of(caplog)


def test_a_mostly_utf8_file_with_a_few_undecodable_rows_names_those_rows(write_csv):
    rows = ["こんにちは", "元気ですか", "おはよう", "ありがとう", "さようなら"]
    raw = ("prompt,lang\n" + "".join(f"{r},ja\n" for r in rows)).encode() + "髙橋です,ja\n".encode("cp932")
    message = error_of(read_rows, write_csv(raw + "おやすみ,ja\n".encode()))
    assert "1 line(s) are not valid UTF-8 while the rest of the file is: line(s) 7." in message


def test_a_fifo_is_refused_at_once_instead_of_blocking(tmp_path):
    fifo = tmp_path / "prompts.csv"
    os.mkfifo(fifo)  # reading it would wait forever for a writer
    assert "is not a regular file" in error_of(read_rows, fifo)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_device_is_refused_instead_of_read_until_memory_runs_out():
    assert "/dev/zero is not a regular file" in error_of(read_rows, "/dev/zero")


def test_a_file_over_the_size_limit_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.csv"
    with open(path, "wb") as f:
        f.truncate(51 * 2**20)  # sparse: 51 MB on paper, nothing on disk
    assert "huge.csv is 51 MB; prompt files are limited to 50 MB and 1,000,000 rows" in error_of(read_rows, path)


def test_a_file_over_the_row_limit_names_where_it_stopped(write_csv, monkeypatch):
    from sarashina_grpo import tables

    monkeypatch.setattr(tables, "MAX_ROWS", 3)  # the real limit is a million rows
    path = write_csv("prompt,lang\n" + "".join(f"p{i},ja\n" for i in range(5)))
    assert "has more than 3 rows (line 5)" in error_of(read_rows, path)


def test_a_prompt_over_the_csv_field_limit_is_an_over_long_prompt_not_a_quoting_problem(write_csv):
    message = error_of(read_rows, write_csv("prompt,lang\nこんにちは,ja\n" + "長" * 200_000 + ",ja\n"))
    assert message.endswith("line 3: a prompt longer than 131,072 characters (the CSV field limit), far beyond any "
                            "prompt length the model takes. Shorten or split it.")
    assert "quoting" not in message


def test_an_unclosed_quote_swallowing_the_file_past_the_field_limit_points_at_the_quote(write_csv):
    body = "".join(f"行{i}" + "あ" * 1000 + ",ja\n" for i in range(200))
    message = error_of(read_rows, write_csv('prompt,lang\n"閉じていない,ja\n' + body))
    assert "line 2: a prompt longer than" in message and "close the quote opened on line 2" in message


# --- settings: caught before any model loads ------------------------------------------------------------------


def test_a_generation_batch_of_partial_groups_is_trls_own_error():
    message = error_of(article_settings, per_device_train_batch_size=6, num_generations=4)
    # why: TRL checks TRL's fields; its message is shown as it is, as one line
    assert "TRL's GRPOConfig refused the settings: generation_batch_size (6) must be divisible by num_generations (4)" \
        in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (dict(num_generations=1), "GRPO requires at least 2 generations per prompt"),
        (dict(max_steps=0), "Settings.max_steps (CLI --max-steps) must be a positive integer, got 0"),
        (dict(lora_rank=8.5), "Settings.lora_rank (CLI --lora-rank) must be an integer, got 8.5"),
        (dict(learning_rate=float("nan")), "learning_rate (CLI --learning-rate) must be a finite number in (0, 1]"),
        (dict(temperature=0), "Settings.temperature (CLI --temperature) must be a finite number in (0, 10]"),
        (dict(warmup_steps=-0.1), "Settings.warmup_steps (CLI --warmup-steps) must be a finite number in [0, ∞)"),
        (dict(beta=-5), "Settings.beta (CLI --beta) must be a finite number in [0, ∞)"),
        (dict(max_completion_length=4000), "exceeds max_seq_length (4096): raise max_seq_length"),
        (dict(reward_names=[]), "GRPO needs at least one reward"),
    ],
)
def test_invalid_settings_name_the_field(changes, expected):
    assert expected in error_of(article_settings, **changes)


def test_unknown_reward_name_lists_the_valid_ones():
    message = error_of(check_rewards, ["xmlcount", "strict"])
    assert "Unknown reward 'strict'" in message and "soft_format, strict_format, xmlcount" in message


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if anything tries to load a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(modeling, "load_model", refuse)
    monkeypatch.setattr(project, "cuda_available", lambda: False)


@pytest.mark.parametrize(
    ("changes", "data", "expected"),
    [
        (dict(per_device_train_batch_size=5, **CPU_TINY), None, "must be divisible by num_generations"),
        (dict(reward_names=["nope"], **CPU_TINY), None, "Unknown reward 'nope'"),
        (dict(model_name="./missing-model", load_in_4bit=False), None, "no such folder"),
        (CPU_TINY, "missing.csv", "Prompt file not found"),
        (CPU_TINY, "bad.csv", "not ISO 639-1"),
    ],
)
def test_bad_input_is_caught_before_the_model_loads(no_model_load, tmp_path, write_csv, changes, data, expected):
    write_csv("prompt,lang\nこんにちは,ja\n", "ok.csv")
    write_csv("prompt,lang\nこんにちは,jp\n", "bad.csv")

    def run():
        train(article_settings(**changes, data_path=str(tmp_path / (data or "ok.csv"))), artifact_dir=tmp_path / "a")

    assert expected in error_of(run)
    assert not list((tmp_path / "a").glob("outputs/*"))  # and no empty run folder was left behind


# --- MODEL_NAME -----------------------------------------------------------------------------------------------


def test_missing_model_folder_says_what_to_give_instead(tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        check_model_name(str(tmp_path / "models" / "mine"))
    assert "no such folder" in str(info.value) and "'tiny'" in str(info.value)


def test_missing_checkpoint_of_a_run_names_the_run_s_newest_finished_one(tmp_path):
    newest = make_checkpoint(tmp_path / "run", 100)
    message = error_of(check_model_name, str(tmp_path / "run" / "checkpoint-500"))
    assert "no such folder" in message and str(newest) in message


def test_relative_checkpoint_path_is_a_path_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "no such folder" in error_of(check_model_name, "outputs/run/checkpoint-5")


def test_a_missing_relative_model_path_names_the_folder_it_was_read_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # why: a notebook's '../artifact/...' failed from another working folder, without saying which one it was read from
    assert f"no such folder (a relative path is read from the working folder, {tmp_path})." in error_of(
        check_model_name, "../artifact/outputs/run/checkpoint-5")
    assert "working folder" not in error_of(check_model_name, str(tmp_path / "missing"))


def test_half_written_checkpoint_without_adapter_files_is_named_as_such(tmp_path):
    folder = tmp_path / "checkpoint-20"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    message = error_of(check_model_name, str(folder))
    assert "neither model files" in message and "half-written checkpoint" in message


def test_adapter_config_without_adapter_weights_is_not_a_model(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    assert "LoRA adapter files (adapter_config.json + adapter_model.safetensors)" in error_of(
        check_model_name, str(tmp_path)
    )


def test_run_folder_points_at_its_newest_finished_checkpoint(tmp_path):
    for step in (5, 10):
        make_checkpoint(tmp_path, step)
    assert f"its newest finished checkpoint is {tmp_path / 'checkpoint-10'}" in error_of(
        check_model_name, str(tmp_path)
    )


def test_run_folder_with_a_set_aside_checkpoint_is_not_misread(tmp_path):
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20).rename(tmp_path / "checkpoint-20.set-aside-20261125-120000")
    # was: ValueError: invalid literal for int() with base 10: '20.set'
    assert f"its newest finished checkpoint is {tmp_path / 'checkpoint-10'}" in error_of(
        check_model_name, str(tmp_path)
    )


def test_complete_adapter_folder_passes(tmp_path):
    write_adapter(tmp_path)
    check_model_name(str(tmp_path))


HUB_ID = "sbintuitions/sarashina2.2-3b-instruct-v0.1"


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_a_hub_id_that_is_not_cached_and_unreachable_names_the_offline_routes(empty_hub_cache, monkeypatch):
    monkeypatch.setattr(preflight, "hub_reachable", lambda endpoint: False)
    message = error_of(check_model_name, HUB_ID)
    assert "cannot be reached" in message and "--model tiny" in message and "local model folder" in message


def test_hf_hub_offline_with_an_uncached_hub_id_is_an_error(empty_hub_cache, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert "HF_HUB_OFFLINE is set" in error_of(check_model_name, HUB_ID)


def test_a_reachable_hub_id_passes(empty_hub_cache, monkeypatch):
    monkeypatch.setattr(preflight, "hub_reachable", lambda endpoint: True)
    check_model_name(HUB_ID)  # the loader downloads it


def test_a_cached_hub_id_passes_offline(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: "/cache/config.json")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    check_model_name(HUB_ID)


@pytest.mark.parametrize("command", [["infer", "こんにちは"], ["eval", "--limit", "1"]])
def test_infer_and_eval_on_an_unreachable_hub_id_end_in_one_line_before_loading(
        empty_hub_cache, no_unsloth_load, monkeypatch, capsys, tmp_path, command):
    monkeypatch.setattr(preflight, "hub_reachable", lambda endpoint: False)
    code = main([*command, "--model", HUB_ID, *(["--artifact-dir", str(tmp_path)] if command[0] == "eval" else [])])
    err = capsys.readouterr().err
    assert last_line(err).startswith(f"error: Model {HUB_ID!r} (--model, notebook MODEL_NAME) is a hub id")
    assert code == 2 and "Traceback" not in err


@pytest.mark.parametrize("command", ["infer", "eval"])
def test_a_damaged_checkpoint_given_to_infer_or_eval_is_one_error_before_loading(no_unsloth_load, capsys, tmp_path,
                                                                               command):
    earlier = make_checkpoint(tmp_path, 5)
    damaged = make_checkpoint(tmp_path, 10)
    weights = damaged / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # the disk filled up while it was saved
    extra = ["こんにちは"] if command == "infer" else ["--artifact-dir", str(tmp_path / "a")]
    code = main([command, "--model", str(damaged), *extra])
    err = capsys.readouterr().err
    assert code == 2 and last_line(err).startswith(f"error: {damaged} is damaged (adapter_model.safetensors: cut off")
    assert f"e.g. {earlier}" in err and "Traceback" not in err


def test_an_adapter_whose_base_model_folder_moved_is_refused_before_loading(tmp_path):
    import json

    write_adapter(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "moved-away")
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    # why: the loader would look for the folder on the hub and fail with an unrelated OSError after loading started
    assert "its base model folder" in error_of(check_model_name, str(tmp_path))


def test_an_adapter_with_nan_weights_is_refused(tmp_path):
    write_adapter(tmp_path, float("nan"))
    message = error_of(check_model_name, str(tmp_path))
    assert "adapter_model.safetensors: holds non-finite values (NaN or inf)" in message


# --- artifact folder ------------------------------------------------------------------------------------------


def test_artifact_folder_under_a_file_is_not_writable(tmp_path):
    (tmp_path / "file").write_text("")
    message = error_of(check_writable, tmp_path / "file" / "artifact")
    assert "is not writable" in message and "--artifact-dir" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_artifact_folder_is_not_writable(tmp_path):
    tmp_path.chmod(0o500)
    try:
        assert "is not writable" in error_of(check_writable, tmp_path / "artifact")
    finally:
        tmp_path.chmod(0o700)


# --- device and vLLM (simulated) ------------------------------------------------------------------------------


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(project, "cuda_available", lambda: False)


@pytest.fixture
def with_cuda(monkeypatch):
    monkeypatch.setattr(project, "cuda_available", lambda: True)


def fake_vllm(monkeypatch, installed: bool):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "vllm":
            return object() if installed else None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(preflight.importlib.util, "find_spec", find_spec)


def device_request(training: bool, **settings) -> dict:
    """``check_device``'s arguments for a run of these settings."""
    s = article_settings(**settings)
    return dict(model_name=s.model_name, load_in_4bit=s.load_in_4bit, use_vllm=s.use_vllm, training=training)


def test_4bit_without_cuda_names_the_cpu_route(no_cuda):
    message = error_of(check_device, **device_request(False, load_in_4bit=True))
    assert "needs a CUDA GPU" in message and "--no-4bit" in message and "--model tiny" in message


def test_training_the_3b_model_without_cuda_names_the_tiny_route(no_cuda):
    message = error_of(check_device, **device_request(True, load_in_4bit=False))
    assert "needs a CUDA GPU" in message and "sarashina-grpo train --model tiny" in message


def test_tiny_model_trains_on_cpu(no_cuda):
    check_device(**device_request(True, **CPU_TINY))  # no error: the CPU route works


def test_4bit_training_with_cuda_passes(with_cuda):
    check_device(**device_request(True))


def test_vllm_not_installed_says_how_to_install_or_turn_it_off(with_cuda, monkeypatch):
    fake_vllm(monkeypatch, installed=False)
    message = error_of(check_device, **device_request(True, use_vllm=True))
    assert "vLLM is not installed" in message and "uv sync --extra vllm" in message and "USE_VLLM=False" in message


def test_vllm_without_cuda_says_to_turn_it_off(no_cuda, monkeypatch):
    fake_vllm(monkeypatch, installed=True)
    message = error_of(check_device, **device_request(True, use_vllm=True, **CPU_TINY))
    assert "USE_VLLM needs a CUDA GPU" in message


# --- the CLI: one paragraph, exit code 2 ----------------------------------------------------------------------


def last_line(err: str) -> str:
    """The CLI's own last word on stderr (library warnings printed while importing may come before it)."""
    return err.strip().splitlines()[-1]


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(["train", *map(str, argv)])
    return code, capsys.readouterr().err


def test_cli_turns_a_data_error_into_one_error_line_and_exit_code_2(no_cuda, capsys, tmp_path):
    code, err = run_cli(capsys, "--model", "tiny", "--data", tmp_path / "nope.csv", "--artifact-dir", tmp_path)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: Settings.data_path (CLI --data): Prompt file not found")


def test_cli_turns_a_settings_error_into_one_error_line_and_exit_code_2(no_cuda, capsys, tmp_path):
    code, err = run_cli(capsys, "--model", "tiny", "--batch-size", 3, "--num-generations", 2,
                        "--artifact-dir", tmp_path)
    assert code == 2 and err.count("\n") == 1 and "must be divisible by num_generations (2)" in err


def test_cli_resume_without_a_checkpoint_is_an_error_not_a_new_run(no_cuda, capsys, tmp_path):
    code, err = run_cli(capsys, "--model", "tiny", "--resume", "--artifact-dir", tmp_path)
    assert code == 2 and "Nothing to resume" in err


# --- no tracebacks for user-caused failures (errors.py) -------------------------------------------------------


def test_cut_off_run_json_on_resume_is_one_error_line(no_cuda, capsys, tmp_path):
    run = tmp_path / "outputs" / "r"
    make_checkpoint(run, 1)
    (run / "run.json").write_text('{"settings": {"model_name": "tiny", "max_st')  # the disk filled up mid-write
    code, err = run_cli(capsys, "--resume", "r", "--artifact-dir", tmp_path)
    assert code == 2 and last_line(err).startswith(f"error: {run / 'run.json'} is damaged (")
    assert "restore run.json" in err and "Traceback" not in err


@pytest.mark.parametrize(("settings", "why"), [({}, "its 'settings' are empty"),
                                               ({"max_steps": 5}, "its 'settings' name no model_name")])
def test_run_json_settings_without_a_model_are_reported_as_damage_on_resume(no_cuda, capsys, tmp_path, settings, why):
    run = tmp_path / "outputs" / "r"
    make_checkpoint(run, 1)
    (run / "run.json").write_text(json.dumps({"settings": settings}))
    code, err = run_cli(capsys, "--resume", "r", "--artifact-dir", tmp_path)
    # why: the defaults filled the record in silently: "Training sbintuitions/sarashina2.2-3b-… needs a CUDA GPU"
    assert code == 2 and last_line(err) == (f"error: {run / 'run.json'} is damaged ({why}); the run's settings cannot "
                                            "be read. Start a new run, or restore run.json from a backup.")


@pytest.mark.parametrize("folder", ["outputs", "logs"])
def test_an_artifact_sub_folder_that_is_a_file_is_named_before_the_run_starts(no_model_load, capsys, tmp_path,
                                                                             write_csv, folder):
    (tmp_path / "artifact").mkdir()
    (tmp_path / "artifact" / folder).write_text("")  # e.g. `cp results.txt artifact/outputs`
    data = write_csv("prompt,lang\nこんにちは,ja\n")
    code, err = run_cli(capsys, "--model", "tiny", "--data", data, "--artifact-dir", tmp_path / "artifact")
    assert code == 2 and last_line(err).startswith(f"error: {tmp_path / 'artifact' / folder} is a file, but it must")
    assert "Traceback" not in err and not (tmp_path / "artifact" / "outputs").is_dir()  # no run folder left behind


def test_an_unknown_compare_name_is_an_error_before_the_evaluation_runs(no_cuda, capsys, tmp_path, monkeypatch):
    from sarashina_grpo import evaluation

    monkeypatch.setattr(evaluation, "evaluate_model", lambda *a, **k: pytest.fail("evaluated before checking"))
    (tmp_path / "eval" / "base").mkdir(parents=True)
    (tmp_path / "eval" / "base" / "metrics.json").write_text("{}")
    code = main(["eval", "--model", "tiny", "--compare", "base", "bsae", "--artifact-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and last_line(err).startswith("error: --compare: no evaluation named 'bsae'") and "['base']" in err


def test_a_damaged_compare_metrics_file_is_named(tmp_path):
    from sarashina_grpo.preflight import check_compare_names

    (tmp_path / "eval" / "base").mkdir(parents=True)
    (tmp_path / "eval" / "base" / "metrics.json").write_text('{"format_ok": 0.')
    assert "metrics.json is cut off or not valid JSON" in error_of(check_compare_names, ["base"], tmp_path)


def disk_full_errors():
    """The exceptions a full disk really raises, from writing to /dev/full (always full, by design)."""
    import torch

    found = []
    for write in (lambda: torch.save({"w": torch.zeros(256, 256)}, "/dev/full"),  # a checkpoint's optimizer.pt
                  lambda: Path("/dev/full").write_text("{}" * 10_000)):  # trainer_state.json, run.json
        try:
            write()
        except (RuntimeError, OSError) as err:
            found.append(err)
    return found


def dev_full_is_a_device() -> bool:
    try:
        return stat.S_ISCHR(os.stat("/dev/full").st_mode)
    except OSError:
        return False


@pytest.mark.skipif(not dev_full_is_a_device(), reason="needs Linux's /dev/full device")
def test_a_full_disk_during_a_save_says_no_space_left_on_device():
    from sarashina_grpo.errors import user_error_message

    found = disk_full_errors()
    assert len(found) == 2  # torch: "unexpected pos 704 vs 598" and no word of the disk
    for err in found:
        message = user_error_message(err)
        assert "no space left on device" in message.lower() and "--resume continues from the last complete" in message


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/outputs/r"),
         "Cannot write (/mnt/ro/outputs/r): it is on a read-only file system. Choose a writable --artifact-dir"),
        (PermissionError(errno.EACCES, "Permission denied", "/data/artifact/logs"),
         "Permission denied (/data/artifact/logs). Choose a writable --artifact-dir"),
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device. Free some space"),
        (RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space "
                      "left on device\" })"), "No space left on device."),  # safetensors' wording
    ],
)
def test_os_failures_map_to_one_line_saying_what_to_do(err, expected):
    from sarashina_grpo.errors import user_error_message

    assert user_error_message(err).startswith(expected)


def test_a_file_in_the_way_of_a_folder_is_named(tmp_path):
    from sarashina_grpo.errors import user_error_message

    (tmp_path / "outputs").write_text("")
    with pytest.raises(OSError) as info:
        (tmp_path / "outputs" / "r" / "checkpoint-1").mkdir(parents=True)
    assert user_error_message(info.value).startswith(f"{tmp_path / 'outputs'} is a file where a folder is needed")


def test_a_bug_keeps_its_traceback():
    from sarashina_grpo.errors import report

    assert report(ZeroDivisionError("division by zero")) is None  # cli.main re-raises it


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_as_well(no_cuda, capsys, tmp_path, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("SARASHINA_GRPO_DEBUG", "1")
    argv = ["--debug"] if how == "flag" else []
    code = main([*argv, "train", "--model", "tiny", "--resume", "--artifact-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback (most recent call last)" in err and "\nerror: Nothing to resume" in err


@pytest.mark.parametrize(("cuda", "expected"), [(False, "tiny"), (True, HUB_ID)])
def test_the_inference_notebook_default_model_runs_on_this_machine(monkeypatch, cuda, expected):
    monkeypatch.setattr(modeling, "cuda_available", lambda: cuda)
    assert modeling.model_for_this_machine(None) == expected  # why: a first run on a CPU works offline


def test_a_mistyped_command_gets_a_suggestion(capsys):
    assert main(["trian"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: sarashina-grpo: unknown command 'trian' (did you mean train?); the commands are demo, train, infer, "
        "eval, export, build-tiny, convert-gguf, warmstart (`sarashina-grpo --help` lists what each command does).")


def test_a_missing_prompt_file_outside_the_project_names_the_project_folder(no_cuda, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # why: run from a folder without datasets/, datasets/smalltalk.csv is not there
    monkeypatch.delenv(project.HOME_VARIABLE, raising=False)
    code, err = run_cli(capsys, "--model", "tiny", "--artifact-dir", tmp_path / "artifact")
    assert code == 2 and f"the project folder, here {tmp_path}, which has no datasets/" in last_line(err)


def test_a_missing_prompt_file_inside_the_project_gets_no_such_hint(no_cuda, capsys, tmp_path):
    code, err = run_cli(capsys, "--model", "tiny", "--data", tmp_path / "nope.csv", "--artifact-dir", tmp_path)
    assert code == 2 and "project folder" not in err  # why: the repository has datasets/; the name is simply wrong


# A notebook cell that hits a user error, run in IPython as Jupyter runs it (a fresh process: IPython's shell is a
# singleton that would outlive this test).
NOTEBOOK_CELL = r"""
import sys
from IPython.core.interactiveshell import InteractiveShell
InteractiveShell.instance().run_cell(f"from sarashina_grpo.data import load_prompts\nload_prompts({sys.argv[1]!r})")
"""


@pytest.mark.parametrize("debug", [None, "1"])
def test_jupyter_shows_a_user_error_as_the_command_line_does(tmp_path, debug):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "SARASHINA_GRPO_DEBUG"} | ({"SARASHINA_GRPO_DEBUG": debug}
                                                                                     if debug else {})
    done = subprocess.run([sys.executable, "-c", NOTEBOOK_CELL, str(tmp_path / "missing.csv")], env=env,
                          capture_output=True, text=True, timeout=120)
    shown = (done.stdout + done.stderr).strip().splitlines()
    assert shown[-1].startswith("error: ") and "missing.csv" in shown[-1]
    if debug:  # the traceback for a bug report, then the same line
        assert shown[0].startswith("Traceback") and any("load_prompts" in line for line in shown)
    else:
        assert len(shown) == 1
