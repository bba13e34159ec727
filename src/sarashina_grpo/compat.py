"""The one place that touches private or version-specific names of TRL, Unsloth, PEFT and bitsandbytes.

Each name has a contract test (``tests/test_compat.py``) that fails when the locked versions (``uv.lock``) move, so
an upgrade breaks a test in CI instead of a training run; docs/architecture.md lists every name, where it is used,
why there is no public road, and its test. Lookups that can fail raise ``CompatError``: there is no silent fallback
to a no-op. What only the benchmark patches is in ``scripts/bench_patches.py``, outside the package.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path

from .project import FALSE_WORDS

# TRL's rollout hook, replaced per instance by rollout="fast". Not TRL's public rollout_func: that one is handed chat
# messages and must return the prompt ids itself, so the fast rollout would have to copy TRL's tokenization
# (_tokenize_prompts); this hook takes TRL's prompt ids and returns completion ids (docs/speed.md).
GENERATE_METHOD = "_generate_single_turn"
GENERATE_PARAMETERS = ("prompt_ids", "images", "multimodal_fields", "num_generations", "has_tool_images")
UNSLOTH_ROPE_METHOD = "_unsloth_recompute_inv_freq"  # the config's frequencies: inv_freq can be stale (transformers 5)
TRL_UNWRAP_MODULE = "trl.models.utils"
# One step's rollout plus rewards and old log-probs (the benchmark times it; the KL reference tests call it).
SCORE_METHOD = "_generate_and_score_completions"


COMPLETION_LOGS = "_logs"
COMPLETION_LOG_KEYS = ("prompt", "completion", "rewards", "advantages")


class CompatError(RuntimeError):
    """A library internal this project relies on is missing or changed: the installed versions differ from the lock."""


def check_generate_hook(trainer_class) -> None:
    """Raise unless ``trainer_class`` has the rollout hook with the signature the fast rollout replaces."""
    method = getattr(trainer_class, GENERATE_METHOD, None)
    if method is None:
        raise CompatError(f"{trainer_class.__name__}.{GENERATE_METHOD} is gone: the installed TRL is not the locked "
                          "one (uv.lock); rollout='fast' cannot hook into it. Use rollout='default'.")
    params = tuple(inspect.signature(method).parameters)[1:]
    if params != GENERATE_PARAMETERS:
        raise CompatError(f"{trainer_class.__name__}.{GENERATE_METHOD} takes {params}, expected "
                          f"{GENERATE_PARAMETERS}: the installed TRL is not the locked one. Use rollout='default'.")


def library_class(trainer) -> type:
    """The library's trainer class under the project's subclass (``pipeline.trainer_class``): TRL's
    ``GRPOTrainer``, or the copy Unsloth compiled into its own module (where its patched functions live)."""
    return next(c for c in type(trainer).__mro__ if not c.__module__.startswith("sarashina_grpo"))


def replace_generation(trainer, generate) -> None:
    """Make ``trainer`` generate with ``generate(prompt_ids, images, multimodal_fields, num_generations,
    has_tool_images=False) -> (completion_ids, logprobs)`` instead of its own rollout."""
    check_generate_hook(library_class(trainer))
    setattr(trainer, GENERATE_METHOD, generate)  # an instance attribute overrides the class method


def generation_context(trainer):
    """The context manager the trainer's own rollout generates in (``unwrap_model_for_generation``).

    Unsloth compiles a patched copy of the trainer into its own module and binds its version of the function there,
    so the trainer's module is searched first, then TRL's."""
    unwrap = getattr(sys.modules.get(library_class(trainer).__module__), "unwrap_model_for_generation", None)
    if unwrap is None:
        unwrap = getattr(importlib.import_module(TRL_UNWRAP_MODULE), "unwrap_model_for_generation", None)
    if unwrap is None:
        raise CompatError(f"unwrap_model_for_generation is in neither the trainer's module nor {TRL_UNWRAP_MODULE}: "
                          "the installed TRL is not the locked one.")
    return unwrap(trainer.model_wrapped, trainer.accelerator,
                  gather_deepspeed3_params=trainer.args.ds3_gather_for_generation)


TRAINER_METRICS = "_metrics"


def scoring_step(trainer):
    """The trainer's bound scoring step (generate, reward, advantages, log-probs), as TRL defines it."""
    method = getattr(trainer, SCORE_METHOD, None)
    if not callable(method):
        raise CompatError(f"GRPOTrainer.{SCORE_METHOD} is gone: the installed TRL is not the locked one (uv.lock).")
    return method


def replace_scoring_step(trainer, score) -> None:
    """Make ``trainer`` score its generation batches with ``score(inputs) -> dict`` (per instance)."""
    scoring_step(trainer)
    setattr(trainer, SCORE_METHOD, score)


def log_metric(trainer, name: str, value: float) -> None:
    """Add ``value`` to the training figures TRL averages into its next log (``train/<name>`` in TensorBoard)."""
    metrics = getattr(trainer, TRAINER_METRICS, None)
    if not isinstance(metrics, dict) or "train" not in metrics:
        raise CompatError(f"GRPOTrainer.{TRAINER_METRICS} has no 'train' figures: the installed TRL is not the "
                          "locked one (uv.lock).")
    metrics["train"][name].append(value)


def completion_rows(trainer) -> list[dict]:
    """The completions TRL keeps for its completion table (the latest generation batch, gathered from every
    process): one ``{"prompt", "completion", "rewards": {reward name: value}, "advantage"}`` per completion, with
    prompts and completions as TRL has them (chat messages or text)."""
    logs = getattr(trainer, COMPLETION_LOGS, None)
    if not isinstance(logs, dict) or not all(key in logs for key in COMPLETION_LOG_KEYS):
        raise CompatError(f"GRPOTrainer.{COMPLETION_LOGS} no longer holds {COMPLETION_LOG_KEYS}: the installed TRL "
                          "is not the locked one (uv.lock); the completion log cannot read the completions.")
    rewards = {name: list(values) for name, values in logs["rewards"].items()}
    return [{"prompt": prompt, "completion": completion,
             "rewards": {name: values[i] if i < len(values) else None for name, values in rewards.items()},
             "advantage": advantage}
            for i, (prompt, completion, advantage) in enumerate(zip(logs["prompt"], logs["completion"],
                                                                    logs["advantages"], strict=False))]


def rotary_inv_freq(rotary):
    """Inverse rotary frequencies of a Llama rotary module: Unsloth's recomputation when it patched the module."""
    recompute = getattr(rotary, UNSLOTH_ROPE_METHOD, None)
    if recompute is not None:
        return recompute()
    if not hasattr(rotary, "inv_freq"):
        raise CompatError(f"{type(rotary).__name__} has neither {UNSLOTH_ROPE_METHOD} nor inv_freq.")
    return rotary.inv_freq


def dense_weight(linear):
    """The weight of a (possibly bitsandbytes 4-bit) linear layer as a dense tensor."""
    weight = linear.weight
    if getattr(weight, "quant_state", None) is not None:  # the same dequantize bitsandbytes' matmul does
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state)
    return weight.detach()


def lora_pairs(module) -> list[tuple[object, object, float, bool]]:
    """(A, B, scaling, uses_dora) of each active adapter of a PEFT LoRA layer; none when adapters are off or merged."""
    if not hasattr(module, "lora_A") or getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
        return []
    dora = getattr(module, "use_dora", {})
    return [(module.lora_A[name].weight.detach(), module.lora_B[name].weight.detach(), module.scaling[name],
             bool(dora.get(name))) for name in module.active_adapters if name in module.lora_A]


TRL_REFERENCE_ADAPTER = "ref"


def drop_reference_adapter(model) -> None:
    """Remove the frozen reference adapter an earlier ``GRPOTrainer`` (``beta > 0``) added to ``model``, so that a
    new trainer can add its own; nothing to do on a model that never had one."""
    if TRL_REFERENCE_ADAPTER in (getattr(model, "peft_config", None) or {}):
        model.delete_adapter(TRL_REFERENCE_ADAPTER)


# --- the KL reference -------------------------------------------------------------------------------------------
# TRL 1.15 (trl/trainer/grpo_trainer.py, ``__init__``): for a PEFT policy and beta > 0 it copies every ``.default.``
# parameter into an adapter "ref"; ``_generate_and_score_completions`` then scores the reference under
# ``use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None)``, where None means
# ``model.disable_adapter()``. The names below are those of that code (contract tests pin them).
POLICY_ADAPTER = "default"
REFERENCE_CHOICE = 'use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None)'
LORA_FACTORS = {"lora_A": "lora_B", "lora_embedding_A": "lora_embedding_B"}  # an adapter's delta is B·A (scaled)


def adapter_is_identity(model, adapter: str) -> bool:
    """True when PEFT ``adapter`` provably changes no output of ``model``: a plain LoRA (no DoRA, bias, saved module
    copies or trainable tokens) whose every layer has an all-zero A or B factor. Anything else is False, including
    parameters this process cannot see (ZeRO-3 shards): the caller then keeps the adapter, never guesses."""
    config = (getattr(model, "peft_config", None) or {}).get(adapter)
    if config is None or getattr(config.peft_type, "value", config.peft_type) != "LORA":
        return False
    if (getattr(config, "use_dora", False) or getattr(config, "lora_bias", False)
            or getattr(config, "modules_to_save", None) or getattr(config, "trainable_token_indices", None)):
        return False
    zero: dict[str, dict[str, bool]] = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        if adapter not in parts[1:]:
            continue
        at = parts.index(adapter, 1)
        kind = parts[at - 1]
        if kind not in {*LORA_FACTORS, *LORA_FACTORS.values()} or param.numel() == 0:
            return False  # a per-adapter weight we do not know how to read, or one held elsewhere
        zero.setdefault(".".join(parts[: at - 1]), {})[kind] = not bool(param.detach().any())
    if not zero:
        return False
    return all(any(factors.get(a, False) or factors.get(b, False) for a, b in LORA_FACTORS.items())
               and any(a in factors for a in LORA_FACTORS) for factors in zero.values())


def copy_adapter(model, source: str, target: str) -> None:
    """Add ``target`` as a frozen copy of adapter ``source``, the way TRL's ``GRPOTrainer.__init__`` adds "ref"."""
    import torch

    model.add_adapter(target, model.peft_config[source])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if f".{source}." in name:
                model.get_parameter(name.replace(f".{source}.", f".{target}.")).copy_(param)


def choose_reference(trainer) -> str | None:
    """Make the trainer's KL reference exact, and as cheap as exactness allows; call it right after construction.

    The reference TRL means is the policy as the trainer found it (its starting adapter). When that adapter is the
    identity (a fresh LoRA: B = 0), it *is* the base model, and TRL's own fallback (adapter disabled: no LoRA
    matmuls, no second adapter in memory or in checkpoints) gives the same log-probs; so the "ref" copy is dropped.
    When it is not (a LoRA checkpoint given as the model), the copy stays, and is added where Unsloth's compiled
    trainer removed it (it would otherwise score the base model, not the starting adapter).
    Resuming from a checkpoint that holds a copy is made to load the trained policy too (``resume_loads_the_policy``).
    Returns "base", "ref" (the frozen copy), or None (beta 0 or no PEFT adapter: no reference involved)."""
    model = trainer.model
    config = getattr(model, "peft_config", None)
    if not trainer.beta or not config or POLICY_ADAPTER not in config:
        return None
    # Checkpoints keep the copy in ref/ next to the policy (and so did every plain-TRL checkpoint before this).
    resume_loads_the_policy(trainer)
    if TRL_REFERENCE_ADAPTER in config and adapter_is_identity(model, TRL_REFERENCE_ADAPTER):
        model.delete_adapter(TRL_REFERENCE_ADAPTER)
        return "base"
    if TRL_REFERENCE_ADAPTER not in config:
        if adapter_is_identity(model, POLICY_ADAPTER):
            return "base"
        copy_adapter(model, POLICY_ADAPTER, TRL_REFERENCE_ADAPTER)
    return TRL_REFERENCE_ADAPTER


TRAINER_LOAD_METHOD = "_load_from_checkpoint"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # PEFT's names for the root adapter


def resume_loads_the_policy(trainer) -> None:
    """Make resuming load the trained adapter of a checkpoint that also holds TRL's "ref" copy.

    transformers 5's ``Trainer._load_from_checkpoint`` loads only the adapter sub-folders when a checkpoint has any
    (``ref/``), leaving the trained adapter saved in the checkpoint's root unread: the run would go on from its
    starting weights. After it, when there are sub-folders, the root adapter is loaded into the active one."""
    load = getattr(trainer, TRAINER_LOAD_METHOD, None)
    if load is None:
        raise CompatError(f"Trainer.{TRAINER_LOAD_METHOD} is gone: the installed transformers is not the locked one.")

    def load_with_policy(resume_from_checkpoint, model=None):
        load(resume_from_checkpoint, model)
        peft_model = trainer.accelerator.unwrap_model(model if model is not None else trainer.model)
        active = peft_model.active_adapter
        folder = Path(resume_from_checkpoint)
        if has_adapter(folder) and any(has_adapter(sub) for sub in folder.iterdir() if sub.is_dir()):
            peft_model.load_adapter(str(resume_from_checkpoint), active, is_trainable=True)
            peft_model.set_adapter(active)
        if adapter_is_identity(peft_model, TRL_REFERENCE_ADAPTER):  # an old checkpoint's copy of a fresh LoRA
            peft_model.delete_adapter(TRL_REFERENCE_ADAPTER)

    setattr(trainer, TRAINER_LOAD_METHOD, load_with_policy)


def has_adapter(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ADAPTER_WEIGHTS)


# --- Unsloth's sequence packing ---------------------------------------------------------------------------------
# Unsloth's compiled GRPO trainer runs a batch's rows as one packed varlen forward (the scorer without grad in
# unsloth/models/rl_replacements.py, the loss with grad in unsloth_zoo/rl_replacements.py) and trusts the packing only
# after comparing it with one forward per row, no grad. It repeats that comparison whenever a batch's packed length T
# or its longest row exceeds what it compared before: 36 extra forwards at 36 completions, on a step that happens to
# bring a new record (issue 17's slow 4th step). It keeps its trust in these attributes of the unwrapped model:
PACKING_TRUST = ("_unsloth_seq_packing_grad", "_unsloth_seq_packing_nograd")  # + "_ok", "_verified_T", "_verified_seg"
PACKING_VARIABLE = "UNSLOTH_GRPO_SEQ_PACKING"  # "0" turns Unsloth's packing off
HIDDEN_STATES_VARIABLE = "UNSLOTH_RETURN_HIDDEN_STATES"  # "1": the forward returns hidden states as .logits
PACKING_TOLERANCE = 0.7  # Unsloth's own pass band in nats of log-prob: kernel noise ~0.25, mixed-up rows >= 2.4


GRAD, NOGRAD = PACKING_TRUST
CHUNK = 256  # positions per log-softmax: a [CHUNK, vocab] fp32 block, not [longest, vocab]


def env_on(name: str, default: str = "1") -> bool:
    """A switch in the environment: "0", "false", "no" or "off" is off; unset or empty is ``default``."""
    return (os.environ.get(name, "").strip() or default).lower() not in FALSE_WORDS


def packing_enabled() -> bool:
    return env_on(PACKING_VARIABLE)


def packing_lengths(rows: int, longest: int) -> list[int]:
    """Mixed row lengths for ``check_packing_upfront``: ``rows`` rows of three lengths up to ``longest`` in turn,
    plus one short row that brings the total to ``rows × longest``. Unequal neighbours matter: Unsloth attends one
    run of equal-length rows per call and hands unequal runs to other kernels (torch's varlen attention where torch
    has it); the check also packs ``rows`` equal rows, the layout of a batch whose completions all hit the limit."""
    lengths = [max(1, longest - i % 3) for i in range(rows)]
    missing = rows * longest - sum(lengths)
    if missing:
        lengths.insert(rows // 2, max(missing, 2))
    return lengths


def _log_probs(out, ids, head, temperature: float):
    """Log-probs of each next token of one row, from its hidden states (through ``head``) or its logits, at the
    sampling temperature (Unsloth compares them at that temperature); CHUNK positions at a time."""
    import torch

    parts = []
    for at in range(0, len(ids) - 1, CHUNK):
        rows = out[at:min(at + CHUNK, len(ids) - 1)]
        logits = rows if rows.shape[-1] != head.shape[1] else rows.to(head.dtype) @ head.T
        logits = torch.log_softmax(logits.float() / temperature, -1)
        parts.append(logits.gather(-1, ids[at + 1:at + 1 + len(rows), None]).squeeze(-1))
    return torch.cat(parts)


def _enter_training(model) -> None:
    """Train mode as Unsloth's trainer enters it before each step (its ``train`` wrapper and the rollout's
    ``for_training``): gradient checkpointing back on. The compiled trainer's ``__init__`` ends in ``for_inference``,
    which turns checkpointing off on every layer; ``model.train()`` alone leaves it off, and a forward with grad then
    keeps every layer's activations (55.9 GiB at 36 rows of 606 tokens on an H100, against 13.5 GiB in training)."""
    if hasattr(model, "for_training"):
        model.for_training(use_gradient_checkpointing=getattr(model, "_unsloth_gradient_checkpointing", True))
    else:
        model.train()


def _leave_training(model, was_training: bool) -> None:
    """Back to the mode ``_enter_training`` found, the way Unsloth's ``train`` wrapper goes back."""
    if was_training:
        _enter_training(model)
    elif hasattr(model, "for_inference"):
        model.for_inference()
    else:
        model.train(False)


def check_packing_upfront(model, *, loss_rows: int, score_rows: int, longest: int, temperature: float = 1.0,
                          dtype=None, seed: int = 0) -> dict[str, float]:
    """Do Unsloth's packing checks once, at the largest batches a run makes, instead of again at each longer batch.

    Random rows of ``longest`` tokens (rows leaking into each other show on any text) go through one forward each:
    the reference. Then, for the loss (grad on, ``loss_rows`` rows) and for the scorer (inference mode,
    ``score_rows`` rows), two packed layouts of prefixes of those rows go through the packed forward as Unsloth runs
    it there: all rows equally long, and mixed lengths (``packing_lengths``); the loss's packed forwards are
    followed by a backward of zero, as a training forward is, and their (zero) gradients removed. A causal model
    gives a prefix the log-probs of the whole row's first positions, so one reference serves both. Returns the
    largest log-prob gap of each ("grad", "nograd"), at the sampling ``temperature``. Where a gap is within
    Unsloth's tolerance (and at least two rows were packed), the trust Unsloth would have built up batch by batch is
    recorded for what was checked: packed lengths up to ``rows × longest`` (plus a token or two), rows up to
    ``longest``; never narrowed, and a model Unsloth has ruled unsafe stays so. Beyond it nothing is recorded, and
    Unsloth checks each batch. ``model`` is the unwrapped PEFT model with Unsloth's Llama forward; it is checked in
    training's mode, gradient checkpointing included (``_enter_training``), and left in the mode it came in."""
    import torch

    device = next(model.parameters()).device
    vocab = min(model.config.vocab_size, model.get_input_embeddings().num_embeddings)
    generator = torch.Generator().manual_seed(seed)
    base = torch.randint(0, vocab, (max(loss_rows, score_rows, 1), longest), generator=generator).to(device)
    head = model.get_output_embeddings().weight
    autocast = torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
    before, was_training = os.environ.get(HIDDEN_STATES_VARIABLE), model.training
    os.environ[HIDDEN_STATES_VARIABLE] = "1"  # hidden states, not a (rows × longest) × vocab block of logits
    gaps: dict[str, float] = {}
    packed_tokens: dict[str, int] = {}  # the longest packed row each kind was checked at
    without_grad = [param for param in model.parameters() if param.grad is None]
    try:
        _enter_training(model)  # as in training: TRL scores and Unsloth computes the loss in train mode
        with torch.no_grad(), autocast:
            reference = [_log_probs(model(input_ids=row[None], position_ids=torch.arange(longest, device=device)[None],
                                          use_cache=False).logits[0], row, head, temperature) for row in base]
        for kind, rows, mode in ((GRAD, loss_rows, torch.enable_grad), (NOGRAD, score_rows, torch.inference_mode)):
            gaps[kind] = 0.0
            for lengths in ([longest] * rows, packing_lengths(rows, longest)):
                segments = [base[i % rows][:n] for i, n in enumerate(lengths)]
                packed_tokens[kind] = max(packed_tokens.get(kind, 0), sum(lengths))
                positions = torch.cat([torch.arange(n, device=device) for n in lengths])[None]
                with mode(), autocast:
                    packed = model(input_ids=torch.cat(segments)[None], position_ids=positions, use_cache=False,
                                   packed_seq_lengths=torch.tensor(lengths, dtype=torch.int32, device=device)).logits
                if packed.requires_grad:
                    # A backward of nothing, as after every training forward: Unsloth's offloaded gradient
                    # checkpointing keeps per-graph state (layer count, host slots) that a backward closes.
                    (packed.float().sum() * 0).backward()
                with torch.no_grad():
                    for i, (segment, out) in enumerate(zip(segments, packed[0].detach().split(lengths), strict=True)):
                        if len(segment) > 1:
                            got = _log_probs(out, segment, head, temperature)
                            gaps[kind] = max(gaps[kind], (got - reference[i % rows][:len(got)]).abs().max().item())
                del packed
    finally:
        for param in without_grad:  # the zero gradients of those backwards: the first step starts as it would
            param.grad = None
        _leave_training(model, was_training)
        if before is None:
            os.environ.pop(HIDDEN_STATES_VARIABLE, None)
        else:
            os.environ[HIDDEN_STATES_VARIABLE] = before
    for kind, rows in ((GRAD, loss_rows), (NOGRAD, score_rows)):
        # like Unsloth: one row proves nothing about rows mixing, and a model ruled unsafe stays unsafe
        if gaps[kind] < PACKING_TOLERANCE and rows >= 2 and getattr(model, f"{kind}_ok", None) is not False:
            setattr(model, f"{kind}_ok", True)
            setattr(model, f"{kind}_verified_T", max(int(getattr(model, f"{kind}_verified_T", 0)), packed_tokens[kind]))
            setattr(model, f"{kind}_verified_seg", max(int(getattr(model, f"{kind}_verified_seg", 0)), longest))
    return gaps
