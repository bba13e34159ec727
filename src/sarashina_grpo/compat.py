"""The one place that touches private or version-specific names of TRL, Unsloth, PEFT and bitsandbytes.

Each has a contract test (``tests/test_compat.py``) and a row in docs/architecture.md's table. Lookups that can fail
raise ``CompatError``, never fall back to a no-op. What only the benchmark patches is in ``scripts/bench_patches.py``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path

from .project import FALSE_WORDS

# TRL's rollout hook, replaced per instance by rollout="fast". Not TRL's public rollout_func: that one is handed chat
# messages and would make the fast rollout copy TRL's tokenization; this hook takes TRL's prompt ids (docs/speed.md).
GENERATE_METHOD = "_generate_single_turn"
GENERATE_PARAMETERS = ("prompt_ids", "images", "multimodal_fields", "num_generations", "has_tool_images")
UNSLOTH_ROPE_METHOD = "_unsloth_recompute_inv_freq"  # the config's frequencies: inv_freq can be stale (transformers 5)
TRL_UNWRAP_MODULE = "trl.models.utils"
# One step's rollout plus rewards and old log-probs (the benchmark times it; the KL reference tests call it).
SCORE_METHOD = "_generate_and_score_completions"
TRAINER_METRICS = "_metrics"
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
    """TRL's ``GRPOTrainer`` under the project's subclass, or the copy Unsloth compiled into its own module."""
    return next(c for c in type(trainer).__mro__ if not c.__module__.startswith("sarashina_grpo"))


def replace_generation(trainer, generate) -> None:
    """Make ``trainer`` generate with ``generate(*GENERATE_PARAMETERS) -> (completion_ids, logprobs)``."""
    check_generate_hook(library_class(trainer))
    setattr(trainer, GENERATE_METHOD, generate)  # an instance attribute overrides the class method


def generation_context(trainer):
    """The trainer's own ``unwrap_model_for_generation`` context (Unsloth's compiled copy binds its own version)."""
    unwrap = (getattr(sys.modules.get(library_class(trainer).__module__), "unwrap_model_for_generation", None)
              or getattr(importlib.import_module(TRL_UNWRAP_MODULE), "unwrap_model_for_generation", None))
    if unwrap is None:
        raise CompatError(f"unwrap_model_for_generation is in neither the trainer's module nor {TRL_UNWRAP_MODULE}: "
                          "the installed TRL is not the locked one.")
    return unwrap(trainer.model_wrapped, trainer.accelerator,
                  gather_deepspeed3_params=trainer.args.ds3_gather_for_generation)


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
    """TRL's completion table (the latest generation batch, all processes): one ``{"prompt", "completion",
    "rewards": {reward name: value}, "advantage"}`` each."""
    logs = getattr(trainer, COMPLETION_LOGS, None)
    if not isinstance(logs, dict) or not all(key in logs for key in COMPLETION_LOG_KEYS):
        raise CompatError(f"GRPOTrainer.{COMPLETION_LOGS} no longer holds {COMPLETION_LOG_KEYS}: the installed TRL "
                          "is not the locked one (uv.lock); the completion log cannot read the completions.")
    rewards = {name: list(values) for name, values in logs["rewards"].items()}
    rows = zip(logs["prompt"], logs["completion"], logs["advantages"], strict=False)
    return [{"prompt": prompt, "completion": completion,
             "rewards": {name: values[i] if i < len(values) else None for name, values in rewards.items()},
             "advantage": advantage} for i, (prompt, completion, advantage) in enumerate(rows)]


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


# --- the KL reference -------------------------------------------------------------------------------------------
# TRL 1.15 copies a PEFT policy's ``.default.`` parameters into an adapter "ref" (beta > 0) and scores the reference
# under REFERENCE_CHOICE, where None means ``model.disable_adapter()``. Contract tests pin the names below.
TRL_REFERENCE_ADAPTER = "ref"
POLICY_ADAPTER = "default"
REFERENCE_CHOICE = 'use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None)'
LORA_FACTORS = {"lora_A": "lora_B", "lora_embedding_A": "lora_embedding_B"}  # an adapter's delta is B·A (scaled)
TRAINER_LOAD_METHOD = "_load_from_checkpoint"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # PEFT's names for the root adapter


def drop_reference_adapter(model) -> None:
    """Remove the "ref" adapter an earlier ``GRPOTrainer`` (``beta > 0``) added, so that a new trainer adds its own."""
    if TRL_REFERENCE_ADAPTER in (getattr(model, "peft_config", None) or {}):
        model.delete_adapter(TRL_REFERENCE_ADAPTER)


def adapter_is_identity(model, adapter: str) -> bool:
    """True when PEFT ``adapter`` provably changes no output: a plain LoRA whose every layer has an all-zero factor.
    Anything else, including parameters this process cannot see (ZeRO-3 shards), is False: the adapter is kept."""
    config = (getattr(model, "peft_config", None) or {}).get(adapter)
    if (config is None or getattr(config.peft_type, "value", config.peft_type) != "LORA"
            or getattr(config, "use_dora", False) or getattr(config, "lora_bias", False)
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
    return bool(zero) and all(any(factors.get(a, False) or factors.get(b, False) for a, b in LORA_FACTORS.items())
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

    A starting adapter that is the identity (a fresh LoRA) *is* the base model, so the "ref" copy is dropped for
    TRL's cheaper fallback (adapter disabled); otherwise the copy stays, added where Unsloth's trainer removed it.
    Returns "base", "ref", or None (beta 0 or no PEFT adapter: no reference involved)."""
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


def resume_loads_the_policy(trainer) -> None:
    """Make resuming load the trained adapter of a checkpoint that also holds TRL's "ref" copy: transformers 5's
    ``Trainer._load_from_checkpoint`` loads only the adapter sub-folders (``ref/``) when there are any."""
    load = getattr(trainer, TRAINER_LOAD_METHOD, None)
    if load is None:
        raise CompatError(f"Trainer.{TRAINER_LOAD_METHOD} is gone: the installed transformers is not the locked one.")

    def has_adapter(folder: Path) -> bool:
        return any((folder / name).is_file() for name in ADAPTER_WEIGHTS)

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


# --- Unsloth's sequence packing ---------------------------------------------------------------------------------
# Unsloth's GRPO trainer runs a batch's rows as one packed forward, trusted after comparing it with one forward per
# row, and compares again at every new record packed length or longest row: 36 extra forwards at 36 completions
# (docs/speed.md). Its trust lives on the unwrapped model:
PACKING_TRUST = ("_unsloth_seq_packing_grad", "_unsloth_seq_packing_nograd")  # + "_ok", "_verified_T", "_verified_seg"
PACKING_VARIABLE = "UNSLOTH_GRPO_SEQ_PACKING"  # "0" turns Unsloth's packing off
PREFIX_GROUPER_TRUST = ("_unsloth_prefix_grouper_grad_verified", "_unsloth_prefix_grouper_nograd_verified")
# RoPE types (transformers' rope_type) whose rotation of a position does not depend on the sequence's length.
LENGTH_FREE_ROPE = (None, "default", "linear", "llama3")


def packing_enabled() -> bool:
    """Unless ``PACKING_VARIABLE`` is "0", "false", "no" or "off" (unset or empty: on)."""
    return (os.environ.get(PACKING_VARIABLE, "").strip() or "1").lower() not in FALSE_WORDS


def length_dependent(config) -> str | None:
    """Why a longer packed batch could compute differently from the one Unsloth compared (a length-dependent RoPE,
    of any layer type, or a sliding window in use), or None."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    ropes = ([r for r in rope.values() if isinstance(r, dict)] or [rope]) if isinstance(rope, dict) else [{}]
    for each in ropes:
        kind = each.get("rope_type", each.get("type"))
        if kind not in LENGTH_FREE_ROPE:
            return f"RoPE type {kind!r}"
    if window := sliding_window(config):
        return f"sliding window of {window}"
    return None


def sliding_window(config) -> int | None:
    """The sliding attention window a model's config puts in use, or None (Qwen2's ``use_sliding_window`` False turns
    a configured one off)."""
    if getattr(config, "use_sliding_window", True) is not False:
        return getattr(config, "sliding_window", None) or None
    return None


def extend_packing_trust(model, *, tokens: int, longest: int) -> list[str]:
    """Where Unsloth's own comparison passed, trust its packing (and prefix grouping) up to ``tokens`` packed tokens
    and rows of ``longest``: without a ``length_dependent`` model, packing keeps rows apart alike at any length.
    Returns the kinds ("…_grad": the loss, "…_nograd": the scorer) now trusted for the run."""
    if length_dependent(model.config):
        return []
    extended = []
    for kind in PACKING_TRUST:
        verified = int(getattr(model, f"{kind}_verified_T", 0) or 0)
        if (getattr(model, f"{kind}_ok", None) is not True or verified <= 0
                or getattr(model, f"{kind}_unsafe_T", None) is not None):
            continue
        setattr(model, f"{kind}_verified_T", max(verified, tokens))
        setattr(model, f"{kind}_verified_seg", max(int(getattr(model, f"{kind}_verified_seg", 0) or 0), longest))
        extended.append(kind)
    for kind in PREFIX_GROUPER_TRUST:
        layouts = getattr(model, kind, None)  # {(groups, group sizes): (tokens, longest)} of the layouts passed
        if isinstance(layouts, dict):
            for layout, (done_tokens, done_longest) in list(layouts.items()):
                layouts[layout] = (max(done_tokens, tokens), max(done_longest, longest))
    return extended
