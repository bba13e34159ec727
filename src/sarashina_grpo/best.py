"""The run's best checkpoint by a held-out measure: recorded in ``run.json`` under ``best``, named ``<run>/best``.

    sarashina-grpo infer  --model artifact/outputs/<run>/best
    sarashina-grpo export artifact/outputs/<run>/best out/adapter

The held-out evaluation (``callbacks.HeldOutEval``) saves and records a checkpoint at each new best of
``Settings.best_metric``; ``resolve_best`` turns ``…/<run>/best`` into its folder (a real folder named ``best`` wins).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoints import checkpoint_dir, is_complete
from .project import BEST_METRICS, SettingsError
from .runs import read_json, write_json

BEST = "best"
RUN_INFO = "run.json"  # every setting of the run, written at its start; resume compares with it


def is_better(metric: str, value: float, best: float | None) -> bool:
    """``value`` is a new best of ``metric`` (strictly: a tie keeps the earlier, cheaper-to-reach checkpoint)."""
    return best is None or (value > best if BEST_METRICS[metric] == "higher" else value < best)


def record_best(run_dir: str | os.PathLike, step: int, metric: str, value: float) -> None:
    """Write ``{"best": {"checkpoint", "step", "metric", "value"}}`` into the run's ``run.json``."""
    path = Path(run_dir) / RUN_INFO
    info = json.loads(path.read_text(encoding="utf-8-sig")) if path.is_file() else {}
    info[BEST] = {"checkpoint": checkpoint_dir(run_dir, step).name, "step": step, "metric": metric, "value": value}
    write_json(path, info)


def best_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The folder of the run's best checkpoint, or a ``SettingsError`` saying why there is none."""
    run_dir = Path(run_dir)
    best = (read_json(run_dir / RUN_INFO) or {}).get(BEST)
    if not (isinstance(best, dict) and isinstance(best.get("checkpoint"), str)):
        raise SettingsError(f"Run {run_dir.name} has no best checkpoint in {run_dir / RUN_INFO}: one is recorded only "
                            "by a run trained with --eval-steps (and --best-metric not 'none'), at its first held-out "
                            "evaluation after step 0. Give a checkpoint-N of the run instead.")
    folder = run_dir / Path(best["checkpoint"]).name
    if not is_complete(folder):
        raise SettingsError(f"The best checkpoint of run {run_dir.name} ({folder.name}, {best.get('metric')} "
                            f"{best.get('value')}) is missing or incomplete: it was deleted or moved by hand. Give "
                            "another checkpoint-N of the run.")
    return folder


def names_best(name: str | os.PathLike) -> bool:
    """``name`` is ``<run folder>/best`` and no real folder of that name exists."""
    path = Path(name).expanduser()
    return path.name == BEST and not path.exists() and (path.parent / RUN_INFO).is_file()


def resolve_best(name: str) -> str:
    """``<run folder>/best`` as the folder of that run's best checkpoint; any other name unchanged."""
    return str(best_checkpoint(Path(name).expanduser().parent)) if names_best(name) else name
