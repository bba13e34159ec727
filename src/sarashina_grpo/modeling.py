"""Load the policy through Unsloth (``FastLanguageModel``) with LoRA, or through transformers + PEFT.

``MODEL_NAME`` may be a hub id, a local model folder, a training checkpoint (LoRA adapter files), or ``"tiny"``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import typing
from pathlib import Path

from .checkpoints import ADAPTER_FILES
from .preflight import looks_like_path, lora_targets
from .project import DEFAULT_MODEL_NAME, artifact_root, cuda_available, torch_dtype

if typing.TYPE_CHECKING:
    from .config import Settings

logger = logging.getLogger(__name__)

# Default torch threads on a CPU: OpenMP threads spin waiting for each other, so a tiny run on a shared 2-core machine
# stepped much slower with 2 than with 1 (docs/troubleshooting.md, "CPU threads").
CPU_THREADS = 1


def tiny_model_dir() -> Path:
    """Where ``--model tiny`` is built on first use: ``<project>/artifact/models/tiny``."""
    return artifact_root() / "models" / "tiny"


def resolve_model_name(name: str) -> str:
    """Hub ids pass through; ``tiny`` becomes the built tiny model; folders (checked by ``preflight``) are expanded."""
    if name == "tiny":
        folder = tiny_model_dir()
        if not (folder / "config.json").exists():
            from .tiny import build_model

            build_model(folder, "tiny")
        return str(folder)
    return str(Path(name).expanduser()) if looks_like_path(name) else name


def model_for_this_machine(name: str | None) -> str:
    """``name``, or for None the article's model with a CUDA GPU and the offline tiny model without one (the 3B model
    would take minutes per answer on a CPU, and needs the hub)."""
    if name is not None:
        return name
    chosen = DEFAULT_MODEL_NAME if cuda_available() else "tiny"
    logger.info("MODEL_NAME is None: using %r (%s).", chosen, "CUDA GPU" if chosen != "tiny" else "no CUDA GPU")
    return chosen


def use_cpu_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads: ``threads``, else ``CPU_THREADS`` without a CUDA GPU unless ``OMP_NUM_THREADS`` says
    otherwise; with a GPU torch's default stays. Returns the count in use."""
    import torch

    if threads is None and not cuda_available() and not os.environ.get("OMP_NUM_THREADS"):
        threads = CPU_THREADS
    if threads is not None:  # checked by preflight.check_threads
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@contextlib.contextmanager
def cpu_threads(threads: int | None = None):
    """torch's CPU threads as ``use_cpu_threads`` sets them, for the ``with`` block only."""
    import torch

    before = torch.get_num_threads()
    try:
        yield use_cpu_threads(threads)
    finally:
        torch.set_num_threads(before)


def load_model(settings: Settings, *, lora: bool = True):
    """(model, tokenizer) from Unsloth; with ``lora``, a fresh LoRA on ``preflight.lora_targets`` is attached."""
    from unsloth import FastLanguageModel  # before anything imports transformers: Unsloth patches it on import

    model_name = resolve_model_name(settings.model_name)
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_name, max_seq_length=settings.max_seq_length, load_in_4bit=settings.load_in_4bit,
        fast_inference=settings.use_vllm, max_lora_rank=settings.lora_rank,
        gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
        dtype=torch_dtype())  # fp16 on cards without bf16 (T4, V100); fp32 on CPU, even one with bf16
    check_loaded_weights(model, settings.model_name)
    if lora and not hasattr(model, "peft_config"):  # a checkpoint folder comes with its adapter
        model = FastLanguageModel.get_peft_model(
            model, r=settings.lora_rank, target_modules=lora_targets(model_name, settings.lora_target_modules),
            lora_alpha=settings.effective_lora_alpha, random_state=settings.seed,
            # recompute activations (long completions fit in memory); "unsloth" offloads their saved inputs
            use_gradient_checkpointing="unsloth" if settings.offload_activations else True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def check_loaded_weights(model, name: str) -> None:
    """NaN or inf weights of a full model are one error, not a sampling traceback at the first rollout."""
    from .preflight import check_finite_model, model_label

    check_finite_model(model, model_label(name), "Use the model it was made from, or make it again (a warm start "
                       "with a lower --learning-rate).")


def resolve_backend(backend: str) -> str:
    """A ``backend`` setting with ``auto`` decided: Unsloth, in one process and under ``accelerate launch`` alike
    (docs/multi-gpu.md: on two H100s it stepped ~7× faster than transformers + PEFT, whose weights it matches)."""
    return "unsloth" if backend == "auto" else backend


def lora_config(settings: Settings):
    """PEFT ``LoraConfig`` equal to what ``load_model`` asks Unsloth for."""
    from peft import LoraConfig

    targets = lora_targets(resolve_model_name(settings.model_name), settings.lora_target_modules)
    # dropout 0: Unsloth's default, and what its fast LoRA kernels assume
    return LoraConfig(r=settings.lora_rank, lora_alpha=settings.effective_lora_alpha, target_modules=targets,
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")


def load_model_peft(settings: Settings, *, training: bool = True):
    """(model, tokenizer) through transformers + PEFT, with the same quantisation choices as Unsloth. A checkpoint's
    adapter is loaded trainable; a model gets no LoRA here: the trainer adds it (``peft_config=lora_config(...)``)."""
    from peft import AutoPeftModelForCausalLM, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    model_name = resolve_model_name(settings.model_name)
    dtype = torch_dtype()
    kwargs = {"dtype": dtype}
    if settings.load_in_4bit:
        from accelerate import PartialState

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        # Quantised weights cannot be moved after loading, so each rank loads straight onto its own GPU.
        kwargs["device_map"] = {"": PartialState().device}
    if any((Path(model_name) / f).exists() for f in ADAPTER_FILES):
        model = AutoPeftModelForCausalLM.from_pretrained(model_name, is_trainable=training, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_name, **kwargs)
    check_loaded_weights(model, settings.model_name)
    # Non-reentrant checkpointing: reentrant recomputation marks LoRA weights "ready" twice under DDP.
    checkpointing = {"use_reentrant": False}
    if settings.load_in_4bit:
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs=checkpointing)
    elif training:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def use_triton_interpreter_without_gpu() -> None:
    """TRL 1.15 scores completions with a Triton kernel (its fused LM head) that has no CPU driver; Triton's
    interpreter runs it on CPU. Triton reads the switch when it defines kernels: call this before importing TRL."""
    if not cuda_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def lora_fingerprint(state_dict) -> dict:
    """sha256 over a LoRA state dict's tensors and their total |lora_B| (zero until a step moves it): equal across
    data-parallel ranks and checkpoints while replicas stay in sync."""
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
