"""Load the policy through Unsloth (``FastLanguageModel``), with LoRA, after checking the request can work here.

``MODEL_NAME`` may be a hub id (the default, Sarashina 2.2 3B instruct), a local model folder, a checkpoint folder
written by training (LoRA adapter files), or ``"tiny"``: the project's offline few-MB Llama, built on first use.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from .checkpoints import (
    ADAPTER_FILES,
    ADAPTER_WEIGHT_FILES,
    MODEL_FILES,
    WEIGHT_FILES,
    check_loadable,
    newest_complete_in,
    step_of,
)
from .config import Settings, SettingsError, cuda_available, default_artifact_dir, multi_process

logger = logging.getLogger(__name__)


def tiny_model_dir() -> Path:
    """Where ``--model tiny`` is built on first use: ``<project>/artifact/models/tiny``."""
    return default_artifact_dir() / "models" / "tiny"


class ModelNotFoundError(SettingsError):
    """MODEL_NAME names a folder that is missing or holds no model/adapter files."""


def looks_like_path(name: str) -> bool:
    """A local folder rather than a hub id ("org/name", exactly one slash)."""
    return (
        name.startswith((".", "/", "~", "artifact/")) or "\\" in name or name.count("/") > 1
        or Path(name).expanduser().exists() or any(step_of(part) is not None for part in Path(name).parts)
    )


def check_model_name(name: str) -> None:
    """Raise ``ModelNotFoundError`` saying what to give instead when ``name`` is a folder that cannot load."""
    if name == "tiny" or not looks_like_path(name):
        return
    path = Path(name).expanduser()
    examples = ("Give a hub id such as 'sbintuitions/sarashina2.2-3b-instruct-v0.1', a finished checkpoint like "
                "'artifact/outputs/<run>/checkpoint-500', or 'tiny'.")
    if not path.is_dir():
        raise ModelNotFoundError(f"MODEL_NAME {name!r}: no such folder. {examples}")
    has = {f.name for f in path.iterdir()}
    adapter = has & set(ADAPTER_FILES) and has & set(ADAPTER_WEIGHT_FILES)
    if adapter or (has & set(MODEL_FILES) and has & set(WEIGHT_FILES)):
        check_loadable(path)  # files cut off, overwritten or NaN: one message now, not a traceback after loading
        if adapter:
            check_adapter_base(path)
        return
    newest = newest_complete_in(path)
    if newest:  # a run folder: point at its newest finished checkpoint
        hint = f"It is a run folder; its newest finished checkpoint is {newest}."
    elif step_of(path) is not None:
        hint = ("It looks like a half-written checkpoint (no checkpoint_complete marker): the run was cut off "
                "while saving. Use an earlier checkpoint-N of the same run.")
    else:
        hint = examples
    raise ModelNotFoundError(
        f"MODEL_NAME {name!r} holds neither model files (config.json + model.safetensors) nor LoRA adapter files "
        f"(adapter_config.json + adapter_model.safetensors). {hint}"
    )


def adapter_base_model(folder: Path) -> str | None:
    """The base model an adapter folder was trained on (``base_model_name_or_path`` of its adapter_config.json)."""
    try:
        return json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path")
    except (OSError, ValueError, AttributeError):  # unreadable files are verify's business
        return None


def missing_local_model(name: str) -> bool:
    """``name`` is a local folder (not a hub id, not 'tiny') that holds no model (no config.json) here."""
    if name == "tiny" or not (looks_like_path(name) or Path(name).is_absolute()):
        return False
    return not (Path(name).expanduser() / "config.json").exists()


def check_adapter_base(folder: Path) -> None:
    """Raise ``ModelNotFoundError`` when the adapter's base model is a local folder that is gone (moved, deleted,
    another machine): loading would fail deep in the hub code with an ``OSError`` about a repo id."""
    base = adapter_base_model(folder)
    if base and missing_local_model(base):
        raise ModelNotFoundError(
            f"{folder} was trained on the base model folder {base} (adapter_config.json, base_model_name_or_path), "
            f"which does not exist here or has no config.json. Put the base model back there, or set "
            f"base_model_name_or_path in {Path(folder) / 'adapter_config.json'} to its new folder or hub id."
        )


def resolve_model_name(name: str) -> str:
    """Hub ids pass through; ``tiny`` becomes the built tiny model; folders are checked for model files."""
    if name == "tiny":
        folder = tiny_model_dir()
        if not (folder / "config.json").exists():
            from .tiny import build_model

            build_model(folder, "tiny")
        return str(folder)
    check_model_name(name)
    return str(Path(name).expanduser()) if looks_like_path(name) else name


def check_device(settings: Settings, *, training: bool) -> None:
    """Fail before loading when the request cannot run on this machine, naming the route that can."""
    if settings.use_vllm and importlib.util.find_spec("vllm") is None:
        raise SettingsError(
            "USE_VLLM is on but vLLM is not installed. Install the extra (`uv sync --extra vllm`, CUDA only) "
            "or set USE_VLLM=False / drop --vllm."
        )
    if cuda_available():
        return
    if settings.load_in_4bit:
        raise SettingsError(
            "4-bit loading (LOAD_IN_4BIT=True) needs a CUDA GPU and none is visible. On CPU set LOAD_IN_4BIT=False "
            "(CLI: --no-4bit) and use a small model, e.g. MODEL_NAME='tiny' (CLI: --model tiny)."
        )
    if settings.use_vllm:
        raise SettingsError("USE_VLLM needs a CUDA GPU and none is visible; set USE_VLLM=False (drop --vllm).")
    if training and not looks_like_path(settings.model_name) and settings.model_name != "tiny":
        raise SettingsError(
            f"Training {settings.model_name} needs a CUDA GPU and none is visible. On CPU, train the offline tiny "
            "model instead: MODEL_NAME='tiny' (CLI: sarashina-grpo train --model tiny --max-steps 5)."
        )


def checked_settings(settings: Settings, *, training: bool) -> Settings:
    """Resolved, validated settings whose model can load on this machine (else a clear ``SettingsError``)."""
    settings = settings.resolved().validate()
    check_device(settings, training=training)
    check_model_name(settings.model_name)
    return settings


def load_model(settings: Settings, *, training: bool = True, lora: bool = True, checked: bool = False):
    """(model, tokenizer) from Unsloth; with ``lora``, a fresh LoRA on the seven projections is attached.
    ``checked``: the caller (``pipeline.prepare``) already ran these checks (``checked_settings``)."""
    if not checked:
        settings = checked_settings(settings, training=training)
    from unsloth import FastLanguageModel  # before anything imports transformers: Unsloth patches it on import

    model_name = resolve_model_name(settings.model_name)

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_name,
        max_seq_length=settings.max_seq_length,
        load_in_4bit=settings.load_in_4bit,
        fast_inference=settings.use_vllm,
        max_lora_rank=settings.lora_rank,
        gpu_memory_utilization=settings.gpu_memory_utilization,
    )
    already_adapted = hasattr(model, "peft_config")
    if lora and not already_adapted:
        model = FastLanguageModel.get_peft_model(
            model,
            r=settings.lora_rank,
            target_modules=list(settings.lora_target_modules),
            lora_alpha=settings.effective_lora_alpha,
            use_gradient_checkpointing="unsloth",  # recompute activations: long completions fit in memory
            random_state=settings.seed,
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def resolve_backend(settings: Settings) -> str:
    """``settings.backend`` with ``auto`` decided: Unsloth in one process, transformers + PEFT across several
    (docs/multi-gpu.md: Unsloth's single-process patches are what it supports best)."""
    if settings.backend != "auto":
        return settings.backend
    return "trl-peft" if multi_process() else "unsloth"


def lora_config(settings: Settings):
    """PEFT ``LoraConfig`` equal to what ``load_model`` asks Unsloth for."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.effective_lora_alpha,
        target_modules=list(settings.lora_target_modules),
        lora_dropout=0.0,  # Unsloth's default, and what its fast LoRA kernels assume
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_model_peft(settings: Settings, *, training: bool = True, checked: bool = False):
    """(model, tokenizer) through transformers + PEFT, with the same LoRA and quantisation choices as Unsloth.

    ``settings.model_name`` may be a model or a checkpoint folder written by training (its adapter is loaded
    trainable). Under ``accelerate launch`` each rank loads its own copy onto its own device."""
    import torch
    from peft import AutoPeftModelForCausalLM, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, set_seed

    if not checked:
        settings = checked_settings(settings, training=training)
    model_name = resolve_model_name(settings.model_name)
    on_gpu = cuda_available()
    kwargs = {"dtype": torch.bfloat16 if on_gpu else torch.float32}  # fp32 on CPU: bf16 matmuls there are slow
    if settings.load_in_4bit:
        from accelerate import PartialState

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        # Quantised weights cannot be moved after loading, so each rank loads straight onto its own GPU.
        kwargs["device_map"] = {"": PartialState().device}
    is_adapter = any((Path(model_name) / f).exists() for f in ADAPTER_FILES)
    if is_adapter:
        model = AutoPeftModelForCausalLM.from_pretrained(model_name, is_trainable=training, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_name, **kwargs)
    # Non-reentrant checkpointing: reentrant recomputation marks LoRA weights "ready" twice under DDP.
    checkpointing = {"use_reentrant": False}
    if settings.load_in_4bit:
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs=checkpointing)
    elif training:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()
    if training and not is_adapter:
        set_seed(settings.seed)  # same LoRA init everywhere (DDP also broadcasts rank 0's weights at wrap time)
        model = get_peft_model(model, lora_config(settings))
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def use_triton_interpreter_without_gpu() -> None:
    """TRL 1.15 scores completions with a Triton kernel (its fused LM head) that has no CPU driver; Triton's
    interpreter runs it on CPU. Triton reads the switch when it defines kernels: call this before importing
    transformers or TRL (the trl-peft backend on a machine without CUDA)."""
    if not cuda_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def lora_fingerprint(state_dict) -> dict:
    """sha256 over LoRA tensors (sorted by name) and the total |lora_B| (zero until a step moves it).

    Compare it across data-parallel ranks (``peft.get_peft_model_state_dict(model)``) or with a checkpoint's
    ``adapter_model.safetensors``: replicas that stay in sync have equal digests."""
    import hashlib

    digest = hashlib.sha256()
    lora_b = 0.0
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().float().cpu()
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
        if "lora_B" in name:
            lora_b += tensor.abs().sum().item()
    return {"sha256": digest.hexdigest(), "lora_b_abs_sum": lora_b, "tensors": len(state_dict)}
