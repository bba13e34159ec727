"""A resume restores every piece of training state, or refuses in one line before the model loads.

A checkpoint without ``optimizer.pt`` or ``scheduler.pt`` (a ``--save-only-model`` run, or deleted) would resume
with a fresh optimizer and a restarted warm-up: refused unless ``--resume-weights-only``. State files that load but
cannot be the Trainer's (``trainer_state.json`` a list, ``global_step`` text, ``optimizer.pt`` holding ``{}``, an
adapter of another rank) count as damage: set aside when newest, an error when named. Checkpoints are built by hand
(tests/checkpoint_files.py); nothing loads a model.

    .venv/bin/pytest tests/test_resume_state.py
"""

from __future__ import annotations

import io
import json
import logging
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from checkpoint_files import make_checkpoint
from safetensors.torch import save_file

from sarashina_grpo.checkpoints import check_resume_state, missing_resume_state, verify
from sarashina_grpo.cli import main
from sarashina_grpo.config import article_settings
from sarashina_grpo.pipeline import new_run_paths, prepare, write_run_info
from sarashina_grpo.project import SettingsError
from sarashina_grpo.runs import checkpoint_progress

RUN_SETTINGS = dict(model_name="tiny", load_in_4bit=False, num_generations=2, per_device_train_batch_size=2,
                    max_completion_length=16, max_steps=10)


@pytest.fixture
def run_dir(tmp_path, write_csv) -> Path:
    """artifact ``tmp_path`` with run ``r``: run.json and complete checkpoints 2 and 3 (all state files)."""
    data = write_csv("prompt,lang\nこんにちは,ja\n週末は何をしよう？,ja\n")
    paths = new_run_paths(tmp_path, "r")
    write_run_info(paths, article_settings(**RUN_SETTINGS, data_path=str(data)))
    for step in (2, 3):
        make_checkpoint(paths.output_dir, step)
    return paths.output_dir


def resume(artifact: Path, *flags, run: str = "r") -> tuple[int, str]:
    """Exit code and stderr of ``train --resume r`` (these cases stop before a model loads)."""
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(["train", "--artifact-dir", str(artifact), "--resume", run, *flags])
    return code, err.getvalue()


def error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# --- optimizer and scheduler state -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("deleted", "named", "not_named"),
    [
        (["optimizer.pt"], "optimizer.pt (the optimizer's moments and step count)", "scheduler.pt"),
        (["scheduler.pt"], "scheduler.pt (the learning-rate schedule, whose warm-up would restart)", "optimizer.pt"),
        (["optimizer.pt", "scheduler.pt"], "no optimizer.pt (the optimizer's moments and step count) and no "
                                           "scheduler.pt", None),  # a --save-only-model checkpoint
    ],
)
def test_a_checkpoint_without_its_optimizer_or_scheduler_is_refused(run_dir, deleted, named, not_named):
    for name in deleted:
        (run_dir / "checkpoint-3" / name).unlink()
    code, err = resume(run_dir.parent.parent)
    line = error_line(err)
    assert code == 2 and named in line and "--resume-weights-only" in line
    assert not_named is None or not_named not in line
    assert "checkpoint-2, which has them" in line  # the earlier checkpoint that would resume fully
    assert (run_dir / "checkpoint-3").is_dir()  # nothing set aside or lost


def test_the_refusal_names_no_earlier_checkpoint_when_none_has_the_state(run_dir):
    for step in (2, 3):
        (run_dir / f"checkpoint-{step}" / "optimizer.pt").unlink()
    line = error_line(resume(run_dir.parent.parent)[1])
    assert "which has them" not in line and "start a new run" in line


def test_resume_weights_only_goes_on_knowingly(run_dir, caplog):
    (run_dir / "checkpoint-3" / "optimizer.pt").unlink()
    with caplog.at_level(logging.WARNING):
        run = prepare(article_settings(), artifact_dir=run_dir.parent.parent, resume="r", given=set(),
                      resume_weights_only=True)
    run.lock.release()
    assert run.checkpoint == run_dir / "checkpoint-3"
    assert "without optimizer.pt: a fresh optimizer and learning-rate schedule" in caplog.text


def test_the_weights_only_flag_changes_nothing_for_a_full_checkpoint(run_dir):
    check_resume_state(run_dir / "checkpoint-3", weights_only=True)
    check_resume_state(run_dir / "checkpoint-3")
    assert missing_resume_state(run_dir / "checkpoint-3") == []


def test_check_resume_state_is_a_settings_error(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 1, trainer_files=False)
    with pytest.raises(SettingsError, match="has no optimizer.pt"):
        check_resume_state(checkpoint)


# --- damaged state files -----------------------------------------------------------------------------------------

ADAPTER_EDITS = {"rank is text": {"r": "32"}, "alpha is negative": {"lora_alpha": -1e6},
                 "targets are numbers": {"target_modules": [1, 2]}}


def damage(checkpoint: Path, kind: str) -> None:
    if kind == "state is a list":
        (checkpoint / "trainer_state.json").write_text("[]")
    elif kind == "global_step is text":
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": "three", "log_history": []}))
    elif kind == "negative max_steps":
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 3, "max_steps": -1}))
    elif kind == "log_history is a dict":
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 3, "log_history": {}}))
    elif kind == "optimizer is {}":
        torch.save({}, checkpoint / "optimizer.pt")
    elif kind == "optimizer is a list":
        torch.save([1, 2], checkpoint / "optimizer.pt")
    elif kind == "scheduler is {}":
        torch.save({}, checkpoint / "scheduler.pt")
    elif kind == "adapter config is a list":
        (checkpoint / "adapter_config.json").write_text("[]")
    elif kind == "base model is a number":
        config = json.loads((checkpoint / "adapter_config.json").read_text())
        (checkpoint / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": 5}))
    elif kind in ADAPTER_EDITS:  # edited by hand: infer and eval failed only after the base model loaded
        config = json.loads((checkpoint / "adapter_config.json").read_text())
        (checkpoint / "adapter_config.json").write_text(json.dumps({**config, **ADAPTER_EDITS[kind]}))
    elif kind == "adapter of another rank":
        save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 8),
                   "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(8, 8)},
                  str(checkpoint / "adapter_model.safetensors"))


DAMAGE = {
    "state is a list": "trainer_state.json: holds a JSON list, not the Trainer's state",
    "global_step is text": "trainer_state.json: global_step is 'three', not a whole number",
    "negative max_steps": "trainer_state.json: max_steps is -1, not a whole number",
    "log_history is a dict": "trainer_state.json: log_history is not a list",
    "optimizer is {}": "optimizer.pt: not an optimizer's state",
    "optimizer is a list": "optimizer.pt: not an optimizer's state",
    "scheduler is {}": "scheduler.pt: not a learning-rate scheduler's state",
    "adapter config is a list": "adapter_config.json: holds a JSON list, not PEFT's adapter config",
    "base model is a number": "adapter_config.json: base_model_name_or_path is 5, not a model name or folder",
    "rank is text": "adapter_config.json: r is '32', not a LoRA rank",
    "alpha is negative": "adapter_config.json: lora_alpha is -1000000.0, not a positive number",
    "targets are numbers": "adapter_config.json: target_modules is [1, 2], not module names",
    "adapter of another rank": "adapter_model.safetensors: holds LoRA rank 8 (base_model.model.model.layers.0."
                               "self_attn.q_proj.lora_A.weight) but adapter_config.json says r = 4",
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_state_is_found_by_verify(tmp_path, kind):
    checkpoint = make_checkpoint(tmp_path, 3)
    damage(checkpoint, kind)
    assert any(p.startswith(DAMAGE[kind]) for p in verify(checkpoint)), verify(checkpoint)


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_one_before_used(run_dir, kind, caplog):
    damage(run_dir / "checkpoint-3", kind)
    with caplog.at_level(logging.WARNING):
        run = prepare(article_settings(), artifact_dir=run_dir.parent.parent, resume="r", given=set())
    run.lock.release()
    assert run.checkpoint == run_dir / "checkpoint-2"
    assert not (run_dir / "checkpoint-3").exists() and list(run_dir.glob("set-aside/checkpoint-3.set-aside-*"))
    assert DAMAGE[kind] in caplog.text


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_named_checkpoint_is_one_error_line(run_dir, kind):
    damage(run_dir / "checkpoint-3", kind)
    code, err = resume(run_dir.parent.parent, run=str(run_dir / "checkpoint-3"))
    line = error_line(err)
    assert code == 2 and "checkpoint-3 is damaged" in line and DAMAGE[kind] in line


def test_every_checkpoint_damaged_is_one_error_line(run_dir):
    for step in (2, 3):
        damage(run_dir / f"checkpoint-{step}", "state is a list")
    code, err = resume(run_dir.parent.parent)
    assert code == 2 and "Nothing intact to resume" in error_line(err)


def test_progress_reads_a_state_that_is_not_an_object_without_raising(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 3)
    (checkpoint / "trainer_state.json").write_text("[]")
    assert checkpoint_progress(checkpoint) == (3, None)  # the folder's step; verify reports the damage


def test_the_trainers_own_files_pass(tmp_path):
    # why: the checks must not refuse what transformers writes (tests/checkpoint_files.py mirrors it)
    assert verify(make_checkpoint(tmp_path, 3)) == []


def test_a_resume_without_run_json_is_refused_naming_the_way_on(run_dir):
    # why: the resume fell back to the defaults (the 3B model) and the next error blamed the missing GPU
    (run_dir / "run.json").unlink()
    with pytest.raises(SettingsError, match=r"run.json is missing .* sarashina-grpo train --model .*checkpoint-"):
        prepare(article_settings(model_name="sbintuitions/sarashina2.2-3b-instruct-v0.1", load_in_4bit=True),
                artifact_dir=run_dir.parent.parent, resume="r", given=set())


@pytest.mark.parametrize("elsewhere", ["global_step3", "optimizer_0", "optimizer.bin"])
def test_optimizer_state_kept_by_deepspeed_or_fsdp_counts(tmp_path, elsewhere):
    # why: DeepSpeed saves the optimizer under global_step<N>/, FSDP as optimizer.bin or optimizer_0/
    checkpoint = make_checkpoint(tmp_path, 3)
    (checkpoint / "optimizer.pt").unlink()
    path = checkpoint / elsewhere
    path.mkdir() if "." not in elsewhere else path.write_bytes(b"x")
    assert missing_resume_state(checkpoint) == []
