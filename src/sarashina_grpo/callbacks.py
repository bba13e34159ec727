"""Trainer callbacks: complete-checkpoint markers, a NaN/inf guard, Ctrl-C/SIGTERM that save, then stop, and the
held-out evaluation during training (``Settings.eval_steps``). TRL prints sampled completions itself.

The first NaN/inf loss, gradient norm or learning rate stops the run (``NonFiniteGuard``), so the last good checkpoint
stays the resume point (``checkpoints.mark_complete`` never marks one holding NaN/inf weights).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from contextlib import suppress
from pathlib import Path

from transformers import ProgressCallback, TrainerCallback

from . import compat
from .best import is_better, record_best
from .checkpoints import checkpoint_dir, is_complete, mark_complete, newest_complete_in
from .project import STOP_GRACE_VARIABLE, SettingsError

logger = logging.getLogger(__name__)


class NonFiniteError(SettingsError):
    """Training produced NaN or inf; it was stopped before anything non-finite became a resume point."""


# TRL's run README names a base model given as a local folder "None" (create_model_card keeps hub ids only).
TRL_CARD_NONE = ("[None](https://huggingface.co/None)", 'model="None"')


def name_local_base(readme: Path, base_model: str) -> None:
    """Put ``base_model`` where TRL's run README (``outputs/<run>/README.md``) says "None"."""
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if TRL_CARD_NONE[0] in text:
        text = text.replace(TRL_CARD_NONE[0], f"the local model `{base_model}`")
        readme.write_text(text.replace(TRL_CARD_NONE[1], f'model="{readme.parent}/checkpoint-N"'), encoding="utf-8")


class CheckpointMarker(TrainerCallback):
    """Mark a checkpoint complete once the Trainer has written all of it; stop the run instead when its weights hold
    NaN or inf. With ``base_model``, TRL's run README names it instead of "None" (``name_local_base``)."""

    def __init__(self, base_model: str | None = None):
        self.base_model = base_model

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return control
        if self.base_model:
            name_local_base(Path(args.output_dir) / "README.md", self.base_model)
        folder = checkpoint_dir(args.output_dir, state.global_step)
        if folder.is_dir() and not mark_complete(folder, state.global_step):
            raise NonFiniteError(f"Training stopped at step {state.global_step}: the weights saved in {folder} hold "
                                 "NaN or inf, so it was not marked complete and the last good checkpoint stays the "
                                 "resume point. Start a new run with a lower --learning-rate or --max-grad-norm.")
        return control


class NonFiniteGuard(TrainerCallback):
    """Stop at the first NaN/inf loss, gradient norm or learning rate, before that step's weights are saved: the
    Trainer runs ``on_log`` before it saves the step's checkpoint, so its (by now non-finite) weights never are."""

    WATCHED = ("loss", "grad_norm", "learning_rate")

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = [f"{key} = {logs[key]}" for key in self.WATCHED
               if isinstance((logs or {}).get(key), int | float) and not math.isfinite(logs[key])]
        if not bad:
            return
        good = newest_complete_in(args.output_dir)
        kept = f"the last good checkpoint is {good}" if good else "no checkpoint had been saved yet"
        raise NonFiniteError(f"Training stopped at step {state.global_step}: {', '.join(bad)}. The weights are no "
                             f"longer usable, so nothing from this step on is saved or marked complete ({kept}). Usual "
                             "causes: a learning rate too high for this model or a loose gradient clip; start a new "
                             "run with a lower --learning-rate or --max-grad-norm (resuming keeps the run's settings "
                             "and would meet the same numbers).")


class PackingTrust(TrainerCallback):
    """After each step, extend Unsloth's packing checks that have passed to the run's largest batch (``rows`` of
    ``longest`` tokens; ``compat.extend_packing_trust``): no later step pays 36 extra forwards for a record batch."""

    def __init__(self, rows: int, longest: int):
        self.rows, self.longest = rows, longest
        self.trainer = None  # set by pipeline.build_trainer
        self.step: int | None = None  # the step after which the loss's packing was trusted

    def on_step_end(self, args, state, control, **kwargs):
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        # every step: the scorer (only where TRL scores) or the prefix grouping may first pass on a later batch
        extended = compat.extend_packing_trust(model, tokens=self.rows * self.longest, longest=self.longest)
        if self.step is None and compat.PACKING_TRUST[0] in extended:  # the loss's ("…_grad")
            self.step = state.global_step
            logger.info("Unsloth's sequence-packing checks passed at step %d: packed batches of up to %d rows of %d "
                        "tokens are trusted for the rest of the run, with no re-check.", self.step, self.rows,
                        self.longest)


class GracefulInterrupt(TrainerCallback):
    """First Ctrl-C (SIGINT) or SIGTERM (schedulers, `docker stop`): finish the current step, save a checkpoint,
    stop. A second one, at least ``SAME_PRESS_S`` later, aborts. With ``grace_s``, a step not finished that long after
    it should have (``wait_s``) is not waited for: one ``error:`` line names the last complete checkpoint (``resume``:
    how to continue) and the process ends with code 130 (``os._exit``: the main thread may be stuck where no
    exception reaches it), before a scheduler's SIGKILL would end it without a word."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    # One Ctrl-C can arrive twice within milliseconds: `uv run` forwards the SIGINT to its child, which the terminal
    # has already signalled (same process group). A person pressing again to abort takes longer than this.
    SAME_PRESS_S = 1.0
    EXIT_CODE = 130  # the shell's code for "ended by SIGINT"
    RECENT_STEPS = 8

    def __init__(self, grace_s: float | None = None, resume: str = "--resume", output_dir=None):
        self.requested, self.signal_name = False, None
        self.grace_s, self.resume = grace_s, resume
        self.output_dir, self.step = output_dir, None  # step: the steps done when the running one began
        self.saving = False  # the stopping step is done and its checkpoint is being written
        self._first_at = self._step_began = self._timer = None  # _step_began: when the running step began (monotonic)
        self._durations = []  # seconds of the steps this process ran
        self._previous = {}  # the signal handlers install replaced

    def install(self) -> None:
        for sig in self.SIGNALS:
            with suppress(ValueError):  # not the main thread (e.g. some notebook runners): keep the default behaviour
                self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def last_checkpoint(self) -> Path | None:
        return newest_complete_in(self.output_dir) if self.output_dir else None

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.requested:
            if now - self._first_at < self.SAME_PRESS_S:
                logger.debug("%s again within %.1f s: the same interrupt forwarded twice (uv run); ignored.",
                             signal.Signals(signum).name, self.SAME_PRESS_S)
                return
            raise KeyboardInterrupt
        self.requested, self._first_at, self.signal_name = True, now, signal.Signals(signum).name
        logger.warning(self.stopping_message())
        if self.grace_s is not None:
            self._timer = threading.Timer(self.wait_s(now), self._give_up)
            self._timer.daemon = True
            self._timer.start()

    def wait_s(self, now: float) -> float:
        """Seconds from ``now`` until the running step is given up: its expected rest (as long as the longest of the
        last ``RECENT_STEPS``, the first, compiling one only until a second has ended), then the grace."""
        expected = max((self._durations[1:] or self._durations)[-self.RECENT_STEPS:], default=0.0)
        ran = 0.0 if self._step_began is None else now - self._step_began
        return max(0.0, expected - ran) + self.grace_s

    def stopping_message(self) -> str:
        """What the first signal does: the step it saves, and what a resume starts from if that step never ends."""
        last = self.last_checkpoint()
        fallback = f"a resume starts from {last}" if last else "no checkpoint is saved yet, so nothing can be resumed"
        step = "the current step" if self.step is None else f"step {self.step + 1}"
        saved = f"{self.signal_name}: stopping after {step}, which is saved for a resume to start from;"
        if self.grace_s is None:
            return f"{saved} until it has, {fallback} (Ctrl-C again to abort without saving)."
        return (f"{saved} if it has not finished {self.grace_s:g} s ({STOP_GRACE_VARIABLE}) after a step's usual "
                f"length, the run stops without it and {fallback} (Ctrl-C again to stop now).")

    def _give_up(self) -> None:
        """The grace is over and the step still runs: one line, then end the process at once."""
        last = self.last_checkpoint()
        then = (f"The last saved checkpoint, {last}, is intact; continue with: {self.resume}" if last else
                "No checkpoint had been saved, so there is nothing to resume: start the run again.")
        step = "the current step" if self.step is None else f"step {self.step + 1}"
        what = (f"{step} is still being saved" if self.saving else
                f"{step} has not finished (a slow or hanging reward or generation?)")
        waited = time.monotonic() - self._first_at
        message = (f"error: {self.signal_name} came {waited:.0f} s ago and {what}; stopped without it. {then} (Set "
                   f"{STOP_GRACE_VARIABLE} to wait longer, 0 to wait for the step however long it takes.)\n")
        os.write(2, message.encode())  # not sys.stderr: the main thread may hold its lock
        os._exit(self.EXIT_CODE)

    def on_train_begin(self, args, state, control, **kwargs):
        self.output_dir, self.step = args.output_dir, state.global_step

    def on_step_begin(self, args, state, control, **kwargs):
        self.step = state.global_step  # the step running now is step + 1
        self._step_began = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_began is not None:
            self._durations.append(time.monotonic() - self._step_began)
        if self.requested:
            self.saving = control.should_save = control.should_training_stop = True
        return control


# Logged during training: the figures of `sarashina-grpo eval` that describe format and language (lengths are in
# the eval folder's metrics.json; token counts and answer accuracy only where they exist).
HELD_OUT_KEYS = ("strict_format_rate", "soft_format_rate", "xmlcount_mean", "think_purity_mean", "response_purity_mean",
                 "purity_mean", "latin_run_rate", "think_leak_mean", "mean_tokens", "answer_accuracy")
HELD_OUT_BATCH = 16  # prompts generated together: the default eval_limit in one batch


class HeldOutEval(TrainerCallback):
    """Before the first step and every ``every`` steps, answer the held-out rows and score them as ``sarashina-grpo
    eval`` does: TensorBoard gets ``eval/<HELD_OUT_KEYS>``, the outputs go to ``<output_dir>/eval/step-N/``.
    ``best_metric``: a new best after step 0 saves and marks its checkpoint (``track_best``); ``patience``: that many
    evaluations without one save and stop. Greedy unless ``gen`` samples (the demo's: from a torch RNG forked and
    seeded with ``seed``, leaving training's own stream as it was). The main process evaluates."""

    def __init__(self, rows, *, every: int, system_prompt: str, max_new_tokens: int, gen=None,
                 samples_per_prompt: int = 1, seed: int = 0, best_metric: str | None = None, patience: int = 0):
        from .inference import GenerationSettings

        self.rows, self.every, self.system_prompt = rows, every, system_prompt
        self.prompts, self.roles = [r.prompt for r in rows], [r.role or None for r in rows]
        self.gen = gen or GenerationSettings(max_new_tokens=max_new_tokens, do_sample=False, batch_size=HELD_OUT_BATCH)
        self.samples_per_prompt, self.seed = samples_per_prompt, seed
        self.best_metric, self.patience = (best_metric if best_metric not in (None, "none") else None), patience
        self.since_best = 0  # evaluations since the last new best (counted from this process's start)
        self.recording = None  # (step, value) of a new best whose checkpoint is being saved
        self.trainer = None  # set by pipeline.build_trainer: logging goes through it

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:  # a resumed run has its baseline already
            self.evaluate(args, state, kwargs["model"], kwargs["processing_class"])

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            metrics = self.evaluate(args, state, kwargs["model"], kwargs["processing_class"])
            if self.best_metric:
                self.track_best(args, state, control, metrics)

    def track_best(self, args, state, control, metrics: dict | None) -> None:
        """Mark a new best (save this step, keep it from rotation, record it in ``run.json``) or count towards
        ``patience``. Every process takes the main process's decision: saving and stopping are collective."""
        value = (metrics or {}).get(self.best_metric)
        new_best = value is not None and is_better(self.best_metric, value, state.best_metric)
        if self.trainer.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            new_best, value = broadcast_object_list([(new_best, value)], from_process=0)[0]
        if new_best:
            state.best_metric, state.best_global_step = value, state.global_step
            state.best_model_checkpoint = str(checkpoint_dir(args.output_dir, state.global_step))
            self.recording, self.since_best = (state.global_step, value), 0
            control.should_save = True
            return
        self.since_best += 1
        if self.patience and self.since_best >= self.patience:
            logger.warning("Stopping at step %d: %s has not improved on %s (step %s) for %d held-out evaluations "
                           "(--patience %d).", state.global_step, self.best_metric, state.best_metric,
                           state.best_global_step, self.since_best, self.patience)
            control.should_save = control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        if self.recording and self.recording[0] == state.global_step and state.is_world_process_zero:
            if is_complete(checkpoint_dir(args.output_dir, state.global_step)):  # CheckpointMarker ran first
                record_best(args.output_dir, state.global_step, self.best_metric, self.recording[1])
            self.recording = None

    def evaluate(self, args, state, model, tokenizer) -> dict | None:
        import torch

        from .evaluation import attach_answers, generate_outputs, write_eval

        if not state.is_world_process_zero:
            return None
        was_training = model.training
        model.eval()
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        own_rng = torch.random.fork_rng(devices=devices, enabled=self.gen.do_sample)  # greedy decoding draws nothing
        try:  # in the context TRL's own rollout generates in: Unsloth's inference mode, and back after
            with compat.generation_context(self.trainer), own_rng:
                if self.gen.do_sample:
                    torch.manual_seed(self.seed)
                outputs = generate_outputs(model, tokenizer, self.prompts, self.gen, self.samples_per_prompt,
                                           progress=False, roles=self.roles, system_prompt=self.system_prompt)
        finally:
            model.train(was_training)
        attach_answers(outputs, self.rows, self.samples_per_prompt)
        folder = Path(args.output_dir) / "eval" / f"step-{state.global_step}"
        metrics = write_eval(outputs, folder, {"step": state.global_step, "prompts": len(self.prompts)})
        logs = {f"eval_{k}": metrics[k] for k in HELD_OUT_KEYS if metrics.get(k) is not None}
        # "eval_" keys: eval/<metric> in TensorBoard, logged apart from TRL's figures (pipeline.trainer_class).
        # on_log clears control.should_log: keep it, or this step's training log would be skipped.
        should_log = self.trainer.control.should_log
        self.trainer.log(logs)
        self.trainer.control.should_log = should_log
        return metrics


# What the compact progress line shows, in order: (logged key, short name).
COMPACT_KEYS = (("reward", "reward"), ("rewards/strict_format_reward/mean", "strict"), ("loss", "loss"),
                ("kl", "kl"), ("eval_strict_format_rate", "held-out strict rate"),
                ("eval_think_purity_mean", "held-out think purity"))


def compact_line(logs: dict, step: int) -> str | None:
    """One short line for a Trainer log (``None`` for the end-of-training summary, which has no step figures)."""
    parts = [f"{name} {logs[key]:.3f}" for key, name in COMPACT_KEYS if isinstance(logs.get(key), int | float)]
    return f"step {step}: " + ", ".join(parts) if parts else None


class CompactProgress(ProgressCallback):
    """The progress bar with one short line per log (``compact_line``), not transformers' dict of every TRL metric."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = compact_line(logs or {}, state.global_step)
        if state.is_world_process_zero and self.training_bar is not None and line:
            self.training_bar.write(line)
