"""The GRPO training path shared by the notebook, the CLI and the benchmark.

    sarashina-grpo train --model tiny --max-steps 5        # CPU smoke run
    sarashina-grpo train                                   # the article's run (CUDA GPU)

Each run gets its own folders, ``artifact/logs/<run>/`` (TensorBoard) and ``artifact/outputs/<run>/checkpoint-N``,
so runs never overwrite each other. A checkpoint counts only once ``checkpoint_complete`` is written in it;
``resume`` continues a run from its last complete checkpoint with optimizer and scheduler state.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .callbacks import COMPLETE_MARKER, CheckpointMarker, GracefulInterrupt, SampleLogger
from .config import Settings, SettingsError, build_grpo_config

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ARTIFACT_DIR = REPO_ROOT / "artifact"
DEFAULT_DATA_PATH = REPO_ROOT / "datasets" / "smalltalk.csv"
CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")


@dataclass
class RunPaths:
    name: str
    log_dir: Path
    output_dir: Path


def check_writable(folder: Path) -> None:
    """Raise a clear error now rather than after hours of training when the first save fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise SettingsError(
            f"Artifact folder {folder} is not writable ({err.strerror}). Choose another with --artifact-dir "
            "(notebook: ARTIFACT_DIR) or fix its permissions."
        ) from None


def new_run_paths(artifact_dir: Path, name: str | None = None) -> RunPaths:
    """Fresh, timestamped log and output folders that no earlier run uses."""
    base = name or time.strftime("%Y%m%d-%H%M%S")
    candidate, n = base, 1
    while (artifact_dir / "outputs" / candidate).exists() or (artifact_dir / "logs" / candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return RunPaths(candidate, artifact_dir / "logs" / candidate, artifact_dir / "outputs" / candidate)


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints of one run that were fully written, oldest first."""
    found = []
    for child in Path(output_dir).glob("checkpoint-*"):
        match = CHECKPOINT_RE.fullmatch(child.name)
        if match and (child / COMPLETE_MARKER).exists() and (child / "trainer_state.json").exists():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def find_resume_checkpoint(artifact_dir: Path, resume: str | os.PathLike) -> tuple[RunPaths, Path]:
    """The run folders and checkpoint to continue from. ``resume`` is ``latest``, a run name or folder, or a
    ``checkpoint-N`` folder."""
    outputs = artifact_dir / "outputs"
    resume = str(resume)
    if resume == "latest":
        runs = sorted((p for p in outputs.glob("*") if complete_checkpoints(p)), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise SettingsError(f"Nothing to resume: no run in {outputs} has a complete checkpoint.")
        run_dir, checkpoint = runs[-1], None
    else:
        path = Path(resume) if Path(resume).exists() else outputs / resume
        if CHECKPOINT_RE.fullmatch(path.name):
            run_dir, checkpoint = path.parent, path
            if not (path / COMPLETE_MARKER).exists():
                raise SettingsError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER}); it was cut off.")
        else:
            run_dir, checkpoint = path, None
    if checkpoint is None:
        done = complete_checkpoints(run_dir)
        if not done:
            raise SettingsError(f"Nothing to resume in {run_dir}: it holds no complete checkpoint-N folder.")
        checkpoint = done[-1]
    name = run_dir.name
    return RunPaths(name, artifact_dir / "logs" / name, run_dir), checkpoint


def build_trainer(model, tokenizer, dataset, settings: Settings, paths: RunPaths, *, callbacks=(), **overrides):
    """TRL ``GRPOTrainer`` on an (Unsloth) model with the project's rewards and callbacks."""
    from trl import GRPOTrainer

    from .modeling import cuda_available
    from .rewards import get_reward_funcs

    # transformers 5 removed `logging_dir`: the TensorBoard writer reads this variable instead.
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(paths.log_dir)
    args = build_grpo_config(settings, paths.output_dir, use_cpu=not cuda_available(), **overrides)
    sample_logger = SampleLogger(every=max(1, settings.logging_steps * 10))
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=get_reward_funcs(settings.reward_names),
        args=args,
        train_dataset=dataset,
        callbacks=[sample_logger, CheckpointMarker(), *callbacks],
    )
    sample_logger.trainer = trainer
    return trainer


def prepare_run(settings: Settings, artifact_dir: str | Path = DEFAULT_ARTIFACT_DIR, *, resume: str | None = None,
                run_name: str | None = None) -> tuple[RunPaths, Path | None]:
    """Check settings, device and folders before any model loads; return the run's folders and the checkpoint to
    resume from (``None`` for a fresh run)."""
    from .modeling import check_device

    settings.validate()
    check_device(settings, training=True)
    artifact_dir = Path(artifact_dir)
    check_writable(artifact_dir)
    if resume:
        paths, checkpoint = find_resume_checkpoint(artifact_dir, resume)
        logger.info("Resuming run %s from %s", paths.name, checkpoint)
        return paths, checkpoint
    return new_run_paths(artifact_dir, run_name), None


def run_trainer(trainer, paths: RunPaths, checkpoint: Path | None = None):
    """``trainer.train()`` with Ctrl-C turned into save-then-stop; return the trainer."""
    interrupt = GracefulInterrupt()
    trainer.add_callback(interrupt)
    logger.info("Run %s: TensorBoard logs in %s, checkpoints in %s", paths.name, paths.log_dir, paths.output_dir)
    interrupt.install()
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        interrupt.uninstall()
        trainer.remove_callback(interrupt)
    if interrupt.requested:
        logger.warning("Stopped by Ctrl-C at step %d; resume with --resume %s", trainer.state.global_step, paths.name)
    trainer.run_paths = paths
    return trainer


def train(
    settings: Settings,
    data_path: str | Path = DEFAULT_DATA_PATH,
    artifact_dir: str | Path = DEFAULT_ARTIFACT_DIR,
    *,
    resume: str | None = None,
    run_name: str | None = None,
    model_and_tokenizer=None,
):
    """Run GRPO end to end and return the trainer. Settings and paths are checked before the model loads."""
    from .data import load_prompts
    from .modeling import load_model

    paths, checkpoint = prepare_run(settings, artifact_dir, resume=resume, run_name=run_name)
    model, tokenizer = model_and_tokenizer or load_model(settings, training=True)
    dataset = load_prompts(data_path, tokenizer=tokenizer, max_prompt_length=settings.max_prompt_length)
    trainer = build_trainer(model, tokenizer, dataset, settings, paths)
    return run_trainer(trainer, paths, checkpoint)
