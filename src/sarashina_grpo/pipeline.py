"""One GRPO run, in three steps that the CLI, notebook, demo and benchmark share: ``prepare`` → ``build_trainer`` →
``run_training`` (``train`` runs all three).

    from sarashina_grpo.config import article_settings
    from sarashina_grpo.pipeline import train
    trainer = train(article_settings(model_name="tiny", max_steps=5))   # CPU smoke run
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import checkpoints, compat, project, runs
from .config import RUN_OWNED, Settings, legacy_settings, load_settings
from .preflight import BASE_MODEL, RUN_INFO, check_run, check_run_options, read_run_info
from .preflight import check_resume_settings as check_resume_settings  # re-exported
from .project import SettingsError, artifact_root, cuda_available, multi_process, process_rank, project_path

# config imports Unsloth before TRL; transformers' model code and callbacks are imported inside functions.
logger = logging.getLogger(__name__)

# Decided by the command line, not the run: the process imported Unsloth or TRL by it before any setting was read
# (commands.import_training_stack), so a resumed run takes the backend from this command unless given again.
MACHINE_FIELDS = {"backend"}


@dataclass
class RunPaths:
    name: str
    log_dir: Path
    output_dir: Path


@dataclass
class Run:
    """A prepared run: settings, folders, the checkpoint to resume from, the checked prompt rows; or, resuming a run
    that has trained every step it planned, ``finished``: the message saying so (nothing is locked or trained)."""

    settings: Settings
    paths: RunPaths
    checkpoint: Path | None = None
    rows: list = field(default_factory=list)
    eval_rows: list = field(default_factory=list)  # held-out rows scored during training (eval_steps)
    lock: runs.RunLock | None = None  # held by the process that prepared the run until training ends
    finished: str | None = None


def new_run_paths(artifact_dir: Path, name: str | None = None) -> RunPaths:
    """Fresh, timestamped log and output folders, created here; the exclusive ``mkdir`` keeps two runs apart."""
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


def recorded(settings: Settings) -> dict:
    """The settings a run records and a resume rebuilds from: the values asked for, less the run's own folders."""
    return {k: v for k, v in settings.asked().items() if k not in RUN_OWNED}


def write_run_info(paths: RunPaths, settings: Settings) -> None:
    """``run.json``: the settings asked for (what a resume rebuilds), TRL's full config, the prompt file's hash."""
    data = project_path(settings.data_path).resolve()
    info = {"settings": recorded(settings), "grpo_config": settings.to_dict(), "data": str(data),
            "data_sha256": runs.file_sha256(data)}
    runs.write_json(paths.output_dir / RUN_INFO, info)


def _prepare(settings: Settings, artifact_dir: Path, resume, run_name, check_model: bool, given,
             allow_data_change: bool = False, resume_weights_only: bool = False) -> Run:
    """``prepare`` on one process: every check before any folder is created or set aside."""
    if not resume:
        checked = check_run(settings, artifact_dir=artifact_dir, check_model_files=check_model)
        paths = new_run_paths(artifact_dir, run_name)
        lock = runs.lock_run(paths.output_dir)
        settings = checked.settings.replace(output_dir=str(paths.output_dir), run_name=paths.name)
        try:
            write_run_info(paths, settings)
        except BaseException:  # a full disk: the name and its lock go back, so the next try gets the same run
            lock.release()
            for leftover in (runs.LOCK_FILE, f".{RUN_INFO}.partial"):
                (paths.output_dir / leftover).unlink(missing_ok=True)
            paths.output_dir.rmdir()
            paths.log_dir.rmdir()  # new_run_paths made both, empty
            raise
        return Run(settings, paths, None, checked.rows, checked.eval_rows, lock)
    run_dir, named = checkpoints.locate_resume(artifact_dir, resume)
    if run_name is not None and run_name != run_dir.name:
        raise SettingsError(f"--run-name {run_name!r} disagrees with the run being resumed ({run_dir.name!r}): a "
                            f"resumed run keeps its name and folders. Drop --run-name, or resume that run with "
                            f"--resume {run_name}.")
    lock = runs.lock_run(run_dir)  # before anything is set aside: another process may be saving into the run
    try:
        checkpoint = checkpoints.choose_resume_checkpoint(run_dir, named)
        info = read_run_info(run_dir, settings_used=True)
        if info is None:
            runs.refuse_without_run_info(run_dir, checkpoint, given is None, settings.model_name)
        before = info["settings"] if info else {}
        if given is not None:  # the recorded settings, less those set now and those the machine decides
            base = {k: v for k, v in legacy_settings(before).items() if k not in RUN_OWNED}
            now = {k: v for k, v in settings.asked().items() if k in given | MACHINE_FIELDS}
            settings = load_settings(now, base=base, source=str(run_dir / RUN_INFO))
        max_steps, finished = runs.resume_max_steps(checkpoint, settings.max_steps, recorded=before.get("max_steps"),
                                                    explicit=given is None or "max_steps" in given)
        # A run given as a folder outside artifact_dir/outputs keeps its logs next to its outputs.
        logs = artifact_dir / "logs" if run_dir.parent == artifact_dir / "outputs" else run_dir.parent.parent / "logs"
        paths = RunPaths(run_dir.name, logs / run_dir.name, run_dir)
        if finished:
            lock.release()
            return Run(settings, paths, checkpoint, finished=finished)
        checked = check_run(settings.replace(max_steps=max_steps, output_dir=str(paths.output_dir),
                                             run_name=paths.name),
                            artifact_dir=artifact_dir, run_dir=run_dir, check_model_files=check_model)
        checkpoints.check_resume_state(checkpoint, weights_only=resume_weights_only)
        data = project_path(checked.settings.data_path).resolve()
        changed = runs.check_data_unchanged(info, data, run_dir, allow=allow_data_change)
        checkpoints.set_aside_newer(run_dir, checkpoint)
        step = runs.checkpoint_progress(checkpoint)[0]
        if changed:  # the hash a later plain --resume reads back and checks
            runs.record_change(run_dir / RUN_INFO, "data_changes",
                               {"step": step, "data": str(data), "previous": info["data_sha256"]},
                               {"data_path": str(data)}, data_sha256=changed, data=str(data))
        if changes := {k: v for k, v in recorded(checked.settings).items()
                       if k in before and before[k] != v and k not in MACHINE_FIELDS | {"data_path", "run_name"}}:
            runs.record_change(run_dir / RUN_INFO, "settings_changes",
                               {"step": step, "previous": {k: before[k] for k in changes}}, changes,
                               grpo_config=checked.settings.to_dict())
        logger.info("Resuming run %s from %s", run_dir.name, checkpoint)
        return Run(checked.settings, paths, checkpoint, checked.rows, checked.eval_rows, lock)
    except BaseException:
        lock.release()
        raise


def prepare(settings: Settings, *, artifact_dir: str | Path | None = None, resume: str | None = None,
            run_name: str | None = None, check_model: bool = True, given: set[str] | None = None,
            allow_data_change: bool = False, resume_weights_only: bool = False) -> Run:
    """Check everything once, before any model loads, and claim the run's folders (locked until ``run_training``
    ends). Resuming, ``given`` (the fields set explicitly) overrides the recorded settings; a run that reached its
    planned steps comes back ``finished``. Under ``accelerate launch`` the main process decides for all."""
    from .data import DataError
    from .modeling import resolve_model_name

    run_name = check_run_options(settings.run_name, artifact_dir=artifact_dir, resume=resume, run_name=run_name,
                                 allow_data_change=allow_data_change, resume_weights_only=resume_weights_only)
    project.check_launch_environment()  # WORLD_SIZE left over without a launcher: one line, not accelerate's traceback
    artifact_dir = artifact_root(artifact_dir)
    decide = functools.partial(_prepare, settings, artifact_dir, resume, run_name, check_model, given,
                               allow_data_change, resume_weights_only)
    if not multi_process():
        return decide()
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=not cuda_available())  # as TRL's Trainer will start it: gloo on CPU, NCCL on GPU
    decided: list = [None]
    if state.is_main_process:
        try:
            decided[0] = decide()
        except (SettingsError, DataError) as err:  # every rank reports it, none waits for folders
            decided[0] = err
    run = broadcast_object_list(decided, from_process=0)[0]
    if isinstance(run, Exception):
        raise run
    with state.main_process_first():  # the main process builds the tiny model; the others then find it
        if not run.finished:
            resolve_model_name(run.settings.model_name)
    return run


def load_model(run: Run):
    """(model, tokenizer) for training with the run's backend (Unsloth, or transformers + PEFT)."""
    from .modeling import load_model as load_unsloth
    from .modeling import load_model_peft, resolve_backend

    if run.finished:
        raise SettingsError(run.finished)
    backend = resolve_backend(run.settings.backend)
    logger.info("Loading %s with %s (4-bit: %s)", run.settings.model_name, backend, run.settings.load_in_4bit)
    if backend == "unsloth":  # prepare() has checked the settings, device and model name
        return load_unsloth(run.settings)
    return load_model_peft(run.settings, training=True)


@functools.cache
def trainer_class(base):
    """``base`` (TRL's or Unsloth's ``GRPOTrainer``) with this project's run state: no attribute is set on a library's
    own class."""

    class SarashinaGRPOTrainer(base):
        run: Run | None = None  # the prepared run: settings, folders, rows (set by run_training)
        kl_reference: str | None = None  # what the KL term compares with (compat.choose_reference)
        packing_trust = None  # callbacks.PackingTrust: when Unsloth's packing became trusted for the whole run
        fast_rollout = None  # the CUDA-graph engine when the fast rollout runs (rollout.install)
        rollout: str | None = None  # the rollout that generates: the setting, 'auto' resolved (rollout.choose)
        interrupted: str | None = None  # the signal that stopped training early (run_training), else None
        dynamic_sampling = None  # DAPO's resampling when dynamic_sampling is on (dynamic_sampling.install)

        def log(self, logs, *args, **kwargs):
            from transformers import Trainer

            if logs and all(key.startswith("eval_") for key in logs):
                # the held-out evaluation between training logs: transformers' log, not TRL's, which would fold in
                # (and reset) the averaged training figures and print the completion table again
                return Trainer.log(self, logs, *args, **kwargs)
            shown = self.log_completions
            # TRL prints its completion table in every log: the end-of-training summary would repeat the last
            self.log_completions = shown and "train_runtime" not in logs
            try:
                return super().log(logs, *args, **kwargs)
            finally:
                self.log_completions = shown

    return SarashinaGRPOTrainer


def build_trainer(run: Run, model, tokenizer, *, callbacks=(), trust_packing: bool = True, **grpo_overrides):
    """The project's one ``GRPOTrainer``: the run's prompts, rewards, settings and callbacks on ``model``.
    ``trust_packing=False`` leaves Unsloth re-checking each longer batch (``callbacks.PackingTrust``)."""
    from peft import PeftModel
    from transformers import ProgressCallback, set_seed
    from trl import GRPOTrainer

    from .callbacks import CheckpointMarker, HeldOutEval, NonFiniteGuard, PackingTrust
    from .completions import CompletionLog
    from .data import prompts_dataset
    from .modeling import lora_config, resolve_backend
    from .reward_guard import training_rewards
    from .rollout import choose, install

    if run.finished:
        raise SettingsError(run.finished)
    settings = run.settings
    if multi_process() and settings.ddp_find_unused_parameters is None:
        # Every LoRA weight gets a gradient each step: no search for unused ones (an error with reentrant checkpoints)
        grpo_overrides.setdefault("ddp_find_unused_parameters", False)
    dataset = prompts_dataset(run.rows, settings.data_path, system_prompt=settings.system_prompt,
                              tokenizer=tokenizer, max_prompt_length=settings.max_prompt_length)
    compat.drop_reference_adapter(model)  # a model reused from an earlier trainer (the benchmark) carries TRL's copy
    # transformers 5 removed `logging_dir`: the TensorBoard writer reads this variable instead.
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run.paths.log_dir)
    args = settings.replace(**grpo_overrides) if grpo_overrides else settings
    linked = [CompletionLog()]
    if run.eval_rows:
        linked.append(HeldOutEval(run.eval_rows, every=int(settings.eval_steps), system_prompt=settings.system_prompt,
                                  max_new_tokens=settings.max_completion_length, best_metric=settings.best_metric,
                                  patience=settings.patience))
    trust = None
    if trust_packing and compat.packing_enabled():
        trust = PackingTrust(rows=settings.per_device_train_batch_size * (settings.steps_per_generation or 1),
                             longest=settings.max_prompt_length + settings.max_completion_length)
        linked.append(trust)
    peft_config = None
    if not isinstance(model, PeftModel):  # the plain backend's model: TRL adds the LoRA
        peft_config = lora_config(settings)
        set_seed(settings.seed)  # same LoRA init everywhere (DDP also broadcasts rank 0's weights at wrap time)
    rewards = training_rewards(settings.reward_names, max_completion_length=settings.max_completion_length)
    trainer = trainer_class(GRPOTrainer)(
        model=model, peft_config=peft_config, processing_class=tokenizer, reward_funcs=rewards,
        args=args.for_trainer(), train_dataset=dataset,
        callbacks=[CheckpointMarker(settings.model_name), NonFiniteGuard(), *linked, *callbacks])
    # The KL reference (docs/algorithm.md), chosen before any step or resume changes the adapter.
    trainer.kl_reference = compat.choose_reference(trainer)
    trainer.packing_trust = trust
    for callback in [*linked, *callbacks]:
        if hasattr(callback, "trainer"):
            callback.trainer = trainer  # they log through the trainer
    if any(isinstance(c, ProgressCallback) for c in callbacks):  # a caller's own progress display replaces the default
        for default in [c for c in trainer.callback_handler.callbacks if type(c) is ProgressCallback]:
            trainer.remove_callback(default)
    trainer.rollout = choose(trainer, settings.rollout, resolve_backend(settings.backend))
    if trainer.rollout == "fast" and install(trainer) is None:
        trainer.rollout = "default"  # an architecture the engine does not decode (install says so)
    if settings.dynamic_sampling:
        from . import dynamic_sampling

        trainer.dynamic_sampling = dynamic_sampling.install(trainer, max_rounds=settings.dynamic_sampling_max_rounds,
                                                            seed=settings.seed)
    return trainer


def run_training(trainer, run: Run, *, stop_grace_s: float | None = None, resume: str | None = None):
    """``trainer.train()`` with Ctrl-C/SIGTERM as save-then-stop (``trainer.interrupted``: the signal's name); return
    the trainer. ``stop_grace_s`` and ``resume``: see ``callbacks.GracefulInterrupt``."""
    from transformers import ProgressCallback

    from .callbacks import GracefulInterrupt

    paths = run.paths
    interrupt = GracefulInterrupt(stop_grace_s, resume or f"--resume {paths.name}", output_dir=paths.output_dir)
    trainer.add_callback(interrupt)
    logger.info("Run %s: TensorBoard logs in %s, checkpoints in %s", paths.name, paths.log_dir, paths.output_dir)
    if process_rank() == 0:  # one process writes run.json
        if run.checkpoint is None:  # a fresh run
            record_base_model(paths.output_dir, run.settings.model_name)
        if getattr(trainer, "rollout", None) is not None:  # build_trainer's trainers
            record_rollout(paths.output_dir, trainer.rollout, checkpoints.step_of(run.checkpoint or "") or 0)
    interrupt.install()
    try:
        trainer.train(resume_from_checkpoint=str(run.checkpoint) if run.checkpoint else None)
    except BaseException:  # a failed step leaves the progress bar's line open: end it before the error line
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
                callback.training_bar.close()
        raise
    finally:
        interrupt.uninstall()
        trainer.remove_callback(interrupt)
        if run.lock is not None:
            run.lock.release()
    trainer.interrupted = interrupt.signal_name
    if interrupt.requested:
        logger.warning("Stopped by %s at step %d after saving checkpoint-%d; resume with --resume %s",
                       interrupt.signal_name, trainer.state.global_step, trainer.state.global_step, paths.name)
    trainer.run = run
    return trainer


def record_base_model(run_dir: Path, model_name: str) -> None:
    """Record in ``run.json`` the base model and its weights' fingerprint, for ``export --merged`` to compare with."""
    from .modeling import resolve_model_name
    from .preflight import weights_fingerprint

    info = read_run_info(run_dir)
    if info is None or BASE_MODEL in info:
        return
    info[BASE_MODEL] = {"name": model_name, "fingerprint": weights_fingerprint(resolve_model_name(model_name))}
    runs.write_json(Path(run_dir) / RUN_INFO, info)


def record_rollout(run_dir: Path, rollout: str, start: int) -> None:
    """Record in ``run.json`` the rollout of the steps after ``start``, and the history (``rollouts``) for exports."""
    info = read_run_info(run_dir)
    if info is None:
        return
    earlier = [h for h in info.get("rollouts", []) if h["from_step"] < start]
    if not earlier or earlier[-1]["rollout"] != rollout:
        earlier.append({"from_step": start, "rollout": rollout})
    info.update(rollout=rollout, rollouts=earlier)
    runs.write_json(Path(run_dir) / RUN_INFO, info)


def train(settings: Settings, *, artifact_dir: str | Path | None = None, resume: str | None = None,
          run_name: str | None = None, given: set[str] | None = None, allow_data_change: bool = False,
          resume_weights_only: bool = False, model_and_tokenizer=None, callbacks=(), **grpo_overrides):
    """Prepare, build and run GRPO end to end; return the trainer (``trainer.run`` has the run's folders)."""
    run = prepare(settings, artifact_dir=artifact_dir, resume=resume, run_name=run_name,
                  check_model=model_and_tokenizer is None, given=given, allow_data_change=allow_data_change,
                  resume_weights_only=resume_weights_only)
    model, tokenizer = model_and_tokenizer or load_model(run)
    trainer = build_trainer(run, model, tokenizer, callbacks=callbacks, **grpo_overrides)
    return run_training(trainer, run)
