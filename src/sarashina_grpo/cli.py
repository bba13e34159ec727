"""Command line: ``sarashina-grpo train | infer | eval | build-tiny`` (``--help`` on each lists every option).

    sarashina-grpo train --model tiny --max-steps 5     # CPU smoke run on the offline tiny model
    sarashina-grpo train                                # the article's run on a CUDA GPU
    sarashina-grpo infer --model artifact/outputs/<run>/checkpoint-500 "こんにちは"
    sarashina-grpo eval --model artifact/outputs/<run>/checkpoint-500 --name step500 --compare base

The commands call the same package functions as the notebooks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import bench
from .config import DEFAULT_MODEL_NAME, ROLLOUTS, Settings, SettingsError

logger = logging.getLogger("sarashina_grpo")
DEFAULTS = Settings()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME,
                        help="hub id, local model or checkpoint folder, or 'tiny' (offline test model). "
                             f"Default: {DEFAULT_MODEL_NAME}")
    parser.add_argument("--4bit", dest="load_in_4bit", action=argparse.BooleanOptionalAction, default=None,
                        help="load in 4-bit (QLoRA). Default: on with a CUDA GPU, off without one")
    parser.add_argument("--vllm", dest="use_vllm", action="store_true",
                        help="Unsloth fast_inference through vLLM (needs the 'vllm' extra and a GPU)")
    parser.add_argument("--max-seq-length", type=int, default=DEFAULTS.max_seq_length)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .training import DEFAULT_ARTIFACT_DIR, DEFAULT_DATA_PATH

    add_model_arguments(parser)
    parser.add_argument("--data", default=str(DEFAULT_DATA_PATH), help="prompt CSV with columns prompt,lang")
    parser.add_argument("--artifact-dir", default=str(DEFAULT_ARTIFACT_DIR),
                        help="where logs/<run>/ and outputs/<run>/checkpoint-N are written")
    parser.add_argument("--run-name", default=None, help="name of the run folders (default: a timestamp)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="continue a run from its last complete checkpoint: 'latest' (default when the flag "
                             "is bare), a run name, a run folder or a checkpoint-N folder")
    parser.add_argument("--max-steps", type=int, default=DEFAULTS.max_steps)
    parser.add_argument("--save-steps", type=int, default=DEFAULTS.save_steps)
    parser.add_argument("--num-generations", type=int, default=DEFAULTS.num_generations)
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.per_device_train_batch_size,
                        help="completions per device per step (a multiple of --num-generations)")
    parser.add_argument("--max-prompt-length", type=int, default=DEFAULTS.max_prompt_length)
    parser.add_argument("--max-completion-length", type=int, default=DEFAULTS.max_completion_length)
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate)
    parser.add_argument("--lora-rank", type=int, default=DEFAULTS.lora_rank)
    parser.add_argument("--temperature", type=float, default=DEFAULTS.temperature)
    parser.add_argument("--rollout", choices=list(ROLLOUTS), default=DEFAULTS.rollout,
                        help="how completions are generated: 'fast' = static KV cache + CUDA graphs "
                             "(docs/benchmarks), 'default' = the article's Unsloth path")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--rewards", default=",".join(DEFAULTS.reward_names),
                        help="comma-separated reward names from the registry")


# Flags that set more (or other) Settings fields than their own name.
DEST_FIELDS = {"model": ("model_name",), "batch_size": ("per_device_train_batch_size",),
               "lora_rank": ("lora_rank", "lora_alpha"), "rewards": ("reward_names",)}
# Machine-dependent: a resumed run takes them from this machine, not from the run's record.
MACHINE_FIELDS = {"load_in_4bit", "use_vllm"}


def settings_from_args(args: argparse.Namespace, base: Settings | None = None) -> Settings:
    """Settings from the flags; with ``base`` (a resumed run's settings), only flags given explicitly override it."""
    from .modeling import cuda_available

    load_in_4bit = args.load_in_4bit
    if load_in_4bit is None:
        load_in_4bit = cuda_available()
        if not load_in_4bit:
            logger.info("No CUDA GPU: loading in 16-bit (4-bit needs CUDA).")
    fields = dict(model_name=args.model, load_in_4bit=load_in_4bit, use_vllm=args.use_vllm,
                  max_seq_length=args.max_seq_length)
    if hasattr(args, "max_steps"):
        fields.update(
            max_steps=args.max_steps, save_steps=args.save_steps, num_generations=args.num_generations,
            per_device_train_batch_size=args.batch_size, max_prompt_length=args.max_prompt_length,
            max_completion_length=args.max_completion_length, learning_rate=args.learning_rate,
            lora_rank=args.lora_rank, lora_alpha=args.lora_rank, temperature=args.temperature, seed=args.seed,
            rollout=args.rollout,
            reward_names=tuple(n.strip() for n in args.rewards.split(",") if n.strip()),
        )
    if base is None:
        return Settings(**fields).validate()
    given = {f for dest in explicit_dests(args) for f in DEST_FIELDS.get(dest, (dest,))} | MACHINE_FIELDS
    return base.replace(**{k: v for k, v in fields.items() if k in given}).validate()


def explicit_dests(args: argparse.Namespace) -> set[str]:
    """Destinations of the options that appear on the command line (not left at their defaults)."""
    argv = getattr(args, "argv", [])
    given = set()
    for action in getattr(args, "command_parser", argparse.ArgumentParser())._actions:
        for option in action.option_strings:
            if any(a == option or a.startswith(option + "=") for a in argv):
                given.add(action.dest)
    return given


def run_train(args: argparse.Namespace) -> int:
    from .training import find_resume_checkpoint, read_run_info, run_settings, train

    data, base = args.data, None
    if args.resume:  # continue with the run's own settings and data, except for flags given now
        paths, _ = find_resume_checkpoint(Path(args.artifact_dir), args.resume)
        info = read_run_info(paths.output_dir)
        if info:
            base = run_settings(info)
            data = args.data if "data" in explicit_dests(args) else info.get("data") or args.data
    settings = settings_from_args(args, base)
    trainer = train(settings, data, args.artifact_dir, resume=args.resume, run_name=args.run_name)
    paths = trainer.run_paths
    if trainer.interrupted:
        print(f"Stopped by {trainer.interrupted} at step {trainer.state.global_step}; saved "
              f"{paths.output_dir / f'checkpoint-{trainer.state.global_step}'}. Continue with: "
              f"sarashina-grpo train --artifact-dir {args.artifact_dir} --resume {paths.name}", file=sys.stderr)
        return 130  # the shell's code for "ended by SIGINT"
    print(f"Finished at step {trainer.state.global_step}. Checkpoints: {paths.output_dir}  Logs: {paths.log_dir}")
    return 0


def add_infer_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("prompts", nargs="*", help="prompts to answer; none: an interactive chat (empty line quits)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.7)


def run_infer(args: argparse.Namespace) -> None:
    from .inference import Chat, GenerationSettings, answer, load_for_inference

    settings = settings_from_args(args)
    model, tokenizer = load_for_inference(settings)
    gen = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                             temperature=args.temperature)
    if args.prompts:
        for prompt, reply in zip(args.prompts, answer(model, tokenizer, args.prompts, gen, progress=True),
                                 strict=True):
            print(f"### {prompt}\n{reply}\n")
        return
    chat = Chat(model, tokenizer, gen=gen)
    while (line := input("you> ").strip()):
        print(chat.say(line))


def add_build_tiny_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir")
    parser.add_argument("--shape", choices=["tiny", "sarashina-3b"], default="tiny")
    parser.add_argument("--seed", type=int, default=0)


def run_build_tiny(args: argparse.Namespace) -> None:
    from .tiny import build_model

    build_model(args.out_dir, args.shape, args.seed)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    from .evaluation import DEFAULT_EVAL_DATA
    from .training import DEFAULT_ARTIFACT_DIR

    add_model_arguments(parser)
    parser.add_argument("--name", default=None,
                        help="evaluation name: results go to <artifact-dir>/eval/<name>/ (default: from --model)")
    parser.add_argument("--data", default=str(DEFAULT_EVAL_DATA), help="held-out prompt CSV with columns prompt,lang")
    parser.add_argument("--artifact-dir", default=str(DEFAULT_ARTIFACT_DIR))
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N prompts")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--samples-per-prompt", type=int, default=1, help="outputs per prompt (with --sample)")
    parser.add_argument("--compare", nargs="+", default=[], metavar="NAME",
                        help="earlier evaluations (names or folders) to compare with: writes comparison.md/.png")
    parser.add_argument("--compare-only", action="store_true",
                        help="generate nothing; compare the evaluations named by --compare")


def default_eval_name(model: str) -> str:
    """A folder name for an evaluation of ``model``: 'checkpoint-500' of run 'r1' becomes 'r1-checkpoint-500'."""
    from pathlib import Path

    parts = Path(model).parts[-2:] if looks_like_checkpoint(model) else Path(model).parts[-1:]
    return "-".join(parts).replace(".", "_") or "model"


def looks_like_checkpoint(model: str) -> bool:
    from pathlib import Path

    return Path(model).name.startswith("checkpoint-")


def run_eval(args: argparse.Namespace) -> None:
    from .errors import check_compare_names
    from .evaluation import compare_runs, evaluate_model
    from .inference import GenerationSettings

    names = list(args.compare)
    check_compare_names(names, args.artifact_dir)  # before the evaluation, not after it
    if not args.compare_only:
        settings = settings_from_args(args)
        name = args.name or default_eval_name(args.model)
        gen = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                                 temperature=args.temperature, batch_size=args.batch_size)
        metrics = evaluate_model(settings, name, data_path=args.data, artifact_dir=args.artifact_dir, gen=gen,
                                 samples_per_prompt=args.samples_per_prompt, limit=args.limit)
        print(f"{args.artifact_dir}/eval/{name}/metrics.json")
        print("\n".join(f"  {k}: {v}" for k, v in metrics.items()))
        names.insert(0, name)
    if len(names) >= 2:
        table, chart = compare_runs(names, artifact_dir=args.artifact_dir)
        print(table)
        print(f"Chart: {chart}")
    elif args.compare_only:
        raise SettingsError("--compare-only needs at least two evaluations after --compare.")


# name -> (help, add_arguments, run). Further commands register here.
COMMANDS = {
    "train": ("GRPO-train a model (the notebook's finetuning recipe)", add_train_arguments, run_train),
    "infer": ("answer prompts or chat with a model or checkpoint", add_infer_arguments, run_infer),
    "eval": ("evaluate a model or checkpoint on held-out prompts (format, Japanese purity); compare runs",
             add_eval_arguments, run_eval),
    "build-tiny": ("build an offline random-weight model (tiny, or the 3B shape)", add_build_tiny_arguments,
                   run_build_tiny),
    "bench": (bench.HELP, bench.add_arguments, bench.run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sarashina-grpo", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: SARASHINA_GRPO_DEBUG=1), for bug reports")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_arguments(command)
        command.set_defaults(run=run, command_parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; bad input ends in one ``error: …`` paragraph and exit code 2, not a traceback."""
    from . import errors

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C: nothing new was saved
        print("error: interrupted before a checkpoint could be saved.", file=sys.stderr)
        return 130
    except Exception as err:  # user-caused failures: one line (see errors.py); bugs keep their traceback
        code = errors.report(err, debug=args.debug)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
