"""A run keeps its promises: plain names, one training process at a time, the same data, no steps past the plan.

Runs are built by hand (run.json + checkpoint folders, tests/checkpoint_files.py); nothing loads a model, and the
second process holding a lock is a few lines of Python in a subprocess (~2 s).

    .venv/bin/pytest tests/test_runs.py
"""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from checkpoint_files import make_checkpoint

from sarashina_grpo.cli import main
from sarashina_grpo.config import article_settings, load_settings
from sarashina_grpo.pipeline import load_model, new_run_paths, prepare, write_run_info
from sarashina_grpo.project import SettingsError
from sarashina_grpo.runs import LOCK_FILE, check_run_name, lock_run

RUN_SETTINGS = dict(model_name="tiny", load_in_4bit=False, num_generations=2, per_device_train_batch_size=2,
                    max_completion_length=16)


@pytest.fixture
def data(write_csv) -> Path:
    return write_csv("prompt,lang\nこんにちは,ja\n週末は何をしよう？,ja\n")


def resumable_run(artifact: Path, data: Path, *, step: int, planned: int, recorded: int | None = None,
                  name: str = "r", **settings) -> Path:
    """A run that started with max_steps ``recorded`` (default ``planned``) and whose newest checkpoint is
    ``step``, trained towards ``planned`` (what the Trainer writes into trainer_state.json)."""
    paths = new_run_paths(artifact, name)
    write_run_info(paths, article_settings(**{**RUN_SETTINGS, **settings}, data_path=str(data),
                                           max_steps=recorded or planned))
    checkpoint = make_checkpoint(paths.output_dir, step)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": planned,
                                                               "log_history": []}))
    return paths.output_dir


def resume(artifact: Path, *flags) -> tuple[int, str, str]:
    """The CLI's exit code, stdout and last stderr line for ``train --resume …`` (stops before a model loads)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["train", "--artifact-dir", str(artifact), "--resume", *map(str, flags)])
    lines = err.getvalue().strip().splitlines()
    return code, out.getvalue(), lines[-1] if lines else ""


def prepared(artifact: Path, **kwargs):
    """``prepare`` as the CLI calls it for a bare ``--resume r``; the lock it takes is released again."""
    given = set(kwargs.pop("given", ()))
    run = prepare(load_settings(kwargs.pop("settings", {})), artifact_dir=artifact, resume="r", given=given,
                  **kwargs)
    if run.lock is not None:
        run.lock.release()
    return run


# --- where a resume stands ------------------------------------------------------------------------------------


def test_resuming_a_finished_run_says_so_and_trains_nothing(tmp_path, data):
    resumable_run(tmp_path, data, step=5, planned=5)
    code, out, err = resume(tmp_path, "r")
    # why: a restart loop (`until sarashina-grpo train --resume r; do …`) must see the finished run as done
    assert (code, err) == (0, "")
    assert out.startswith("Run r is finished: checkpoint-5 is step 5 of the 5 it planned; nothing to train.")
    assert "--max-steps 10" in out and not (tmp_path / "outputs" / "r" / "checkpoint-6").exists()


def test_a_run_extended_with_max_steps_is_finished_at_its_new_plan(tmp_path, data):
    resumable_run(tmp_path, data, step=10, planned=10, recorded=5)  # started for 5, resumed with --max-steps 10
    run = prepared(tmp_path)  # was: trained step 11, then 12, …
    assert "step 10 of the 10 it planned" in run.finished and run.lock is None


def test_loading_a_finished_run_is_refused_with_its_message(tmp_path, data):
    resumable_run(tmp_path, data, step=5, planned=5)
    with pytest.raises(SettingsError, match="Run r is finished"):  # why: a notebook cell would train nothing
        load_model(prepared(tmp_path))


def test_an_extended_run_cut_off_early_resumes_towards_its_new_plan(tmp_path, data):
    resumable_run(tmp_path, data, step=7, planned=10, recorded=5)
    assert prepared(tmp_path).settings.max_steps == 10  # why: run.json's 5 would stop at once (or overrun)


@pytest.mark.parametrize("max_steps", [2, 3])
def test_max_steps_at_or_below_the_checkpoints_step_is_an_error(tmp_path, data, max_steps):
    resumable_run(tmp_path, data, step=3, planned=5)
    code, _, err = resume(tmp_path, "r", "--max-steps", max_steps)  # was: trained step 4 with --max-steps 2
    assert code == 2 and err == (f"error: --max-steps {max_steps} (Settings.max_steps) is at or below step 3 of "
                                 f"{tmp_path / 'outputs' / 'r' / 'checkpoint-3'}: a resume continues from that "
                                 "step, so nothing would be trained. Give --max-steps above 3 to train further, or "
                                 "resume from an earlier checkpoint-N of r.")


def test_more_max_steps_than_planned_trains_on(tmp_path, data):
    resumable_run(tmp_path, data, step=5, planned=5)
    run = prepared(tmp_path, settings={"max_steps": 8}, given={"max_steps"})
    assert run.settings.max_steps == 8 and run.checkpoint.name == "checkpoint-5"


# --- names ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "why"), [
    ("../../x", "path separator"),  # why: it wrote the run two folders above outputs/
    ("a/b", "path separator"),
    ("a\\b", "path separator"),
    ("..", "relative folder"),
    (".hidden", "starts with '.'"),
    ("", "empty"),
    (" r", "spaces"),
    ("x" * 101, "at most 100"),
    ("a\nb", "control characters"),
])
def test_run_names_are_plain_folder_names(name, why):
    with pytest.raises(SettingsError, match=f"is not a plain folder name \\(.*{why}"):
        check_run_name(name)


def test_a_path_as_run_name_is_refused_before_anything_is_written(tmp_path, data):
    artifact = tmp_path / "deep" / "artifact"
    with pytest.raises(SettingsError, match="not a plain folder name"):
        prepare(article_settings(**RUN_SETTINGS, data_path=str(data)), artifact_dir=artifact, run_name="../../x")
    assert not (tmp_path / "deep" / "x").exists() and not artifact.exists()


def test_plain_names_pass():
    for name in ("exp1", "lr5e-6_seed.1", "日本語の実験"):
        check_run_name(name)


def test_a_run_name_that_disagrees_with_the_resumed_run_is_an_error(tmp_path, data):
    resumable_run(tmp_path, data, step=3, planned=5)
    code, _, err = resume(tmp_path, "r", "--run-name", "other")  # was: silently ignored
    assert code == 2 and err == ("error: --run-name 'other' disagrees with the run being resumed ('r'): a resumed run "
                                 "keeps its name and folders. Drop --run-name, or resume that run with --resume other.")


def test_the_resumed_runs_own_name_is_fine(tmp_path, data):
    resumable_run(tmp_path, data, step=3, planned=5)
    assert prepared(tmp_path, run_name="r").paths.name == "r"


# --- prepare's own arguments: train's run flags, the finetuning notebook's parameters ---------------------------


@pytest.mark.parametrize("arguments, expected", [
    # was: a TypeError from pathlib
    (dict(artifact_dir=5), "--artifact-dir (notebook: ARTIFACT_DIR) must be a folder, got 5 (int); None: the "
                           "project's artifact/."),
    # was: an AttributeError from the name check
    (dict(run_name=5), "--run-name (notebook: RUN_NAME) must be a plain folder name such as 'lr5e-6-seed1', got 5 "
                       "(int); None: a timestamp."),
    # was: "Cannot resume 'True': no such run or folder"
    (dict(resume=True), "--resume (notebook: RESUME) must be 'latest', a run name, or a run or checkpoint folder, "
                        "got True (bool); None: a new run."),
    (dict(allow_data_change="no"), "--allow-data-change (notebook: ALLOW_DATA_CHANGE) must be True or False, got "
                                   "'no' (str)."),
])
def test_a_prepare_argument_of_the_wrong_kind_is_one_error_naming_it(tmp_path, data, arguments, expected):
    artifact = tmp_path / "artifact"
    with pytest.raises(SettingsError) as refused:
        prepare(article_settings(**RUN_SETTINGS, data_path=str(data)), **{"artifact_dir": artifact, **arguments})
    assert str(refused.value) == expected and not artifact.exists()


def test_allow_data_change_given_as_text_is_refused_not_taken_for_true(tmp_path, data):
    run = resumable_run(tmp_path, data, step=3, planned=5)
    recorded = (run / "run.json").read_text()
    data.write_text("prompt,lang\n別の質問,ja\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"ALLOW_DATA_CHANGE\) must be True or False, got 'no'"):
        prepared(tmp_path, allow_data_change="no")  # why: "no" is true: the run resumed over the changed file
    assert (run / "run.json").read_text() == recorded  # its data hash is the one it started with


def test_the_settings_run_name_names_the_run(tmp_path, data):
    # why: the notebook's SETTINGS = {"run_name": "aa"} (or a recipe's) gave a timestamped folder; the CLI's
    # --run-name is that same field and names the folders
    run = prepare(article_settings(**RUN_SETTINGS, data_path=str(data), run_name="aa"), artifact_dir=tmp_path)
    run.lock.release()
    assert run.paths.name == "aa" and run.paths.output_dir == tmp_path / "outputs" / "aa"


def test_a_path_as_the_settings_run_name_is_refused_as_a_run_name_is(tmp_path, data):
    artifact = tmp_path / "deep" / "artifact"
    with pytest.raises(SettingsError, match=r"^Settings.run_name \(CLI --run-name; notebook: SETTINGS or RECIPE\) "
                                            r"'\.\./\.\./x' is not a plain folder name \(it holds a path separator"):
        prepare(article_settings(**RUN_SETTINGS, data_path=str(data), run_name="../../x"), artifact_dir=artifact)
    assert not (tmp_path / "deep" / "x").exists() and not artifact.exists()


def test_run_name_and_the_settings_run_name_must_agree(tmp_path, data):
    settings = article_settings(**RUN_SETTINGS, data_path=str(data), run_name="aa")
    with pytest.raises(SettingsError) as refused:
        prepare(settings, artifact_dir=tmp_path / "artifact", run_name="bb")
    assert str(refused.value) == ("--run-name (notebook: RUN_NAME) 'bb' disagrees with Settings.run_name (CLI "
                                  "--run-name; notebook: SETTINGS or RECIPE) 'aa': a run has one name. Give it once, "
                                  "as RUN_NAME.")
    assert not (tmp_path / "artifact").exists()
    run = prepare(settings, artifact_dir=tmp_path / "artifact", run_name="aa")  # the CLI passes the field as both
    run.lock.release()
    assert run.paths.name == "aa"


# --- the lock -------------------------------------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from sarashina_grpo.runs import lock_run
    lock_run(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def other_process_holds(tmp_path):
    """Start a process that locks a run folder and then sleeps; yield the starter, kill the processes after."""
    started = []

    def hold(run_dir: Path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE,
                                   text=True)
        started.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process

    yield hold
    for process in started:
        process.kill()
        process.wait(30)


def test_a_run_being_trained_cannot_be_resumed_by_a_second_process(tmp_path, data, other_process_holds):
    run = resumable_run(tmp_path, data, step=3, planned=5)
    make_checkpoint(run, 4, marker=False)  # the other process is saving it right now
    holder = other_process_holds(run)
    code, _, err = resume(tmp_path, "r")
    assert code == 2 and err.startswith(f"error: Run r is being trained by another process (pid {holder.pid} on host ")
    assert "two processes would write the same checkpoints" in err
    assert (run / "checkpoint-4").exists()  # why: the second process must not set aside what the first writes


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path, data, other_process_holds):
    run = resumable_run(tmp_path, data, step=3, planned=5)
    holder = other_process_holds(run)
    holder.send_signal(signal.SIGKILL)  # a crash: nothing released the lock by hand
    holder.wait(30)
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == holder.pid  # its record is still there
    assert prepared(tmp_path).checkpoint.name == "checkpoint-3"


def test_a_new_run_is_locked_until_training_ends(tmp_path, data):
    run = prepare(article_settings(**RUN_SETTINGS, data_path=str(data)), artifact_dir=tmp_path, run_name="r")
    holder = subprocess.run([sys.executable, "-c", HOLD_LOCK.replace("time.sleep(120)", ""),
                             str(run.paths.output_dir)], capture_output=True, text=True)
    assert "is being trained by another process" in holder.stderr and f"pid {__import__('os').getpid()}" in (
        holder.stderr)
    run.lock.release()  # what run_training does at its end
    assert (run.paths.output_dir / LOCK_FILE).read_text() == ""
    lock_run(run.paths.output_dir).release()


def test_a_new_run_whose_run_json_cannot_be_written_leaves_no_lock_and_no_folder(tmp_path, data, monkeypatch):
    import sarashina_grpo.runs as runs

    real_write = runs.write_json

    def disk_full(path, info):
        path.with_name(f".{path.name}.partial").write_text("{")  # cut off mid-write
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs, "write_json", disk_full)
    settings = article_settings(**RUN_SETTINGS, data_path=str(data))
    with pytest.raises(OSError, match="No space left"):
        prepare(settings, artifact_dir=tmp_path, run_name="r")
    assert not (tmp_path / "outputs" / "r").exists() and not (tmp_path / "logs" / "r").exists()  # else "r-2"
    monkeypatch.setattr(runs, "write_json", real_write)
    run = prepare(settings, artifact_dir=tmp_path, run_name="r")  # the retry gets the run and its lock
    assert run.paths.name == "r" and run.lock.fd is not None
    run.lock.release()


def test_an_artifact_folder_given_with_a_tilde_is_under_home(tmp_path, data, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    run = prepare(article_settings(**RUN_SETTINGS, data_path=str(data)), artifact_dir="~/art", run_name="r")
    run.lock.release()
    # why: run.json and the lock went to ./~/art while transformers wrote the checkpoints under $HOME/art
    assert run.paths.output_dir == tmp_path / "home" / "art" / "outputs" / "r"
    assert (run.paths.output_dir / "run.json").is_file() and not (tmp_path / "~").exists()


def test_fewer_prompts_than_one_generation_batch_takes_are_refused_before_the_model_loads(tmp_path, data):
    settings = article_settings(**{**RUN_SETTINGS, "per_device_train_batch_size": 6}, data_path=str(data))
    # why: TRL's sampler makes no batch from 2 prompts when each takes 3; training "finished" at step 0, exit 0
    with pytest.raises(SettingsError, match=r"has 2 usable prompt\(s\), but one generation batch takes 3 different"):
        prepare(settings, artifact_dir=tmp_path, run_name="r")
    assert not (tmp_path / "outputs" / "r").exists()
    prepare(settings.replace(per_device_train_batch_size=4), artifact_dir=tmp_path, run_name="r").lock.release()


def test_other_ranks_get_a_run_that_holds_no_lock(tmp_path, data):
    run = prepare(article_settings(**RUN_SETTINGS, data_path=str(data)), artifact_dir=tmp_path, run_name="r")
    copy = pickle.loads(pickle.dumps(run))  # what broadcast_object_list sends to the other processes
    assert copy.lock.fd is None and run.lock.fd is not None
    run.lock.release()


def test_preparing_the_same_run_again_in_one_process_hands_the_lock_over(tmp_path, data):
    resumable_run(tmp_path, data, step=3, planned=5)
    first = prepare(load_settings({}), artifact_dir=tmp_path, resume="r", given=set())  # a notebook cell …
    second = prepare(load_settings({}), artifact_dir=tmp_path, resume="r", given=set())  # … run again
    assert first.lock.fd is None and second.lock.fd is not None
    second.lock.release()


# --- the data file --------------------------------------------------------------------------------------------


def test_run_json_records_the_data_files_hash(tmp_path, data):
    run = resumable_run(tmp_path, data, step=3, planned=5)
    info = json.loads((run / "run.json").read_text())
    assert info["data_sha256"] == __import__("hashlib").sha256(data.read_bytes()).hexdigest()


def test_resuming_over_a_changed_data_file_is_an_error_that_names_the_flag(tmp_path, data):
    resumable_run(tmp_path, data, step=3, planned=5)
    data.write_text("prompt,lang\n別の質問,ja\n", encoding="utf-8")  # edited under the run
    code, _, err = resume(tmp_path, "r")  # was: resumed without a word
    assert code == 2 and err.startswith(f"error: The prompt file {data} has changed since run r started (sha256 ")
    assert err.endswith("Restore the file, or resume with --allow-data-change (notebook: ALLOW_DATA_CHANGE = True) "
                        "to go on with it as it is now.")


def test_allow_data_change_goes_on_with_a_warning_and_records_the_new_file(tmp_path, data, caplog):
    run = resumable_run(tmp_path, data, step=3, planned=5)
    data.write_text("prompt,lang\n別の質問,ja\n", encoding="utf-8")
    resumed = prepared(tmp_path, allow_data_change=True)
    assert [r.prompt for r in resumed.rows] == ["別の質問"] and "going on with it as it is now" in caplog.text
    info = json.loads((run / "run.json").read_text())
    assert info["data_sha256"] == __import__("hashlib").sha256(data.read_bytes()).hexdigest()
    assert info["data_changes"][0]["step"] == 3
    prepared(tmp_path)  # why: the accepted file is the run's file now; the next resume does not ask again


def test_a_setting_changed_on_resume_stays_the_runs_on_the_next_resume(tmp_path, data, caplog):
    run = resumable_run(tmp_path, data, step=3, planned=5)
    changed = prepared(tmp_path, settings={"save_total_limit": 2, "logging_steps": 3},
                       given={"save_total_limit", "logging_steps"})
    assert (changed.settings.save_total_limit, changed.settings.logging_steps) == (2, 3)
    caplog.clear()
    again = prepared(tmp_path)  # a plain --resume after Ctrl-C
    # why: run.json kept the values asked at the first resume; the second rebuilt from it and lost them
    assert (again.settings.save_total_limit, again.settings.logging_steps) == (2, 3)
    assert "Resuming with save_total_limit" not in caplog.text and "Resuming with logging_steps" not in caplog.text
    info = json.loads((run / "run.json").read_text())
    assert info["settings_changes"][0]["step"] == 3
    assert info["settings_changes"][0]["previous"] == {"save_total_limit": None, "logging_steps": 1}
    assert info["grpo_config"]["save_total_limit"] == 2


def test_a_run_asked_in_4bit_resumes_in_4bit_unless_told_otherwise(tmp_path, data):
    resumable_run(tmp_path, data, step=3, planned=5, load_in_4bit=True)  # as a run started on a GPU with --4bit
    # why: the machine re-decided an explicit choice, so a --no-4bit run resumed on a GPU trained on in 4-bit
    with pytest.raises(SettingsError, match=r"4-bit loading \(LOAD_IN_4BIT=True\) needs a CUDA GPU"):
        prepared(tmp_path)
    assert prepared(tmp_path, settings={"load_in_4bit": False}, given={"load_in_4bit"}).settings.load_in_4bit is False


def test_resuming_after_the_system_prompt_file_changed_says_so(tmp_path, data, caplog):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("考えてから答えてください。", encoding="utf-8")
    resumable_run(tmp_path, data, step=3, planned=5, system_prompt_file=str(prompt))
    prepared(tmp_path)
    assert "another system prompt" not in caplog.text
    prompt.write_text("猫として答えてください。", encoding="utf-8")  # the remaining steps would train under this
    prepared(tmp_path)
    assert f"Resuming under another system prompt than run r trained under: {prompt} has changed" in caplog.text


def test_the_same_data_under_another_path_is_no_change(tmp_path, data):
    resumable_run(tmp_path, data, step=3, planned=5)
    moved = data.rename(tmp_path / "moved.csv")
    assert prepared(tmp_path, settings={"data_path": str(moved)}, given={"data_path"}).rows


@pytest.fixture
def no_file_locks(monkeypatch):
    """A file system without flock (some network or FUSE mounts)."""
    import errno

    import sarashina_grpo.runs as runs

    def unsupported(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runs.fcntl, "flock", unsupported)


def test_without_file_locks_a_live_recorded_process_holds_the_run(tmp_path, no_file_locks):
    import socket

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                      "started": "2026-11-26 14:00:00 UTC"}))
        with pytest.raises(SettingsError, match=f"pid {sleeper.pid} on host .*delete {tmp_path / LOCK_FILE}"):
            lock_run(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait(30)
    lock_run(tmp_path).release()  # why: the recorded process is gone, so its record no longer blocks


def test_a_data_file_switched_with_the_flag_stays_the_runs_file_on_the_next_resume(tmp_path, data):
    run = resumable_run(tmp_path, data, step=3, planned=5)
    other = tmp_path / "other.csv"
    other.write_text("prompt,lang\n別の質問,ja\n", encoding="utf-8")
    prepared(tmp_path, settings={"data_path": str(other)}, given={"data_path"}, allow_data_change=True)
    info = json.loads((run / "run.json").read_text())
    # why: run.json used to keep the first file's path with the second file's hash; the next plain resume then
    # compared the wrong file and refused (or, with the flag, went back to the first file)
    assert (info["settings"]["data_path"], info["data"]) == (str(other.resolve()), str(other.resolve()))
    assert [r.prompt for r in prepared(tmp_path).rows] == ["別の質問"]


@pytest.mark.parametrize("text", ["[1, 2]", "3", '"run"', "null", "{cut off"])
def test_a_hand_edited_json_file_that_is_no_object_reads_as_absent(tmp_path, text):
    from sarashina_grpo.runs import read_json

    (path := tmp_path / "run.json").write_text(text, encoding="utf-8")
    assert read_json(path) is None  # why: every reader calls .get on it; a list was a traceback in export
