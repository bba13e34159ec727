"""Trainer callbacks: complete-checkpoint markers, a NaN/inf guard, and Ctrl-C/SIGTERM that save, then stop.

Sampled completions are printed by TRL itself (``Settings.log_completions``).
"""

from __future__ import annotations

import logging
import signal

from transformers import TrainerCallback

from .checkpoints import checkpoint_dir, mark_complete
from .guards import NonFiniteError, check_logs

logger = logging.getLogger(__name__)


class CheckpointMarker(TrainerCallback):
    """Mark a checkpoint complete after the Trainer has written all of it (model, optimizer, scheduler, state);
    stop the run instead when its weights hold NaN or inf (such a checkpoint must never be resumed from)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = checkpoint_dir(args.output_dir, state.global_step)
            if folder.is_dir() and not mark_complete(folder, state.global_step):
                raise NonFiniteError(
                    f"Training stopped at step {state.global_step}: the weights saved in {folder} hold NaN or inf, "
                    "so it was not marked complete and the last good checkpoint stays the resume point. Start a "
                    "new run with a lower --learning-rate or --max-grad-norm."
                )
        return control


class NonFiniteGuard(TrainerCallback):
    """Stop at the first NaN/inf loss, gradient norm or learning rate, before that step's weights are saved (the
    Trainer logs a step before it saves it). The checks themselves are ``guards.check_logs``."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        check_logs(logs, state.global_step, args.output_dir)


class GracefulInterrupt(TrainerCallback):
    """First Ctrl-C (SIGINT) or SIGTERM: finish the current step, save a checkpoint, stop. A second one aborts.

    SIGTERM is what schedulers and `docker stop` send before killing, so it gets the same grace.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signal_name = None
        self._previous = {}

    def install(self) -> None:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some notebook runners): keep the default behaviour
                pass

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        logger.warning("%s: saving a checkpoint after this step, then stopping (Ctrl-C again to abort without "
                       "saving).", self.signal_name)

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control
