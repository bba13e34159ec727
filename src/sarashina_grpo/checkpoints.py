"""Checkpoint folders: the one module that knows their names, the complete marker, and how one is chosen.

A checkpoint is ``<run>/checkpoint-<step>`` (digits only: a folder set aside as ``checkpoint-20.set-aside-…`` is not
one). It counts only once ``checkpoint_complete`` is written in it, last, after weights, optimizer, scheduler and
trainer state. Resuming picks a run's newest complete checkpoint; later folders are set aside, never deleted.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from .config import SettingsError

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete"  # written last into a checkpoint by callbacks.CheckpointMarker
CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")
MODEL_FILES = ("config.json",)
ADAPTER_FILES = ("adapter_config.json",)
# A folder loads only with its weights too: config files alone are what a save cut off early leaves behind.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def step_of(path: str | Path) -> int | None:
    """The step of a checkpoint folder name, None for anything else (set-aside folders included)."""
    match = CHECKPOINT_RE.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def is_complete(checkpoint: Path) -> bool:
    """Marker written last, state and weights present: a save that was not cut off."""
    return (
        (checkpoint / COMPLETE_MARKER).exists() and (checkpoint / "trainer_state.json").exists()
        and any((checkpoint / f).exists() for f in ADAPTER_WEIGHT_FILES + WEIGHT_FILES)
    )


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Every checkpoint folder of a run, complete or not, by step."""
    found = [(step_of(c), c) for c in Path(run_dir).glob("checkpoint-*") if step_of(c) is not None and c.is_dir()]
    return [path for _, path in sorted(found)]


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of one run that were fully written, oldest first."""
    return [path for path in list_checkpoints(run_dir) if is_complete(path)]


def mark_complete(folder: Path, step: int) -> None:
    (Path(folder) / COMPLETE_MARKER).write_text(f"{step}\n")


def runs_with_checkpoints(outputs: Path) -> list[Path]:
    """Runs that can be resumed, the one whose newest complete checkpoint was written last coming last."""
    runs = [(complete_checkpoints(p), p) for p in Path(outputs).glob("*") if p.is_dir()]
    return [p for done, p in sorted((r for r in runs if r[0]), key=lambda r: r[0][-1].stat().st_mtime)]


def find_resume_checkpoint(artifact_dir: Path, resume: str | os.PathLike) -> tuple[Path, Path]:
    """(run folder, checkpoint) to continue from. ``resume`` is ``latest``, a run name or folder, or a
    ``checkpoint-N`` folder. Half-written checkpoints are never chosen."""
    outputs = Path(artifact_dir) / "outputs"
    resume = str(resume)
    if resume == "latest":
        runs = runs_with_checkpoints(outputs)
        if not runs:
            raise SettingsError(
                f"Nothing to resume: no run in {outputs} has a complete checkpoint. Start a new run without --resume."
            )
        run_dir, checkpoint = runs[-1], None
    else:
        path = Path(resume).expanduser() if Path(resume).expanduser().exists() else outputs / resume
        if not path.exists():
            known = [p.name for p in runs_with_checkpoints(outputs)]
            raise SettingsError(f"Cannot resume {resume!r}: no such run or folder. Resumable runs in {outputs}: "
                                f"{known or 'none'}.")
        if step_of(path) is not None:
            run_dir, checkpoint = path.parent, path
            if not is_complete(path):
                raise SettingsError(
                    f"{path} is not a complete checkpoint (no {COMPLETE_MARKER}, or files missing): the run was cut "
                    f"off while saving it. Resume the run instead (--resume {path.parent.name}) to use its last "
                    "complete checkpoint."
                )
        else:
            run_dir, checkpoint = path, None
    if checkpoint is None:
        done = complete_checkpoints(run_dir)
        if not done:
            raise SettingsError(f"Nothing to resume in {run_dir}: it holds no complete checkpoint-N folder.")
        checkpoint = done[-1]
    return run_dir, checkpoint


def set_aside_newer(run_dir: Path, checkpoint: Path) -> None:
    """Rename the run's checkpoint folders after ``checkpoint`` (half-written, or from a branch being replaced) so
    the continued run writes fresh folders and never mixes its files with stale ones. Nothing is deleted."""
    step = step_of(checkpoint)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in list_checkpoints(run_dir):
        if step_of(folder) > step:
            target = folder.with_name(f"{folder.name}.set-aside-{stamp}")
            folder.rename(target)
            logger.warning("Moved %s aside to %s: resuming from the earlier %s.", folder.name, target.name,
                           checkpoint.name)


def newest_complete(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None
