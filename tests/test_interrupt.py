"""Ctrl-C during training: one press saves then stops, even when it reaches the process twice (``uv run``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

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
