"""The sampled completions of each logging step with their rewards, in TensorBoard's text dashboard (tag
``completions``; TRL logs them to W&B or trackio only) and in ``<run>/completions.jsonl`` (``read_completions``).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from transformers import TrainerCallback

from . import compat
from .project import SettingsError, artifact_root
from .rewards import completion_text

COMPLETIONS_FILE = "completions.jsonl"
TENSORBOARD_TAG = "completions"


def plain_value(value):
    """A reward or advantage as JSON can hold it: a float, or None for NaN (a reward that gave no score)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _cell(text) -> str:
    # Markdown table cells: one line, no bare "|", and tags such as <think> shown rather than read as HTML.
    if text is None:
        return "–"
    if isinstance(text, float):
        return f"{text:.3f}"
    return html.escape(str(text)).replace("|", "&#124;").replace("\r", "").replace("\n", "<br>")


def markdown_table(records: list[dict]) -> str:
    """The records as one Markdown table (prompt, completion, each reward, advantage), as TensorBoard renders it."""
    names = list(dict.fromkeys(name for r in records for name in r["rewards"]))
    header = ["prompt", "completion", *names, "advantage"]
    rows = [[r["prompt"], r["completion"], *(r["rewards"].get(n) for n in names), r["advantage"]] for r in records]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(_cell(c) for c in cells) + " |" for cells in rows)])


class CompletionLog(TrainerCallback):
    """At each training log, the latest generation batch goes to TensorBoard and ``completions.jsonl``; a resumed run
    first drops the rows of steps past its checkpoint (they are trained again)."""

    trainer = None  # set by pipeline.build_trainer

    def on_train_begin(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / COMPLETIONS_FILE
        if state.is_world_process_zero and state.global_step > 0 and path.is_file():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= state.global_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        # The end-of-training summary (train_runtime) repeats the last step's batch; evaluation logs have none.
        if (self.trainer is None or not state.is_world_process_zero or not logs or "train_runtime" in logs
                or "loss" not in logs):
            return
        records = [{"step": state.global_step, "prompt": completion_text(row["prompt"]),
                    "completion": completion_text(row["completion"]),
                    "rewards": {name: plain_value(v) for name, v in row["rewards"].items()},
                    "advantage": plain_value(row["advantage"])} for row in compat.completion_rows(self.trainer)]
        if not records:
            return
        with open(Path(args.output_dir) / COMPLETIONS_FILE, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        from transformers.integrations import TensorBoardCallback

        for callback in self.trainer.callback_handler.callbacks:  # its writer logs to the run's log folder
            if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                callback.tb_writer.add_text(TENSORBOARD_TAG, markdown_table(records), global_step=state.global_step)
                callback.tb_writer.flush()
                break


def read_completions(run: str | Path, step: int | None = None) -> list[dict]:
    """A run's logged completions (its folder, or its name under ``artifact/outputs/``), oldest first; or ``step``'s."""
    folder = Path(run).expanduser()
    path = (folder if folder.is_dir() else artifact_root() / "outputs" / str(run)) / COMPLETIONS_FILE
    if not path.is_file():
        raise SettingsError(f"No completions logged in {path.parent}: a run writes {COMPLETIONS_FILE} at each log "
                            "step. Give a run folder (artifact/outputs/<run>) or a run name.")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if step is None or r["step"] == step]
