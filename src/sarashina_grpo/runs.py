"""A run folder's promises: a plain name, one training process at a time, the same data, no steps past the plan.

The lock is ``outputs/<run>/run.lock``, held with ``flock``: the kernel drops it when its process dies, however it
dies, so a crash never leaves a lock that blocks.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path

from .checkpoints import TRAINER_STATE, step_of
from .project import SettingsError

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
MAX_RUN_NAME = 100  # leaves room for the "-2" suffix and checkpoint-N/… below it within the 255-byte name limit
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # file systems without flock
_HELD: dict[Path, RunLock] = {}  # locks this process holds, by resolved path


class RunLockedError(SettingsError):
    """Another process is training the run."""


def check_run_name(name: str, label: str = "--run-name") -> None:
    """Raise ``SettingsError`` unless ``name`` is one plain folder name (checked before anything is written)."""
    check_plain_name(name, label, "A run lives in outputs/<run-name>/")
    if name == "latest":  # --resume latest would mean the newest run, never this one
        raise SettingsError(f"{label} 'latest' is taken by --resume, where it means the newest run: this run could "
                            "not be resumed by its name. Choose another name.")


def check_plain_name(name: str, flag: str, lives: str) -> None:
    """Raise ``SettingsError`` naming ``flag`` unless ``name`` is one plain folder name (``lives``: where it goes)."""
    reasons = (
        (not name.strip(), "it is empty"),
        ("/" in name or "\\" in name or (os.altsep and os.altsep in name), "it holds a path separator"),
        (name in (".", ".."), "it is a relative folder, not a name"),
        (name.startswith("."), "it starts with '.', which hides the run's folders"),
        (name != name.strip(), "it starts or ends with spaces"),
        (len(name) > MAX_RUN_NAME, f"it is {len(name)} characters long; at most {MAX_RUN_NAME}"),
        (any(ord(c) < 32 or ord(c) == 127 for c in name), "it holds control characters"),
    )
    if why := next((why for bad, why in reasons if bad), None):
        raise SettingsError(f"{flag} {name!r} is not a plain folder name ({why}). {lives}; use letters, digits, "
                            "'-', '_' and '.', e.g. 'lr5e-6-seed1'.")


def utc_now() -> str:
    """The time as run.lock and run.json's change records write it."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def pid_alive(pid: int) -> bool:
    """A process with this id runs on this machine (whoever owns it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return True


def process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, from Linux's /proc; None where unreadable): tells a
    live process from a later one given a dead process's id."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat; fields[0] is field 3
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class RunLock:
    """The open, ``flock``-ed ``run.lock`` of a run. Pickled (sent to other ranks), it holds nothing."""

    def __init__(self, path: Path, fd: int | None = None):
        self.path, self.fd = path, fd

    def __getstate__(self):
        return {"path": self.path, "fd": None}

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # an empty file is a released lock, also where flock is missing
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = None
            _HELD.pop(self.path, None)


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically: a run.json cut off mid-write would stop every later resume."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")
    partial.replace(path)


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None where it is missing, empty, not JSON or not an object (hand-edited)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _locked_message(run_dir: Path, holder: dict, *, flock: bool) -> str:
    who = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since {holder.get('started', '?')}"
           if holder else "a process that has not written its details yet")
    fix = ("A crashed process releases the lock by itself." if flock else
           f"This file system has no file locks: if that process no longer runs, delete {run_dir / LOCK_FILE}.")
    return (f"Run {run_dir.name} is being trained by another process ({who}): two processes would write the same "
            f"checkpoints. Wait for it to finish or stop it, then resume. {fix}")


def lock_run(run_dir: str | os.PathLike) -> RunLock:
    """Take ``run_dir``'s lock for this process, or raise ``RunLockedError`` naming the process that has it.
    Preparing the same run again in this process (a notebook cell run twice) hands the lock over."""
    path = (Path(run_dir) / LOCK_FILE).resolve()
    if path in _HELD:
        _HELD[path].release()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLockedError(_locked_message(Path(run_dir), read_json(path) or {}, flock=True)) from None
    except OSError as err:
        if err.errno not in NO_LOCKS:
            os.close(fd)
            raise
        holder = read_json(path) or {}  # no flock here: a recorded live process on this host holds it
        if holder.get("host") == socket.gethostname() and pid_alive(int(holder.get("pid", 0))):
            os.close(fd)
            raise RunLockedError(_locked_message(Path(run_dir), holder, flock=False)) from None
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    _HELD[path] = RunLock(path, fd)
    return _HELD[path]


def trained_prompt(info: dict) -> str | None:
    """The system prompt a run trained under, from its ``run.json``: TRL's record (a --system-prompt-file's text),
    else the prompt asked for; None where neither is text."""
    for part in ("grpo_config", "settings"):
        record = info.get(part)
        prompt = record.get("system_prompt") if isinstance(record, dict) else None
        if isinstance(prompt, str) and prompt.strip():
            return prompt
    return None


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_data_unchanged(info: dict | None, data: Path, run_dir: Path, *, allow: bool) -> str | None:
    """The data file's hash now when it differs from the one ``run.json`` recorded (runs without one: never), else
    None. A difference is a ``SettingsError`` unless ``allow``; then a warning (the caller records the new hash)."""
    recorded = (info or {}).get("data_sha256")
    if not recorded or (now := file_sha256(data)) == recorded:
        return None
    said = (f"The prompt file {data} has changed since run {run_dir.name} started (sha256 {recorded[:12]}… then, "
            f"{now[:12]}… now)")
    if not allow:
        raise SettingsError(f"{said}: the remaining steps would train on other prompts than the steps before. "
                            "Restore the file, or resume with --allow-data-change (notebook: ALLOW_DATA_CHANGE = "
                            "True) to go on with it as it is now.")
    logger.warning("%s; going on with it as it is now (--allow-data-change).", said)
    return now


def record_change(run_info: Path, log: str, entry: dict, settings: dict, **fields) -> None:
    """Keep in ``run.json`` what a resume changed, so that the next resume goes on with it: ``entry`` (the step, the
    values recorded before) and the time appended under ``log``, the new ``settings`` and top-level ``fields``."""
    info = json.loads(run_info.read_text(encoding="utf-8-sig"))
    info.setdefault(log, []).append({**entry, "at": utc_now()})
    info.setdefault("settings", {}).update(settings)
    info.update(fields)
    write_json(run_info, info)


def checkpoint_progress(checkpoint: Path) -> tuple[int, int | None]:
    """(step reached, max_steps it was trained towards) from the checkpoint's trainer state."""
    state = read_json(checkpoint / TRAINER_STATE) or {}  # damage is verify's to report; this reads what it can
    step, planned = state.get("global_step"), state.get("max_steps")
    step = step if isinstance(step, int) else step_of(checkpoint) or 0
    return step, planned if isinstance(planned, int) and planned > 0 else None


def resume_max_steps(checkpoint: Path, max_steps: int, *, recorded: int | None,
                     explicit: bool) -> tuple[int, str | None]:
    """The ``max_steps`` a resume from ``checkpoint`` trains to (not ``explicit``: the plan the checkpoint was trained
    towards), and the message saying the run is finished when that plan is reached already (else None). An explicit
    ``max_steps`` at or below the checkpoint's step (and not the plan itself) is a ``SettingsError``."""
    step, planned = checkpoint_progress(checkpoint)
    planned = planned or recorded
    if not explicit and planned:
        max_steps = planned
    if step < max_steps:
        return max_steps, None
    run = checkpoint.parent.name
    if not explicit or max_steps == planned:
        return max_steps, (f"Run {run} is finished: {checkpoint.name} is step {step} of the {max_steps} it planned; "
                          f"nothing to train. To train it further, resume with a higher --max-steps (e.g. "
                          f"--resume {run} --max-steps {2 * max_steps}).")
    raise SettingsError(f"--max-steps {max_steps} (Settings.max_steps) is at or below step {step} of {checkpoint}: "
                        f"a resume continues from that step, so nothing would be trained. Give --max-steps above "
                        f"{step} to train further, or resume from an earlier checkpoint-N of {run}.")


def refuse_without_run_info(run_dir: Path, checkpoint: Path, settings_given: bool, model_name: str) -> None:
    """A resumed run without ``run.json``: an error from the command line, which restores the settings from it; a
    warning where the caller passed every setting itself (``prepare(settings)`` without ``given``)."""
    if not settings_given:
        raise SettingsError(
            f"{run_dir / 'run.json'} is missing (deleted?): the run's settings cannot be read back, so it cannot be "
            f"resumed as it was. Restore run.json, or start a new run from the checkpoint's weights: sarashina-grpo "
            f"train --model {checkpoint} (with the run's own flags; a fresh optimizer and warm-up).")
    logger.warning("%s has no run.json: resuming with the settings given (model %s).", run_dir, model_name)
