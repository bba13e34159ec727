"""Every setting of a run, defined once: the ``Settings`` dataclass, its YAML recipes, and TRL's ``GRPOConfig``.

    from sarashina_grpo.config import Settings, load_recipe
    settings = Settings(**load_recipe("configs/recipes/article.yaml"), max_steps=5)

``Settings`` is the only place a setting is defined: each field carries its help text in ``metadata``, and the
command line (``cli.py``), the YAML recipes (``configs/recipes/*.yaml``, keys = field names), ``run.json`` and the
notebooks' parameters all derive from it. ``read_settings`` is the one typed reading of all of them; keys that are
fields of TRL's ``GRPOConfig`` rather than of ``Settings`` travel in ``extra_grpo_args``. Defaults reproduce the
article's run, including its GRPO algorithm as TRL ran it in early 2025 (docs/algorithm.md), whatever the installed
TRL/Unsloth would default to.

Default locations (``datasets/``, ``artifact/``) are relative to the project folder: ``$SARASHINA_GRPO_HOME`` when
set, else the working directory, never the place the package is installed in.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import typing
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
# Held-out metrics that can mark the best checkpoint (Settings.best_metric), and which way is better.
BEST_METRICS = {"strict_format_rate": "higher", "soft_format_rate": "higher", "xmlcount_mean": "higher",
                "think_purity_mean": "higher", "response_purity_mean": "higher", "purity_mean": "higher",
                "answer_accuracy": "higher", "latin_run_rate": "lower", "think_leak_mean": "lower"}
SCALE_REWARDS = ("group", "batch", "none")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# bf16 needs compute capability 8.0 (Ampere) or newer; older cards (T4, V100, RTX 20xx) train in fp16. The check is
# the capability, not torch.cuda.is_bf16_supported(), which also says yes where bf16 is only emulated (slowly).
BF16_MIN_CAPABILITY = (8, 0)
# Set to fp16 to train as a card without bf16 would, on one that has it (reproducing a T4 user's run; the GPU suite);
# bf16 on a CPU keeps the weights in bf16 (the learning proof's recorded runs were made so).
PRECISION_VARIABLE = "SARASHINA_GRPO_PRECISION"


def precision() -> str:
    """The 16-bit type this machine trains in: ``"bf16"`` on a GPU that has it, ``"fp16"`` on an older GPU (or when
    ``$SARASHINA_GRPO_PRECISION=fp16``), ``"fp32"`` without CUDA (bf16 matmuls on a CPU are slow)."""
    import torch

    wanted = os.environ.get(PRECISION_VARIABLE, "").strip().lower()
    if wanted not in ("", "bf16", "fp16"):
        raise SettingsError(f"${PRECISION_VARIABLE}={wanted!r}: use fp16 or bf16, or leave it unset (the card "
                            "decides).")
    if not torch.cuda.is_available():
        return "bf16" if wanted == "bf16" else "fp32"
    supported = torch.cuda.get_device_capability() >= BF16_MIN_CAPABILITY
    if wanted == "bf16" and not supported:
        raise SettingsError(f"${PRECISION_VARIABLE}=bf16, but this GPU has no bf16 (compute capability "
                            f"{torch.cuda.get_device_capability()}); unset it to train in fp16.")
    return wanted or ("bf16" if supported else "fp16")


def torch_dtype(kind: str | None = None):
    """The torch dtype of ``precision()`` (or of ``kind``: "bf16", "fp16", "fp32")."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[kind or precision()]


def process_rank() -> int:
    """This process's rank under ``accelerate launch`` (or torchrun); 0 when it runs alone."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Processes started together by ``accelerate launch`` (or torchrun); 1 when it runs alone."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def multi_process() -> bool:
    """Started by ``accelerate launch`` (or torchrun) with more than one process."""
    return world_size() > 1


def finite_number(value) -> bool:
    """An int or float (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class SettingsError(ValueError):
    """A setting is invalid; raised before any model is loaded."""


def shown(value) -> str:
    """A default as ``--help`` shows it: names comma-separated, mappings as JSON."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return json.dumps(value) if isinstance(value, dict) else str(value)


class OnOff(argparse.BooleanOptionalAction):
    """``--flag`` / ``--no-flag`` for a setting whose unset value (None) means "the machine decides": transformers'
    ``HfArgumentParser`` gives ``bool | None`` fields neither form."""

    def __init__(self, *args, type=None, **kwargs):  # noqa: A002  (HfArgumentParser passes its bool parser)
        super().__init__(*args, **kwargs)


def setting(default, help: str, *, flag: str | None = None, choices=None, factory=None, shown_as: str | None = None,
            **parser_options):
    """A dataclass field whose ``metadata`` is its command-line flag as transformers' ``HfArgumentParser`` reads it:
    the help text with the default shown once (``shown_as`` for a long one; a field unset by default says in its
    help what "unset" means), an optional short alias (``flag``), the allowed values, further ``add_argument``
    options (``parser_options``)."""
    value = factory() if factory is not None else default
    text = help if value is None else f"{help} (default: {shown_as or shown(value)})"
    metadata = {"help": text, **parser_options}
    if flag:
        metadata["aliases"] = [flag]
    if choices:
        metadata["choices"] = choices
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Settings:
    """Everything a run computes with. Defaults reproduce the article's run; ``run.json`` records all of them."""

    # --- model and data
    model_name: str = setting(DEFAULT_MODEL_NAME, "hub id, local model or checkpoint folder, or 'tiny' (the "
                              "offline test model)", flag="--model")
    data_path: str = setting("datasets/smalltalk.csv", "prompt file: CSV, JSONL or Parquet (columns prompt,lang; "
                             "optional role, answer); "
                             "relative paths are taken from the project folder", flag="--data")
    system_prompt: str = setting(SYSTEM_PROMPT, "system prompt put before every prompt (it states the format)",
                                 shown_as="config.SYSTEM_PROMPT, our Japanese wording of the <think>/<response> layout")
    system_prompt_file: str | None = setting(None, "read the system prompt from this UTF-8 text file; unset: use "
                                             "--system-prompt")
    load_in_4bit: bool | None = setting(None, "QLoRA 4-bit loading; unset: on with a CUDA GPU, off without one",
                                        flag="--4bit", action=OnOff)
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
                             "completions (the article's TRL); 'dapo', 'dr_grpo', 'bnpo', … as TRL lists them")
    beta: float = setting(0.04, "KL coefficient against the reference: the starting model (the base model for a fresh "
                          "LoRA); 0 drops the KL term")
    scale_rewards: str = setting("group", "divide advantages by the reward std of the group, the batch, or none",
                                 choices=SCALE_REWARDS)
    epsilon: float = setting(0.2, "PPO-style clipping range of the importance ratio (inert at num_iterations=1)")
    epsilon_high: float | None = setting(None, "upper clipping bound; unset: equal to epsilon (DAPO uses 0.28)")
    num_iterations: int = setting(1, "optimisation passes over each batch of completions (μ in the GRPO paper)")
    mask_truncated_completions: bool = setting(False, "leave completions cut at max_completion_length out of the "
                                               "loss (DAPO's overlong filtering)")
    importance_sampling_level: str = setting("token", "importance ratio per token (GRPO) or per sequence (GSPO)",
                                             choices=("token", "sequence"))
    reward_names: tuple[str, ...] = setting(DEFAULT_REWARDS, "reward functions: registry names "
                                            "(sarashina_grpo.rewards), or your own as module:function or "
                                            "path/to/file.py:function", flag="--rewards")
    # --- schedule and logging
    max_steps: int = setting(500, "optimizer steps of the run")
    save_steps: int = setting(250, "write a checkpoint every N steps (and at the end)")
    logging_steps: int = setting(1, "log metrics to TensorBoard every N steps")
    log_completions: bool = setting(True, "print sampled completions with their rewards at each log (TRL)")
    num_completions_to_print: int = setting(2, "completions printed per log when log_completions is on")
    # --- evaluation during training (callbacks.HeldOutEval; not TRL's eval loop, which would sample and score rewards).
    # Not named eval_steps: that is a GRPOConfig field, and grpo_config_kwargs passes every field named like one to TRL.
    held_out_eval_steps: int = setting(0, "every N steps (and before the first), answer eval_limit held-out prompts "
                                       "greedily and log the metrics of `sarashina-grpo eval` to TensorBoard as "
                                       "eval/<metric>; 0: off", flag="--eval-steps")
    eval_data: str = setting("datasets/eval.csv", "held-out prompt file scored every --eval-steps (CSV, JSONL or "
                             "Parquet; columns prompt,lang)")
    eval_limit: int = setting(16, "held-out prompts scored at each evaluation (the first N of eval_data)")
    # --- the best checkpoint, early stopping and dynamic sampling (issue 32): callbacks.HeldOutEval, dynamic_sampling
    best_metric: str = setting("strict_format_rate", "held-out metric (with --eval-steps) whose best value marks a "
                               "checkpoint in run.json as the run's best: saved when reached, never rotated away, "
                               "loaded as artifact/outputs/<run>/best; 'none': off",
                               choices=("none", *BEST_METRICS))
    patience: int = setting(0, "stop the run after this many held-out evaluations in a row without a new best "
                            "of best_metric (saving a checkpoint first); 0: never")
    dynamic_sampling: bool = setting(False, "DAPO's dynamic sampling: drop groups whose rewards are all equal (they "
                                     "teach nothing) and fill the batch with groups of fresh prompts (one process)")
    dynamic_sampling_max_rounds: int = setting(2, "extra generation batches a step may spend on fresh groups with "
                                               "--dynamic-sampling; groups still missing are filled with dropped ones")
    # ---
    seed: int = setting(3407, "random seed (LoRA init, sampling, data order)")
    extra_grpo_args: dict = setting(None, "further TRL GRPOConfig fields, by name; each is also its own flag and "
                                    "recipe key (--report-to wandb, --save-total-limit 3, …), this JSON form "
                                    "stays for older command lines", factory=dict)

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

    def to_dict(self) -> dict:
        """JSON-ready values of every field (``run.json``)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "settings") -> Settings:
        """Settings from field names (a recipe, ``run.json``, a notebook's ``SETTINGS``), each value read in its
        field's type (``read_settings``)."""
        return cls(**read_settings(values, source=source))


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def flag_of(name: str) -> str:
    """The command-line flag of a field: its alias where it has one, else the name with dashes."""
    return next(iter(FIELDS[name].metadata.get("aliases", ())), "--" + name.replace("_", "-"))


def field_label(name: str) -> str:
    """How an error names a setting: the dataclass field and its CLI flag."""
    return f"Settings.{name} (CLI {flag_of(name)})"


HINTS = typing.get_type_hints(Settings)
# A system prompt or role is a paragraph or two; far beyond this a file is surely the wrong one, and the model would
# spend its whole context (and memory) on it.
MAX_PROMPT_CHARS = 20_000


def did_you_mean(name: str, candidates) -> str:
    """' (did you mean X?)' for the closest of ``candidates``, else ''."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _kind(hint) -> tuple[object, bool]:
    """(the type a field holds, whether it may be None) for hints such as ``int | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1 and len(typing.get_args(hint)) == 2:
        return args[0], True
    return hint, False


def typed_setting(name: str, value, source: str = "settings"):
    """``value`` read as the type of ``Settings.<name>``, or a ``SettingsError`` naming the field, the source, the
    type wanted and the value found. Numbers may come as text ("5e-6", what YAML 1.1 leaves a string); lists of
    names may come as one comma-separated string; nothing else is converted."""
    kind, optional = _kind(HINTS[name])
    wanted = {int: "an integer", float: "a number", bool: "true or false", str: "text", dict: "a mapping"}
    where = f"{source}: {field_label(name)}"
    if value is None:
        if optional:
            return None
        raise SettingsError(f"{where} must be {wanted.get(kind, 'a list of names')}, got nothing (null).")
    if typing.get_origin(kind) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise SettingsError(f"{where} must be a list of names (or one string 'a,b'), got {value!r}.")
        return tuple(i.strip() for i in items if i.strip())
    if kind is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise SettingsError(f"{where} is not JSON ({err.msg}): {value!r}.") from None
        if not isinstance(value, dict):
            raise SettingsError(f"{where} must be a mapping of GRPOConfig names to values, got {value!r}.")
        return value
    if kind in (int, float) and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise SettingsError(f"{where} must be {wanted[kind]}, got {value!r}.") from None
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise SettingsError(f"{where} must be {wanted[kind]}, got {value!r} ({type(value).__name__}).")
    return value


def read_settings(values: dict, *, source: str = "settings") -> dict:
    """The typed fields of ``values`` (a recipe, ``run.json``, ``SETTINGS``, the flags given).

    A key that is no ``Settings`` field but a field of TRL's ``GRPOConfig`` (``report_to``, ``save_total_limit``,
    ``reward_weights``, …) joins ``extra_grpo_args``, read in that field's type; any other key is an error that
    suggests the closest name."""
    from .grpo_fields import FieldTypeError, grpo_fields, typed_value

    if not isinstance(values, dict):
        raise SettingsError(f"{source}: settings are a mapping of names to values, got {type(values).__name__}.")
    fields, grpo = {}, {}
    for key, value in values.items():
        if key in FIELDS:
            fields[key] = typed_setting(key, value, source)
        elif key in grpo_fields():
            try:
                grpo[key] = typed_value(key, value)
            except FieldTypeError as err:
                raise SettingsError(f"{source}: GRPOConfig.{err}") from None
        else:
            hint = did_you_mean(str(key), [*FIELDS, *grpo_fields()])
            raise SettingsError(f"{source}: unknown setting {key!r}{hint}. Settings are the fields of "
                                "sarashina_grpo.config.Settings and of TRL's GRPOConfig.")
    if grpo:
        fields["extra_grpo_args"] = {**fields.get("extra_grpo_args", {}), **grpo}
    return fields


def read_text_setting(path: str | Path, name: str) -> str:
    """The text of a file named by a setting (system prompt, role), with one clear error when it cannot be used."""
    from .tables import file_problem

    file = project_path(path)
    problem = file_problem(file)  # a FIFO or /dev/zero would block or be read until memory runs out
    if problem and problem not in ("not found", "is a folder"):
        raise SettingsError(f"{name}: {file} {problem}.")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SettingsError(f"{name}: file not found: {file}.") from None
    except IsADirectoryError:
        raise SettingsError(f"{name}: {file} is a folder; give a UTF-8 text file.") from None
    except (UnicodeDecodeError, OSError) as err:
        raise SettingsError(f"{name}: cannot read {file} as UTF-8 text ({err}).") from None
    if not text.strip():
        raise SettingsError(f"{name}: {file} is empty.")
    if len(text) > MAX_PROMPT_CHARS:
        raise SettingsError(f"{name}: {file} holds {len(text):,} characters; a prompt file is limited to "
                            f"{MAX_PROMPT_CHARS:,}. Check that it is the right file, or shorten it.")
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


def yaml_loader():
    """PyYAML's safe loader reading floats the YAML 1.2 way: ``5e-6`` is a number (YAML 1.1 wants ``5.0e-6``)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$"), list("-+0123456789"))
    return Loader


def load_recipe(path: str | Path) -> dict:
    """The typed settings of a YAML recipe (``configs/recipes/*.yaml``): ``Settings`` and ``GRPOConfig`` field
    names (``read_settings``)."""
    import yaml

    file = project_path(path)
    if file.is_dir():
        raise SettingsError(f"Recipe {file} is a folder; give a YAML file such as configs/recipes/article.yaml.")
    if not file.is_file():
        raise SettingsError(f"Recipe not found: {file}. Recipes live in configs/recipes/ (e.g. article.yaml).")
    try:
        values = yaml.load(file.read_text(encoding="utf-8-sig"), Loader=yaml_loader()) or {}  # noqa: S506
    except UnicodeDecodeError as err:
        raise SettingsError(f"Recipe {file} is not UTF-8 text (byte {err.start}); is it a YAML file?") from None
    except yaml.YAMLError as err:
        raise SettingsError(f"{file}: not valid YAML ({err}).") from None
    if not isinstance(values, dict):
        raise SettingsError(f"{file}: a recipe is a mapping of setting names to values, got {type(values).__name__}.")
    return read_settings(values, source=str(file))


# --- TRL


def grpo_config_kwargs(settings: Settings, output_dir: str | Path, *, use_cpu: bool = False, **overrides) -> dict:
    """The keyword arguments of TRL's ``GRPOConfig`` for ``settings``: every ``Settings`` field that is also a
    ``GRPOConfig`` field, under its own name, then ``extra_grpo_args``, then ``overrides``. Every algorithm choice
    is passed explicitly, so Unsloth's own defaults never apply. A new ``Settings`` field named like a ``GRPOConfig``
    field reaches TRL as that field with no further code; name a project-only setting differently."""
    from .grpo_fields import grpo_fields

    args = {name: getattr(settings, name) for name in FIELDS if name in grpo_fields()}
    args.update(
        output_dir=str(output_dir),
        # transformers 5 dropped warmup_ratio; a float warmup_steps < 1 is read as a share of max_steps.
        warmup_steps=float(settings.warmup_ratio),
        # bitsandbytes' paged optimiser needs CUDA; on CPU the plain AdamW keeps the same maths.
        optim="adamw_torch" if use_cpu else settings.optim,
        epsilon_high=settings.epsilon if settings.epsilon_high is None else settings.epsilon_high,
        use_cpu=use_cpu,
        report_to="tensorboard",  # the article's logs; --report-to (extra_grpo_args) replaces it
    )
    if settings.rollout == "static":
        args["cache_implementation"] = "static"
    elif settings.rollout == "paged":
        args["use_transformers_continuous_batching"] = True
    # rollout="fast" needs no GRPOConfig change: the pipeline swaps in sarashina_grpo.rollout's generation.
    # Mixed precision of the card; CPU runs stay in fp32. Both are always given: TRL's GRPOConfig turns bf16 on
    # when neither is set (and transformers then autocasts a CPU run to bf16 where the CPU has it).
    kind = "fp32" if use_cpu else precision()
    args.update(bf16=kind == "bf16", fp16=kind == "fp16")
    args.update(settings.extra_grpo_args)
    args.update(overrides)
    return args


def build_grpo_config(settings: Settings, output_dir: str | Path, *, use_cpu: bool = False, **overrides):
    """TRL ``GRPOConfig`` for ``settings`` (see ``grpo_config_kwargs``)."""
    from trl import GRPOConfig

    return GRPOConfig(**grpo_config_kwargs(settings, output_dir, use_cpu=use_cpu, **overrides))
