"""Nothing a user made is overwritten or deleted: a model is written only into a new or empty folder (never an empty
path), checkpoints set aside by a resume survive transformers' checkpoint rotation, and a comparison keeps every
evaluation it is given, whatever their names. No model is loaded.

    .venv/bin/pytest tests/test_nothing_overwritten.py
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest
from checkpoint_files import make_checkpoint
from transformers.trainer_utils import rotate_checkpoints

from sarashina_grpo.checkpoints import (
    SET_ASIDE_DIR,
    check_loadable,
    list_checkpoints,
    set_aside,
    set_aside_newer,
)
from sarashina_grpo.cli import main
from sarashina_grpo.evaluation import (
    MAX_COMPARE_NAME_BYTES,
    compare_runs,
    comparison_folder_name,
    comparison_labels,
    load_metrics,
)
from sarashina_grpo.preflight import check_compare_names, check_new_folder
from sarashina_grpo.project import SettingsError


def cli(*args) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()


# --- folders a command writes a model into ----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["", "  "])
def test_an_empty_output_path_is_refused(path):
    # why: Path("") is the working folder; an unset $OUT wrote a model into a project root
    with pytest.raises(SettingsError, match="is an empty path"):
        check_new_folder(path, "export OUT")


def test_build_tiny_refuses_an_empty_path_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    code, err = cli("build-tiny", "")
    assert code == 2 and err.startswith("error: build-tiny OUT is an empty path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("command", [["eval", "--model", "tiny", "--compare", "missing"],
                                     ["train", "--model", "tiny", "--data", "missing.csv"]])
def test_a_refused_command_leaves_no_new_artifact_folder(command, tmp_path):
    code, err = cli(*command, "--artifact-dir", str(tmp_path / "new" / "artifact"))
    assert code == 2 and "error: " in err
    # why: the writability check made the folder, and a refusal after it left it behind, empty
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", ["99999999999999999999", "-1"])
def test_build_tiny_refuses_a_seed_torch_cannot_take_and_writes_nothing(seed, tmp_path):
    code, err = cli("build-tiny", str(tmp_path / "tiny"), "--seed", seed)
    # why: torch.manual_seed ended the command in a traceback ("Overflow when unpacking long long"); train's rule
    assert code == 2 and err.startswith("error: build-tiny --seed must be a whole number in [0, 2**32)")
    assert list(tmp_path.iterdir()) == []


def test_build_tiny_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    code, err = cli("build-tiny", str(tmp_path))
    assert code == 2 and "exists and is not an empty folder" in err
    assert (tmp_path / "config.json").read_text() == "{}"


def test_export_refuses_an_empty_path(tmp_path):
    from test_export import fake_checkpoint

    from sarashina_grpo.export import export_checkpoint

    with pytest.raises(SettingsError, match="export OUT is an empty path"):
        export_checkpoint(fake_checkpoint(tmp_path / "r", 3), "")


def test_convert_gguf_refuses_an_empty_path():
    from sarashina_grpo.realmodel import ConvertOptions

    with pytest.raises(SettingsError, match="convert-gguf OUT is an empty path"):
        ConvertOptions(paths=[""])


# --- set-aside checkpoints and transformers' rotation -------------------------------------------------------------

def test_a_set_aside_checkpoint_survives_checkpoint_rotation(tmp_path):
    # why: save_total_limit deleted every checkpoint-* folder beyond the limit, "checkpoint-5.set-aside-…" included
    for step in (1, 2, 5):
        make_checkpoint(tmp_path, step)
    set_aside_newer(tmp_path, tmp_path / "checkpoint-2")
    for step in (3, 4):
        make_checkpoint(tmp_path, step)
    rotate_checkpoints(str(tmp_path), save_total_limit=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-4"]
    (aside,) = (tmp_path / SET_ASIDE_DIR).iterdir()
    assert aside.name.startswith("checkpoint-5.set-aside-") and (aside / "adapter_model.safetensors").exists()


def test_set_aside_folders_left_beside_the_checkpoints_are_moved_out_of_rotation(tmp_path):
    old = make_checkpoint(tmp_path, 7).rename(tmp_path / "checkpoint-7.set-aside-20250101-000000")
    keep = make_checkpoint(tmp_path, 2)
    set_aside_newer(tmp_path, keep)
    assert not old.exists() and (tmp_path / SET_ASIDE_DIR / old.name / "adapter_model.safetensors").exists()


def test_two_set_asides_of_one_step_keep_both(tmp_path):
    first = set_aside(make_checkpoint(tmp_path, 3), "test")
    second = set_aside(make_checkpoint(tmp_path, 3), "test")
    assert first != second and first.exists() and second.exists()


def test_a_damaged_set_aside_checkpoint_points_at_an_earlier_one_of_its_run(tmp_path):
    make_checkpoint(tmp_path, 2)
    aside = set_aside(make_checkpoint(tmp_path, 3), "test")
    (aside / "adapter_config.json").write_text("{")
    with pytest.raises(SettingsError, match="e.g. .*checkpoint-2"):
        check_loadable(aside)


# --- comparisons ---------------------------------------------------------------------------------------------------

def evaluation(folder, **figures):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"n": 4, "strict_format_rate": 0.5, **figures}))
    return folder


def test_evaluations_sharing_a_folder_name_are_all_compared(tmp_path):
    a = evaluation(tmp_path / "a" / "base", strict_format_rate=0.25)
    b = evaluation(tmp_path / "b" / "base", strict_format_rate=0.75)
    table, chart = compare_runs([a, b], artifact_dir=tmp_path)
    assert "| metric | a/base | b/base |" in table and "0.250" in table and "0.750" in table
    assert chart.exists() and chart.parent.name == "compare-a_base-vs-b_base"


def test_the_same_evaluation_twice_keeps_two_columns():
    from pathlib import Path

    assert comparison_labels([Path("eval/x"), Path("eval/x")]) == ["eval/x", "eval/x (2)"]


def test_three_long_names_give_a_folder_name_that_fits(tmp_path):
    names = [f"{'L' * 99}{i}" for i in range(3)]  # the longest --name allows
    for name in names:
        evaluation(tmp_path / "eval" / name)
    table, chart = compare_runs(names, artifact_dir=tmp_path)
    assert len(chart.parent.name.encode()) <= MAX_COMPARE_NAME_BYTES and all(n in table for n in names)


def test_long_folder_names_stay_distinct():
    a = comparison_folder_name(["x" * 150, "y" * 150])
    b = comparison_folder_name(["x" * 150, "z" * 150])
    assert a != b and len(a.encode()) <= MAX_COMPARE_NAME_BYTES


def test_short_names_keep_the_familiar_folder_name():
    assert comparison_folder_name(["base", "step500"]) == "compare-base-vs-step500"


@pytest.mark.parametrize(("content", "expected"), [
    ("[]", "holds a JSON list, not an evaluation's figures"),
    ('{"strict_format_rate": "high"}', "has strict_format_rate = 'high', not a number"),
    ('"text"', "holds a JSON str"),
])
def test_metrics_of_the_wrong_shape_are_named_before_comparing(tmp_path, content, expected):
    folder = tmp_path / "eval" / "odd"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(content)
    with pytest.raises(SettingsError, match=expected):
        check_compare_names(["odd"], tmp_path)
    with pytest.raises(SettingsError, match=expected):
        load_metrics("odd", tmp_path)


def test_compare_only_with_a_list_metrics_file_is_one_error_line(tmp_path):
    evaluation(tmp_path / "eval" / "good")
    (tmp_path / "eval" / "bad").mkdir()
    (tmp_path / "eval" / "bad" / "metrics.json").write_text("[]")
    code, err = cli("eval", "--compare-only", "--artifact-dir", str(tmp_path), "--compare", "good", "bad")
    assert code == 2 and err.count("\n") == 1 and "holds a JSON list" in err


@pytest.mark.parametrize(("flags", "named"), [
    (["--model", "/nonexistent", "--name", "zzz", "--limit", "5", "--data", "/nonexistent.csv", "--sample",
      "--samples-per-prompt", "3"], "--model, --name, --limit, --data, --sample, --samples-per-prompt"),
    (["--threads", "1"], "--threads would be ignored: leave it out"),
    (["--no-4bit"], "--4bit would be ignored"),
])
def test_compare_only_refuses_the_flags_it_would_ignore(flags, named, tmp_path):
    evaluation(tmp_path / "eval" / "e1")
    evaluation(tmp_path / "eval" / "e2")
    code, err = cli("eval", "--compare-only", "--compare", "e1", "e2", "--artifact-dir", str(tmp_path), *flags)
    # why: these flags were dropped without a word (exit 0), as if the evaluation they describe had been compared
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --compare-only generates nothing, so ")
    assert named in err
    assert not list((tmp_path / "eval").glob("compare-*"))  # nothing written


def test_null_figures_are_fine(tmp_path):
    evaluation(tmp_path / "eval" / "a", answer_accuracy=None)
    assert load_metrics("a", tmp_path)[1]["answer_accuracy"] is None
