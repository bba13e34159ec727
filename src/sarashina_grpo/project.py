"""What the project is, without TRL: its folders, its system prompt, the machine it runs on, its user-error type.
Light on purpose (torch only inside functions): what runs before a model loads imports this, not ``config``, which
imports TRL (which Unsloth must patch first)."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path

from .tables import compressed_problem, file_problem, notebook_lines

DEFAULT_MODEL_NAME = "sbintuitions/sarashina2.2-3b-instruct-v0.1"
HOME_VARIABLE = "SARASHINA_GRPO_HOME"
FALSE_WORDS = {"false", "no", "0", "off"}  # what an on/off environment variable reads as off
STOP_GRACE_VARIABLE = "SARASHINA_GRPO_STOP_GRACE_S"
# How long `train` waits after Ctrl-C/SIGTERM for the current step to finish and be saved: under the 30 s that
# SLURM, Kubernetes and `docker stop` give before SIGKILL, so the run's own last line is still printed.
DEFAULT_STOP_GRACE_S = 20.0

# Our own wording. It states the exact layout the strict reward checks, newlines included, because a model can
# only be rewarded into a format it has a chance to sample.
SYSTEM_PROMPT = (
    "あなたは親切な日本語アシスタントです。答える前に、まず日本語で考えてください。\n"
    "考えたことは<think>と</think>の間に、ユーザーへの答えは<response>と</response>の間に書きます。\n"
    "必ず次の形で出力してください。\n"
    "<think>\n（考えたこと）\n</think>\n<response>\n（答え）\n</response>"
)

LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_REWARDS = ("xmlcount", "soft_format", "strict_format")
# How completions are generated during training (docs/benchmarks/README.md has the measurements):
ROLLOUTS = {
    "auto": "'fast' on a CUDA GPU for a Llama model through Unsloth with room for its bf16 weights (where the GPU "
            "suite checks it exact), else 'default' (on a GPU with one line saying why)",
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
# TRL 1.15 types loss_type as plain text and refuses an unknown one only at the first loss (tests/test_compat.py
# keeps this list equal to the names its documentation gives)
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
# bf16 needs compute capability 8.0 (Ampere) or newer; older cards (T4, V100, RTX 20xx) train in fp16. The check is
# the capability, not torch.cuda.is_bf16_supported(), which also says yes where bf16 is only emulated (slowly).
BF16_MIN_CAPABILITY = (8, 0)
# fp16: train as a card without bf16 would (a T4 user's run, on the GPU suite); bf16 on a CPU keeps the weights in
# bf16 (the learning proof's recorded runs were made so).
PRECISION_VARIABLE = "SARASHINA_GRPO_PRECISION"
# Importing Unsloth and TRL alone reserved 5.0 GB of address space (VmPeak, CPU, 2026-12-06); a model comes on top.
MIN_ADDRESS_SPACE = 8 * 2**30
# Short flags of settings, beside the ``--field-name`` that every field of ``config.Settings`` has.
FLAGS = {"model_name": "--model", "data_path": "--data", "reward_names": "--rewards", "load_in_4bit": "--4bit",
         "per_device_train_batch_size": "--batch-size", "use_vllm": "--vllm"}
# A system prompt or role is a paragraph or two; far beyond this a file is surely the wrong one, and the model would
# spend its whole context (and memory) on it.
MAX_PROMPT_CHARS = 20_000
MAX_RECIPE_CHARS = 1_000_000
_PIPED_RECIPES: dict[tuple[int, int], str] = {}  # a pipe's recipe text, by the pipe (see load_recipe)
RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes"  # the shipped ones, article.yaml first
SEED_LIMIT = 2**32  # numpy's seeds are 32-bit
# Past the width of a model's layers a LoRA rank adds nothing (the 3B model is 2,560 wide); millions exhaust memory.
MAX_LORA_RANK = 4096
# (lowest, highest, lowest allowed itself, highest allowed itself); above 1 every Adam step moves each weight by ~1:
# instant divergence
LEARNING_RATE_RANGE = (0.0, 1.0, False, True)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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


def check_launch_environment(env: Mapping[str, str] = os.environ) -> None:
    """Refuse ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` that are not whole numbers, or that say several processes with
    no launcher (no ``MASTER_ADDR``): left over in a shell, they made accelerate fail or the run wait forever."""
    values = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        text = env.get(name) or ""
        try:
            if text.strip():
                values[name] = int(text)
        except ValueError:
            raise SettingsError(f"{name}={text!r} in the environment is not a whole number. It is set by "
                                f"accelerate launch or torchrun; unset it (unset {name}) to run one process.") from None
    world = values.get("WORLD_SIZE", 1)
    if world < 1 or not 0 <= values.get("RANK", 0) < world:
        raise SettingsError(f"WORLD_SIZE={world} and RANK={values.get('RANK', 0)} in the environment do not fit (RANK "
                            "must be from 0 to WORLD_SIZE - 1). Unset them to run one process, or start with "
                            "accelerate launch.")
    if world > 1 and not env.get("MASTER_ADDR"):
        raise SettingsError(f"WORLD_SIZE={world} is set in the environment, but no launcher started this process "
                            "(MASTER_ADDR is not set): left over from an earlier launch? Unset WORLD_SIZE and RANK to "
                            "run one process, or start several with accelerate launch.")


def check_home_folder(env: Mapping[str, str] = os.environ) -> None:
    """``$SARASHINA_GRPO_HOME`` names a file or nothing: every default path under it would fail after a model loads,
    or a mistyped one would silently gain a new artifact/ of its own."""
    home = env.get(HOME_VARIABLE)
    if home and not Path(home).expanduser().is_dir():
        what = "a file" if Path(home).expanduser().exists() else "not there (mistyped?)"
        raise SettingsError(f"{HOME_VARIABLE}={home} is {what}; it must be the project folder that holds datasets/ "
                            f"and artifact/. Point {HOME_VARIABLE} at that folder, or unset it.")


def check_address_space() -> None:
    """Refuse a ``ulimit -v`` too small for the training stack before importing it: the import would fail at a random
    module with a ``MemoryError`` (or a ``SyntaxError`` when the parser ran out)."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY and soft < MIN_ADDRESS_SPACE:
        raise SettingsError(f"This process may use at most {soft / 2**30:.1f} GiB of address space (ulimit -v); "
                            f"importing PyTorch, transformers and Unsloth alone reserves about 5 GiB, and a model "
                            f"more. Raise the limit (ulimit -v unlimited, or at least {MIN_ADDRESS_SPACE // 2**30} "
                            "GiB), or run where it is higher.")


def stop_grace_s(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds past a step's usual length that ``train`` waits after Ctrl-C or SIGTERM for the current step
    (``callbacks.GracefulInterrupt``); None (the variable set to 0): however long it takes."""
    text = env.get(STOP_GRACE_VARIABLE, "").strip()
    if not text:
        return DEFAULT_STOP_GRACE_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise SettingsError(f"{STOP_GRACE_VARIABLE}={text!r} is not a number of seconds: give how long a step may "
                            "run past its usual length after Ctrl-C or SIGTERM before the run stops without it (e.g. "
                            "20), 0 to wait for the step however long it takes, or unset it.")
    return value or None


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


def is_whole(value, lowest: int = 1, *, floats: bool = False) -> bool:
    """An int (not a bool) >= ``lowest``; with ``floats`` also a whole float (TRL types some step counts as floats)."""
    if floats and finite_number(value) and float(value).is_integer():
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and value >= lowest


def range_problem(bounds: tuple, value) -> str:
    """Why ``value`` is outside ``bounds`` (lowest, highest, lowest allowed, highest allowed), as an error says it
    after the setting's name; '' when inside or None (unset)."""
    low, high, low_ok, high_ok = bounds
    if value is None or finite_number(value) and (value >= low if low_ok else value > low) and (
            value <= high if high_ok else value < high):
        return ""
    ends = f"{'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}".replace("inf)", "∞)")
    return f"must be a finite number in {ends}, got {value!r}."


def seed_problem(seed) -> str:
    """Why ``seed`` is no seed numpy and torch take (a whole number in [0, 2**32)), after the setting's name; ''."""
    if is_whole(seed, 0, floats=True) and seed < SEED_LIMIT:
        return ""
    return f"must be a whole number in [0, 2**32) (numpy's seeds are), got {seed!r}."


def lora_rank_problem(rank) -> str:
    """Why a whole-number LoRA ``rank`` is too large, after the setting's name; '' (its lowest is the caller's)."""
    if not isinstance(rank, int | float) or rank <= MAX_LORA_RANK:
        return ""
    return (f"must be at most {MAX_LORA_RANK:,} (wider than the layers it adapts, a rank adds nothing; the article's "
            f"is 32), got {rank:,}.")


class SettingsError(ValueError):
    """A setting is invalid; raised before any model is loaded."""

    _render_traceback_ = notebook_lines


class OnOff(argparse.BooleanOptionalAction):
    """``--flag`` / ``--no-flag`` for a setting whose unset value (None) means "the machine decides": transformers'
    ``HfArgumentParser`` gives ``bool | None`` fields neither form."""

    def __init__(self, *args, type=None, **kwargs):  # noqa: A002  (HfArgumentParser passes its bool parser)
        super().__init__(*args, **kwargs)


def shown(value) -> str:
    """A value as --help shows it: names comma-separated, mappings as JSON."""
    if isinstance(value, dict):
        return json.dumps(value)
    return ", ".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


def setting(default, help: str, *, flag: str | None = None, factory=None, shown_as: str | None = None,
            **parser_options):
    """A dataclass field whose ``metadata`` is its command-line flag as ``HfArgumentParser`` reads it: the help with
    the default (``shown_as`` for a long one), a short alias (``flag``), ``add_argument`` options (``choices``, …)."""
    value = factory() if factory is not None else default
    text = help if value is None or value == [] else f"{help} (default: {shown_as or shown(value)})"
    metadata = {"help": text, **parser_options}
    if flag:
        metadata["aliases"] = [flag]
    default_of = {"default": default} if factory is None else {"default_factory": factory}
    return field(**default_of, metadata=metadata)


def flag_of(name: str) -> str:
    """The command-line flag of a setting: its short form where it has one, else the name with dashes."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def field_label(name: str) -> str:
    """How an error names a setting: the field and its CLI flag."""
    return f"Settings.{name} (CLI {flag_of(name)})"


def did_you_mean(name: str, candidates) -> str:
    """' (did you mean X?)' for the closest of ``candidates``, else ''."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def read_text_setting(path: str | Path, name: str) -> str:
    """The text of a file named by a setting (system prompt, role), with one clear error when it cannot be used."""
    file = project_path(path)
    problem = file_problem(file)  # a FIFO or /dev/zero would block or be read until memory runs out
    if problem == "not found":
        raise SettingsError(f"{name}: file not found: {file}.")
    if problem:
        give = "; give a UTF-8 text file" if problem == "is a folder" else ""
        raise SettingsError(f"{name}: {file} {problem}{give}.")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as err:
        if isinstance(err, UnicodeDecodeError) and (problem := compressed_problem(file)):
            raise SettingsError(f"{name}: {file} {problem}.") from None
        raise SettingsError(f"{name}: cannot read {file} as UTF-8 text ({err}).") from None
    if not text.strip():
        raise SettingsError(f"{name}: {file} is empty.")
    if len(text) > MAX_PROMPT_CHARS:
        raise SettingsError(f"{name}: {file} holds {len(text):,} characters; a prompt file is limited to "
                            f"{MAX_PROMPT_CHARS:,}. Check that it is the right file, or shorten it.")
    return text.strip()


def project_dir() -> Path:
    """The folder that holds ``datasets/`` and ``artifact/``: ``$SARASHINA_GRPO_HOME``, else the working directory."""
    return Path(os.environ.get(HOME_VARIABLE) or os.getcwd())


def project_path(path: str | Path) -> Path:
    """``path`` as given when absolute or when it exists from here; else relative to the project folder."""
    path = Path(path).expanduser()
    return path if path.is_absolute() or path.exists() else project_dir() / path


def artifact_root(given: str | os.PathLike | None = None) -> Path:
    """The artifact folder: ``given`` (``~`` expanded, as transformers expands the checkpoints' own folder), else
    ``artifact/`` in the project folder."""
    return Path(given).expanduser() if given else project_dir() / "artifact"


def yaml_loader():
    """PyYAML's safe loader reading floats the YAML 1.2 way (``5e-6`` is a number; YAML 1.1 wants ``5.0e-6``) and
    refusing a key given twice in one mapping (YAML would keep the last one silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            # An alias is a reference: a few lines of them can stand for billions of values once written out.
            if self.check_event(yaml.events.AliasEvent):
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not read in recipes; write the "
                                                  "values out", self.peek_event().start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice (line "
                                                            f"{key_node.start_mark.line + 1})", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$"), list("-+0123456789"))
    return Loader


def recipe_path(path: str | Path) -> Path:
    """A recipe's file: ``path`` itself, or for a bare name (``dapo``) the shipped ``configs/recipes/dapo.yaml``."""
    if not isinstance(path, str | os.PathLike):
        raise SettingsError(f"The recipe (--config; notebook: RECIPE) must be a YAML file or the name of one in "
                            f"configs/recipes/ (e.g. 'dapo'), got {path!r} ({type(path).__name__}); None: the "
                            "article's run.")
    file = project_path(path)
    shipped = RECIPES / f"{path}.yaml"
    if not file.exists() and "/" not in str(path) and Path(path).suffix == "" and shipped.is_file():
        return shipped
    return file


PIPE_WAITS = 20  # tenths of a second a pipe may stay without a writer before it is refused


def read_pipe(file: Path, label: str, limit: int = 4 * MAX_RECIPE_CHARS + 4) -> bytes:
    """What the pipe ``file`` carries (``<(…)``, a FIFO), up to ``limit`` bytes. Opened without waiting: a FIFO that
    nothing writes to would block ``open()`` forever; it is a ``SettingsError`` naming ``label`` instead."""
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)
    try:
        for _ in range(PIPE_WAITS):  # a writer that opens it a moment later (mkfifo, then start it) is no error
            try:
                data = os.read(fd, limit)
            except BlockingIOError:  # a writer holds it open and has written nothing yet: wait for it
                data = None
            if data != b"":
                break
            time.sleep(0.1)
        if data == b"":
            raise SettingsError(f"{label} is a pipe (FIFO) that nothing is writing to, so reading it would wait "
                                "forever. Save what it should carry to a file and give that, or start the writer "
                                "first.")
        os.set_blocking(fd, True)
        data = data or b""
        while len(data) < limit and (more := os.read(fd, limit - len(data))):
            data += more
        return data
    finally:
        os.close(fd)


def load_recipe(path: str | Path) -> dict:
    """The mapping of a YAML recipe (keys are ``Settings`` fields, checked by ``load_settings``). Read here, before
    TRL is imported: a recipe may ask for the plain backend."""
    import yaml

    file = recipe_path(path)
    if file.is_dir():
        raise SettingsError(f"Recipe {file} is a folder; give a YAML file such as configs/recipes/article.yaml.")
    if not file.exists():
        shipped = sorted(p.stem for p in RECIPES.glob("*.yaml"))
        raise SettingsError(f"Recipe not found: {file}{did_you_mean(Path(path).stem, shipped)}. Give a YAML file, or "
                            f"the name of a recipe in configs/recipes/: {', '.join(shipped)}.")
    if (problem := file_problem(file)) and "pipe" not in problem:  # a device (/dev/zero, a terminal), a socket
        raise SettingsError(f"Recipe {file} {problem}; give a YAML file such as configs/recipes/article.yaml.")
    try:
        identity = (file.stat().st_dev, file.stat().st_ino)  # the pipe itself: /dev/fd numbers are reused
        text = _PIPED_RECIPES.get(identity)
        if text is None:
            if file.is_file():
                with open(file, encoding="utf-8-sig") as handle:
                    text = handle.read(MAX_RECIPE_CHARS + 1)
            else:  # a pipe (<(…)) is a recipe too; it gives its text once, and train reads it twice (backend, settings)
                text = _PIPED_RECIPES[identity] = read_pipe(file, f"Recipe {file}").decode("utf-8-sig")
        if len(text) > MAX_RECIPE_CHARS:
            raise SettingsError(f"Recipe {file} is over {MAX_RECIPE_CHARS:,} characters; a recipe is a few dozen "
                                "lines. Is it the right file?")
        values = yaml.load(text, Loader=yaml_loader()) or {}  # noqa: S506
    except UnicodeDecodeError as err:
        if file.is_file() and (problem := compressed_problem(file)):
            raise SettingsError(f"Recipe {file} {problem}.") from None
        raise SettingsError(f"Recipe {file} is not UTF-8 text (byte {err.start}); is it a YAML file?") from None
    except yaml.YAMLError as err:  # PyYAML's message spans lines (context, problem, a caret under the spot)
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SettingsError(f"{file}: not valid YAML{where}: {' '.join(str(problem).split())}.") from None
    if not isinstance(values, dict):
        raise SettingsError(f"{file}: a recipe is a mapping of setting names to values, got {type(values).__name__}.")
    if not values:  # a file saved empty or all commented out: the run would be the article's without a word
        logging.getLogger(__name__).warning("Recipe %s sets nothing (empty, or only comments): the run takes the "
                                            "article's values. Is it the right file?", file)
    return values
