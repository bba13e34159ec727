"""Ctrl-C during training: one press saves then stops, even when it reaches the process twice (``uv run``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest

from sarashina_grpo.callbacks import GracefulInterrupt

# A process that installs the handler, says it is ready, then reports what two SIGINTs did to it.
CHILD = textwrap.dedent("""
    import sys, time
    from sarashina_grpo.callbacks import GracefulInterrupt
    interrupt = GracefulInterrupt()
    interrupt.install()
    print("ready", flush=True)
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end and not (interrupt.requested and time.monotonic() - interrupt._first_at > 0.3):
            time.sleep(0.01)
        print("saved-then-stopped" if interrupt.requested else "never-signalled", flush=True)
    except KeyboardInterrupt:
        print("aborted", flush=True)
""")


def signalled_twice(gap_s: float) -> str:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGINT)
        time.sleep(gap_s)
        child.send_signal(signal.SIGINT)
        return child.communicate(timeout=30)[0].strip()
    finally:
        child.kill()


def test_one_ctrl_c_delivered_twice_in_quick_succession_still_saves():
    assert signalled_twice(0.0) == "saved-then-stopped"  # uv run forwards the SIGINT its child already got


def test_a_second_ctrl_c_pressed_later_aborts(monkeypatch):
    interrupt = GracefulInterrupt()
    monkeypatch.setattr(GracefulInterrupt, "SAME_PRESS_S", 0.05)
    interrupt.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.requested and interrupt.signal_name == "SIGINT"
        time.sleep(0.1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the handler runs between bytecodes of this thread
    finally:
        interrupt.uninstall()


def test_sigterm_after_sigint_within_the_same_moment_is_ignored():
    interrupt = GracefulInterrupt()
    interrupt.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.requested and interrupt.signal_name == "SIGINT"
    finally:
        interrupt.uninstall()


# A process that installs the handler with a grace of GRACE s, then "runs a step" that never ends (a hanging reward).
HANGING_STEP = textwrap.dedent("""
    import sys, time
    from sarashina_grpo.callbacks import GracefulInterrupt
    interrupt = GracefulInterrupt(float(sys.argv[1]), "sarashina-grpo train --resume r", output_dir=sys.argv[2])
    interrupt.install()
    interrupt.step = 3  # steps 1-3 are done; step 4 hangs
    print("ready", flush=True)
    time.sleep(120)
    print("waited for the step", flush=True)
""")


def stopped_while_hanging(run_dir, grace_s: float) -> tuple[subprocess.CompletedProcess, float]:
    child = subprocess.Popen([sys.executable, "-c", HANGING_STEP, str(grace_s), str(run_dir)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        sent = time.monotonic()
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
        return subprocess.CompletedProcess(child.args, child.returncode, out, err), time.monotonic() - sent
    finally:
        child.kill()


def test_a_step_that_outlasts_the_grace_ends_the_run_naming_its_last_checkpoint(tmp_path):
    from checkpoint_files import make_checkpoint

    last = make_checkpoint(tmp_path, 3)
    before = sorted(p.name for p in last.iterdir())
    done, waited = stopped_while_hanging(tmp_path, 1.0)
    said = [line for line in done.stderr.splitlines() if line.startswith(("SIGTERM", "error:"))]
    assert done.returncode == 130 and waited < 30  # not the 120 s the step would take: a scheduler's grace is ~30 s
    # at once: what stopping saves, and what a resume starts from should the step never end
    assert said[0].startswith("SIGTERM: stopping after step 4") and str(last) in said[0] and "1 s" in said[0]
    # then one error line: the last checkpoint and how to resume from it
    assert len(said) == 2 and said[1].startswith("error:") and str(last) in said[1] and "--resume r" in said[1]
    assert "Traceback" not in done.stderr and "waited for the step" not in done.stdout
    assert sorted(p.name for p in last.iterdir()) == before  # the last checkpoint is left as it was


# Steps of 1.5 s, a grace of 0.5 s, the signal as step 3 begins: the step is not late, so it is saved.
USUAL_STEPS = textwrap.dedent("""
    import sys, time, types
    from sarashina_grpo.callbacks import GracefulInterrupt
    interrupt = GracefulInterrupt(0.5, "sarashina-grpo train --resume r", output_dir=sys.argv[1])
    interrupt.install()
    state = types.SimpleNamespace(global_step=0)
    control = types.SimpleNamespace(should_save=False, should_training_stop=False)
    for step in range(1, 6):
        interrupt.on_step_begin(None, state, control)
        if step == 3:
            print("ready", flush=True)
        time.sleep(1.5)
        state.global_step = step
        interrupt.on_step_end(None, state, control)
        if control.should_training_stop:
            print(f"saving step {step}", flush=True)
            break
""")


def test_a_signal_early_in_a_step_longer_than_the_grace_still_saves_that_step(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", USUAL_STEPS, str(tmp_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0 and out.strip() == "saving step 3", err[-2000:]
    assert "error:" not in err


def test_the_grace_counts_from_when_the_running_step_should_end(monkeypatch):
    from sarashina_grpo import callbacks

    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    interrupt, state = GracefulInterrupt(20.0), types.SimpleNamespace(global_step=0)

    def step(seconds):
        interrupt.on_step_begin(None, state, None)
        clock[0] += seconds
        state.global_step += 1
        interrupt.on_step_end(None, state, types.SimpleNamespace())

    assert interrupt.wait_s(clock[0]) == 20.0  # no step yet: the grace alone
    step(160.0)  # the first step compiles
    interrupt.on_step_begin(None, state, None)
    clock[0] += 5.0
    assert interrupt.wait_s(clock[0]) == 155.0 + 20.0  # only the first step is known
    clock[0] += 12.0
    interrupt.on_step_end(None, state, types.SimpleNamespace())  # a 17 s step
    step(24.0)
    interrupt.on_step_begin(None, state, None)
    clock[0] += 4.0
    assert interrupt.wait_s(clock[0]) == (24.0 - 4.0) + 20.0  # the compiling step no longer counts
    clock[0] += 60.0
    assert interrupt.wait_s(clock[0]) == 20.0  # a step already late gets the grace, no less


def test_a_run_without_a_checkpoint_says_there_is_nothing_to_resume(tmp_path):
    done, _ = stopped_while_hanging(tmp_path, 0.5)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 130 and len(errors) == 1 and "nothing to resume" in errors[0]


@pytest.mark.parametrize(("value", "grace"), [
    (None, 20.0),  # unset: the default, under the 30 s schedulers give before SIGKILL
    ("45", 45.0),  # a longer grace for slow steps
    ("0", None),  # wait for the step however long it takes
])
def test_the_grace_is_read_from_the_environment(value, grace):
    from sarashina_grpo.project import stop_grace_s

    assert stop_grace_s({} if value is None else {"SARASHINA_GRPO_STOP_GRACE_S": value}) == grace


@pytest.mark.parametrize("value", ["twenty", "-5", "nan", "inf"])
def test_a_grace_that_is_no_number_of_seconds_is_one_error(value):
    from sarashina_grpo.project import SettingsError, stop_grace_s

    with pytest.raises(SettingsError, match="SARASHINA_GRPO_STOP_GRACE_S=.* is not a number of seconds"):
        stop_grace_s({"SARASHINA_GRPO_STOP_GRACE_S": value})


SLOW_REWARD = textwrap.dedent("""
    import time
    CALLS = []
    def r(completions, **kwargs):
        CALLS.append(1)
        if len(CALLS) > 1:  # step 1 scores at once; step 2's reward hangs
            time.sleep(600)
        return [0.0] * len(completions)
""")


@pytest.mark.slow
def test_sigterm_while_a_reward_hangs_ends_train_within_the_grace_keeping_the_checkpoint(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW_REWARD)
    env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="", SARASHINA_GRPO_STOP_GRACE_S="2")
    command = [sys.executable, "-m", "sarashina_grpo", "train", "--model", "tiny", "--no-4bit", "--max-steps", "3",
               "--save-steps", "1", "--max-completion-length", "8", "--num-generations", "2", "--batch-size", "2",
               "--threads", "1", "--no-log-completions", "--artifact-dir", str(tmp_path / "a"), "--run-name", "r",
               "--rewards", f"{tmp_path / 'slow.py'}:r"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = tmp_path / "a" / "outputs" / "r" / "checkpoint-1"
    try:
        deadline = time.monotonic() + 240
        while not (first / "checkpoint_complete").exists():
            assert child.poll() is None and time.monotonic() < deadline, child.communicate(timeout=5)
            time.sleep(0.1)
        time.sleep(0.5)  # step 2 is in its reward now
        child.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, err = child.communicate(timeout=60)
        waited = time.monotonic() - sent
    finally:
        child.kill()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert child.returncode == 130 and waited < 20, err[-2000:]  # the grace is 2 s; the reward would sleep 600
    assert "SIGTERM: stopping after step 2" in err  # said at once, before the grace runs out
    assert "Traceback" not in err and len(errors) == 1, err[-2000:]
    assert str(first) in errors[0] and "--resume r" in errors[0]
    from sarashina_grpo.checkpoints import verify

    assert verify(first) == [] and not (first.parent / "checkpoint-2" / "checkpoint_complete").exists()
    # the run recorded the weights it trains on as it started (export --merged checks its base against it)
    assert json.loads((first.parent / "run.json").read_text())["base_model"]["fingerprint"]
