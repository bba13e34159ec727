"""Settings of a GRPO run: the system prompt and one dataclass with the article's defaults.

``Settings`` holds what a user chooses (model, LoRA, optimiser, lengths, steps); ``build_grpo_config`` turns it
into TRL's ``GRPOConfig`` so that the notebook, the CLI and the benchmark train with exactly the same arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # datasets/ and artifact/ live here
DEFAULT_MODEL_NAME = "sbintuitions/sarashina2.2-3b-instruct-v0.1"

# Our own wording. It states the exact layout the strict reward checks, newlines included, because a model can
# only be rewarded into a format it has a chance to sample.
SYSTEM_PROMPT = (
    "あなたは親切な日本語アシスタントです。答える前に、まず日本語で考えてください。\n"
    "考えたことは<think>と</think>の間に、ユーザーへの答えは<response>と</response>の間に書きます。\n"
    "必ず次の形で出力してください。\n"
    "<think>\n"
    "（考えたこと）\n"
    "</think>\n"
    "<response>\n"
    "（答え）\n"
    "</response>"
)

LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_REWARDS = ("xmlcount", "soft_format", "strict_format")
# How completions are generated during training (docs/benchmarks/README.md has the measurements):
ROLLOUTS = {
    "default": "the article's path: Unsloth's generate inside TRL's GRPOTrainer",
    "fast": "static KV cache + one CUDA graph per decoded token (sarashina_grpo.rollout); same sampling and loss",
    "static": "TRL generate with cache_implementation='static' (measured, slower than 'fast')",
    "paged": "TRL's transformers continuous batching (use_transformers_continuous_batching; measured)",
}


class SettingsError(ValueError):
    """A setting is invalid; raised before any model is loaded."""


@dataclass
class Settings:
    """Everything a run needs besides the data. Defaults reproduce the article's run."""

    model_name: str = DEFAULT_MODEL_NAME
    max_seq_length: int = 4096  # Unsloth's context budget: prompt (≤1024) + completion (≤512) fit with room
    load_in_4bit: bool = True  # QLoRA: the 3B model's weights take ~2 GB instead of ~6.8 GB
    use_vllm: bool = False  # Unsloth fast_inference; needs the optional `vllm` extra and a CUDA GPU
    gpu_memory_utilization: float = 0.6  # share of GPU memory vLLM may reserve when use_vllm is on
    lora_rank: int = 32
    lora_alpha: int = 32  # alpha == r: LoRA scale 1.0, as in the article
    lora_target_modules: tuple[str, ...] = LORA_TARGET_MODULES
    learning_rate: float = 5e-6
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    weight_decay: float = 0.1
    warmup_ratio: float = 0.1  # passed as a float `warmup_steps`, which transformers 5 reads as a ratio
    lr_scheduler_type: str = "cosine"
    optim: str = "paged_adamw_8bit"
    num_generations: int = 6  # the GRPO group: completions sampled per prompt
    per_device_train_batch_size: int = 6  # completions per step; must be a multiple of num_generations
    gradient_accumulation_steps: int = 1
    max_prompt_length: int = 1024  # TRL 1.x no longer truncates prompts: the loader skips longer ones, warning
    max_completion_length: int = 512
    max_steps: int = 500
    save_steps: int = 250
    logging_steps: int = 1
    max_grad_norm: float = 0.1  # small: GRPO updates on few samples are noisy
    temperature: float = 1.0
    rollout: str = "default"  # one of ROLLOUTS; "fast" keeps prompts, sampling, rewards, loss and LoRA targets
    seed: int = 3407
    reward_names: tuple[str, ...] = DEFAULT_REWARDS
    extra_grpo_args: dict = field(default_factory=dict)  # passed through to GRPOConfig unchanged

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    def validate(self) -> Settings:
        """Raise ``SettingsError`` naming the field (and its CLI flag) for any inconsistent value; return self.

        Called before any model loads, so a typo costs seconds, not a model download.
        """
        positive = (
            "max_seq_length", "lora_rank", "lora_alpha", "num_generations", "per_device_train_batch_size",
            "gradient_accumulation_steps", "max_prompt_length", "max_completion_length", "max_steps",
            "save_steps", "logging_steps",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingsError(f"{_field(name)} must be a positive integer, got {value!r}.")
        if self.num_generations < 2:
            raise SettingsError(
                f"{_field('num_generations')} must be at least 2 (GRPO compares completions within a group), "
                f"got {self.num_generations}."
            )
        completions = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if completions % self.num_generations:
            lower = completions - completions % self.num_generations
            fits = f"{lower} or {lower + self.num_generations}" if lower else f"{self.num_generations}"
            raise SettingsError(
                f"Settings.per_device_train_batch_size × gradient_accumulation_steps ({completions}) must be a "
                f"multiple of num_generations ({self.num_generations}): every prompt needs its whole group of "
                f"completions. Use a batch size of {fits} (CLI --batch-size), or change num_generations "
                "(CLI --num-generations)."
            )
        if self.max_prompt_length + self.max_completion_length > self.max_seq_length:
            raise SettingsError(
                f"max_prompt_length ({self.max_prompt_length}) + max_completion_length ({self.max_completion_length})"
                f" exceeds max_seq_length ({self.max_seq_length}): raise max_seq_length (CLI --max-seq-length) or "
                "lower one of the two (--max-prompt-length, --max-completion-length)."
            )
        _check_range(self.warmup_ratio, "warmup_ratio", "in [0, 1)", lambda v: 0 <= v < 1)
        _check_range(self.learning_rate, "learning_rate", "> 0", lambda v: v > 0)
        _check_range(self.temperature, "temperature", "> 0", lambda v: v > 0)
        _check_range(self.gpu_memory_utilization, "gpu_memory_utilization", "in (0, 1]", lambda v: 0 < v <= 1)
        if self.rollout not in ROLLOUTS:
            raise SettingsError(
                f"Settings.rollout must be one of {', '.join(map(repr, ROLLOUTS))}, got {self.rollout!r}."
            )
        if self.use_vllm and self.rollout != "default":
            raise SettingsError(
                f"Settings.rollout={self.rollout!r} and use_vllm are alternatives: vLLM is its own rollout engine. "
                "Keep rollout='default' with use_vllm, or turn use_vllm off."
            )
        if not self.reward_names:
            raise SettingsError(f"{_field('reward_names')} is empty: GRPO needs at least one reward.")
        from .rewards import get_reward_funcs

        try:
            get_reward_funcs(self.reward_names)
        except KeyError as err:
            raise SettingsError(f"{_field('reward_names')}: {err.args[0]}") from None
        return self


# CLI spelling of the fields whose flag is not just the field name with dashes; named in errors.
CLI_FLAGS = {"per_device_train_batch_size": "--batch-size", "reward_names": "--rewards", "load_in_4bit": "--4bit",
             "use_vllm": "--vllm", "model_name": "--model"}
CLI_FIELDS = {"max_seq_length", "lora_rank", "num_generations", "max_prompt_length", "max_completion_length",
              "max_steps", "save_steps", "learning_rate", "temperature", "seed"}


def _field(name: str) -> str:
    """How an error names a setting: the dataclass field, and its CLI flag where there is one."""
    flag = CLI_FLAGS.get(name) or (f"--{name.replace('_', '-')}" if name in CLI_FIELDS else None)
    return f"Settings.{name}" + (f" (CLI {flag})" if flag else "")


def _check_range(value, name: str, wanted: str, ok) -> None:
    try:
        good = ok(float(value))  # NaN fails every comparison, so it is rejected too
    except (TypeError, ValueError):
        good = False
    if not good:
        raise SettingsError(f"{_field(name)} must be {wanted}, got {value!r}.")


def grpo_config_kwargs(settings: Settings, output_dir: str | Path, *, use_cpu: bool = False, **overrides) -> dict:
    """The keyword arguments of TRL's ``GRPOConfig`` for ``settings``; ``overrides`` win over both settings and
    ``extra_grpo_args``. (Unsloth may still rewrite some, e.g. the optimiser on a machine without CUDA.)"""
    args = dict(
        output_dir=str(output_dir),
        learning_rate=settings.learning_rate,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        weight_decay=settings.weight_decay,
        # transformers 5 dropped warmup_ratio; a float warmup_steps < 1 is read as a share of max_steps.
        warmup_steps=float(settings.warmup_ratio),
        lr_scheduler_type=settings.lr_scheduler_type,
        # bitsandbytes' paged optimiser needs CUDA; on CPU the plain AdamW keeps the same maths.
        optim="adamw_torch" if use_cpu else settings.optim,
        logging_steps=settings.logging_steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        max_steps=settings.max_steps,
        save_steps=settings.save_steps,
        max_grad_norm=settings.max_grad_norm,
        temperature=settings.temperature,
        seed=settings.seed,
        use_vllm=settings.use_vllm,
        bf16=not use_cpu,
        use_cpu=use_cpu,
        report_to="tensorboard",
    )
    if settings.rollout == "static":
        args["cache_implementation"] = "static"
    elif settings.rollout == "paged":
        args["use_transformers_continuous_batching"] = True
    # rollout="fast" needs no GRPOConfig change: build_trainer swaps in sarashina_grpo.rollout's generation.
    args.update(settings.extra_grpo_args)
    args.update(overrides)
    return args


def build_grpo_config(settings: Settings, output_dir: str | Path, *, use_cpu: bool = False, **overrides):
    """TRL ``GRPOConfig`` for ``settings`` (see ``grpo_config_kwargs``)."""
    from trl import GRPOConfig

    return GRPOConfig(**grpo_config_kwargs(settings, output_dir, use_cpu=use_cpu, **overrides))
