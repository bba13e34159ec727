"""The one place that touches private or version-specific names of TRL, Unsloth, PEFT and bitsandbytes.

Everything else in the package uses public APIs. Each name used here has a contract test
(``tests/test_compat.py``) that fails when the locked versions (``uv.lock``) move and the name changes, so an
upgrade breaks a test in CI instead of a training run. Lookups that can fail raise ``CompatError``: there is no
silent fallback to a no-op.

Names used, and why:
- ``GRPOTrainer._generate_single_turn`` (TRL): the rollout hook; ``rollout="fast"`` replaces it per instance.
- ``GRPOTrainer._generate_and_score_completions`` (TRL): timed by the benchmark (rollout + rewards + log-probs).
- ``autotune_batch_and_chunks`` (Unsloth's compiled GRPO trainer module): watched by the benchmark's profiler.
- ``unwrap_model_for_generation`` (TRL, re-bound by Unsloth in its patched trainer module): the context the default
  rollout generates in (Unsloth switches to inference mode in it and back to training mode after it).
- ``LlamaRotaryEmbedding._unsloth_recompute_inv_freq`` (Unsloth): the rotary frequencies from the config (the
  ``inv_freq`` buffer can be stale under transformers 5).
- ``Linear4bit.weight.quant_state`` + ``bitsandbytes.functional.dequantize_4bit``: the dense weight of a 4-bit layer.
- TRL's reference adapter name ``"ref"``: with ``beta > 0`` on a PEFT model, ``GRPOTrainer`` adds a frozen copy of
  the adapter under that name; a model reused for a second trainer (the benchmark) must drop it first.
- PEFT LoRA layers' ``lora_A``/``lora_B``/``scaling``/``active_adapters``/``merged``/``disable_adapters``/``use_dora``.
"""

from __future__ import annotations

import importlib
import inspect
import sys

GENERATE_METHOD = "_generate_single_turn"
GENERATE_PARAMETERS = ("prompt_ids", "images", "multimodal_fields", "num_generations", "has_tool_images")
UNSLOTH_ROPE_METHOD = "_unsloth_recompute_inv_freq"
TRL_UNWRAP_MODULE = "trl.models.utils"
# What the benchmark times: one rollout, and one rollout plus rewards and old log-probs (experiments/bench.py).
SCORE_METHOD = "_generate_and_score_completions"


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


def replace_generation(trainer, generate) -> None:
    """Make ``trainer`` generate with ``generate(prompt_ids, images, multimodal_fields, num_generations,
    has_tool_images=False) -> (completion_ids, logprobs)`` instead of its own rollout."""
    check_generate_hook(type(trainer))
    setattr(trainer, GENERATE_METHOD, generate)  # an instance attribute overrides the class method


def generation_context(trainer):
    """The context manager the trainer's own rollout generates in (``unwrap_model_for_generation``).

    Unsloth compiles a patched copy of the trainer into its own module and binds its version of the function there,
    so the trainer's module is searched first, then TRL's."""
    unwrap = getattr(sys.modules.get(type(trainer).__module__), "unwrap_model_for_generation", None)
    if unwrap is None:
        unwrap = getattr(importlib.import_module(TRL_UNWRAP_MODULE), "unwrap_model_for_generation", None)
    if unwrap is None:
        raise CompatError(f"unwrap_model_for_generation is in neither the trainer's module nor {TRL_UNWRAP_MODULE}: "
                          "the installed TRL is not the locked one.")
    return unwrap(trainer.model_wrapped, trainer.accelerator,
                  gather_deepspeed3_params=trainer.args.ds3_gather_for_generation)


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


UNSLOTH_CHUNKING_FUNCTION = "autotune_batch_and_chunks"


def watch_unsloth_chunking(trainer, record) -> object | None:
    """Diagnostics for the benchmark: call ``record(rows, result)`` whenever Unsloth's compiled GRPO trainer picks
    its mini-batches (``autotune_batch_and_chunks``, sized from free GPU memory). Returns a function that restores
    the original, or None when this Unsloth has no such function (then nothing is recorded: a diagnostic only)."""
    module = sys.modules.get(type(trainer).__module__)
    inner = getattr(module, UNSLOTH_CHUNKING_FUNCTION, None)
    if inner is None:
        return None

    def watched(rows, *args, **kwargs):
        result = inner(rows, *args, **kwargs)
        record(rows, result)
        return result

    setattr(module, UNSLOTH_CHUNKING_FUNCTION, watched)
    return lambda: setattr(module, UNSLOTH_CHUNKING_FUNCTION, inner)


TRL_REFERENCE_ADAPTER = "ref"


def drop_reference_adapter(model) -> None:
    """Remove the frozen reference adapter an earlier ``GRPOTrainer`` (``beta > 0``) added to ``model``, so that a
    new trainer can add its own; nothing to do on a model that never had one."""
    if TRL_REFERENCE_ADAPTER in (getattr(model, "peft_config", None) or {}):
        model.delete_adapter(TRL_REFERENCE_ADAPTER)
