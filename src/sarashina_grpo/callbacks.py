"""Trainer callbacks: sample printing, complete-checkpoint markers, and Ctrl-C that saves before it stops."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete"  # written last, so a folder without it is a half-written save


class SampleLogger(TrainerCallback):
    """Every ``every`` steps, log a few of the step's completions with each reward (TRL keeps them in _logs)."""

    def __init__(self, every: int = 10, samples: int = 2, max_chars: int = 400):
        self.every, self.samples, self.max_chars = every, samples, max_chars
        self.trainer = None  # set by build_trainer: TRL's buffers of the last step live on the trainer

    def on_log(self, args, state, control, **kwargs):
        if self.trainer is None or not state.is_world_process_zero or state.global_step % self.every:
            return
        buffers = getattr(self.trainer, "_logs", None)
        if not buffers or not buffers.get("completion"):
            return
        completions = list(buffers["completion"])[-self.samples:]
        rewards = {name: list(values)[-self.samples:] for name, values in buffers["rewards"].items()}
        for i, completion in enumerate(completions):
            text = completion[-1]["content"] if isinstance(completion, list) else str(completion)
            scores = ", ".join(f"{name}={values[i]:.3f}" for name, values in rewards.items())
            logger.info("step %d sample %d [%s]\n%s", state.global_step, i, scores, text[: self.max_chars])


class CheckpointMarker(TrainerCallback):
    """Mark a checkpoint complete after the Trainer has written all of it (model, optimizer, scheduler, state)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / COMPLETE_MARKER).write_text(f"{state.global_step}\n")
        return control


class GracefulInterrupt(TrainerCallback):
    """First Ctrl-C (SIGINT): finish the current step, save a checkpoint, stop. A second one aborts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self) -> None:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (e.g. some notebook runners): keep the default behaviour
            self._previous = None

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("Interrupted: saving a checkpoint after this step, then stopping (Ctrl-C again to abort).")

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control
