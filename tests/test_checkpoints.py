"""Checkpoints are verified, not just present: a damaged newest one is set aside and the intact one before it used.

Folders are written by hand (tests/checkpoint_files.py), so every case runs in milliseconds without a model.

    .venv/bin/pytest tests/test_checkpoints.py
"""

from __future__ import annotations

import logging
import os
import random

import pytest
from checkpoint_files import COMPLETE_MARKER, find_resume_checkpoint, make_checkpoint

from sarashina_grpo import checkpoints
from sarashina_grpo.checkpoints import (
    check_loadable,
    latest_intact,
    list_checkpoints,
    mark_complete,
    newest_complete_in,
    step_of,
    torch_state_problem,
    verify,
)
from sarashina_grpo.project import SettingsError


def test_the_marker_name_is_the_one_old_runs_wrote():
    assert checkpoints.COMPLETE_MARKER == COMPLETE_MARKER  # renaming it would orphan every existing run


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("checkpoint-20", 20),
        ("checkpoint-007", 7),
        ("checkpoint-20.set-aside-20261125-120000", None),  # moved away by a resume: not step 20 (was '20.set')
        ("checkpoint-", None),
        ("checkpoint-x", None),
        ("checkpoint-20-old", None),
        ("20", None),
    ],
)
def test_only_checkpoint_digits_names_are_checkpoints(name, step):
    assert step_of(name) == step


def test_listing_is_by_step_and_skips_set_aside_folders(tmp_path):
    for step in (10, 9, 100):
        make_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-200.set-aside-20261125-120000").mkdir()
    (tmp_path / "checkpoint-300").write_text("")  # a file with a checkpoint's name is no checkpoint
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-9", "checkpoint-10", "checkpoint-100"]


def test_a_set_aside_folder_with_a_marker_is_never_the_newest_complete(tmp_path):
    keep = make_checkpoint(tmp_path, 10)
    (make_checkpoint(tmp_path, 20)).rename(tmp_path / "checkpoint-20.set-aside-20261125-120000")
    assert newest_complete_in(tmp_path) == keep


def test_a_whole_checkpoint_is_intact(tmp_path):
    assert verify(make_checkpoint(tmp_path, 5, trainer_files=True)) == []


def cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "adapter cut in half": ("adapter_model.safetensors", cut_in_half),
    "trainer_state.json cut off": ("trainer_state.json", cut_in_half),
    "optimizer.pt overwritten": ("optimizer.pt", lambda p: p.write_bytes(random.Random(0).randbytes(4096))),
    "scheduler.pt emptied": ("scheduler.pt", lambda p: p.write_bytes(b"")),
    "rng_state.pth cut off": ("rng_state.pth", cut_in_half),
    "adapter_config.json overwritten": ("adapter_config.json", lambda p: p.write_bytes(b"\x00" * 64)),
    "adapter header overwritten": ("adapter_model.safetensors", lambda p: p.write_bytes(b"\xff" * 64)),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_intact_one_before_it_resumed(tmp_path, caplog, case):
    file, damage = DAMAGE[case]
    run = tmp_path / "outputs" / "r"
    intact = make_checkpoint(run, 10, trainer_files=True)
    damage(make_checkpoint(run, 20, trainer_files=True) / file)
    with caplog.at_level(logging.WARNING):
        run_dir, checkpoint = find_resume_checkpoint(tmp_path, "r")
    assert (run_dir, checkpoint) == (run, intact)
    set_aside = list(run.glob("set-aside/checkpoint-20.set-aside-*"))
    assert len(set_aside) == 1 and (set_aside[0] / file).exists()  # moved, never deleted
    assert "Set checkpoint-20 aside" in caplog.text and f"{file}: " in caplog.text  # names it and the problem
    assert "weights_only=False" not in caplog.text  # never advise loading an untrusted pickle


def test_any_garbage_in_a_torch_state_file_is_reported_as_damage(tmp_path):
    path = tmp_path / "optimizer.pt"
    for seed in range(300):  # why: random bytes raise many kinds of errors inside torch.load, not only RuntimeError
        path.write_bytes(random.Random(seed).randbytes(random.Random(seed).randint(1, 4096)))
        assert torch_state_problem(path), seed


def test_latest_also_skips_a_damaged_newest_checkpoint(tmp_path):
    run = tmp_path / "outputs" / "r"
    intact = make_checkpoint(run, 1)
    cut_in_half(make_checkpoint(run, 2) / "adapter_model.safetensors")
    assert find_resume_checkpoint(tmp_path, "latest") == (run, intact)


def test_no_intact_checkpoint_is_one_error_and_nothing_is_deleted(tmp_path):
    run = tmp_path / "outputs" / "r"
    for step in (1, 2):
        cut_in_half(make_checkpoint(run, step) / "adapter_model.safetensors")
    with pytest.raises(SettingsError) as info:
        find_resume_checkpoint(tmp_path, "r")
    message = str(info.value)
    assert message.startswith(f"Nothing intact to resume in {run}") and "checkpoint-1, checkpoint-2" in message
    assert "\n" not in message and len(list((run / "set-aside").iterdir())) == 2  # moved, not deleted


def test_naming_a_damaged_checkpoint_says_what_is_wrong_and_leaves_it_in_place(tmp_path):
    folder = make_checkpoint(tmp_path / "outputs" / "r", 3, trainer_files=True)
    (folder / "optimizer.pt").write_bytes(os.urandom(1000))
    with pytest.raises(SettingsError, match=r"checkpoint-3 is damaged \(optimizer.pt: .*\(--resume r\)"):
        find_resume_checkpoint(tmp_path, str(folder))
    assert folder.is_dir()


def test_only_set_aside_folders_leave_nothing_to_resume(tmp_path):
    run = tmp_path / "outputs" / "r"
    make_checkpoint(run, 20).rename(run / "checkpoint-20.set-aside-20261125-120000")
    with pytest.raises(SettingsError, match="holds no complete checkpoint-N folder"):
        find_resume_checkpoint(tmp_path, "r")


def test_a_foreign_pickle_is_refused_without_running_it(tmp_path):
    import torch

    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(ran), "w"))  # what a malicious or foreign file could do when unpickled

    folder = make_checkpoint(tmp_path, 4, trainer_files=True)
    torch.save({"state": Payload()}, folder / "optimizer.pt")
    problems = verify(folder)
    assert problems and problems[0].startswith("optimizer.pt: holds objects other than tensors and numbers")
    assert not ran.exists()


# --- non-finite weights ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_adapter_weights_are_never_marked_complete(tmp_path, caplog, value):
    folder = make_checkpoint(tmp_path, 7, marker=False, value=value)
    assert mark_complete(folder, 7) is False
    assert not (folder / COMPLETE_MARKER).exists()
    assert "non-finite (NaN or inf) weights in adapter_model.safetensors" in caplog.text


def test_finite_adapter_weights_are_marked_complete(tmp_path):
    folder = make_checkpoint(tmp_path, 7, marker=False)
    assert mark_complete(folder, 7) is True and (folder / COMPLETE_MARKER).read_text() == "7\n"


def test_a_nan_checkpoint_marked_by_an_older_version_is_not_resumed(tmp_path):
    run = tmp_path / "outputs" / "r"
    good = make_checkpoint(run, 5)
    make_checkpoint(run, 6, value=float("nan"))  # marked complete before the finite check existed
    assert latest_intact(run) == good


# --- infer / eval -----------------------------------------------------------------------------------------------


def test_loading_a_damaged_checkpoint_names_the_problem_and_an_earlier_one(tmp_path):
    earlier = make_checkpoint(tmp_path, 5)
    cut_in_half(make_checkpoint(tmp_path, 10) / "adapter_model.safetensors")
    with pytest.raises(SettingsError) as info:
        check_loadable(tmp_path / "checkpoint-10")
    assert "checkpoint-10 is damaged (adapter_model.safetensors: cut off" in str(info.value)
    assert f"e.g. {earlier}" in str(info.value)


def test_loading_ignores_a_damaged_optimizer_it_does_not_need(tmp_path):
    folder = make_checkpoint(tmp_path, 5, trainer_files=True)
    (folder / "optimizer.pt").write_bytes(b"garbage")
    check_loadable(folder)


def test_a_folder_another_rank_set_aside_first_is_left_to_it(tmp_path):
    from sarashina_grpo.checkpoints import set_aside

    folder = make_checkpoint(tmp_path, 3)
    folder.rename(tmp_path / "checkpoint-3.set-aside-20261125-120000")  # rank 0 of the same launch was quicker
    assert set_aside(folder, "damaged") is None
