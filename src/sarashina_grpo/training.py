"""The GRPO training path shared by the notebook, the CLI and the benchmark.

    sarashina-grpo train --model tiny --max-steps 5        # CPU smoke run
    sarashina-grpo train                                   # the article's run (CUDA GPU)

Each run gets its own folders, ``artifact/logs/<run>/`` (TensorBoard) and ``artifact/outputs/<run>/checkpoint-N``,
so runs never overwrite each other; ``outputs/<run>/run.json`` records the run's settings and data file. A
checkpoint counts only once ``checkpoint_complete`` is written in it (last, after weights, optimizer, scheduler and
trainer state); ``resume`` continues a run from its last complete checkpoint with optimizer and scheduler state,
moving any later (half-written) checkpoint folders aside, never deleting them. Ctrl-C or SIGTERM saves, then stops.

    sarashina-grpo train --model tiny --max-steps 50 --resume          # continue the latest run
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import checkpoints
from .checkpoints import complete_checkpoints, is_complete, set_aside_newer  # noqa: F401 - used by callers
from .config import REPO_ROOT, Settings, SettingsError, build_grpo_config

# callbacks, trl and transformers are imported inside functions: Unsloth must be imported before them.

logger = logging.getLogger(__name__)

DEFAULT_ARTIFACT_DIR = REPO_ROOT / "artifact"
DEFAULT_DATA_PATH = REPO_ROOT / "datasets" / "smalltalk.csv"
RUN_INFO = "run.json"  # the run's settings and data file, written at its start; --resume reads it
# Settings a resumed run may change (they do not alter the maths of the steps already taken), with a warning.
RESUMABLE_CHANGES = {"max_steps", "save_steps", "logging_steps", "load_in_4bit", "use_vllm", "gpu_memory_utilization",
                     "max_seq_length"}


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
    """Fresh, timestamped log and output folders that no other run uses, created here.

    The output folder is claimed with an exclusive ``mkdir``, so two runs started in the same second (or with
    the same ``--run-name``) still get different folders.
    """
    base = name or time.strftime("%Y%m%d-%H%M%S")
    (artifact_dir / "outputs").mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = base if n == 1 else f"{base}-{n}"
        if (artifact_dir / "logs" / candidate).exists():
            continue
        try:
            (artifact_dir / "outputs" / candidate).mkdir()
        except FileExistsError:
            continue
        if n > 1 and name:
            logger.warning("Run name %r is taken; this run is %r.", name, candidate)
        paths = RunPaths(candidate, artifact_dir / "logs" / candidate, artifact_dir / "outputs" / candidate)
        paths.log_dir.mkdir(parents=True, exist_ok=True)
        return paths
    raise SettingsError(f"Could not find a free run name for {base!r} in {artifact_dir / 'outputs'}.")


def find_resume_checkpoint(artifact_dir: Path, resume: str | os.PathLike) -> tuple[RunPaths, Path]:
    """The run folders and checkpoint to continue from (see ``checkpoints.find_resume_checkpoint``)."""
    run_dir, checkpoint = checkpoints.find_resume_checkpoint(artifact_dir, resume)
    name = run_dir.name
    # Runs may live outside artifact_dir/outputs when given as a folder: keep their logs next to their outputs.
    log_root = artifact_dir / "logs" if run_dir.parent == artifact_dir / "outputs" else run_dir.parent.parent / "logs"
    return RunPaths(name, log_root / name, run_dir), checkpoint


def write_run_info(paths: RunPaths, settings: Settings, data_path: Path | None) -> None:
    info = {"settings": dataclasses.asdict(settings), "data": str(Path(data_path).resolve()) if data_path else None}
    (paths.output_dir / RUN_INFO).write_text(json.dumps(info, ensure_ascii=False, indent=2, default=str) + "\n")


def read_run_info(run_dir: Path) -> dict | None:
    """The run's saved ``{"settings": …, "data": …}``, or None for runs saved before it was recorded."""
    path = Path(run_dir) / RUN_INFO
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
        info["settings"].items()
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise SettingsError(
            f"{path} is cut off or damaged ({type(err).__name__}: {err}); it records the run's settings. Restore it, "
            "or delete it and resume giving the run's settings again as flags (they are then not checked)."
        ) from None
    return info


def run_settings(info: dict) -> Settings:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in info["settings"].items() if k in fields}
    return Settings(**saved)


def check_resume_settings(settings: Settings, data_path: Path | None, run_dir: Path) -> None:
    """Refuse to continue a run with settings that change its maths; warn on harmless changes."""
    info = read_run_info(run_dir)
    if info is None:
        return
    before = json.loads(json.dumps(info["settings"], default=str))
    now = json.loads(json.dumps(dataclasses.asdict(settings), default=str))
    changed = {k: (before.get(k), now[k]) for k in now if k in before and before[k] != now[k]}
    hard = {k: v for k, v in changed.items() if k not in RESUMABLE_CHANGES}
    if hard:
        listed = "; ".join(f"{k}: run used {a!r}, now {b!r}" for k, a, b in ((k, *v) for k, v in hard.items()))
        raise SettingsError(
            f"Resuming {run_dir.name} with different settings ({listed}). Resume with the run's own settings "
            f"(the CLI takes them from {run_dir / RUN_INFO} for every flag you do not pass), or start a new run."
        )
    for k, (a, b) in changed.items():
        logger.warning("Resuming with %s = %r (the run started with %r).", k, b, a)
    if data_path and info.get("data") and Path(info["data"]).resolve() != Path(data_path).resolve():
        logger.warning("Resuming with prompts from %s; the run started with %s.", data_path, info["data"])


def build_trainer(model, tokenizer, dataset, settings: Settings, paths: RunPaths, *, callbacks=(), **overrides):
    """TRL ``GRPOTrainer`` on an (Unsloth) model with the project's rewards and callbacks."""
    from trl import GRPOTrainer

    from .callbacks import CheckpointMarker, NonFiniteGuard, SampleLogger
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
        callbacks=[sample_logger, CheckpointMarker(), NonFiniteGuard(), *callbacks],
    )
    sample_logger.trainer = trainer
    if settings.rollout == "fast":
        from .rollout import install

        install(trainer)
    return trainer


def prepare_run(settings: Settings, artifact_dir: str | Path = DEFAULT_ARTIFACT_DIR, *, resume: str | None = None,
                run_name: str | None = None, data_path: str | Path | None = None,
                check_model: bool = True) -> tuple[RunPaths, Path | None]:
    """Check settings, device, MODEL_NAME, folders and (given ``data_path``) the prompt file before any model
    loads; return the run's folders and the checkpoint to resume from (``None`` for a fresh run).

    A fresh run gets new folders and a ``run.json``; a resumed one must keep the settings that shape its maths,
    and its checkpoint folders after the chosen one are moved aside.
    """
    paths, checkpoint, _ = _prepare_run(settings, artifact_dir, resume, run_name, data_path, check_model)
    return paths, checkpoint


def _prepare_run(settings, artifact_dir, resume, run_name, data_path, check_model):
    from .data import check_prompts
    from .errors import check_artifact_dir
    from .modeling import check_device, check_model_name

    settings.validate()
    check_device(settings, training=True)
    if check_model:
        check_model_name(settings.model_name)
    artifact_dir = Path(artifact_dir)
    check_artifact_dir(artifact_dir)
    check_writable(artifact_dir)
    rows = check_prompts(data_path) if data_path is not None else None
    if resume:
        paths, checkpoint = find_resume_checkpoint(artifact_dir, resume)
        check_resume_settings(settings, data_path, paths.output_dir)
        set_aside_newer(paths.output_dir, checkpoint)
        logger.info("Resuming run %s from %s", paths.name, checkpoint)
        return paths, checkpoint, rows
    paths = new_run_paths(artifact_dir, run_name)
    write_run_info(paths, settings, data_path)
    return paths, None, rows


def run_trainer(trainer, paths: RunPaths, checkpoint: Path | None = None):
    """``trainer.train()`` with Ctrl-C/SIGTERM turned into save-then-stop; return the trainer.

    ``trainer.interrupted`` is then the signal's name (``"SIGINT"``) when it stopped early, else None.
    """
    from .callbacks import GracefulInterrupt

    interrupt = GracefulInterrupt()
    trainer.add_callback(interrupt)
    logger.info("Run %s: TensorBoard logs in %s, checkpoints in %s", paths.name, paths.log_dir, paths.output_dir)
    interrupt.install()
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        interrupt.uninstall()
        trainer.remove_callback(interrupt)
    trainer.interrupted = interrupt.signal_name
    if interrupt.requested:
        logger.warning("Stopped by %s at step %d after saving checkpoint-%d; resume with --resume %s",
                       interrupt.signal_name, trainer.state.global_step, trainer.state.global_step, paths.name)
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
    """Run GRPO end to end and return the trainer. Settings, device, paths and the prompt file are all checked
    before the model loads; Ctrl-C or SIGTERM saves a complete checkpoint, then returns (see ``run_trainer``)."""
    from .data import prompts_dataset
    from .modeling import load_model

    paths, checkpoint, rows = _prepare_run(settings, artifact_dir, resume, run_name, Path(data_path),
                                           check_model=model_and_tokenizer is None)
    model, tokenizer = model_and_tokenizer or load_model(settings, training=True)
    dataset = prompts_dataset(rows, data_path, tokenizer=tokenizer, max_prompt_length=settings.max_prompt_length)
    trainer = build_trainer(model, tokenizer, dataset, settings, paths)
    return run_trainer(trainer, paths, checkpoint)
