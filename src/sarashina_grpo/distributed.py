"""Data-parallel GRPO: the project's training path under 🤗 Accelerate, one process per GPU.

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes 2 \\
        -m sarashina_grpo.distributed --max-steps 500
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes 2 \\
        -m sarashina_grpo.distributed --backend unsloth --max-steps 500

Every option of ``sarashina-grpo train`` works here too, with the same meaning, plus ``--backend`` and the vLLM
server options. Each rank holds a full copy of the model and LoRA, samples its own share of the prompts and
completions, and DDP averages the LoRA gradients, so all ranks take the same optimizer step. The main process
alone picks the run folders and writes TensorBoard logs and checkpoints (``artifact/logs/<run>``,
``artifact/outputs/<run>/checkpoint-N``, exactly as a one-GPU run).

Backends (see docs/multi-gpu.md for why the default is not Unsloth):

- ``trl-peft`` (default): plain transformers + PEFT + TRL ``GRPOTrainer``, with the same LoRA (rank, alpha, the
  seven projections, no dropout), 4-bit NF4 through bitsandbytes when ``load_in_4bit``, and gradient checkpointing.
- ``unsloth``: ``modeling.load_model`` (Unsloth ``FastLanguageModel``), which places each rank on its own GPU
  under ``accelerate launch``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .config import Settings, SettingsError
from .modeling import ADAPTER_FILES, check_device, cuda_available, resolve_model_name

logger = logging.getLogger(__name__)

BACKENDS = ("trl-peft", "unsloth")
DEFAULT_BACKEND = "trl-peft"


def distributed_state():
    """Accelerate's process state, started the way TRL's Trainer will start it (gloo on CPU, NCCL on GPU).

    It must exist before anything else touches ``torch.distributed``: the run folders are agreed through it. On a
    CPU-only machine ``cpu=True`` is what selects gloo; without it Accelerate would treat each rank as alone."""
    from accelerate import PartialState

    return PartialState(cpu=not cuda_available())


def lora_config(settings: Settings):
    """PEFT ``LoraConfig`` equal to what ``modeling.load_model`` asks Unsloth for."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        target_modules=list(settings.lora_target_modules),
        lora_dropout=0.0,  # Unsloth's default, and what its fast LoRA kernels assume
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_model_peft(settings: Settings, *, training: bool = True):
    """(model, tokenizer) through transformers + PEFT, with the same LoRA and quantisation choices as Unsloth.

    ``settings.model_name`` may be a model or a checkpoint folder written by training (its adapter is loaded
    trainable). Each rank loads its own copy on its own device (``PartialState().device``)."""
    import torch
    from peft import AutoPeftModelForCausalLM, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, set_seed

    settings.validate()
    check_device(settings, training=training)
    model_name = resolve_model_name(settings.model_name)
    on_gpu = cuda_available()
    kwargs = {"dtype": torch.bfloat16 if on_gpu else torch.float32}  # fp32 on CPU: bf16 matmuls there are slow
    if settings.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        # Quantised weights cannot be moved after loading, so each rank loads straight onto its own GPU.
        kwargs["device_map"] = {"": distributed_state().device}
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


def load_backend_model(settings: Settings, backend: str):
    if backend == "unsloth":
        from .modeling import load_model

        return load_model(settings, training=True)
    if backend == "trl-peft":
        return load_model_peft(settings, training=True)
    raise SettingsError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")


def shared_run_paths(settings: Settings, artifact_dir: Path, *, resume: str | None, run_name: str | None):
    """``training.prepare_run`` on the main process, its (RunPaths, checkpoint or None) sent to every rank.

    Deciding on each rank would race: the main process creates the run folder while another rank still looks for a
    free name, and that rank's files (its RNG state in each checkpoint) would land in a second run folder."""
    from accelerate.utils import broadcast_object_list

    from .training import prepare_run

    state = distributed_state()
    decided: list = [None]
    with state.main_process_first():  # the main process builds the tiny model; the others then find it
        resolve_model_name(settings.model_name)
    if state.is_main_process:
        try:
            decided[0] = prepare_run(settings, artifact_dir, resume=resume, run_name=run_name)
        except SettingsError as err:  # e.g. nothing to resume: every rank reports it, none waits for folders
            decided[0] = err
    if state.num_processes > 1:
        broadcast_object_list(decided, from_process=0)
    if isinstance(decided[0], SettingsError):
        raise decided[0]
    return decided[0]


def train_distributed(settings: Settings, data_path, artifact_dir, *, backend: str = DEFAULT_BACKEND,
                      resume: str | None = None, run_name: str | None = None):
    """The steps of ``training.train`` on every rank of an ``accelerate launch``; returns this rank's trainer."""
    from .data import load_prompts
    from .training import build_trainer, run_trainer

    if backend not in BACKENDS:
        raise SettingsError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    settings.validate()
    check_device(settings, training=True)
    state = distributed_state()
    paths, checkpoint = shared_run_paths(settings, Path(artifact_dir), resume=resume, run_name=run_name)
    logger.info("Rank %d/%d: backend %s, run %s", state.process_index, state.num_processes, backend, paths.name)
    model, tokenizer = load_backend_model(settings, backend)
    dataset = load_prompts(data_path, tokenizer=tokenizer, max_prompt_length=settings.max_prompt_length)
    trainer = build_trainer(model, tokenizer, dataset, settings, paths)
    return run_trainer(trainer, paths, checkpoint)


def lora_fingerprint(state_dict) -> dict:
    """sha256 over LoRA tensors (sorted by name) and the total |lora_B| (zero until a step moves it).

    Compare it across ranks (``get_peft_model_state_dict(model)``) or with a checkpoint's
    ``adapter_model.safetensors``: data-parallel replicas that stay in sync have equal digests."""
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


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli import add_train_arguments

    add_train_arguments(parser)
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                        help="trl-peft: transformers+PEFT+TRL; unsloth: Unsloth's FastLanguageModel on each rank")
    parser.add_argument("--vllm-mode", choices=("colocate", "server"), default="colocate",
                        help="with --vllm: generate inside each training process (colocate) or on a separate "
                             "`trl vllm-serve` GPU (server; trl-peft backend)")
    parser.add_argument("--vllm-server-base-url", default=None,
                        help="URL of `trl vllm-serve` for --vllm-mode server (default http://0.0.0.0:8000)")


def settings_from_distributed_args(args: argparse.Namespace) -> Settings:
    from .cli import settings_from_args

    settings = settings_from_args(args)
    extra = dict(settings.extra_grpo_args)
    if args.use_vllm and args.backend == "trl-peft":
        extra.setdefault("vllm_mode", args.vllm_mode)
        if args.vllm_server_base_url:
            extra.setdefault("vllm_server_base_url", args.vllm_server_base_url)
    elif args.vllm_mode == "server":
        raise SettingsError("--vllm-mode server needs --vllm and --backend trl-peft (TRL's own vLLM client).")
    # Every LoRA weight gets a gradient each step, so DDP need not search for unused parameters (a full extra
    # traversal of the graph, and an error under reentrant checkpointing).
    extra.setdefault("ddp_find_unused_parameters", False)
    return settings.replace(extra_grpo_args=extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sarashina_grpo.distributed", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_distributed_arguments(parser)
    return parser


def use_triton_interpreter_without_gpu() -> None:
    """TRL 1.15 scores completions with a Triton kernel (its fused LM head) that has no CPU driver; Triton's
    interpreter runs it on CPU. Triton reads the switch when it defines kernels: call this before importing
    transformers or TRL."""
    if not cuda_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def main(argv: list[str] | None = None) -> int:
    use_triton_interpreter_without_gpu()  # first: building the parser already imports transformers
    args = build_parser().parse_args(argv)
    if args.backend == "unsloth":
        import unsloth  # noqa: F401  # must patch transformers/TRL before they are imported
    # Non-main ranks log warnings only: N copies of every INFO line would bury the main process's log.
    rank = int(os.environ.get("RANK", "0"))
    level = (logging.DEBUG if args.verbose else logging.INFO) if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from .data import DataError

    try:
        settings = settings_from_distributed_args(args)
        trainer = train_distributed(settings, args.data, args.artifact_dir, backend=args.backend,
                                    resume=args.resume, run_name=args.run_name)
    except (SettingsError, DataError) as err:  # bad settings or prompts: a message, not a traceback per rank
        print(f"error: {err}", file=sys.stderr)
        return 2
    if trainer.accelerator.is_main_process:
        paths = trainer.run_paths
        print(f"Finished at step {trainer.state.global_step} on {trainer.accelerator.num_processes} process(es). "
              f"Checkpoints: {paths.output_dir}  Logs: {paths.log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
