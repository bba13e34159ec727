"""What the benchmark (``scripts/bench.py``) changes in TRL, transformers, PEFT and Unsloth objects to measure them.

None of this is part of a training run: the package (``sarashina_grpo``) never imports this module. Each patch is
made on one trainer or model instance (or, for Unsloth's chunk sizing, on one module attribute that is put back) and
says why no public route serves.

- ``time_method`` / ``call_after``: wrap the trainer's private rollout hook (``compat.GENERATE_METHOD``, TRL's
  ``_generate_single_turn``) and its scoring step (``compat.SCORE_METHOD``, ``_generate_and_score_completions``:
  rollout + rewards + old log-probs) per instance. TRL's own ``profiling_context`` times these, but reports only to
  wandb, mlflow and trackio, and a ``TrainerCallback`` sees the whole step, not its parts; the rows need the
  generation / scoring / update split of each step. ``compat.py`` holds the two names and their contract tests.
- ``force_lengths``: ``-real`` rows end each completion at a drawn length. On the default rollout it replaces
  ``model.generate`` on the instance to add a logits processor (``generation_kwargs`` cannot carry processors); the
  fast engine has its own hook for this (``FastRollout.forced_lengths``).
- ``watch_unsloth_chunking``: wraps ``autotune_batch_and_chunks`` in Unsloth's compiled GRPO trainer module to
  record each mini-batch choice it makes from free GPU memory (the profiler's diagnostic; Unsloth reports it nowhere).
- ``torch_varlen_with_gqa``: ``-varlen`` rows. Unsloth sends packed attention through torch's varlen flash kernel
  (one call per layer) only where ``torch.nn.attention.varlen.varlen_attn`` takes ``enable_gqa`` (torch >= 2.12,
  ``unsloth/utils/attention_dispatch.py``, ``_load_torch_varlen_attn``); on the GPU machines' torch 2.11 it attends
  each run of equal-length rows with its own SDPA call. For the row, the module's ``_TORCH_VARLEN_ATTN`` is 2.11's
  kernel behind a wrapper that repeats K/V heads for GQA: what the lock's torch 2.14 runs, less its native GQA.
- ``reset_lora`` and ``forget_packing_checks``: one loaded model serves several rows; each row must start as a new
  process does, so the LoRA gets PEFT's own fresh initialisation (``reset_lora_parameters``) and every verdict
  Unsloth keeps on the model between batches (``_unsloth_seq_packing_*``, ``_unsloth_prefix_grouper_*``) is
  deleted. A training run loads its model once and needs neither.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

# Unsloth's compiled GRPO trainer module: the function that sizes GRPO mini-batches from free GPU memory.
UNSLOTH_CHUNKING_FUNCTION = "autotune_batch_and_chunks"
# What Unsloth's GRPO trainer remembers on the model between batches: packing trust, and its prefix grouping's own
# (unsloth_zoo/rl_replacements.py, "_unsloth_prefix_grouper_grad_verified" and the like).
UNSLOTH_VERDICT_PREFIXES = ("_unsloth_seq_packing_", "_unsloth_prefix_grouper_")
# unsloth/utils/attention_dispatch.py: torch's varlen kernel if Unsloth took it (None otherwise), and its lean path
VARLEN_ATTRIBUTE, LEAN_VARLEN_ATTRIBUTE = "_TORCH_VARLEN_ATTN", "_LEAN_VARLEN"


def sync() -> None:
    """Wait for the GPU's queued work, so that a wall-clock interval holds what ran in it."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_method(trainer, name: str) -> dict[int, float]:
    """Wrap ``trainer.<name>`` (on the instance) so each call's time is booked to the optimizer step it runs in."""
    per_step: dict[int, float] = {}
    inner = getattr(trainer, name)

    def timed(*args, **kwargs):
        sync()
        start = time.perf_counter()
        result = inner(*args, **kwargs)
        sync()
        step = trainer.state.global_step
        per_step[step] = per_step.get(step, 0.0) + time.perf_counter() - start
        return result

    setattr(trainer, name, timed)  # an instance attribute overrides the class method
    return per_step


def call_after(trainer, name: str, hook: Callable[[], None]) -> None:
    """Wrap ``trainer.<name>`` (on the instance) so that ``hook()`` runs after each call returns."""
    inner = getattr(trainer, name)

    def wrapped(*args, **kwargs):
        result = inner(*args, **kwargs)
        hook()
        return result

    setattr(trainer, name, wrapped)


class ForceEOS:
    """HF logits processor for ``-real`` on the default path: row b emits EOS as its ``lengths[b]``-th token."""

    def __init__(self, lengths: list[int], eos: int, prompt_len: int):
        self.lengths, self.eos, self.prompt_len = lengths, eos, prompt_len

    def __call__(self, input_ids, scores):
        index = input_ids.shape[1] - self.prompt_len  # the token being chosen now, 0-based
        rows = [b for b, n in enumerate(self.lengths) if n - 1 == index]
        if rows:
            scores[rows] = float("-inf")
            scores[rows, self.eos] = 0.0
        return scores


def force_lengths(trainer, draw: Callable[[int], list[int]]) -> contextlib.AbstractContextManager:
    """Make every rollout of ``trainer`` end its completions at lengths from ``draw(batch)``; the context puts the
    model's own ``generate`` back."""
    engine = getattr(trainer, "fast_rollout", None)
    if engine is not None:
        engine.forced_lengths = draw
        return contextlib.nullcontext()
    from transformers import LogitsProcessorList

    model = trainer.model  # the object TRL's default path calls .generate on (inside its generation context)
    eos = trainer.eos_token_ids[0] if isinstance(trainer.eos_token_ids, list) else trainer.eos_token_ids
    inner = model.generate
    had_own = "generate" in model.__dict__

    def generate(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        processors.append(ForceEOS(draw(ids.shape[0]), int(eos), ids.shape[1]))
        return inner(*args, logits_processor=processors, **kwargs)

    @contextlib.contextmanager
    def restore():
        model.generate = generate
        try:
            yield
        finally:
            if had_own:
                model.generate = inner
            else:
                del model.generate

    return restore()


def watch_unsloth_chunking(trainer, record: Callable[[int, tuple], None]) -> Callable[[], None]:
    """Call ``record(rows, result)`` whenever Unsloth's compiled GRPO trainer picks its mini-batches. Returns the
    function that puts the original back; on a trainer without that function (TRL's own, or another Unsloth) nothing
    is recorded and the returned function does nothing: a diagnostic only."""
    import sys

    from sarashina_grpo.compat import library_class

    module = sys.modules.get(library_class(trainer).__module__)
    inner = getattr(module, UNSLOTH_CHUNKING_FUNCTION, None)
    if inner is None:
        return lambda: None

    def watched(rows, *args, **kwargs):
        result = inner(rows, *args, **kwargs)
        record(rows, result)
        return result

    setattr(module, UNSLOTH_CHUNKING_FUNCTION, watched)
    return lambda: setattr(module, UNSLOTH_CHUNKING_FUNCTION, inner)


def gqa_varlen(varlen_attn: Callable) -> Callable:
    """``varlen_attn`` with torch 2.12's ``enable_gqa`` on a torch without it: K/V heads repeated to Q's count."""

    def attend(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, enable_gqa=False, **kwargs):
        if enable_gqa and key.shape[-2] != query.shape[-2]:  # (tokens, heads, head_dim)
            groups = query.shape[-2] // key.shape[-2]
            key, value = key.repeat_interleave(groups, dim=-2), value.repeat_interleave(groups, dim=-2)
        return varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, **kwargs)

    return attend


@contextlib.contextmanager
def torch_varlen_with_gqa():
    """For the block, Unsloth's packed attention may take torch's varlen kernel though this torch's ``varlen_attn``
    lacks ``enable_gqa``. Yields "shim" when it patched, "native" when torch has the argument (nothing to do), None
    where Unsloth or torch's varlen kernel is missing."""
    import inspect

    try:
        from torch.nn.attention.varlen import varlen_attn
        from unsloth.utils import attention_dispatch
    except ImportError:
        yield None
        return
    params = inspect.signature(varlen_attn).parameters
    if "enable_gqa" in params:
        yield "native"
        return
    if "window_size" not in params or not hasattr(attention_dispatch, VARLEN_ATTRIBUTE):
        yield None
        return
    saved = {name: getattr(attention_dispatch, name) for name in (VARLEN_ATTRIBUTE, LEAN_VARLEN_ATTRIBUTE)}
    # not Unsloth's lean path: it calls aten's flash op with K/V as given, and 2.11's GQA support there is unchecked
    setattr(attention_dispatch, VARLEN_ATTRIBUTE, gqa_varlen(varlen_attn))
    setattr(attention_dispatch, LEAN_VARLEN_ATTRIBUTE, False)
    try:
        yield "shim"
    finally:
        for name, value in saved.items():
            setattr(attention_dispatch, name, value)


def reset_lora(model) -> None:
    """Give every LoRA layer of ``model`` a fresh start (PEFT's own initialisation: A random, B zero), as a new
    ``get_peft_model`` would."""
    for module in model.modules():
        if hasattr(module, "lora_A") and hasattr(module, "reset_lora_parameters"):
            for name in list(module.lora_A):
                module.reset_lora_parameters(name, True)


def forget_packing_checks(model) -> None:
    """Drop every verdict Unsloth left on ``model`` (and the trust ``callbacks.PackingTrust`` extended)."""
    for name in [n for n in vars(model) if n.startswith(UNSLOTH_VERDICT_PREFIXES)]:
        delattr(model, name)
