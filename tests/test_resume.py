"""A long run is never lost: complete checkpoints only, resume after a crash, Ctrl-C saves, runs stay apart.

The fast tests build checkpoint folders by hand; the slow ones train the tiny model on CPU through the CLI in
subprocesses, SIGKILL one after its first complete checkpoint, resume it, and Ctrl-C another (~2-3 minutes).

    .venv/bin/pytest tests/test_resume.py            # add -m "not slow" for the folder logic only
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from checkpoint_files import find_resume_checkpoint, make_checkpoint

from sarashina_grpo.checkpoints import COMPLETE_MARKER, complete_checkpoints, set_aside_newer
from sarashina_grpo.cli import parse_args
from sarashina_grpo.commands import train_settings
from sarashina_grpo.config import article_settings
from sarashina_grpo.pipeline import check_resume_settings, new_run_paths, prepare, write_run_info
from sarashina_grpo.project import SettingsError

# --- checkpoint folders, built by hand (tests/checkpoint_files.py) ---------------------------------------------


def test_only_fully_written_checkpoints_count(tmp_path):
    good = make_checkpoint(tmp_path, 2)
    make_checkpoint(tmp_path, 3, marker=False)  # killed while saving: no marker yet
    make_checkpoint(tmp_path, 4, state=False)  # marker but trainer state gone
    make_checkpoint(tmp_path, 5, weights=False)  # marker but no weights
    (tmp_path / "checkpoint-6.set-aside-20250101-000000").mkdir()  # moved aside by an earlier resume
    assert complete_checkpoints(tmp_path) == [good]


def test_resume_picks_the_last_complete_checkpoint_not_a_newer_half_written_one(tmp_path):
    run = tmp_path / "outputs" / "r"
    make_checkpoint(run, 2)
    make_checkpoint(run, 10)
    make_checkpoint(run, 12, marker=False)
    run_dir, checkpoint = find_resume_checkpoint(tmp_path, "r")
    assert (run_dir, checkpoint) == (run, run / "checkpoint-10")


def test_steps_are_compared_as_numbers_not_text(tmp_path):
    run = tmp_path / "outputs" / "r"
    make_checkpoint(run, 9)
    make_checkpoint(run, 10)
    assert find_resume_checkpoint(tmp_path, "r")[1].name == "checkpoint-10"  # "checkpoint-9" > "checkpoint-10"


def test_naming_a_half_written_checkpoint_is_an_error_that_says_what_to_do(tmp_path):
    folder = make_checkpoint(tmp_path / "outputs" / "r", 3, marker=False)
    with pytest.raises(SettingsError, match=r"not a complete checkpoint .*\(--resume r\)"):
        find_resume_checkpoint(tmp_path, str(folder))


def test_latest_is_the_run_whose_last_complete_checkpoint_is_newest(tmp_path):
    older = make_checkpoint(tmp_path / "outputs" / "b", 50)
    newer = make_checkpoint(tmp_path / "outputs" / "a", 1)
    os.utime(older / COMPLETE_MARKER, (1, 1))
    make_checkpoint(tmp_path / "outputs" / "c", 99, marker=False)  # newest folder, but cut off
    assert find_resume_checkpoint(tmp_path, "latest")[1] == newer


def test_unknown_run_name_lists_the_resumable_runs(tmp_path):
    make_checkpoint(tmp_path / "outputs" / "good-run", 1)
    with pytest.raises(SettingsError, match=r"no such run or folder.*\['good-run'\]"):
        find_resume_checkpoint(tmp_path, "typo-run")


def test_later_checkpoint_folders_are_moved_aside_never_deleted(tmp_path):
    keep = make_checkpoint(tmp_path, 2)
    make_checkpoint(tmp_path, 3, marker=False)
    set_aside_newer(tmp_path, keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "set-aside"]
    (aside,) = (tmp_path / "set-aside").iterdir()  # out of reach of transformers' checkpoint rotation
    assert aside.name.startswith("checkpoint-3.set-aside-") and (aside / "adapter_model.safetensors").exists()


def test_two_runs_with_the_same_name_get_different_folders(tmp_path):
    first, second = new_run_paths(tmp_path, "exp"), new_run_paths(tmp_path, "exp")
    assert (first.name, second.name) == ("exp", "exp-2")
    assert first.output_dir.is_dir() and second.output_dir.is_dir() and first.log_dir != second.log_dir


def test_timestamped_names_skip_a_log_folder_already_taken(tmp_path):
    (tmp_path / "logs" / "exp").mkdir(parents=True)  # e.g. a run whose outputs were cleaned up
    assert new_run_paths(tmp_path, "exp").name == "exp-2"


def test_resuming_with_settings_that_change_the_maths_is_refused(tmp_path):
    paths = new_run_paths(tmp_path, "r")
    write_run_info(paths, article_settings(model_name="tiny", num_generations=2, per_device_train_batch_size=2))
    changed = article_settings(model_name="tiny", num_generations=4, per_device_train_batch_size=4)
    with pytest.raises(SettingsError, match="num_generations: run used 2, now 4"):
        check_resume_settings(changed, paths.output_dir)


def test_a_changed_setting_is_reported_before_the_checks_it_makes_fail(tmp_path, monkeypatch):
    from sarashina_grpo import project
    from sarashina_grpo.preflight import check_run

    monkeypatch.setattr(project, "cuda_available", lambda: False)
    paths = new_run_paths(tmp_path, "r")
    write_run_info(paths, article_settings(model_name="tiny", load_in_4bit=False))
    changed = article_settings(model_name="sbintuitions/sarashina2.2-3b-instruct-v0.1", load_in_4bit=False)
    # why: the device check would refuse the 3B model on a CPU, hiding that the recipe changed the run's model
    with pytest.raises(SettingsError, match="model_name: run used 'tiny'"):
        check_run(changed, artifact_dir=tmp_path, run_dir=paths.output_dir)


def test_resuming_with_another_system_prompt_is_refused(tmp_path):
    paths = new_run_paths(tmp_path, "r")
    write_run_info(paths, article_settings(model_name="tiny"))
    with pytest.raises(SettingsError, match="system_prompt: run used"):  # why: the prompt shapes every completion
        check_resume_settings(article_settings(model_name="tiny", system_prompt="短く答えて"), paths.output_dir)


def test_resuming_with_more_steps_is_allowed_with_a_warning(tmp_path, caplog):
    paths = new_run_paths(tmp_path, "r")
    write_run_info(paths, article_settings(model_name="tiny", max_steps=10))
    with caplog.at_level(logging.WARNING):
        check_resume_settings(article_settings(model_name="tiny", max_steps=20), paths.output_dir)
    assert "max_steps = 20 (the run started with 10)" in caplog.text


def test_a_run_started_with_the_default_rollout_resumes_under_auto_with_a_warning(tmp_path, caplog):
    paths = new_run_paths(tmp_path, "r")
    write_run_info(paths, article_settings(model_name="tiny", rollout="default"))  # the default before 'auto'
    with caplog.at_level(logging.WARNING):
        check_resume_settings(article_settings(model_name="tiny"), paths.output_dir)
    # why: the rollout is the engine, not the maths (same sampling and loss): a notebook resume must not stop on it
    assert "rollout = 'auto' (the run started with 'default')" in caplog.text


def test_resuming_with_the_rollout_that_auto_ran_says_so(tmp_path, caplog):
    from sarashina_grpo.pipeline import record_rollout

    paths = new_run_paths(tmp_path, "r")
    write_run_info(paths, article_settings(model_name="tiny"))  # asked 'auto',
    record_rollout(paths.output_dir, "default", 0)  # which resolved to the default rollout (a CPU)
    with caplog.at_level(logging.WARNING):
        check_resume_settings(article_settings(model_name="tiny", rollout="default"), paths.output_dir)
    # why: "started with 'auto'" alone reads as a change of engine where there is none
    assert "rollout = 'default' (the run started with 'auto', which ran 'default')" in caplog.text


def test_cli_resume_keeps_the_runs_settings_except_flags_given_again(tmp_path):
    paths = new_run_paths(tmp_path, "r")
    write_run_info(paths, article_settings(model_name="tiny", max_steps=10, num_generations=2,
                                           per_device_train_batch_size=2, load_in_4bit=False))
    make_checkpoint(paths.output_dir, 5)
    args = parse_args(["train", "--artifact-dir", str(tmp_path), "--resume", "r", "--max-steps", "20", "--no-4bit"])
    settings, given = train_settings(args)
    run = prepare(settings, artifact_dir=tmp_path, resume="r", given=given)
    settings = run.settings
    # why: a resumed run keeps its own settings (num_generations 2, not the default 6) except the flags given now
    assert (settings.model_name, settings.max_steps, settings.num_generations) == ("tiny", 20, 2)
    assert run.checkpoint == paths.output_dir / "checkpoint-5"



def test_a_bad_value_edited_into_run_json_names_run_json_not_only_the_flag(tmp_path):
    import json

    paths = new_run_paths(tmp_path, "r")
    write_run_info(paths, article_settings(model_name="tiny", load_in_4bit=False))
    info_file = paths.output_dir / "run.json"
    info = json.loads(info_file.read_text())
    info["settings"]["learning_rate"] = "fast"
    info_file.write_text(json.dumps(info))
    make_checkpoint(paths.output_dir, 5)
    settings, given = train_settings(parse_args(["train", "--artifact-dir", str(tmp_path), "--resume", "r"]))
    with pytest.raises(SettingsError) as error:
        prepare(settings, artifact_dir=tmp_path, resume="r", given=given)
    # why: the flag alone sent users looking for a --learning-rate they never gave
    assert str(error.value).startswith(f"{info_file}: Settings.learning_rate (CLI --learning-rate) must be a")


def test_a_run_json_saved_with_a_bom_resumes_and_one_that_is_a_folder_is_named(tmp_path):
    from sarashina_grpo.preflight import read_run_info

    paths = new_run_paths(tmp_path, "r")
    write_run_info(paths, article_settings(model_name="tiny", load_in_4bit=False))
    info_file = paths.output_dir / "run.json"
    # why: Windows Notepad saves UTF-8 with a BOM; it was called damaged, while recipes and prompt files take one
    info_file.write_bytes(b"\xef\xbb\xbf" + info_file.read_bytes())
    assert read_run_info(paths.output_dir)["settings"]["model_name"] == "tiny"
    info_file.unlink()
    info_file.mkdir()
    with pytest.raises(SettingsError, match="run.json is a folder, not the run's settings file; move it away"):
        read_run_info(paths.output_dir)

# --- real runs of the tiny model on CPU -----------------------------------------------------------------------

MAX_STEPS = 8
TRAIN = ["--model", "tiny", "--no-4bit", "--max-steps", str(MAX_STEPS), "--save-steps", "1",
         "--max-completion-length", "16", "--num-generations", "2", "--batch-size", "2"]


def train_flags(**values) -> list[str]:
    """TRAIN with some flags' values changed (``max_steps="200"``): a flag may be given only once."""
    flags = list(TRAIN)
    for name, value in values.items():
        flags[flags.index("--" + name.replace("_", "-")) + 1] = value
    return flags


def start_cli(*args, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen([sys.executable, "-m", "sarashina_grpo.cli", "train", *map(str, args)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def wait_for(condition, process: subprocess.Popen, log: Path, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := condition()):
            return found
        if process.poll() is not None:
            pytest.fail(f"exited ({process.returncode}) too early:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"timed out:\n{log.read_text()[-3000:]}")


def finish(process: subprocess.Popen, log: Path, timeout: float = 240) -> tuple[int, str]:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"did not finish:\n{log.read_text()[-3000:]}")
    return process.returncode, log.read_text()


def snapshot(folder: Path) -> dict[str, tuple[float, str]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def state_of(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def expected_learning_rate(step: int, base: float = 5e-6, warmup_ratio: float = 0.1) -> float:
    """The cosine-with-warmup rate TRL logs at ``step`` (the rate the step trained with)."""
    warmup, t = math.ceil(MAX_STEPS * warmup_ratio), step - 1
    if t < warmup:
        return base * t / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (MAX_STEPS - warmup)))


OPTIMIZER_MARK = 1000


def mark_optimizer_steps(checkpoint: Path, offset: int) -> None:
    """Add ``offset`` to AdamW's own step counters in the checkpoint, so the final counters show where the
    optimizer state came from: this checkpoint (offset + MAX_STEPS), a fresh optimizer (MAX_STEPS - k), or a
    run restarted from scratch (MAX_STEPS)."""
    import torch

    path = checkpoint / "optimizer.pt"
    state = torch.load(path, weights_only=False)
    for param_state in state["state"].values():
        param_state["step"] = param_state["step"] + offset
    torch.save(state, path)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Run 'r' is SIGKILLed right after its first complete checkpoint, given two bogus newer checkpoint folders,
    then resumed with a bare --resume (its settings come from run.json)."""
    artifact = tmp_path_factory.mktemp("artifact")
    run = artifact / "outputs" / "r"
    log = artifact / "first.log"
    first = start_cli(*TRAIN, "--artifact-dir", artifact, "--run-name", "r", log=log)
    wait_for(lambda: complete_checkpoints(run), first, log)
    first.send_signal(signal.SIGKILL)
    first.wait(60)
    assert not (run / f"checkpoint-{MAX_STEPS}").exists(), "the run finished before it could be killed"
    killed_at = max(int(p.name.split("-")[1]) for p in complete_checkpoints(run))
    mark_optimizer_steps(run / f"checkpoint-{killed_at}", OPTIMIZER_MARK)
    history = state_of(run / f"checkpoint-{killed_at}")["log_history"]
    before = {p.name: snapshot(p) for p in complete_checkpoints(run)}
    bogus_steps = (MAX_STEPS + 40, MAX_STEPS + 50)
    make_checkpoint(run, bogus_steps[0], marker=False)  # half-written: killed while saving
    make_checkpoint(run, bogus_steps[1], state=False)  # marker but files missing
    damaged = run / f"checkpoint-{MAX_STEPS + 60}"  # a real, complete checkpoint whose optimizer file was overwritten
    shutil.copytree(run / f"checkpoint-{killed_at}", damaged)
    (damaged / "optimizer.pt").write_bytes(os.urandom(4096))
    log = artifact / "resume.log"
    code, output = finish(start_cli("--no-4bit", "--artifact-dir", artifact, "--resume", log=log), log)
    assert code == 0, output[-3000:]
    return dict(artifact=artifact, run=run, killed_at=killed_at, before=before, output=output, bogus=bogus_steps,
                history=history, damaged=damaged)


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_complete_checkpoint_and_reaches_the_planned_steps(killed_and_resumed):
    run, k = killed_and_resumed["run"], killed_and_resumed["killed_at"]
    assert f"Resuming run r from {run / f'checkpoint-{k}'}" in killed_and_resumed["output"]
    assert f"Finished at step {MAX_STEPS}" in killed_and_resumed["output"]
    # why: the last line named the run's folder but neither the checkpoint to try nor how
    assert re.search(rf"Try it: (uv run )?sarashina-grpo infer --model {re.escape(str(run))}/checkpoint-{MAX_STEPS} ",
                     killed_and_resumed["output"])
    assert state_of(run / f"checkpoint-{MAX_STEPS}")["global_step"] == MAX_STEPS
    assert [p.name for p in (killed_and_resumed["artifact"] / "outputs").iterdir()] == ["r"]  # no new run


@pytest.mark.slow
def test_resume_continues_the_step_count_without_gaps_or_repeats(killed_and_resumed):
    history = state_of(killed_and_resumed["run"] / f"checkpoint-{MAX_STEPS}")["log_history"]
    assert [h["step"] for h in history if "loss" in h] == list(range(1, MAX_STEPS + 1))
    # The steps before the crash are the killed process's own records, carried over, not trained again.
    assert history[: len(killed_and_resumed["history"])] == killed_and_resumed["history"]


@pytest.mark.slow
def test_resume_restores_the_learning_rate_schedule(killed_and_resumed):
    # A fresh scheduler would restart the warmup at the resumed step; the logged rates follow one schedule.
    history = state_of(killed_and_resumed["run"] / f"checkpoint-{MAX_STEPS}")["log_history"]
    logged = [h["learning_rate"] for h in history if "loss" in h]
    assert logged == pytest.approx([expected_learning_rate(s) for s in range(1, MAX_STEPS + 1)], abs=1e-12)


@pytest.mark.slow
def test_resume_restores_optimizer_and_scheduler_state(killed_and_resumed):
    import torch

    final = killed_and_resumed["run"] / f"checkpoint-{MAX_STEPS}"
    optimizer = torch.load(final / "optimizer.pt", weights_only=False)
    scheduler = torch.load(final / "scheduler.pt", weights_only=False)
    assert {float(s["step"]) for s in optimizer["state"].values()} == {float(OPTIMIZER_MARK + MAX_STEPS)}
    assert scheduler["last_epoch"] == MAX_STEPS  # a fresh scheduler would end at MAX_STEPS - k


@pytest.mark.slow
def test_resume_never_rewrites_the_checkpoints_it_continues_from(killed_and_resumed):
    run = killed_and_resumed["run"]
    assert {name: snapshot(run / name) for name in killed_and_resumed["before"]} == killed_and_resumed["before"]


@pytest.mark.slow
def test_half_written_newer_checkpoints_were_never_chosen_and_are_kept_aside(killed_and_resumed):
    run = killed_and_resumed["run"]
    for step in killed_and_resumed["bogus"]:
        assert not (run / f"checkpoint-{step}").exists()
        assert len(list(run.glob(f"set-aside/checkpoint-{step}.set-aside-*"))) == 1  # moved, not deleted


@pytest.mark.slow
def test_a_damaged_newer_checkpoint_is_set_aside_with_a_warning_and_the_real_intact_one_resumed(killed_and_resumed):
    damaged, output = killed_and_resumed["damaged"], killed_and_resumed["output"]
    assert f"Set {damaged.name} aside as set-aside/{damaged.name}.set-aside-" in output
    assert "it is damaged (optimizer.pt: not a readable PyTorch file (cut off or overwritten))" in output
    assert "weights_only=False" not in output  # torch's advice to run the file's code is never passed on
    assert not damaged.exists() and len(list(damaged.parent.glob(f"set-aside/{damaged.name}.set-aside-*"))) == 1


@pytest.fixture(scope="module")
def interrupted(killed_and_resumed):
    """A second run with the same --run-name in the same artifact folder, stopped with Ctrl-C (SIGINT)."""
    artifact = killed_and_resumed["artifact"]
    first_run = {"outputs": snapshot(artifact / "outputs" / "r"), "logs": snapshot(artifact / "logs" / "r")}
    log = artifact / "interrupted.log"
    process = start_cli(*train_flags(max_steps="200", save_steps="1000"), "--artifact-dir", artifact,
                        "--run-name", "r", log=log)
    wait_for(lambda: re.search(r"step \d+: reward", log.read_text()), process, log)  # training has started
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)  # why: `uv run` forwards the terminal's Ctrl-C, so it arrives twice
    code, output = finish(process, log)
    return dict(artifact=artifact, code=code, output=output, first_run=first_run)


@pytest.mark.slow
def test_ctrl_c_saves_a_complete_checkpoint_then_exits_with_a_clean_message(interrupted):
    assert interrupted["code"] == 130 and "Traceback" not in interrupted["output"]
    last_line = interrupted["output"].strip().splitlines()[-1]
    assert last_line.startswith("Stopped by SIGINT at step ") and "--resume r-2" in last_line
    saved = complete_checkpoints(interrupted["artifact"] / "outputs" / "r-2")
    assert len(saved) == 1 and f"saved {saved[0]}." in last_line  # a save the regular schedule would not make


@pytest.mark.slow
def test_a_second_run_never_overwrites_or_deletes_the_first_runs_files(interrupted):
    artifact = interrupted["artifact"]
    assert snapshot(artifact / "outputs" / "r") == interrupted["first_run"]["outputs"]
    assert snapshot(artifact / "logs" / "r") == interrupted["first_run"]["logs"]
    assert any((artifact / "logs" / "r-2").iterdir())  # its own TensorBoard folder


@pytest.mark.slow
def test_resuming_the_finished_run_again_trains_nothing(killed_and_resumed):
    artifact, run = killed_and_resumed["artifact"], killed_and_resumed["run"]
    log = artifact / "finished.log"
    code, output = finish(start_cli("--no-4bit", "--artifact-dir", artifact, "--resume", "r", log=log), log)
    assert code == 0 and f"Run r is finished: checkpoint-{MAX_STEPS} is step {MAX_STEPS} of the {MAX_STEPS}" in output
    assert not (run / f"checkpoint-{MAX_STEPS + 1}").exists()  # was: trained step 9, then 10 the next time


@pytest.fixture(scope="module")
def second_resume_while_training(interrupted):
    """``--resume r-2`` trains; meanwhile a second ``--resume r-2`` and one with ``--max-steps 1`` are started."""
    artifact = interrupted["artifact"]
    log = artifact / "resume-r-2.log"
    # A long plan: the second process imports Unsloth before it meets the lock, and the first must still be training.
    first = start_cli("--no-4bit", "--artifact-dir", artifact, "--resume", "r-2", "--max-steps", "5000", log=log)
    wait_for(lambda: re.search(r"step \d+: reward", log.read_text()), first, log)  # training, holding the lock
    second_log = artifact / "second.log"
    second = finish(start_cli("--no-4bit", "--artifact-dir", artifact, "--resume", "r-2", log=second_log),
                    second_log)
    first.send_signal(signal.SIGINT)
    first_result = finish(first, log)
    lower_log = artifact / "lower.log"
    lower = finish(start_cli("--no-4bit", "--artifact-dir", artifact, "--resume", "r-2", "--max-steps", "1",
                             log=lower_log), lower_log)
    return dict(artifact=artifact, first=first_result, second=second, lower=lower)


@pytest.mark.slow
def test_a_second_process_cannot_resume_a_run_being_trained(second_resume_while_training):
    code, output = second_resume_while_training["second"]
    assert code == 2 and output.strip().splitlines()[-1].startswith(
        "error: Run r-2 is being trained by another process (pid ")
    assert second_resume_while_training["first"][0] == 130  # the first went on until stopped, undisturbed


@pytest.mark.slow
def test_max_steps_below_the_reached_step_is_refused_on_a_real_run(second_resume_while_training):
    code, output = second_resume_while_training["lower"]
    assert code == 2 and "error: --max-steps 1 (Settings.max_steps) is at or below step " in output
