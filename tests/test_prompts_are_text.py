"""Prompts are text: a cell holding a number, bool, object, list, bytes or struct is refused with its file and line,
as is a repeated column name; a path that cannot be read as a file (a symlink loop, a pipe, a device) is named for
what it is and never blocks. No model is loaded.

    .venv/bin/pytest tests/test_prompts_are_text.py
"""

from __future__ import annotations

import json
import os
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sarashina_grpo.data import DataError, check_prompts, read_rows
from sarashina_grpo.project import SettingsError, read_text_setting
from sarashina_grpo.roles import RoleError, read_role
from sarashina_grpo.tables import file_problem


def error_of(path) -> str:
    with pytest.raises(DataError) as info:
        check_prompts(path)
    return str(info.value)


def jsonl(tmp_path, *rows, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def parquet(tmp_path, table: pa.Table, name="p.parquet"):
    path = tmp_path / name
    pq.write_table(table, path)
    return path


# --- cells that are not text ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("prompt", "kind"),
    [
        (["明日から", "追加"], "a list"),  # would train on "['明日から', '追加']"
        ({"text": "こんにちは"}, "an object"),
        ([], "a list"),
    ],
)
def test_a_jsonl_prompt_that_is_not_text_is_refused_with_its_line(tmp_path, prompt, kind):
    path = jsonl(tmp_path, {"prompt": "ok", "lang": "ja"}, {"prompt": prompt, "lang": "ja"})
    assert f"{path}, line 2: the 'prompt' cell holds {kind}" in error_of(path)


def test_a_jsonl_lang_or_role_that_is_not_text_is_refused(tmp_path):
    assert "the 'lang' cell holds a list" in error_of(jsonl(tmp_path, {"prompt": "a", "lang": ["ja"]}))
    path = jsonl(tmp_path, {"prompt": "a", "lang": "ja", "role": {"name": "x"}}, name="r.jsonl")
    assert "line 1: the 'role' cell holds an object" in error_of(path)


@pytest.mark.parametrize(("value", "kind"), [(5, "a number (5)"), (1.5, "a number (1.5)"), (True, "true or false")])
def test_a_jsonl_prompt_that_is_a_number_or_bool_is_refused_with_its_line(tmp_path, value, kind):
    # why: it was trained on as "5" or "True", a prompt nobody wrote; a number that is meant is written "5"
    message = error_of(jsonl(tmp_path, {"prompt": "ok", "lang": "ja"}, {"prompt": value, "lang": "ja"}))
    assert f"p.jsonl, line 2: the 'prompt' cell holds {kind}" in message and "Give it as a string" in message


def test_a_jsonl_role_or_lang_that_is_a_number_is_refused(tmp_path):
    role = jsonl(tmp_path, {"prompt": "a", "lang": "ja", "role": 7})
    assert "line 1: the 'role' cell holds a number (7)" in error_of(role)
    lang = jsonl(tmp_path, {"prompt": "a", "lang": 1}, name="l.jsonl")
    assert "line 1: the 'lang' cell holds a number" in error_of(lang)


def test_a_parquet_float_prompt_column_is_refused_saying_how_to_convert_it(tmp_path):
    message = error_of(parquet(tmp_path, pa.table({"prompt": [1.5], "lang": ["ja"]})))
    assert "row 1: the 'prompt' cell holds a number (1.5)" in message and ".astype(str)" in message


def test_a_missing_value_in_a_parquet_float_column_is_a_blank_prompt(tmp_path):
    # why: pandas writes a column with no prompts as NaN floats; a blank is skipped, as NaN in a CSV is
    table = pa.table({"prompt": pa.array([float("nan"), None], pa.float64()), "lang": ["ja", "ja"]})
    assert [r.prompt for r in read_rows(parquet(tmp_path, table))] == ["", ""]


def test_extra_columns_that_are_not_text_still_ride_along(tmp_path):
    # why: the arithmetic task's answer is a number; correct_answer reads it from its text
    rows = check_prompts(jsonl(tmp_path, {"prompt": "a", "lang": "ja", "answer": 3, "ok": True, "tags": ["x"]}))
    assert rows[0].extra == {"answer": "3", "ok": "True", "tags": "['x']"}


def test_a_numeric_parquet_answer_column_rides_along_as_text(tmp_path):
    rows = check_prompts(parquet(tmp_path, pa.table({"prompt": ["3+4は？"], "lang": ["ja"], "answer": [7]})))
    assert rows[0].extra == {"answer": "7"}


def test_a_parquet_binary_prompt_is_refused_saying_to_decode_it(tmp_path):
    table = pa.table({"prompt": pa.array(["明日".encode()], pa.binary()), "lang": ["ja"]})
    message = error_of(parquet(tmp_path, table))
    assert "row 1: the 'prompt' cell holds bytes" in message and "decode" in message


def test_a_parquet_struct_prompt_is_refused(tmp_path):
    table = pa.table({"prompt": pa.array([{"text": "こんにちは"}]), "lang": ["ja"]})
    assert "row 1: the 'prompt' cell holds an object" in error_of(parquet(tmp_path, table))


def test_a_parquet_list_prompt_is_refused(tmp_path):
    table = pa.table({"prompt": pa.array([["a", "b"]]), "lang": ["ja"]})
    assert "the 'prompt' cell holds a list" in error_of(parquet(tmp_path, table))


def test_a_text_parquet_still_reads(tmp_path):
    table = pa.table({"prompt": ["こんにちは", None], "lang": ["ja", "ja"]})
    assert [r.prompt for r in read_rows(parquet(tmp_path, table))] == ["こんにちは", ""]


# --- repeated column names -------------------------------------------------------------------------------------

def test_a_repeated_csv_column_is_refused(tmp_path):
    # why: the first 'prompt' column won silently and the second was dropped
    path = tmp_path / "d.csv"
    path.write_text("prompt,lang,prompt\nIGNORED,ja,本当\n", encoding="utf-8")
    assert "names the column 'prompt' 2 times" in error_of(path)


def test_a_repeated_extra_column_differing_only_in_case_is_refused(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,lang,Answer,answer\nq,ja,1,2\n", encoding="utf-8")
    assert "names the column 'answer' 2 times" in error_of(path)


def test_a_key_repeated_in_one_jsonl_object_is_refused(tmp_path):
    path = jsonl(tmp_path, '{"prompt": "a", "lang": "ja", "prompt": "b"}')
    assert "line 1: the key 'prompt' appears twice" in error_of(path)


def test_a_repeated_parquet_column_is_refused(tmp_path):
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["ja"]), pa.array(["b"])], ["prompt", "lang", "prompt"])
    assert "the column 'prompt' appears twice" in error_of(parquet(tmp_path, table))


# --- paths that are not files ----------------------------------------------------------------------------------

def test_a_json_array_file_says_json_lines_are_read(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"prompt": "a", "lang": "ja"}]), encoding="utf-8")
    message = error_of(path)
    assert "a .json file is not read as prompts; give JSON Lines (.jsonl" in message and "found [" not in message


def test_a_symlink_loop_is_called_a_loop(tmp_path):
    os.symlink(tmp_path / "b.csv", tmp_path / "a.csv")
    os.symlink(tmp_path / "a.csv", tmp_path / "b.csv")
    assert "is a symbolic link that loops" in error_of(tmp_path / "a.csv")


def test_a_dangling_symlink_names_its_target(tmp_path):
    os.symlink(tmp_path / "gone.csv", tmp_path / "a.csv")
    assert "is a symbolic link to" in error_of(tmp_path / "a.csv") and "gone.csv, which does not exist" in \
        error_of(tmp_path / "a.csv")


def test_file_problem_names_each_kind(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "f.txt").write_text("x")
    assert file_problem(tmp_path / "f.txt") is None
    assert file_problem(tmp_path / "missing") == "not found"
    assert file_problem(tmp_path) == "is a folder"
    assert file_problem(tmp_path / "fifo").startswith("is a pipe (FIFO)")
    assert file_problem("/dev/zero") == "is a device, not a file"


def no_hang(func, *args):
    """Run ``func(*args)`` in a thread; fail if it blocks (as opening a FIFO with no writer would)."""
    outcome = {}

    def target():
        try:
            func(*args)
        except Exception as err:  # the refusal we expect, handed back to the test
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), f"{func.__name__} blocked on {args[0]}"
    return outcome.get("error")


def test_a_fifo_or_device_as_system_prompt_file_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    for path in (tmp_path / "fifo", "/dev/zero"):
        err = no_hang(read_text_setting, path, "system_prompt_file")
        assert isinstance(err, SettingsError) and str(path) in str(err)


def test_a_fifo_or_device_as_role_file_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    err = no_hang(read_role, tmp_path / "fifo")
    assert isinstance(err, RoleError) and "is a pipe (FIFO)" in str(err) and "not found" not in str(err)
    assert "is a device" in str(no_hang(read_role, "/dev/zero"))


def test_a_recipe_fifo_without_a_writer_is_refused_without_blocking(tmp_path):
    from sarashina_grpo.project import load_recipe

    os.mkfifo(tmp_path / "recipe.yaml")
    err = no_hang(load_recipe, tmp_path / "recipe.yaml")  # why: `train --config FIFO` hung without a word
    assert isinstance(err, SettingsError) and "is a pipe (FIFO) that nothing is writing to" in str(err)
    assert "is a device, not a file" in str(no_hang(load_recipe, "/dev/zero"))


def test_a_recipe_pipe_with_a_writer_is_still_read(tmp_path):
    from sarashina_grpo.project import load_recipe

    os.mkfifo(tmp_path / "recipe.yaml")
    writer = threading.Thread(target=lambda: (tmp_path / "recipe.yaml").write_text("max_steps: 7\n"), daemon=True)
    writer.start()  # the writer waits in open() for a reader: it holds the FIFO open before load_recipe reads
    try:
        assert load_recipe(tmp_path / "recipe.yaml") == {"max_steps": 7}  # `--config <(…)` is a recipe too
    finally:
        if writer.is_alive():  # the reader never came: let the writer's open() return
            os.close(os.open(tmp_path / "recipe.yaml", os.O_RDONLY | os.O_NONBLOCK))
        writer.join(5)


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_paths_that_are_there_but_no_regular_file_say_what_they_are(tmp_path, kind):
    from sarashina_grpo.export import check_checkpoint
    from sarashina_grpo.preflight import check_model_name, check_rewards
    from sarashina_grpo.realmodel import check_gguf
    from sarashina_grpo.warmstart import WarmStart

    path = tmp_path / "thing.py"
    path.mkdir() if kind == "folder" else os.mkfifo(path)
    what = "is a folder" if kind == "folder" else "is a pipe (FIFO)"
    # why: each said "file not found" / "no such file" of a path that is there (and a FIFO must never be opened)
    errors = [no_hang(lambda p: WarmStart(data=str(p)), path), no_hang(check_rewards, [f"{path}:r"]),
              no_hang(check_gguf, path)]
    for err in errors:
        assert isinstance(err, SettingsError) and what in str(err), err
        assert "not found" not in str(err) and "no such" not in str(err), err
    if kind == "fifo":  # where a folder is wanted: a FIFO (or a file) is no "no such folder" either
        for err in (no_hang(check_model_name, str(path)), no_hang(check_checkpoint, path)):
            assert isinstance(err, SettingsError) and "is a pipe (FIFO), not a" in str(err), err


def test_a_checkpoint_that_is_a_file_says_so(tmp_path):
    from sarashina_grpo.export import check_checkpoint

    (tmp_path / "checkpoint-3").write_text("x")
    with pytest.raises(SettingsError, match=r"checkpoint-3 is a file, not a folder\. Give a finished checkpoint"):
        check_checkpoint(tmp_path / "checkpoint-3")  # why: it said "no such folder"


def test_a_role_file_loop_is_called_a_loop(tmp_path):
    os.symlink(tmp_path / "r2", tmp_path / "r1")
    os.symlink(tmp_path / "r1", tmp_path / "r2")
    with pytest.raises(RoleError, match="loops"):
        read_role(tmp_path / "r1")
