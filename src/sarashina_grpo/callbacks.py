"""Trainer callbacks: complete-checkpoint markers, a NaN/inf guard, Ctrl-C/SIGTERM that save, then stop, and the
held-out evaluation during training (``Settings.eval_steps``).

Sampled completions are printed by TRL itself (``Settings.log_completions``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path

from transformers import ProgressCallback, TrainerCallback

from . import compat
from .checkpoints import checkpoint_dir, is_complete, mark_complete, newest_complete_in
from .guards import NonFiniteError, check_logs
from .project import STOP_GRACE_VARIABLE

logger = logging.getLogger(__name__)


# TRL's run README names a base model given as a local folder "None" (create_model_card keeps hub ids only).
TRL_CARD_NONE = ("[None](https://huggingface.co/None)", 'model="None"')


def name_local_base(readme: Path, base_model: str) -> None:
    """Put ``base_model`` where TRL's run README (``outputs/<run>/README.md``) says "None"."""
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if TRL_CARD_NONE[0] in text:
        text = text.replace(TRL_CARD_NONE[0], f"the local model `{base_model}`")
        text = text.replace(TRL_CARD_NONE[1], f'model="{readme.parent}/checkpoint-N"')
        readme.write_text(text, encoding="utf-8")


class CheckpointMarker(TrainerCallback):
    """Mark a checkpoint complete after the Trainer has written all of it (model, optimizer, scheduler, state);
    stop the run instead when its weights hold NaN or inf (such a checkpoint must never be resumed from). With
    ``base_model``, the run README that TRL writes on each save names it instead of "None" (``name_local_base``)."""

    def __init__(self, base_model: str | None = None):
        self.base_model = base_model

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            if self.base_model:
                name_local_base(Path(args.output_dir) / "README.md", self.base_model)
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


class PackingTrust(TrainerCallback):
    """After each step, trust the packing comparisons of Unsloth's that have passed (on that step's real batch) up
    to the run's largest batch (``compat.extend_packing_trust``): no later step pays 36 extra forwards for a batch
    longer than any before. The loss packs every step; the scorer only where TRL scores (β > 0, or several optimizer
    steps per generation), so the line saying so is logged once the loss's comparison passed. ``rows``: the
    generation batch (the scorer packs it whole, the loss a part); ``longest``: a row's most tokens, prompt bound
    plus completion bound."""

    def __init__(self, rows: int, longest: int):
        self.rows, self.longest = rows, longest
        self.trainer = None  # set by pipeline.build_trainer
        self.step: int | None = None  # the step after which the loss's packing was trusted

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer is None:
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        # every step: the scorer, or Unsloth's prefix grouping, may first pass its check on a later batch
        extended = compat.extend_packing_trust(model, tokens=self.rows * self.longest, longest=self.longest)
        if self.step is None and compat.PACKING_TRUST[0] in extended:  # the loss's ("…_grad")
            self.step = state.global_step
            logger.info("Unsloth's sequence-packing checks passed at step %d: packed batches of up to %d rows of %d "
                        "tokens are trusted for the rest of the run, with no re-check.", self.step, self.rows,
                        self.longest)


class GracefulInterrupt(TrainerCallback):
    """First Ctrl-C (SIGINT) or SIGTERM: finish the current step, save a checkpoint, stop. A second one, at least
    ``SAME_PRESS_S`` later, aborts.

    SIGTERM is what schedulers and `docker stop` send before killing, so it gets the same grace. One Ctrl-C can
    arrive twice within milliseconds: `uv run` forwards the SIGINT it gets to its child, which the terminal has
    already signalled as a member of the same process group (and `timeout -s INT` reaches it through uv alike).

    With ``grace_s``, a step that has not finished that many seconds after it should have (a reward or a
    generation that hangs) is not waited for. "Should have" is when the running step began plus the longest of the
    last ``RECENT_STEPS`` steps (the process's first step, which compiles, counts only until a second one has
    ended), so a signal early in a 25 s step still gets its checkpoint with a 20 s grace. One ``error:`` line then
    names the last complete checkpoint and the process ends with exit code 130 (``os._exit``: the main thread may
    be stuck where no exception reaches it), before a scheduler's SIGKILL would end it without a word. The
    checkpoints already saved stay as they are. ``resume`` is how to continue the run, for those lines.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    # Signals this close to the first are the same key press delivered twice; a person pressing again to abort
    # takes longer than this.
    SAME_PRESS_S = 1.0
    EXIT_CODE = 130  # the shell's code for "ended by SIGINT"
    RECENT_STEPS = 8

    def __init__(self, grace_s: float | None = None, resume: str = "--resume", output_dir=None):
        self.requested = False
        self.signal_name = None
        self.grace_s, self.resume = grace_s, resume
        self.output_dir, self.step = output_dir, None  # step: the steps done when the running one began
        self.saving = False  # the stopping step is done and its checkpoint is being written
        self._first_at = None
        self._step_began = None  # time.monotonic() when the running step began
        self._durations = []  # seconds of the steps this process ran
        self._previous = {}
        self._timer = None

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
        self.requested, self._first_at = True, now
        self.signal_name = signal.Signals(signum).name
        logger.warning(self.stopping_message())
        if self.grace_s is not None:
            self._timer = threading.Timer(self.wait_s(now), self._give_up)
            self._timer.daemon = True
            self._timer.start()

    def wait_s(self, now: float) -> float:
        """Seconds from ``now`` until the running step is given up: its expected rest (a step takes the longest of
        the recent ones; 0 before any step has ended), then the grace."""
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
HELD_OUT_KEYS = ("strict_format_rate", "soft_format_rate", "xmlcount_mean", "think_purity_mean",
                 "response_purity_mean", "purity_mean", "latin_run_rate", "think_leak_mean", "mean_tokens",
                 "answer_accuracy")
HELD_OUT_BATCH = 16  # prompts generated together: the default eval_limit in one batch


class HeldOutEval(TrainerCallback):
    """Before the first step and every ``every`` steps (``Settings.eval_steps``), answer the held-out rows
    (with ``system_prompt``) and score them as ``sarashina-grpo eval`` does (``evaluation.write_eval``):
    TensorBoard gets ``eval/strict_format_rate`` and the other ``HELD_OUT_KEYS``; the outputs go to
    ``<output_dir>/eval/step-N/``.

    With ``best_metric`` (a key of ``config.BEST_METRICS``), an evaluation after step 0 that reaches a new best
    value saves that step's checkpoint and marks it: ``TrainerState.best_model_checkpoint`` (transformers' rotation
    keeps it) and ``run.json``'s ``best`` (``best.record_best``, once the checkpoint is complete). With
    ``patience``, that many evaluations in a row without a new best save a checkpoint and stop the run.

    By default greedy, up to ``max_new_tokens`` (the run's ``max_completion_length``): the curve moves only when the
    model does. A sampling ``gen`` (the demo's) draws from a torch RNG forked and seeded with ``seed`` for each
    evaluation, so every point sees the same noise and training's own random stream is left exactly as it was. The
    main process evaluates; ``trainer`` is set by ``pipeline.build_trainer`` (logging goes through it)."""

    def __init__(self, rows, *, every: int, system_prompt: str, max_new_tokens: int, gen=None,
                 samples_per_prompt: int = 1, seed: int = 0, best_metric: str | None = None, patience: int = 0):
        from .inference import GenerationSettings

        self.rows = rows
        self.prompts = [r.prompt for r in rows]
        self.roles = [r.role or None for r in rows]
        self.every = every
        self.system_prompt = system_prompt
        self.gen = gen or GenerationSettings(max_new_tokens=max_new_tokens, do_sample=False, batch_size=HELD_OUT_BATCH)
        self.samples_per_prompt, self.seed = samples_per_prompt, seed
        self.best_metric = best_metric if best_metric not in (None, "none") else None
        self.patience = patience
        self.since_best = 0  # evaluations since the last new best (counted from this process's start)
        self.recording = None  # (step, value) of a new best whose checkpoint is being saved
        self.trainer = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:  # a resumed run has its baseline already
            self.evaluate(args, state, kwargs["model"], kwargs["processing_class"])

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            metrics = self.evaluate(args, state, kwargs["model"], kwargs["processing_class"])
            if self.best_metric:
                self.track_best(args, state, control, metrics)

    def track_best(self, args, state, control, metrics: dict | None) -> None:
        """Mark a new best (save this step, keep it from rotation) or count towards ``patience``. Every process
        takes the main process's decision: saving and stopping are collective."""
        from .best import is_better

        value = (metrics or {}).get(self.best_metric)
        new_best = value is not None and is_better(self.best_metric, value, state.best_metric)
        if getattr(self.trainer, "accelerator", None) is not None and self.trainer.accelerator.num_processes > 1:
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
        from .best import record_best

        if self.recording and self.recording[0] == state.global_step and state.is_world_process_zero:
            if is_complete(checkpoint_dir(args.output_dir, state.global_step)):  # CheckpointMarker ran first
                record_best(args.output_dir, state.global_step, self.best_metric, self.recording[1])
            self.recording = None

    @contextmanager
    def own_random_stream(self):
        if not self.gen.do_sample:  # greedy decoding draws nothing
            yield
            return
        import torch

        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            yield

    def evaluate(self, args, state, model, tokenizer) -> dict | None:
        from .evaluation import attach_answers, generate_outputs, write_eval

        if not state.is_world_process_zero:
            return None
        was_training = model.training
        model.eval()
        # The context TRL's own rollout generates in: Unsloth switches to its inference mode there and back after.
        context = compat.generation_context(self.trainer) if self.trainer is not None else nullcontext()
        try:
            with context, self.own_random_stream():
                outputs = generate_outputs(model, tokenizer, self.prompts, self.gen, self.samples_per_prompt,
                                           progress=False, roles=self.roles, system_prompt=self.system_prompt)
        finally:
            model.train(was_training)
        attach_answers(outputs, self.rows, self.samples_per_prompt)
        folder = Path(args.output_dir) / "eval" / f"step-{state.global_step}"
        metrics = write_eval(outputs, folder, {"step": state.global_step, "prompts": len(self.prompts)})
        logs = {f"eval_{k}": metrics[k] for k in HELD_OUT_KEYS if metrics.get(k) is not None}
        if self.trainer is not None:
            # "eval_" keys become eval/<metric> in TensorBoard (transformers' rewrite_logs), and the project's
            # trainer logs them apart from TRL's training figures (pipeline.trainer_class).
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
    """The progress bar with one short line per log (``compact_line``) instead of transformers' ~1,500-character
    dict of every TRL metric (all of them are in TensorBoard and ``trainer_state.json``)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = compact_line(logs or {}, state.global_step)
        if state.is_world_process_zero and self.training_bar is not None and line:
            self.training_bar.write(line)
