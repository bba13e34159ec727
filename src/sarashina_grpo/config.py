"""Every setting of a run, defined once: the ``Settings`` dataclass, its YAML recipes, and TRL's ``GRPOConfig``.

    from sarashina_grpo.config import Settings, load_recipe
    settings = Settings(**load_recipe("configs/recipes/article.yaml"), max_steps=5)

``Settings`` is the only place a setting is defined: each field carries its help text in ``metadata``, and the
command line (``cli.py``), the YAML recipes (``configs/recipes/*.yaml``, keys = field names), ``run.json`` and the
notebooks' parameters all derive from it. Defaults reproduce the article's run, including its GRPO algorithm as
TRL ran it in early 2025 (docs/algorithm.md), whatever the installed TRL/Unsloth would default to.

Default locations (``datasets/``, ``artifact/``) are relative to the project folder: ``$SARASHINA_GRPO_HOME`` when
set, else the working directory, never the place the package is installed in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL_NAME = "sbintuitions/sarashina2.2-3b-instruct-v0.1"
HOME_VARIABLE = "SARASHINA_GRPO_HOME"

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
BACKENDS = ("auto", "unsloth", "trl-peft")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo")
SCALE_REWARDS = ("group", "batch", "none")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# bf16 needs compute capability 8.0 (Ampere) or newer; older cards (T4, V100, RTX 20xx) train in fp16. The check is
# the capability, not torch.cuda.is_bf16_supported(), which also says yes where bf16 is only emulated (slowly).
BF16_MIN_CAPABILITY = (8, 0)
# Set to fp16 to train as a card without bf16 would, on one that has it (reproducing a T4 user's run; the GPU suite).
PRECISION_VARIABLE = "SARASHINA_GRPO_PRECISION"


def precision() -> str:
    """The 16-bit type this machine trains in: ``"bf16"`` on a GPU that has it, ``"fp16"`` on an older GPU (or when
    ``$SARASHINA_GRPO_PRECISION=fp16``), ``"fp32"`` without CUDA (bf16 matmuls on a CPU are slow)."""
    import torch

    if not torch.cuda.is_available():
        return "fp32"
    supported = torch.cuda.get_device_capability() >= BF16_MIN_CAPABILITY
    wanted = os.environ.get(PRECISION_VARIABLE, "").strip().lower()
    if wanted not in ("", "bf16", "fp16"):
        raise SettingsError(f"${PRECISION_VARIABLE}={wanted!r}: use fp16 or bf16, or leave it unset (the card "
                            "decides).")
    if wanted == "bf16" and not supported:
        raise SettingsError(f"${PRECISION_VARIABLE}=bf16, but this GPU has no bf16 (compute capability "
                            f"{torch.cuda.get_device_capability()}); unset it to train in fp16.")
    return wanted or ("bf16" if supported else "fp16")


def torch_dtype(kind: str | None = None):
    """The torch dtype of ``precision()`` (or of ``kind``: "bf16", "fp16", "fp32")."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[kind or precision()]


def multi_process() -> bool:
    """Started by ``accelerate launch`` (or torchrun) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class SettingsError(ValueError):
    """A setting is invalid; raised before any model is loaded."""


def setting(default, help: str, *, flag: str | None = None, choices=None, factory=None, shown: str | None = None):
    """A dataclass field with its help text in ``metadata``, and optionally a short flag alias, the allowed values
    and how ``--help`` shows a long default."""
    metadata = {"help": help, "flag": flag, "choices": choices, "shown": shown}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Settings:
    """Everything a run computes with. Defaults reproduce the article's run; ``run.json`` records all of them."""

    # --- model and data
    model_name: str = setting(DEFAULT_MODEL_NAME, "hub id, local model or checkpoint folder, or 'tiny' (the "
                              "offline test model)", flag="--model")
    data_path: str = setting("datasets/smalltalk.csv", "prompt CSV (columns prompt,lang; optional role, answer); "
                             "relative paths are taken from the project folder", flag="--data")
    system_prompt: str = setting(SYSTEM_PROMPT, "system prompt put before every prompt (it states the format)",
                                 shown="config.SYSTEM_PROMPT, our Japanese wording of the <think>/<response> layout")
    system_prompt_file: str | None = setting(None, "read the system prompt from this UTF-8 text file; unset: use "
                                             "--system-prompt")
    load_in_4bit: bool | None = setting(None, "QLoRA 4-bit loading; unset: on with a CUDA GPU, off without one",
                                        flag="--4bit")
    max_seq_length: int = setting(4096, "Unsloth's context budget (prompt + completion fit with room)")
    use_vllm: bool = setting(False, "Unsloth fast_inference through vLLM (the 'vllm' extra, CUDA only)",
                             flag="--vllm")
    gpu_memory_utilization: float = setting(0.6, "share of GPU memory vLLM may reserve (with --vllm)")
    backend: str = setting("auto", "model loading: 'unsloth', or plain transformers+PEFT ('trl-peft'); 'auto' = "
                           "unsloth (one process or several)",
                           choices=BACKENDS)
    # --- LoRA
    lora_rank: int = setting(32, "LoRA rank r")
    lora_alpha: int | None = setting(None, "LoRA alpha; unset: equal to the rank (scale 1.0, as in the article)")
    lora_target_modules: tuple[str, ...] = setting(LORA_TARGET_MODULES, "projections that get LoRA adapters")
    # --- optimiser
    learning_rate: float = setting(5e-6, "peak learning rate")
    adam_beta1: float = setting(0.9, "AdamW beta1")
    adam_beta2: float = setting(0.99, "AdamW beta2")
    weight_decay: float = setting(0.1, "AdamW weight decay")
    warmup_ratio: float = setting(0.1, "share of max_steps spent warming up the learning rate")
    lr_scheduler_type: str = setting("cosine", "learning-rate schedule after warm-up (transformers' names)")
    optim: str = setting("paged_adamw_8bit", "optimiser on a GPU (on CPU plain adamw_torch: bitsandbytes needs CUDA)")
    max_grad_norm: float = setting(0.1, "gradient clipping norm (small: GRPO updates on few samples are noisy)")
    # --- GRPO sampling
    num_generations: int = setting(6, "completions sampled per prompt (the GRPO group)")
    per_device_train_batch_size: int = setting(6, "completions per device per step (a multiple of "
                                               "num_generations)", flag="--batch-size")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step")
    max_prompt_length: int = setting(1024, "prompts longer than this (tokens, chat template included) are skipped "
                                     "with a warning: TRL 1.x no longer truncates them")
    max_completion_length: int = setting(512, "tokens generated per completion at most")
    temperature: float = setting(1.0, "sampling temperature of the rollouts")
    rollout: str = setting("default", "how completions are generated: " + "; ".join(
        f"{k} = {v}" for k, v in ROLLOUTS.items()), choices=tuple(ROLLOUTS))
    # --- GRPO algorithm: the article's (TRL 0.14/0.15, early 2025); docs/algorithm.md gives the modern variants
    loss_type: str = setting("grpo", "loss normalisation: 'grpo' = mean over each completion's tokens, then over "
                             "completions (the article's TRL); 'dapo', 'dr_grpo', 'bnpo', … as in TRL",
                             choices=LOSS_TYPES)
    beta: float = setting(0.04, "KL coefficient against the reference (LoRA-disabled) model; 0 drops the KL term")
    scale_rewards: str = setting("group", "divide advantages by the reward std of the group, the batch, or none",
                                 choices=SCALE_REWARDS)
    epsilon: float = setting(0.2, "PPO-style clipping range of the importance ratio (inert at num_iterations=1)")
    epsilon_high: float | None = setting(None, "upper clipping bound; unset: equal to epsilon (DAPO uses 0.28)")
    num_iterations: int = setting(1, "optimisation passes over each batch of completions (μ in the GRPO paper)")
    mask_truncated_completions: bool = setting(False, "leave completions cut at max_completion_length out of the "
                                               "loss (DAPO's overlong filtering)")
    importance_sampling_level: str = setting("token", "importance ratio per token (GRPO) or per sequence (GSPO)",
                                             choices=("token", "sequence"))
    reward_names: tuple[str, ...] = setting(DEFAULT_REWARDS, "reward functions from the registry "
                                            "(sarashina_grpo.rewards)", flag="--rewards")
    # --- schedule and logging
    max_steps: int = setting(500, "optimizer steps of the run")
    save_steps: int = setting(250, "write a checkpoint every N steps (and at the end)")
    logging_steps: int = setting(1, "log metrics to TensorBoard every N steps")
    log_completions: bool = setting(True, "print sampled completions with their rewards at each log (TRL)")
    num_completions_to_print: int = setting(2, "completions printed per log when log_completions is on")
    seed: int = setting(3407, "random seed (LoRA init, sampling, data order)")
    extra_grpo_args: dict = setting(None, "further TRL GRPOConfig arguments, as JSON on the command line",
                                    factory=dict)

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def effective_lora_alpha(self) -> int:
        return self.lora_rank if self.lora_alpha is None else self.lora_alpha

    def resolved(self) -> Settings:
        """Settings with what the machine and files decide filled in: ``load_in_4bit`` (on with CUDA) and the
        system prompt read from ``system_prompt_file``. ``run.json`` records the resolved values."""
        changes = {}
        if self.load_in_4bit is None:
            changes["load_in_4bit"] = cuda_available()
        if self.system_prompt_file:
            changes["system_prompt"] = read_text_setting(self.system_prompt_file, "system_prompt_file")
        return self.replace(**changes) if changes else self

    def validate(self) -> Settings:
        """Raise ``SettingsError`` naming the field (and its CLI flag) for any inconsistent value; return self.

        Called before any model loads, so a typo costs seconds, not a model download.
        """
        positive = (
            "max_seq_length", "lora_rank", "num_generations", "per_device_train_batch_size",
            "gradient_accumulation_steps", "max_prompt_length", "max_completion_length", "max_steps",
            "save_steps", "logging_steps", "num_iterations", "num_completions_to_print",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingsError(f"{field_label(name)} must be a positive integer, got {value!r}.")
        if self.lora_alpha is not None and (not isinstance(self.lora_alpha, int) or self.lora_alpha < 1):
            raise SettingsError(f"{field_label('lora_alpha')} must be a positive integer, got {self.lora_alpha!r}.")
        if self.num_generations < 2:
            raise SettingsError(
                f"{field_label('num_generations')} must be at least 2 (GRPO compares completions within a group), "
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
        _check_range(self.beta, "beta", ">= 0", lambda v: v >= 0)
        _check_range(self.epsilon, "epsilon", "> 0", lambda v: v > 0)
        if self.epsilon_high is not None:
            _check_range(self.epsilon_high, "epsilon_high", "> 0", lambda v: v > 0)
        for name in ("rollout", "backend", "loss_type", "scale_rewards", "importance_sampling_level"):
            choices = FIELDS[name].metadata["choices"]
            if getattr(self, name) not in choices:
                raise SettingsError(f"{field_label(name)} must be one of {', '.join(map(repr, choices))}, "
                                    f"got {getattr(self, name)!r}.")
        if self.loss_type == "luspo" and self.importance_sampling_level != "sequence":
            raise SettingsError("loss_type 'luspo' needs importance_sampling_level 'sequence' (CLI "
                                "--importance-sampling-level sequence).")
        if self.use_vllm and self.rollout != "default":
            raise SettingsError(
                f"Settings.rollout={self.rollout!r} and use_vllm are alternatives: vLLM is its own rollout engine. "
                "Keep rollout='default' with use_vllm, or turn use_vllm off."
            )
        if self.extra_grpo_args.get("vllm_mode") == "server":
            # TRL's client to a separate `trl vllm-serve` GPU; Unsloth generates through its own colocated vLLM.
            if not self.use_vllm or self.backend == "unsloth":
                raise SettingsError("vllm_mode 'server' needs --vllm and --backend trl-peft (TRL's own vLLM client "
                                    "talks to `trl vllm-serve`).")
        if not self.system_prompt.strip() and not self.system_prompt_file:
            raise SettingsError(f"{field_label('system_prompt')} is empty: it tells the model the format.")
        if not self.reward_names:
            raise SettingsError(f"{field_label('reward_names')} is empty: GRPO needs at least one reward.")
        from .rewards import get_reward_funcs

        try:
            get_reward_funcs(self.reward_names)
        except KeyError as err:
            raise SettingsError(f"{field_label('reward_names')}: {err.args[0]}") from None
        return self

    def to_dict(self) -> dict:
        """JSON-ready values of every field (``run.json``)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "settings") -> Settings:
        """Settings from field names (a recipe, ``run.json``); an unknown key is an error naming the valid ones."""
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise SettingsError(f"{source}: unknown setting(s) {', '.join(unknown)}. Valid names: "
                                f"{', '.join(FIELDS)}.")
        return cls(**{k: coerce(k, v) for k, v in values.items()})


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def flag_of(name: str) -> str:
    """The command-line flag of a field: its alias where it has one, else the name with dashes."""
    return FIELDS[name].metadata.get("flag") or "--" + name.replace("_", "-")


def field_label(name: str) -> str:
    """How an error names a setting: the dataclass field and its CLI flag."""
    return f"Settings.{name} (CLI {flag_of(name)})"


def coerce(name: str, value):
    """A recipe/run.json value in the field's Python type (YAML/JSON lists become tuples)."""
    if isinstance(value, list) and isinstance(FIELDS[name].default, tuple):
        return tuple(value)
    if name == "reward_names" and isinstance(value, str):
        return tuple(n.strip() for n in value.split(",") if n.strip())
    return value


def _check_range(value, name: str, wanted: str, ok) -> None:
    try:
        number = float(value)
        good = math.isfinite(number) and ok(number)  # NaN and inf fail here too
    except (TypeError, ValueError):
        good = False
    if not good:
        raise SettingsError(f"{field_label(name)} must be {wanted} and finite, got {value!r}.")


def read_text_setting(path: str | Path, name: str) -> str:
    """The text of a file named by a setting (system prompt, role), with one clear error when it cannot be used."""
    file = project_path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SettingsError(f"{name}: file not found: {file}.") from None
    except (IsADirectoryError, UnicodeDecodeError, OSError) as err:
        raise SettingsError(f"{name}: cannot read {file} as UTF-8 text ({err}).") from None
    if not text.strip():
        raise SettingsError(f"{name}: {file} is empty.")
    return text.strip()


# --- where things live


def project_dir() -> Path:
    """The folder that holds ``datasets/`` and ``artifact/``: ``$SARASHINA_GRPO_HOME``, else the working directory."""
    return Path(os.environ.get(HOME_VARIABLE) or os.getcwd())


def project_path(path: str | Path) -> Path:
    """``path`` as given when absolute or when it exists from here; else relative to the project folder."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return project_dir() / path


def default_artifact_dir() -> Path:
    return project_dir() / "artifact"


# --- YAML recipes


def load_recipe(path: str | Path) -> dict:
    """The settings of a YAML recipe (``configs/recipes/*.yaml``): a mapping of ``Settings`` field names."""
    import yaml

    file = project_path(path)
    if not file.is_file():
        raise SettingsError(f"Recipe not found: {file}. Recipes live in configs/recipes/ (e.g. article.yaml).")
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise SettingsError(f"{file}: not valid YAML ({err}).") from None
    if not isinstance(values, dict):
        raise SettingsError(f"{file}: a recipe is a mapping of setting names to values, got {type(values).__name__}.")
    Settings.from_dict(values, source=str(file))  # unknown keys fail here, naming the file
    return {k: coerce(k, v) for k, v in values.items()}


# --- TRL


def grpo_config_kwargs(settings: Settings, output_dir: str | Path, *, use_cpu: bool = False, **overrides) -> dict:
    """The keyword arguments of TRL's ``GRPOConfig`` for ``settings``; ``overrides`` win over both settings and
    ``extra_grpo_args``. Every algorithm choice is passed explicitly, so Unsloth's own defaults never apply."""
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
        loss_type=settings.loss_type,
        beta=settings.beta,
        scale_rewards=settings.scale_rewards,
        epsilon=settings.epsilon,
        epsilon_high=settings.epsilon if settings.epsilon_high is None else settings.epsilon_high,
        num_iterations=settings.num_iterations,
        mask_truncated_completions=settings.mask_truncated_completions,
        importance_sampling_level=settings.importance_sampling_level,
        log_completions=settings.log_completions,
        num_completions_to_print=settings.num_completions_to_print,
        use_cpu=use_cpu,
        report_to="tensorboard",
    )
    if settings.rollout == "static":
        args["cache_implementation"] = "static"
    elif settings.rollout == "paged":
        args["use_transformers_continuous_batching"] = True
    # rollout="fast" needs no GRPOConfig change: the pipeline swaps in sarashina_grpo.rollout's generation.
    if not use_cpu:  # mixed precision of the card; CPU runs stay in fp32
        kind = precision()
        args.update(bf16=kind == "bf16", fp16=kind == "fp16")
    args.update(settings.extra_grpo_args)
    args.update(overrides)
    return args


def build_grpo_config(settings: Settings, output_dir: str | Path, *, use_cpu: bool = False, **overrides):
    """TRL ``GRPOConfig`` for ``settings`` (see ``grpo_config_kwargs``)."""
    from trl import GRPOConfig

    return GRPOConfig(**grpo_config_kwargs(settings, output_dir, use_cpu=use_cpu, **overrides))
