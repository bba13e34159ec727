"""Checkpoint folders: their names, the complete marker, listing, verifying, choosing one to resume, setting aside.

``outputs/<run>/checkpoint-<step>/`` counts once ``checkpoint_complete`` is written into it (last), and is intact when
its files pass ``verify``: cheap checks that catch a cut-off save, an overwritten file or NaN weights before a model
loads for 20 s and fails deep in torch. Damaged or superseded folders are moved to ``set-aside/``, never deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .compat import ADAPTER_WEIGHTS as ADAPTER_WEIGHT_FILES  # PEFT's names; compat's resume hook reads them too
from .project import SettingsError, is_whole

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
# Strict on purpose: "checkpoint-20.set-aside-…" is a folder a resume moved away, not step 20.
CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)(\.set-aside-.+)?")
SET_ASIDE = ".set-aside-"
# Set-aside folders live in this sub-folder of the run: transformers' checkpoint rotation (save_total_limit) deletes
# every `checkpoint-*` folder of the run folder beyond the limit, set-aside ones included (it reads their step).
SET_ASIDE_DIR = "set-aside"
COMPLETE_MARKER = "checkpoint_complete"  # written last into a checkpoint by mark_complete
TRAINER_STATE = "trainer_state.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = (ADAPTER_CONFIG,)  # modeling's test for an adapter folder
# A folder loads only with its weights too: config files alone are what a save cut off early leaves behind.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# Trainer state that resume loads with torch.load(weights_only=True); training_args.bin is a pickle of the whole
# config that resume never reads, so it is not opened here.
TORCH_STATE_PATTERNS = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth")
MAX_SAFETENSORS_HEADER = 100 * 2**20  # the format's own limit; a larger length means the file was overwritten


def step_of(path: str | os.PathLike, *, set_aside: bool | None = False) -> int | None:
    """The step of a ``checkpoint-<digits>`` folder name, else None; ``set_aside=True``: of a
    ``checkpoint-<digits>.set-aside-<time>`` one instead, ``None``: of either."""
    match = CHECKPOINT_RE.fullmatch(Path(path).name)
    return int(match[1]) if match and set_aside in (None, bool(match[2])) else None


@dataclass(frozen=True)
class FolderKind:
    """What a folder given as a model or checkpoint holds (``folder_kind``); callers word their own advice."""

    files: frozenset[str]
    adapter: bool  # adapter_config.json and adapter weights: a LoRA checkpoint or adapter export
    model: bool  # config.json and weights: a full model
    newest: Path | None  # a run folder's newest complete checkpoint
    step: int | None  # checkpoint-N
    half_written: bool  # checkpoint-N, or one set aside, without the complete marker


def folder_kind(folder: str | os.PathLike) -> FolderKind:
    """The one reading of what an existing folder is: adapter, full model, run folder, (half-written) checkpoint."""
    files = frozenset(p.name for p in Path(folder).iterdir())
    return FolderKind(
        files=files, adapter=ADAPTER_CONFIG in files and bool(files & set(ADAPTER_WEIGHT_FILES)),
        model="config.json" in files and bool(files & set(WEIGHT_FILES)), newest=newest_complete_in(folder),
        step=step_of(folder),
        half_written=step_of(folder, set_aside=None) is not None and COMPLETE_MARKER not in files)


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Every ``checkpoint-N`` folder of a run, complete or not, by step (9 before 10)."""
    found = [(step_of(p), p) for p in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()]
    return [p for _, p in sorted(f for f in found if f[0] is not None)]


def is_complete(checkpoint: str | os.PathLike) -> bool:
    """Marker written last, trainer state and weights present: a save that was not cut off."""
    checkpoint = Path(checkpoint)
    return ((checkpoint / COMPLETE_MARKER).exists() and (checkpoint / TRAINER_STATE).exists()
            and any((checkpoint / f).exists() for f in ADAPTER_WEIGHT_FILES + WEIGHT_FILES))


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints of one run that were fully written, oldest first (not yet verified)."""
    return [p for p in list_checkpoints(run_dir) if is_complete(p)]


def newest_complete_in(run_folder: str | os.PathLike) -> Path | None:
    """The run's newest complete checkpoint, for hints such as 'use …/checkpoint-N instead'."""
    return (complete_checkpoints(run_folder) or [None])[-1]


def runs_with_checkpoints(outputs: str | os.PathLike) -> list[Path]:
    """Runs that can be resumed, the one whose newest complete checkpoint was written last coming last."""
    runs = [(complete_checkpoints(p), p) for p in Path(outputs).glob("*") if p.is_dir()]
    return [p for done, p in sorted((r for r in runs if r[0]), key=lambda r: r[0][-1].stat().st_mtime)]


def verify(checkpoint: str | os.PathLike, *, for_resume: bool = True) -> list[str]:
    """What is wrong with the checkpoint's files ("file: problem" each); for resume, its torch state files too."""
    folder = Path(checkpoint)
    jsons = [p for p in sorted(folder.glob("*.json")) if for_resume or p.name != TRAINER_STATE]
    problems = _problems(safetensors_problem, sorted(folder.glob("*.safetensors"))) + _problems(json_problem, jsons)
    if not problems:
        problems = _problems(json_fields_problem, [p for p in jsons if p.name in (TRAINER_STATE, ADAPTER_CONFIG)])
    if not problems:
        problems = adapter_shape_problems(folder) or [f"{name}: holds non-finite values (NaN or inf)"
                                                      for name in nonfinite_weight_files(folder)]
    if for_resume:
        problems += _problems(torch_state_problem, [p for pattern in TORCH_STATE_PATTERNS
                                                    for p in sorted(folder.glob(pattern))])
    return problems


def _problems(check, paths: list[Path]) -> list[str]:
    return [f"{path.name}: {problem}" for path in paths if (problem := check(path))]


def json_fields_problem(path: Path) -> str | None:
    """Why a ``trainer_state.json`` or ``adapter_config.json`` that parses cannot be what the Trainer or PEFT wrote
    (the loaders would fail late on it)."""
    data = json.loads(path.read_bytes())
    if not isinstance(data, dict):
        writer = "the Trainer's state" if path.name == TRAINER_STATE else "PEFT's adapter config"
        return f"holds a JSON {type(data).__name__}, not {writer} (overwritten?)"
    if path.name == TRAINER_STATE:
        for key in ("global_step", "max_steps"):
            if not is_whole(value := data.get(key, 0), 0):
                return f"{key} is {value!r}, not a whole number (overwritten?)"
        return None if isinstance(data.get("log_history", []), list) else "log_history is not a list (overwritten?)"
    base, rank, alpha, targets = (data.get(k) for k in ("base_model_name_or_path", "r", "lora_alpha", "target_modules"))
    if base is not None and not (isinstance(base, str) and base.strip()):
        return f"base_model_name_or_path is {base!r}, not a model name or folder (overwritten?)"
    if rank is not None and (type(rank) is not int or rank < 1):
        return f"r is {rank!r}, not a LoRA rank (a whole number ≥ 1; edited by hand?)"
    if alpha is not None and (type(alpha) not in (int, float) or not 0 < alpha < float("inf")):
        return f"lora_alpha is {alpha!r}, not a positive number (edited by hand?)"
    if targets is not None and not (isinstance(targets, str) or isinstance(targets, list) and targets
                                    and all(isinstance(t, str) for t in targets)):
        return f"target_modules is {targets!r}, not module names (edited by hand?)"
    return None


def adapter_shape_problems(folder: Path) -> list[str]:
    """"file: problem" when the adapter weights' LoRA rank is not its config's (copied in): PEFT would fail late."""
    weights = folder / "adapter_model.safetensors"
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_bytes())
        rank, patterns = config.get("r"), config.get("rank_pattern") or {}
        with open(weights, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        shapes = {key: entry["shape"] for key, entry in header.items() if key != "__metadata__"}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return []  # missing: nothing to compare; unreadable: reported by the header and JSON checks
    if not isinstance(rank, int) or patterns:
        return []  # per-module ranks: nothing simple to compare with
    for key, shape in shapes.items():
        found = shape[0] if ".lora_A." in key else shape[-1] if ".lora_B." in key else None
        if found is not None and len(shape) == 2 and found != rank:
            return [f"{weights.name}: holds LoRA rank {found} ({key}) but adapter_config.json says r = {rank}: "
                    "the weights are from another adapter"]
    return []


# Transformers' Trainer restores these on resume; without them it silently starts a fresh optimizer and schedule.
RESUME_STATE = {"optimizer.pt": "the optimizer's moments and step count",
                "scheduler.pt": "the learning-rate schedule, whose warm-up would restart"}
# Where other back-ends keep the optimizer state instead of optimizer.pt: DeepSpeed's global_step<N>/ folder, FSDP's
# optimizer.bin or optimizer_0/, per-rank files (transformers 5 Trainer._save_optimizer_and_scheduler).
OPTIMIZER_ELSEWHERE = ("global_step*", "optimizer*.bin", "optimizer_*", "rank*-of-*-optimizer.pt")


def missing_resume_state(checkpoint: str | os.PathLike) -> list[str]:
    """The files of ``RESUME_STATE`` that ``checkpoint`` lacks (a ``save_only_model`` run, or deleted)."""
    folder = Path(checkpoint)
    missing = [name for name in RESUME_STATE if not (folder / name).is_file()]
    if "optimizer.pt" in missing and any(any(folder.glob(p)) for p in OPTIMIZER_ELSEWHERE):
        missing.remove("optimizer.pt")
    return missing


def check_resume_state(checkpoint: str | os.PathLike, *, weights_only: bool = False) -> None:
    """Raise ``SettingsError`` unless ``checkpoint`` has ``optimizer.pt`` and ``scheduler.pt`` (weights_only: warn)."""
    checkpoint = Path(checkpoint)
    if not (missing := missing_resume_state(checkpoint)):
        return
    what = " and no ".join(f"{name} ({RESUME_STATE[name]})" for name in missing)
    if weights_only:
        logger.warning("Resuming from %s without %s: a fresh optimizer and learning-rate schedule "
                       "(--resume-weights-only).", checkpoint.name, ", ".join(missing))
        return
    earlier = [p for p in complete_checkpoints(checkpoint.parent)
               if step_of(p) < (step_of(checkpoint) or 0) and not missing_resume_state(p)]
    other = f" or resume from {earlier[-1]}, which has them," if earlier else ""
    raise SettingsError(f"{checkpoint} has no {what}, so a resume would not continue the run's training but restart "
                        "its optimizer (saved with --save-only-model, or deleted). Resume with --resume-weights-only "
                        f"to go on from its weights with a fresh optimizer and schedule,{other} or start a new run.")


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (cut off, overwritten), from its header alone."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return f"cut off ({size} bytes, shorter than a safetensors header)"
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, MAX_SAFETENSORS_HEADER):
            return f"cut off or overwritten (its header claims {length} bytes; the file has {size})"
        try:
            header = json.loads(f.read(length))
            ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, IndexError, TypeError):
            return "overwritten (its header is not a safetensors header)"
    expected = 8 + length + max(ends, default=0)
    return f"cut off ({size} bytes; its header describes {expected})" if expected != size else None


def json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"not valid JSON, cut off or overwritten ({err})"
    return None


def torch_state_problem(path: Path) -> str | None:
    """Why ``path`` does not load with ``torch.load(weights_only=True)`` (never weights_only=False: that would run a
    foreign file's code), or is no optimizer or scheduler state ({} would fail deep in torch after the model loads)."""
    import numpy as np
    import torch

    # The types transformers' rng_state.pth holds (NumPy's generator state): the same allowlist as transformers'
    # trainer_pt_utils.safe_globals, which cannot be imported before Unsloth.
    numpy_types = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(numpy_types):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # whatever garbage raises (RuntimeError, EOFError, KeyError, struct.error, …) is damage
        if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in str(err):  # arbitrary objects
            return ("holds objects other than tensors and numbers (overwritten?); not loaded, as that could run "
                    "code from the file")
        return "not a readable PyTorch file (cut off or overwritten)"
    if path.name == "optimizer.pt" and not (isinstance(state, dict) and isinstance(state.get("state"), dict)
                                            and isinstance(state.get("param_groups"), list) and state["param_groups"]):
        return "not an optimizer's state (no state and param_groups; overwritten?)"
    if path.name == "scheduler.pt" and not (isinstance(state, dict) and isinstance(state.get("last_epoch"), int)):
        return "not a learning-rate scheduler's state (no last_epoch; overwritten?)"
    return None


def nonfinite_weight_files(folder: str | os.PathLike) -> list[str]:
    """Names of the folder's adapter weight files that hold NaN or inf (unreadable files are verify's business)."""
    import torch
    from safetensors.torch import load_file

    bad = []
    for name in ADAPTER_WEIGHT_FILES:
        path = Path(folder) / name
        with contextlib.suppress(Exception):  # a missing file is no problem; damage is reported by the other checks
            state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, "cpu", weights_only=True)
            if not all(torch.isfinite(t).all() for t in state.values() if torch.is_tensor(t)):
                bad.append(name)
    return bad


def mark_complete(folder: str | os.PathLike, step: int) -> bool:
    """Write the complete marker into a saved checkpoint unless its adapter weights hold NaN or inf (logged)."""
    folder = Path(folder)
    if bad := nonfinite_weight_files(folder):
        logger.error("%s holds non-finite (NaN or inf) weights in %s; it is not marked complete and will never be "
                     "resumed from.", folder, ", ".join(bad))
        return False
    (folder / COMPLETE_MARKER).write_text(f"{step}\n")
    return True


def set_aside(folder: Path, reason: str) -> Path | None:
    """Move ``folder`` to its run's ``set-aside/`` and warn why; None when another rank of the launch moved it first."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = folder.parent / SET_ASIDE_DIR
    aside.mkdir(exist_ok=True)
    target, n = aside / f"{folder.name}{SET_ASIDE}{stamp}", 1
    while target.exists():  # two set-asides in the same second
        n += 1
        target = aside / f"{folder.name}{SET_ASIDE}{stamp}-{n}"
    try:
        folder.rename(target)
    except FileNotFoundError:
        return None
    logger.warning("Set %s aside as %s/%s: %s.", folder.name, SET_ASIDE_DIR, target.name, reason)
    return target


def set_aside_newer(run_dir: str | os.PathLike, checkpoint: str | os.PathLike) -> None:
    """Set aside the run's checkpoint folders after ``checkpoint`` so the continued run never mixes its files with
    stale ones; ``checkpoint-N.set-aside-*`` folders an older version left in the run folder go into ``set-aside/``."""
    aside = Path(run_dir) / SET_ASIDE_DIR
    for folder in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*{SET_ASIDE}*"):
        if folder.is_dir() and step_of(folder, set_aside=True) is not None and not (aside / folder.name).exists():
            aside.mkdir(exist_ok=True)
            folder.rename(aside / folder.name)
    for folder in list_checkpoints(run_dir):
        if step_of(folder) > step_of(checkpoint):
            set_aside(folder, f"resuming from the earlier {Path(checkpoint).name}")


def latest_intact(run_dir: str | os.PathLike) -> Path | None:
    """The run's newest complete checkpoint that passes ``verify`` (damaged newer ones are set aside), else None."""
    for checkpoint in reversed(complete_checkpoints(run_dir)):
        try:
            problems = verify(checkpoint)
        except FileNotFoundError:  # set aside meanwhile by another process of the same launch
            continue
        if not problems:
            return checkpoint
        set_aside(checkpoint, f"it is damaged ({'; '.join(problems)}); using the checkpoint before it")
    return None


def locate_resume(artifact_dir: str | os.PathLike, resume: str | os.PathLike) -> tuple[Path, Path | None]:
    """(run folder, the checkpoint folder named by ``resume`` or None) without touching any folder: the caller
    locks the run before ``choose_resume_checkpoint`` sets anything aside."""
    outputs = Path(artifact_dir) / "outputs"
    resume = str(resume)
    if resume == "latest":
        if not (runs := runs_with_checkpoints(outputs)):
            raise SettingsError(f"Nothing to resume: no run in {outputs} has a complete checkpoint. Start a new run "
                                "without --resume.")
        return runs[-1], None
    path = Path(resume).expanduser() if Path(resume).expanduser().exists() else outputs / resume
    if not path.exists():
        known = [p.name for p in runs_with_checkpoints(outputs)]
        raise SettingsError(f"Cannot resume {resume!r}: no such run or folder. Resumable runs in {outputs}: "
                            f"{known or 'none'}.")
    return (path, None) if step_of(path) is None else (path.parent, path)


def choose_resume_checkpoint(run_dir: Path, named: Path | None) -> Path:
    """``named`` if it is complete and intact (else an error), or the run's newest intact checkpoint."""
    if named is None:
        had = [p.name for p in complete_checkpoints(run_dir)]
        if (checkpoint := latest_intact(run_dir)) is not None:
            return checkpoint
        if had:
            raise SettingsError(f"Nothing intact to resume in {run_dir}: every complete checkpoint ({', '.join(had)}) "
                                "is damaged and was set aside (see the warnings). Start a new run without --resume.")
        raise SettingsError(f"Nothing to resume in {run_dir}: it holds no complete checkpoint-N folder.")
    if not is_complete(named):
        raise SettingsError(f"{named} is not a complete checkpoint (no {COMPLETE_MARKER}, or files missing): the run "
                            f"was cut off while saving it. Resume the run instead (--resume {named.parent.name}) to "
                            "use its last complete checkpoint.")
    if problems := verify(named):
        raise SettingsError(f"{named} is damaged ({'; '.join(problems)}). Resume the run instead "
                            f"(--resume {named.parent.name}) to use its newest intact checkpoint.")
    return named


def check_loadable(folder: str | os.PathLike) -> None:
    """Raise ``SettingsError`` naming what is wrong when a folder about to be loaded for inference is damaged."""
    folder = Path(folder)
    if problems := verify(folder, for_resume=False):
        step = step_of(folder, set_aside=None)
        run = folder.parent.parent if folder.parent.name == SET_ASIDE_DIR else folder.parent
        earlier = [p for p in complete_checkpoints(run) if step is not None and step_of(p) < step]
        hint = f" Use an earlier checkpoint of the run, e.g. {earlier[-1]}." if earlier else ""
        raise SettingsError(f"{folder} is damaged ({'; '.join(problems)}).{hint}")
