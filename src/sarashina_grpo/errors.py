"""Failures a user can cause or fix become one ``error: …`` line and exit code 2; bugs keep their traceback.

``cli.main`` hands every exception to ``report``: settings and data errors, missing or damaged files, folders in
the way, a full disk, read-only places. ``--debug`` (or ``SARASHINA_GRPO_DEBUG=1``) prints the full traceback as
well, for bug reports. The checks that make such mistakes cost seconds are ``preflight``'s;
docs/troubleshooting.md lists every message.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback
from pathlib import Path

from .data import DataError
from .project import HOME_VARIABLE, SettingsError
from .reward_guard import RewardError

DEBUG_ENV = "SARASHINA_GRPO_DEBUG"
USER_ERROR_EXIT = 2
DISK_FULL_FIX = ("Free some space, or choose --artifact-dir on a disk with room. A checkpoint cut off by this is "
                 "never resumed from: --resume continues from the last complete one.")
WRITE_FIX = "Choose a writable --artifact-dir, or fix the permissions."
# What PyTorch's C++ writer says when a write comes up short; a full disk is by far the usual cause, and torch
# itself never mentions it (torch.save to /dev/full raises exactly these).
TORCH_SHORT_WRITE = ("unexpected pos", "PytorchStreamWriter failed writing", "file write failed",
                     "basic_ios::clear", "iostream error")
DISK_FULL_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded")
FILE_TOO_LARGE_TEXT = ("File too large", "os error 27")  # EFBIG
FILE_SIZE_FIX = ("Raise the limit (ulimit -f unlimited) or choose --artifact-dir on a file system that takes large "
                 "files. A checkpoint cut off by this is never resumed from.")


def debug_enabled(flag: bool = False) -> bool:
    """``--debug`` was given, or the environment asks for tracebacks."""
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _chain(exc: BaseException):
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _where(err: OSError) -> str:
    return f" ({err.filename})" if err.filename else ""


def _file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The nearest existing part of ``path`` that is a file where a folder is needed."""
    for part in [Path(path), *Path(path).parents]:
        if part.exists():
            return part if not part.is_dir() else None
    return None


def _os_error_message(err: OSError) -> str | None:
    code, where = err.errno, _where(err)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"No space left on device{where}. {DISK_FULL_FIX}"
    if code == errno.EFBIG:
        return f"File too large{where}: {file_size_limit_text()}. {FILE_SIZE_FIX}"
    if code == errno.EROFS:
        return f"Cannot write{where}: it is on a read-only file system. {WRITE_FIX}"
    if code in (errno.EACCES, errno.EPERM):
        return f"Permission denied{where}. {WRITE_FIX}"
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_in_the_way(err.filename) if err.filename else None
        if blocker is not None:
            return f"{blocker} is a file where a folder is needed. Move or rename it, or {home_fix(blocker)}."
        return f"A file is in the way where a folder is needed{where}. Move or rename it."
    if code == errno.EISDIR:
        return f"Expected a file but found a folder{where}."
    if code == errno.ENOENT:
        return f"No such file or folder{where}."
    return None


def home_fix(blocker: Path) -> str:
    """How to choose another place for ``blocker``: the variable that chose it, when it did."""
    home = os.environ.get(HOME_VARIABLE)
    if home and Path(home).expanduser().absolute() in [blocker.absolute(), *blocker.absolute().parents]:
        return f"point {HOME_VARIABLE} (now {home}) at a folder"
    return "choose another --artifact-dir"


def file_size_limit() -> int | None:
    """This process's file-size limit in bytes (``ulimit -f``), None when there is none."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def file_size_limit_text() -> str:
    limit = file_size_limit()
    if limit is None:
        return "the file system's largest file size was reached"
    return f"it reached this process's file-size limit of {limit:,} bytes (ulimit -f)"


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for a failure the user can cause or fix; None for anything else (a bug)."""
    if isinstance(exc, SettingsError | DataError | RewardError):
        return str(exc)
    for err in _chain(exc):
        if isinstance(err, OSError) and (message := _os_error_message(err)):
            return message
    text = " ".join(str(err) for err in _chain(exc))
    if any(marker in text for marker in DISK_FULL_TEXT):
        return f"No space left on device. {DISK_FULL_FIX}"
    if any(marker in text for marker in FILE_TOO_LARGE_TEXT):  # safetensors' Rust writer: "os error 27"
        return f"File too large: {file_size_limit_text()}. {FILE_SIZE_FIX}"
    if isinstance(exc, RuntimeError) and any(marker in text for marker in TORCH_SHORT_WRITE):
        if file_size_limit() is not None:  # torch says the same for both; a limit set here is the likelier cause
            return (f"Writing a file failed inside PyTorch ({str(exc).strip()[:80]}): the disk is full, or "
                    f"{file_size_limit_text()}. {FILE_SIZE_FIX}")
        return (f"Writing a file failed inside PyTorch ({str(exc).strip()[:80]}): the disk is most likely full "
                f"(no space left on device). {DISK_FULL_FIX}")
    if isinstance(exc, json.JSONDecodeError):
        return (f"A JSON file is cut off or damaged ({exc}). Run again with --debug to see which one, then restore "
                "or delete it.")
    return None


def report(exc: BaseException, *, debug: bool = False, stream=None) -> int | None:
    """Print ``error: …`` for a user-caused failure and return the exit code (2); None means a bug: re-raise it.
    With ``debug`` the full traceback comes first, for bug reports."""
    message = user_error_message(exc)
    if message is None:
        return None
    stream = stream or sys.stderr
    if debug_enabled(debug):
        traceback.print_exception(exc, file=stream)
    print(f"error: {message}", file=stream)
    return USER_ERROR_EXIT
