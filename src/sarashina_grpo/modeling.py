"""Load the policy through Unsloth (``FastLanguageModel``), with LoRA, after checking the request can work here.

``MODEL_NAME`` may be a hub id (the default, Sarashina 2.2 3B instruct), a local model folder, a checkpoint folder
written by training (LoRA adapter files), or ``"tiny"``: the project's offline few-MB Llama, built on first use.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from .checkpoints import (  # noqa: F401 - names re-exported for callers that predate the checkpoints module
    ADAPTER_FILES,
    ADAPTER_WEIGHT_FILES,
    COMPLETE_MARKER,
    MODEL_FILES,
    WEIGHT_FILES,
    newest_complete_in,
    step_of,
)
from .config import REPO_ROOT, Settings, SettingsError

logger = logging.getLogger(__name__)

TINY_MODEL_DIR = REPO_ROOT / "artifact" / "models" / "tiny"


class ModelNotFoundError(SettingsError):
    """MODEL_NAME names a folder that is missing or holds no model/adapter files."""


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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
    if has & set(ADAPTER_FILES) and has & set(ADAPTER_WEIGHT_FILES):
        return
    if has & set(MODEL_FILES) and has & set(WEIGHT_FILES):
        return
    newest = newest_complete_in(path)
    if newest:  # a run folder: point at its newest finished checkpoint
        hint = f"It is a run folder; its newest finished checkpoint is {newest}."
    elif step_of(path) is not None and COMPLETE_MARKER not in has:
        hint = ("It looks like a half-written checkpoint (no checkpoint_complete marker): the run was cut off "
                "while saving. Use an earlier checkpoint-N of the same run.")
    else:
        hint = examples
    raise ModelNotFoundError(
        f"MODEL_NAME {name!r} holds neither model files (config.json + model.safetensors) nor LoRA adapter files "
        f"(adapter_config.json + adapter_model.safetensors). {hint}"
    )


def resolve_model_name(name: str) -> str:
    """Hub ids pass through; ``tiny`` becomes the built tiny model; folders are checked for model files."""
    if name == "tiny":
        if not (TINY_MODEL_DIR / "config.json").exists():
            from .tiny import build_model

            build_model(TINY_MODEL_DIR, "tiny")
        return str(TINY_MODEL_DIR)
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


def load_model(settings: Settings, *, training: bool = True, lora: bool = True):
    """(model, tokenizer) from Unsloth; with ``lora``, a fresh LoRA on the seven projections is attached."""
    settings.validate()
    check_device(settings, training=training)
    check_model_name(settings.model_name)
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
            lora_alpha=settings.lora_alpha,
            use_gradient_checkpointing="unsloth",  # recompute activations: long completions fit in memory
            random_state=settings.seed,
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
