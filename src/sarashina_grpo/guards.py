"""The first NaN/inf loss, gradient norm or learning rate stops the run (``callbacks.NonFiniteGuard``), so the last
good checkpoint stays the resume point (``checkpoints.mark_complete`` never marks one holding NaN/inf weights).
"""

from __future__ import annotations

import math
from pathlib import Path

from .checkpoints import newest_complete_in
from .project import SettingsError

WATCHED_LOGS = ("loss", "grad_norm", "learning_rate")


class NonFiniteError(SettingsError):
    """Training produced NaN or inf; it was stopped before anything non-finite became a resume point."""


def check_logs(logs: dict, step: int, output_dir: str | Path) -> None:
    """Raise ``NonFiniteError`` when a Trainer log holds a NaN/inf watched value. The Trainer runs ``on_log``
    before it saves that step's checkpoint, so the step's (by now non-finite) weights are never saved."""
    bad = [f"{key} = {logs[key]}" for key in WATCHED_LOGS
           if isinstance((logs or {}).get(key), int | float) and not math.isfinite(logs[key])]
    if not bad:
        return
    good = newest_complete_in(output_dir)
    kept = f"the last good checkpoint is {good}" if good else "no checkpoint had been saved yet"
    raise NonFiniteError(f"Training stopped at step {step}: {', '.join(bad)}. The weights are no longer usable, so "
                         f"nothing from this step on is saved or marked complete ({kept}). Usual causes: a learning "
                         "rate too high for this model or a loose gradient clip; start a new run with a lower "
                         "--learning-rate or --max-grad-norm (resuming keeps the run's settings and would meet the "
                         "same numbers).")
