"""The run's settings: TRL's ``GRPOConfig`` extended with this project's fields. ``Settings.__post_init__`` reads and
checks every value the same way whatever its source (flag, recipe, notebook ``SETTINGS``, a resumed ``run.json``);
``load_settings`` lays the values given over a recipe and the article's."""

import dataclasses
import json
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path

if "trl" not in sys.modules:  # Unsloth patches TRL as it is imported, so it comes first; a process that imported
    from .noise import import_unsloth  # TRL already chose the plain transformers + PEFT backend (--backend trl-peft)

    import_unsloth()

from trl import GRPOConfig  # noqa: E402

from . import project  # noqa: E402
from .project import BACKENDS, BEST_METRICS, FLAGS, SettingsError, field_label, load_recipe, setting  # noqa: E402

ARTICLE_RECIPE = project.RECIPES / "article.yaml"

# Whole numbers and their lowest value (the project runs by steps: TRL's float save_steps/logging_steps below 1, a
# share of the run, are refused); 0 is off or no extra batch.
WHOLE_NUMBERS = {**dict.fromkeys((
    "max_seq_length", "lora_rank", "lora_alpha", "max_prompt_length", "eval_limit", "max_steps", "save_steps",
    "logging_steps", "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps",
    "max_completion_length", "num_iterations", "num_completions_to_print", "generation_batch_size",
    "steps_per_generation"), 1), "patience": 0, "dynamic_sampling_max_rounds": 0, "top_k": 0,
    "dataloader_num_workers": 0}
# field: (lowest, highest, lowest allowed itself, highest allowed itself): values TRL accepts that no run can use.
NUMERIC_RANGES = {
    "learning_rate": project.LEARNING_RATE_RANGE,  # shared with warmstart --learning-rate
    "max_grad_norm": (0.0, math.inf, False, False),
    "temperature": (0.0, 10.0, False, True),  # beyond 10 sampling is uniform noise over the vocabulary
    # transformers checks these only when it builds its samplers (after the model loads), some not at all (top_p 5)
    "top_p": (0.0, 1.0, False, True),
    "min_p": (0.0, 1.0, True, True),
    "repetition_penalty": (0.0, math.inf, False, False),
    "beta": (0.0, math.inf, True, False),  # KL coefficient; 0 switches the reference model off (TRL's default)
    "epsilon": (0.0, 1.0, False, False),  # clip range of the policy ratio
    "epsilon_high": (0.0, math.inf, False, False),
    "delta": (1.0, math.inf, False, False),  # upper bound of the policy ratio, which is 1 on-policy
    "top_entropy_quantile": (0.0, 1.0, True, True),
    "adam_beta1": (0.0, 1.0, True, False),
    "adam_beta2": (0.0, 1.0, True, False),
    "weight_decay": (0.0, math.inf, True, False),
    "warmup_steps": (0.0, math.inf, True, False),  # a float below 1 is a share of max_steps (transformers 5)
    "vllm_gpu_memory_utilization": (0.0, 1.0, False, True),
}
# Fields the project sets for each run: a run's checkpoints live in its own folder, where --resume finds them.
RUN_OWNED = {
    "output_dir": "checkpoints go to <artifact-dir>/outputs/<run>/; choose the folder with --artifact-dir and "
                  "--run-name",
    "resume_from_checkpoint": "continue a run with --resume [RUN or checkpoint folder]",
}
# TRL's refusals name fields a user sets through other flags. Each hint is added where its words appear.
TRL_HINTS = {
    "must be divisible by num_generations": " generation_batch_size is --batch-size x --gradient-accumulation-steps x "
    "processes unless --generation-batch-size or --steps-per-generation sets it: make --batch-size (or that product) "
    "a multiple of --num-generations.",
    "must be divisible by the global batch size": " Make --generation-batch-size a multiple of --batch-size x "
    "processes, or give --steps-per-generation instead.",
    "can not be both configured": " Give one of --generation-batch-size and --steps-per-generation.",
}
WANTED = {int: "an integer", float: "a number", bool: "true or false", str: "text", dict: "a mapping", list: "a list"}


@dataclass
class Settings(GRPOConfig):
    """A run's settings: TRL's ``GRPOConfig`` and this project's fields. ``run.json`` records them."""

    model_name: str = setting(project.DEFAULT_MODEL_NAME, "hub id, local model or checkpoint folder, or 'tiny' (the "
                              "offline test model)", flag=FLAGS["model_name"])
    data_path: str = setting("datasets/smalltalk.csv", "prompt file: CSV, JSONL or Parquet (columns prompt,lang; "
                             "optional role, answer); relative paths are taken from the project folder",
                             flag=FLAGS["data_path"])
    system_prompt: str = setting(project.SYSTEM_PROMPT, "system prompt put before every prompt (it states the format)",
                                 shown_as="the article's Japanese wording of the <think>/<response> layout")
    system_prompt_file: str | None = setting(None, "read the system prompt from this UTF-8 text file; unset: use "
                                             "--system-prompt")
    max_prompt_length: int = setting(1024, "prompts longer than this (tokens, chat template included) are skipped "
                                     "with a warning: TRL 1.x no longer truncates them")
    load_in_4bit: bool | None = setting(None, "QLoRA 4-bit loading; unset: on with a CUDA GPU, off without one",
                                        flag=FLAGS["load_in_4bit"], action=project.OnOff)
    max_seq_length: int = setting(4096, "Unsloth's context budget (prompt + completion fit with room)")
    offload_activations: bool = setting(True, "Unsloth's gradient checkpointing keeps each layer's saved input in CPU "
                                        "memory (its offloading; on an H100 the update was no faster with them on "
                                        "the GPU: docs/speed.md), or with --no-offload-activations on the GPU")
    backend: str = setting("auto", "model loading: 'unsloth', or plain transformers+PEFT ('trl-peft'); 'auto' = "
                           "unsloth (one process or several)", choices=BACKENDS)
    lora_rank: int = setting(32, "LoRA rank r")
    lora_alpha: int | None = setting(None, "LoRA alpha; unset: equal to the rank (scale 1.0, as in the article)")
    lora_target_modules: list[str] = setting(None, "projections that get LoRA adapters (comma-separated or several "
                                             "words)", factory=lambda: list(project.LORA_TARGET_MODULES))
    rollout: str = setting("auto", "how completions are generated: " + "; ".join(
        f"{k} = {v}" for k, v in project.ROLLOUTS.items()), choices=tuple(project.ROLLOUTS))
    reward_names: list[str] = setting(None, "reward functions: registry names (sarashina_grpo.rewards), or your own "
                                      "as module:function or path/to/file.py:function; comma-separated or several "
                                      "words", flag=FLAGS["reward_names"],
                                      factory=lambda: list(project.DEFAULT_REWARDS))
    # held-out evaluation (callbacks.HeldOutEval) every TRL `eval_steps`: TRL's own eval loop is never switched on
    eval_data: str = setting("datasets/eval.csv", "held-out prompt file scored every --eval-steps (CSV, JSONL or "
                             "Parquet; columns prompt,lang)")
    eval_limit: int = setting(16, "held-out prompts scored at each evaluation (the first N of eval_data)")
    best_metric: str = setting("strict_format_rate", "held-out metric (with --eval-steps) whose best value marks a "
                               "checkpoint in run.json as the run's best: saved when reached, never rotated away, "
                               "loaded as artifact/outputs/<run>/best; 'none': off", choices=("none", *BEST_METRICS))
    patience: int = setting(0, "stop the run after this many held-out evaluations in a row without a new best "
                            "of best_metric (saving a checkpoint first); 0: never")
    dynamic_sampling: bool = setting(False, "DAPO's dynamic sampling: drop groups whose rewards are all equal (they "
                                     "teach nothing) and fill the batch with groups of fresh prompts (one process)")
    dynamic_sampling_max_rounds: int = setting(2, "extra generation batches a step may spend on fresh groups with "
                                               "--dynamic-sampling; groups still missing are filled with dropped ones")

    def __post_init__(self):
        self._asked = {name: getattr(self, name) for name in FIELDS}
        self.origins: dict[str, str] = {}  # the file (recipe, run.json) that set a field, where one did
        for name, value in self._asked.items():
            setattr(self, name, typed(name, value))
        self.reward_names = split_names(self.reward_names)
        self.lora_target_modules = split_names(self.lora_target_modules)
        check_values(self)
        if self.system_prompt_file:
            self.system_prompt = project.read_text_setting(self.system_prompt_file, field_label("system_prompt_file"))
        self._decide_machine()
        self._trl_arguments = {name: getattr(self, name) for name in TRL_FIELDS}
        project.check_launch_environment()  # TRL's __post_init__ starts the process group these variables name
        try:
            super().__post_init__()
        except ValueError as err:
            hint = "".join(text for words, text in TRL_HINTS.items() if words in str(err))  # what to change
            raise SettingsError(f"TRL's GRPOConfig refused the settings: {err}{hint}") from None
        except ImportError as err:  # e.g. deepspeed: its package is read when the config is built
            raise SettingsError(f"TRL's GRPOConfig needs a package that is not installed for these settings ({err}): "
                                "install it, or drop the setting that asks for it.") from None

    def _decide_machine(self) -> None:
        """What the machine decides (4-bit, CPU or GPU, 16-bit type, optimiser, rollout switches); not the algorithm."""
        if self.load_in_4bit is None:
            self.load_in_4bit = project.cuda_available()
        if not project.cuda_available():
            self.use_cpu = True
        if self.bf16 is None and not self.fp16:
            # TRL turns bf16 on when neither is set (and transformers then autocasts a CPU run to bf16)
            kind = "fp32" if self.use_cpu else project.precision()
            self.bf16, self.fp16 = kind == "bf16", kind == "fp16"
        if self.use_cpu and "8bit" in str(self.optim):
            self.optim = "adamw_torch"  # bitsandbytes' paged optimiser needs CUDA; plain AdamW keeps the maths
        if self.rollout == "static":
            self.cache_implementation = "static"
        elif self.rollout == "paged":
            self.use_transformers_continuous_batching = True

    @property
    def effective_lora_alpha(self) -> int:
        return self.lora_rank if self.lora_alpha is None else self.lora_alpha

    def replace(self, **changes) -> "Settings":
        """These settings with ``changes``, built anew from the values asked for (TRL derives some fields)."""
        settings = type(self)(**{**self._asked, **changes})
        settings.origins = {k: v for k, v in self.origins.items() if k not in changes}
        return settings

    def label(self, name: str) -> str:
        """How an error names field ``name``: ``field_label``, after the recipe (or run.json) that set it, if any."""
        origin = self.origins.get(name)
        default = "the default recipe " if origin == str(ARTICLE_RECIPE) else ""
        return f"{field_label(name)}, set in {default}{origin}" if origin else field_label(name)

    def for_trainer(self):
        """These settings as the trainer's ``args``: ``self``, or, once Unsloth has put its ``GRPOConfig`` subclass
        in TRL's place (fields its trainer reads: ``unsloth_num_chunks``, …), an instance of it with the same values."""
        import trl

        return self if isinstance(self, trl.GRPOConfig) else trl.GRPOConfig(**self._trl_arguments)

    def asked(self) -> dict:
        """The values this object was built from, JSON-ready: what ``run.json`` records and a resume rebuilds."""
        return json.loads(json.dumps(self._asked, default=str))


def schema_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of TRL's own ``GRPOConfig`` and ``cls``'s, not those of Unsloth's subclass put in TRL's place on a
    GPU: a ``run.json`` must read the same in a process without Unsloth (``--backend trl-peft``). Unsloth's class
    takes the pristine one's module and name (for pickle), so TRL's is the last of that name in the MRO."""
    trl_config = [c for c in cls.__mro__ if (c.__module__, c.__name__) == ("trl.trainer.grpo_config", "GRPOConfig")][-1]
    names = {f.name for f in dataclasses.fields(trl_config)} | set(vars(cls).get("__annotations__", {}))
    return {f.name: f for f in dataclasses.fields(cls) if f.name in names}


FIELDS = schema_fields(Settings)
TRL_FIELDS = [name for name in FIELDS if name not in vars(Settings)["__annotations__"]]
HINTS = typing.get_type_hints(Settings)


def split_names(names) -> list[str]:
    """``["a,b", "c"]`` or ``"a,b"`` as ``["a", "b", "c"]``."""
    items = [names] if isinstance(names, str) else list(names)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def _read_as(kind, value):
    """``value`` as ``kind`` (one member of a field's type), or raise ``TypeError`` or ``ValueError``."""
    origin = typing.get_origin(kind)
    if kind is typing.Any or not isinstance(value, None | bool | int | float | str | list | tuple | dict):
        return value  # an object a caller built (a ParallelismConfig, an enum member): TRL checks it
    if kind in (int, float):
        if isinstance(value, str):
            value = float(value.strip())  # a ValueError, like a TypeError, means not this kind
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                kind is int and isinstance(value, float) and not value.is_integer()):
            raise TypeError
        return float(value) if kind is float else int(value)
    if origin in (list, tuple):
        if isinstance(value, str):  # "a,b": what one line of a recipe or a --flag a,b gives
            value = split_names(value)
        if not isinstance(value, list | tuple):
            raise TypeError
        item = (typing.get_args(kind) or (typing.Any,))[0]
        return [_read_as(item, v) for v in value]
    wanted = dict if origin is dict else kind  # None, bool, str, a mapping, or one of TRL's str enums
    if isinstance(wanted, type) and (isinstance(value, wanted) or issubclass(wanted, str) and isinstance(value, str)):
        return value
    raise TypeError


def typed(name: str, value):
    """``value`` read as ``Settings.<name>``'s type; only numbers may come as text (YAML 1.1 leaves "5e-6" one)."""
    hint = HINTS[name]
    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if isinstance(value, os.PathLike):  # a Path in SETTINGS: the file's name as text
        value = os.fspath(value)
    elif type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:  # np.int64(3) from a sweep
        value = value.item()
    for kind in kinds:
        try:
            return _read_as(kind, value)
        except (TypeError, ValueError):
            continue
    wanted = " or ".join(WANTED.get(typing.get_origin(k) or k, getattr(k, "__name__", str(k))) for k in kinds
                         if k is not type(None))
    nothing = " (null)" if value is None else f" ({type(value).__name__})"
    raise SettingsError(f"{field_label(name)} must be {wanted}, got {value!r}{nothing}.")


def check_values(settings: Settings) -> None:
    """Values, and combinations of the project's fields (and TRL's), that this project cannot run."""
    for name, lowest in WHOLE_NUMBERS.items():
        value = getattr(settings, name)
        unset = value is None and type(None) in typing.get_args(HINTS[name])  # e.g. lora_alpha: the rank
        if not unset and not project.is_whole(value, lowest, floats=True):
            raise SettingsError(f"{field_label(name)} must be {'0 or ' if lowest == 0 else ''}a positive integer, "
                                f"got {value!r}.")
    if settings.eval_steps is not None and not project.is_whole(settings.eval_steps, floats=True):
        raise SettingsError(f"{field_label('eval_steps')} must be a whole number of steps ≥ 1 (unset: no held-out "
                            f"evaluation), got {settings.eval_steps!r}.")
    for name, problem in (("lora_rank", project.lora_rank_problem), ("seed", project.seed_problem)):
        if words := problem(getattr(settings, name)):  # the rules warmstart and build-tiny check their flags by
            raise SettingsError(f"{field_label(name)} {words}")
    for name, limits in NUMERIC_RANGES.items():
        if problem := project.range_problem(limits, getattr(settings, name)):
            raise SettingsError(f"{field_label(name)} {problem}")
    choices = {"backend": BACKENDS, "rollout": tuple(project.ROLLOUTS), "scale_rewards": project.SCALE_REWARDS,
               "importance_sampling_level": ("token", "sequence"), "best_metric": ("none", *BEST_METRICS),
               "loss_type": project.LOSS_TYPES}
    for name, allowed in choices.items():
        value = getattr(settings, name)
        if value not in allowed:
            raise SettingsError(f"{field_label(name)} must be one of {', '.join(map(repr, allowed))}, got "
                                f"{value!r}{project.did_you_mean(str(value), allowed)}.")
    if settings.patience and (not settings.eval_steps or settings.best_metric == "none"):
        raise SettingsError(f"{field_label('patience')} counts held-out evaluations without a new best: it needs "
                            "--eval-steps N and a --best-metric other than 'none'.")
    if settings.dynamic_sampling and settings.scale_rewards == "batch":  # each fresh batch has its own std
        raise SettingsError(f"{field_label('dynamic_sampling')} replaces groups with ones scored in another batch, "
                            "whose advantages a batch-wide std (scale_rewards 'batch') scales differently. Use "
                            "--scale-rewards group or none with it.")
    if settings.epsilon_high is not None and settings.epsilon_high < settings.epsilon:
        raise SettingsError(f"{field_label('epsilon_high')} ({settings.epsilon_high}) must be at least epsilon "
                            f"({settings.epsilon}).")
    if not settings.reward_names:
        raise SettingsError(f"{field_label('reward_names')} is empty: GRPO needs at least one reward.")
    # An empty path would be read as the project folder itself ("is a folder"), hiding which setting is empty.
    for name, used in (("data_path", True), ("eval_data", bool(settings.eval_steps))):
        if used and not getattr(settings, name).strip():
            raise SettingsError(f"{field_label(name)} is empty: give the path of a prompt file (CSV, JSONL or Parquet "
                                f"with columns prompt,lang), e.g. {FIELDS[name].default}.")
    weights = settings.reward_weights
    if weights is not None and len(weights) != len(settings.reward_names):
        raise SettingsError(f"reward_weights has {len(weights)} value(s) for {len(settings.reward_names)} rewards "
                            f"({', '.join(settings.reward_names)}): give one weight per reward.")
    if weights is not None and not all(map(project.finite_number, weights)):  # a NaN weight makes every reward NaN
        raise SettingsError(f"{field_label('reward_weights')} must be finite numbers, got {weights!r}.")
    if weights is not None and not any(weights):  # every completion scores 0: no group has a spread
        raise SettingsError(f"{field_label('reward_weights')} are all 0, so every completion would score 0 and nothing "
                            "would be learned. Give at least one reward a weight other than 0.")
    check_generation_config(settings)
    if not settings.lora_target_modules or not all(t.isidentifier() for t in settings.lora_target_modules):
        raise SettingsError(f"{field_label('lora_target_modules')} must be module names such as q_proj,v_proj, got "
                            f"{settings.lora_target_modules!r}.")
    if settings.max_prompt_length + settings.max_completion_length > settings.max_seq_length:
        raise SettingsError(f"max_prompt_length ({settings.max_prompt_length}) + max_completion_length "
                            f"({settings.max_completion_length}) exceeds max_seq_length ({settings.max_seq_length}): "
                            "raise max_seq_length (CLI --max-seq-length) or lower one of the two (--max-prompt-length, "
                            "--max-completion-length).")
    if settings.use_vllm and settings.rollout not in ("default", "auto"):  # 'auto' leaves the rollout to vLLM
        raise SettingsError(f"{field_label('rollout')}={settings.rollout!r} and use_vllm are alternatives: vLLM is "
                            "its own rollout engine. Keep rollout='auto' or 'default' with use_vllm, or turn use_vllm "
                            "off.")
    if settings.vllm_mode == "server" and (not settings.use_vllm or settings.backend == "unsloth"):
        # TRL's client to a separate `trl vllm-serve` GPU; Unsloth generates through its own colocated vLLM.
        raise SettingsError("vllm_mode 'server' needs --use-vllm and --backend trl-peft (TRL's own vLLM client talks "
                            "to `trl vllm-serve`).")
    if str(settings.save_strategy) != "steps":
        raise SettingsError(f"save_strategy {settings.save_strategy!r}: a run saves every --save-steps steps "
                            "(save_strategy 'steps'), so that --resume finds its checkpoints.")
    if str(settings.eval_strategy) != "no":
        raise SettingsError("eval_strategy: TRL's evaluation loop (sampling and scoring rewards on an eval dataset) "
                            "is not run by this project; its held-out evaluation is --eval-steps N (notebook "
                            "EVAL_STEPS), scored greedily on --eval-data.")
    if not settings.system_prompt.strip() and not settings.system_prompt_file:
        raise SettingsError(f"{field_label('system_prompt')} is empty: it tells the model the format.")


# Generation keys that would override what the run's checks and run.json hold, or break TRL's group shapes.
RUN_GENERATION = {"max_new_tokens": "give --max-completion-length", "max_length": "give --max-completion-length",
                  "num_return_sequences": "TRL samples --num-generations completions per prompt itself",
                  "do_sample": "GRPO samples (a greedy group has no spread to learn from)"}


def check_generation_config(settings: Settings) -> None:
    """The generation config TRL's trainer builds from the sampling fields and ``generation_kwargs``, checked by
    transformers' own validator now rather than when the trainer builds it, after the model loads."""
    from transformers import GenerationConfig
    from transformers.utils import logging as transformers_logging

    extra = settings.generation_kwargs
    if isinstance(extra, str):  # TRL reads a JSON string in its __post_init__, which runs after these checks
        try:
            extra = json.loads(extra)
        except ValueError as err:
            raise SettingsError(f"{field_label('generation_kwargs')} must be a JSON mapping, got {extra!r} "
                                f"({err}).") from None
    extra = extra or {}
    if not isinstance(extra, dict):
        raise SettingsError(f"{field_label('generation_kwargs')} must be a mapping, got {extra!r}.")
    defaults = GenerationConfig()
    for name in extra:  # transformers keeps an unknown key as an attribute without a word
        if name in RUN_GENERATION:
            raise SettingsError(f"{field_label('generation_kwargs')} {name} is the run's own: {RUN_GENERATION[name]}.")
        if not hasattr(defaults, name):
            raise SettingsError(f"{field_label('generation_kwargs')}: {name!r} is not a setting of transformers' "
                                f"GenerationConfig{project.did_you_mean(name, defaults.to_dict())}.")
    sampling = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
    for name in sampling:  # a kwarg overrides its field: the same range applies
        if name in NUMERIC_RANGES and (problem := project.range_problem(NUMERIC_RANGES[name], extra.get(name))):
            raise SettingsError(f"{field_label('generation_kwargs')} {name} {problem}")
    if "top_k" in extra and not project.is_whole(extra["top_k"], 0):
        raise SettingsError(f"{field_label('generation_kwargs')} top_k must be 0 or a positive integer, got "
                            f"{extra['top_k']!r}.")
    values = {"max_new_tokens": settings.max_completion_length, "do_sample": True,
              "cache_implementation": settings.cache_implementation, **{k: getattr(settings, k) for k in sampling},
              **extra}
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # building it warns of what the strict validation below refuses
    try:
        GenerationConfig(**values, disable_compile=True).validate(strict=True, user_set_attributes=set(extra))
    except (ValueError, TypeError) as err:
        problem = " ".join(line.strip() for line in str(err).splitlines() if line.strip() and "pretrained" not in line)
        raise SettingsError(f"{field_label('generation_kwargs')}: transformers refuses the generation settings: "
                            f"{problem}") from None
    finally:
        transformers_logging.set_verbosity(verbosity)


def article() -> dict:
    """The default recipe: the article's run."""
    return load_recipe(ARTICLE_RECIPE)


def load_settings(values: dict | str | None = None, *, recipe: str | Path | None = None, base: dict | None = None,
                  source: str = "settings", between: tuple[str, dict] | None = None) -> Settings:
    """Settings from layers: ``base`` (default: the article's recipe) < ``recipe`` < ``between`` (a named layer: the
    notebook's EVAL_STEPS) < ``values`` (flags, SETTINGS; JSON text too, as ``papermill -p`` passes it)."""
    layers = [(str(ARTICLE_RECIPE), article()) if base is None else (source, dict(base))]
    if recipe is not None:
        file = project.recipe_path(recipe)
        layers.append((str(file), load_recipe(file)))
    if between:
        layers.append(between)
    if isinstance(values, str):
        try:
            values = json.loads(values)
        except ValueError:
            raise SettingsError(f"{source}: settings are a mapping of names to values, got the text {values!r}, which "
                                "is not JSON either.") from None
    given = {} if values is None else values
    layers.append((source, given))
    merged = {}
    for name, layer in layers:  # every key a field, else one error naming the closest
        if not isinstance(layer, dict):
            raise SettingsError(f"{name}: settings are a mapping of names to values, got {type(layer).__name__}.")
        for key in layer:
            if key not in FIELDS:
                raise SettingsError(f"{name}: unknown setting {key!r}{project.did_you_mean(str(key), FIELDS)}. "
                                    "Settings are the fields of TRL's GRPOConfig and of sarashina_grpo.config.Settings "
                                    "(`sarashina-grpo train --help`).")
        # One layer giving a prompt and a file: the file would win silently. The base (a resumed run's run.json)
        # records the asked prompt beside its file.
        if layer is not layers[0][1] and layer.get("system_prompt_file") is not None and layer.get(
                "system_prompt", project.SYSTEM_PROMPT) != project.SYSTEM_PROMPT:
            raise SettingsError(f"{name}: system_prompt and system_prompt_file are both given; the file would replace "
                                "the prompt. Keep one (CLI --system-prompt or --system-prompt-file).")
        if "system_prompt" in layer and "system_prompt_file" not in layer:  # a later prompt beats an earlier file
            merged["system_prompt_file"] = None
        merged.update(layer)
    for key in RUN_OWNED:
        if merged.get(key) is not None:
            raise SettingsError(f"{source}: {key} is set by the project: {RUN_OWNED[key]}.")
    # The file (recipe, run.json) that set each field, later over earlier; a value given (flags, SETTINGS) names itself.
    origins = {key: name for name, layer in layers[:-1] for key in layer if key not in given}
    try:
        settings = Settings(**merged)
    except TypeError as err:  # a key the dataclass does not take (its name is a field): a bug, not input
        raise SettingsError(f"{source}: {err}") from None
    except SettingsError as err:  # a value refused where a file set it: name the file
        named = re.match(r"Settings\.(\w+) ", str(err))
        if named and named[1] in origins:
            raise SettingsError(f"{origins[named[1]]}: {err}") from None
        raise
    settings.origins = origins
    return settings


def article_settings(**values) -> Settings:
    """The article's settings with ``values`` changed (``load_settings`` of a mapping, as keywords)."""
    return load_settings(values)


def recipe_values(settings: Settings) -> dict:
    """What a notebook shows of a run's settings: the values that are not TRL's defaults, less the system prompt."""
    defaults = GRPOConfig.__dataclass_fields__
    return {k: v for k, v in settings.asked().items() if k != "system_prompt" and (
        k not in defaults or defaults[k].default is dataclasses.MISSING or v != defaults[k].default)}


def legacy_settings(recorded: dict) -> dict:
    """The settings of a ``run.json`` written before settings were TRL's ``GRPOConfig``, as today's fields."""
    values = dict(recorded)
    values.update(values.pop("extra_grpo_args", None) or {})
    if "warmup_ratio" in values:
        values.setdefault("warmup_steps", values.pop("warmup_ratio"))
    if "gpu_memory_utilization" in values:
        values["vllm_gpu_memory_utilization"] = values.pop("gpu_memory_utilization")
    if "held_out_eval_steps" in values:
        values["eval_steps"] = values.pop("held_out_eval_steps") or None
    return values
