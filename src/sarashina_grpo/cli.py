"""Command line: ``sarashina-grpo demo | train | infer | eval | export | build-tiny | convert-gguf | warmstart``
(``--help`` on each lists every option).

``train`` is TRL's ``TrlParser`` over ``config.Settings``, as ``trl grpo`` parses (``--config`` lays a YAML recipe
over the article's; flags win), built after ``import unsloth`` (which must patch TRL first). The other commands are
transformers' ``HfArgumentParser`` over ``options.py``'s dataclasses. A mistake is one ``error:`` line naming the
closest flag or command.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import re
import sys
import typing

from . import setup_logging
from .commands import COMMANDS
from .project import SettingsError, check_address_space, did_you_mean, shown


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` lists each flag in its dashed spelling (and alias), not also as the ``--field_name`` it accepts."""

    def _format_action_invocation(self, action):
        dashed = [s for s in action.option_strings if "_" not in s]
        if dashed and len(dashed) < len(action.option_strings):
            action = copy.copy(action)
            action.option_strings = dashed
        return super()._format_action_invocation(action)

    def _fill_text(self, text, width, indent):
        if text.startswith("examples:"):  # an epilog's commands stay one a line
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def flag_class(cls, names=None, title: str | None = None):
    """``cls`` as ``HfArgumentParser`` reads it: its flag fields in ``names`` (None: all), under ``title`` in help."""
    hints = typing.get_type_hints(cls)
    fields = [(f.name, hints[f.name], dataclasses.field(default=None if f.default is dataclasses.MISSING else f.default,
                                                        metadata=dict(f.metadata)))
              for f in dataclasses.fields(cls)
              if (names is None or f.name in names) and not f.metadata.get("positional")]
    return dataclasses.make_dataclass(cls.__name__, fields, namespace={"_argument_group_name": title} if title else {})


BOOLEAN_WORDS = {"yes", "no", "true", "false", "t", "f", "y", "n", "1", "0"}  # transformers' string_to_bool


class OneLineErrors:
    """A parser mixin: its errors are one ``error:`` line, not argparse's usage block; defaults are left out of the
    result (``given``), so that only the flags given override a recipe and a resumed run's ``run.json``."""

    listed = "the flags"  # what `--help` lists, named by the error

    def error(self, message):
        """argparse's complaints as one ``error:`` line, naming the flag as users spell it (not its ``_`` alias)."""
        def dashed(match) -> str:  # the shortest dashed spelling: --model, not --model-name or --model_name
            names = match.group(1).split("/")
            return min((n for n in names if "_" not in n.lstrip("-")), key=len, default=names[-1])

        message = re.sub(r"argument ((?:-{1,2}[\w-]+/?)+)", dashed, message)
        raise SettingsError(f"{self.prog}: {message} (`{self.prog} --help` lists {self.listed}).")

    def given(self, argv: list[str]) -> argparse.Namespace:
        """The flags and positional arguments in ``argv``, none of the defaults; an unknown flag names the closest."""
        for action in self._actions:  # as TRL's TrlParser.set_defaults_with_config sets them
            if action.option_strings and action.dest != "help":
                action.default = argparse.SUPPRESS
                if isinstance(action, argparse._StoreFalseAction) and action.option_strings[-1].startswith("--no-"):
                    action.help = f"turn --{action.option_strings[-1][5:]} off"  # every --no-X, HfArgumentParser's too
                # argparse formats help with %: a lone % is doubled; %% (transformers escapes some) and %(…) stay
                action.help = action.help and re.sub(r"(%%|%\()|%", lambda m: m[1] or "%%", action.help)
        # An on/off flag that HfArgumentParser lets take a value (--sample [true|false]) never swallows a next word
        # other than yes/no: `infer --sample "こんにちは"` samples the prompt, `export --merged CHECKPOINT OUT` merges.
        switches = {flag for action in self._actions if action.nargs == "?" and action.const is True
                    for flag in action.option_strings}
        argv = [f"{word}=true" if word in switches and (i + 1 == len(argv) or argv[i + 1].lower() not in BOOLEAN_WORDS)
                else word for i, word in enumerate(argv)]
        self.refuse_repeats(argv)
        args, extras = self.parse_known_args(argv)
        if extras:
            known = [flag for action in self._actions if action.dest != "help"  # --model is no typo of --help
                     for flag in action.option_strings if "_" not in flag]
            self.error(f"unrecognized arguments: {' '.join(extras)}{did_you_mean(extras[0].split('=')[0], known)}")
        return args

    def refuse_repeats(self, argv: list[str]) -> None:
        """A flag given twice (or with its --no- form): argparse keeps the last silently, and `--rewards a --rewards
        b` would train on b alone."""
        seen: dict[str, str] = {}
        for word in itertools.takewhile(lambda w: w != "--", argv):
            flag = word.split("=", 1)[0]
            action = self._option_string_actions.get(flag) if word.startswith("--") else None
            if action is None or action.dest == "help":
                continue
            if action.dest in seen:
                again = "" if flag == seen[action.dest] else f" (again as {flag})"
                many = f" with all its values: {flag} a b, or a,b" if action.nargs in ("+", "*") else ""
                self.error(f"{seen[action.dest]} is given twice{again}; the last would silently replace the first. "
                           f"Give it once{many}")
            seen[action.dest] = flag


def command_parser(name: str, command) -> argparse.ArgumentParser:
    """The parser of a command other than ``train``: its option dataclasses through ``HfArgumentParser``."""
    from transformers.hf_argparser import HfArgumentParser  # the lazy transformers root: no torch, no model code

    class CommandParser(OneLineErrors, HfArgumentParser):
        pass

    loaded = [(cls() if callable(cls) and not dataclasses.is_dataclass(cls) else cls,
               names() if callable(names) else names, title) for cls, names, title in command.options]
    positionals = [f for cls, names, _ in loaded for f in dataclasses.fields(cls)
                   if f.metadata.get("positional") and (names is None or f.name in names)]
    usage = " ".join(["%(prog)s [flags]", *(f"[{f.name.upper()} ...]" if f.default_factory is list else f.name.upper()
                                            for f in positionals)])
    parser = CommandParser(prog=f"sarashina-grpo {name}", description=command.help, allow_abbrev=False, usage=usage,
                           formatter_class=HelpFormatter, dataclass_types=[flag_class(*entry) for entry in loaded])
    for f in positionals:  # a list (default_factory=list) takes any number of words
        many = f.default_factory is list
        parser.add_argument(f.name, nargs="*" if many else None, help=f.metadata["help"],
                            default=[] if many else f.default)
    return parser


def train_parser() -> argparse.ArgumentParser:
    """``train``'s parser, TRL's ``TrlParser`` over ``Settings``; it imports TRL: after ``import_training_stack``."""
    from trl import TrlParser

    from .config import FIELDS, HINTS, RUN_OWNED, Settings, article
    from .options import CpuOptions, RunOptions
    from .project import FLAGS

    class TrainParser(OneLineErrors, TrlParser):
        pass

    # TRL's run_name (the run's name for wandb and the like) names the run's folders too: not RunOptions'
    names = [f.name for f in dataclasses.fields(RunOptions) if f.name != "run_name"]
    parser = TrainParser([Settings, flag_class(RunOptions, names, "run"), CpuOptions], allow_abbrev=False,
                         prog="sarashina-grpo train", formatter_class=HelpFormatter,
                         usage="%(prog)s [--config RECIPE.yaml] [flags]",
                         description=COMMANDS["train"].help + ". The project's own fields (model, data, LoRA, "
                         "rollout, rewards, held-out evaluation) come first, then the run's, then every field of TRL's "
                         "GRPOConfig, with TRL's help. Values: the article's recipe (configs/recipes/article.yaml) "
                         "< --config RECIPE.yaml < these flags; a resumed run's run.json takes the article's place. "
                         "--output-dir and --resume-from-checkpoint are the project's: use --artifact-dir, "
                         "--run-name and --resume.",
                         epilog="examples:\n  sarashina-grpo train                              # the article's run\n"
                         "  sarashina-grpo train --model tiny --max-steps 5   # a CPU smoke run\n"
                         "  sarashina-grpo train --config dapo --eval-steps 50\n"
                         "  sarashina-grpo train --resume                     # the newest run, from its last "
                         "checkpoint")
    parser.add_argument(FLAGS["per_device_train_batch_size"], dest="per_device_train_batch_size", type=int,
                        help="--per-device-train-batch-size: completions per device per step")
    parser.add_argument(FLAGS["use_vllm"], dest="use_vllm", action="store_true",
                        help="--use-vllm: generate with vLLM (Unsloth's fast_inference; the 'vllm' extra, CUDA only)")
    taken = {flag for action in parser._actions for flag in action.option_strings}  # the project's --no-x flags
    for name, hint in HINTS.items():  # a recipe may switch on what TRL leaves off: --no-x turns it off again
        no_flag = f"--no-{name.replace('_', '-')}"
        if hint in (bool, bool | None) and FIELDS[name].default is not True and no_flag not in taken:
            parser.add_argument(no_flag, dest=name, action="store_false")  # help: given
    parser.add_argument("--config", help="YAML recipe laid over the article's (configs/recipes/*.yaml, or its "
                        "name: dapo); flags override it")
    recipe = article()  # TRL's help gives TRL's defaults; a run starts from the article's
    for action in parser._actions:
        if action.nargs is None and action.option_strings and HINTS.get(action.dest) == bool | None:
            action.nargs, action.const = "?", True  # TRL's unset-able switches (--bf16, --tf32): alone, true
        if action.dest == "run_name":
            action.help = "the run's name: its folders logs/<name>/ and outputs/<name>/ (-2, -3, ... added when " \
                          "taken) and its name in wandb or trackio; unset: a timestamp"
        elif action.dest == "eval_steps":  # TRL's help describes its Trainer.evaluate, which this project replaces
            action.help = "steps between held-out evaluations of --eval-data during training (eval/* in " \
                          "TensorBoard, the best checkpoint by --best-metric); unset: none"
        elif action.dest == "debug":  # the bare flag is the project's (parse_args)
            action.help = action.help.rstrip(". ") + ". A bare --debug (no value): full tracebacks instead of one " \
                          "error: line"
        elif action.dest in RUN_OWNED:  # TRL's fields that the project sets: the flag is refused with this reason
            action.help = f"not taken: {RUN_OWNED[action.dest]}"
        elif action.dest in recipe and action.option_strings and action.help:
            action.help += f" [article recipe: {shown(recipe[action.dest])}]"
    # --help: the project's ~40 flags first, not after TRL's ~230 (the order of the dataclass' fields)
    options, run = (next(g for g in parser._action_groups if g.title == title) for title in ("options", "run"))
    own = set(vars(Settings)["__annotations__"]) | {f.name for f in dataclasses.fields(CpuOptions)} | {"help", "config"}
    project_group = parser.add_argument_group("the project's settings")
    project_group._group_actions[:] = paired([a for a in options._group_actions if a.dest in own])
    options._group_actions[:] = paired([a for a in options._group_actions if a.dest not in own])
    options.title = "TRL's GRPOConfig and transformers' TrainingArguments"
    parser._action_groups[:] = [g for g in parser._action_groups if g not in (project_group, run, options)] + [
        project_group, run, options]
    return parser


def paired(actions: list) -> list:
    """``actions`` with each --no-x right after its --x, not after every other flag (the order they were added in)."""
    offs = [a for a in actions if isinstance(a, argparse._StoreFalseAction)]
    after = {}
    for off in offs:
        after.setdefault(off.dest, []).append(off)
    placed = [b for a in actions if a not in offs for b in (a, *after.pop(a.dest, []))]
    return placed + [off for off in offs if off not in placed]


def top_parser() -> argparse.ArgumentParser:
    class TopParser(OneLineErrors, argparse.ArgumentParser):
        listed = "what each command does"

    listing = "\n".join(f"  {name:<13} {command.help}" for name, command in COMMANDS.items())
    parser = TopParser(prog="sarashina-grpo", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                       usage="%(prog)s [-v] [--debug] COMMAND [flags]",
                       description=__doc__.split("\n\n")[0].replace("``", "") + "\n\ncommands:\n" + listing
                       + "\n\n`sarashina-grpo COMMAND --help` lists a command's flags.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="full tracebacks for every error (or set SARASHINA_GRPO_DEBUG=1), for bug reports")
    parser.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The parsed command line: the flags and positional arguments given, with ``command`` and ``run``."""
    top = top_parser()
    args = top.parse_args(argv)
    if not args.command:
        top.error("a command is required: " + ", ".join(COMMANDS))
    name = args.command[0]
    if name not in COMMANDS:
        top.error(f"unknown command {name!r}{did_you_mean(name, COMMANDS)}; the commands are {', '.join(COMMANDS)}")
    # --debug after the command counts too; in train, whose TRL --debug takes a value (underflow_overflow), a bare one
    rest = args.command[1:]
    bare = [i for i, word in enumerate(rest) if word == "--debug" and (
        name != "train" or i + 1 == len(rest) or rest[i + 1].startswith("-"))]
    rest = [word for i, word in enumerate(rest) if i not in bare]
    setup_logging(args.verbose)  # before train's parser imports Unsloth: its known-harmless lines are hidden
    if not {"-h", "--help"} & set(rest):
        check_address_space()  # every command imports PyTorch
    if name == "train":
        from .commands import import_training_stack

        import_training_stack(rest)
        parsed = train_parser().given(rest)
    else:
        parsed = command_parser(name, COMMANDS[name]).given(rest)
    parsed.cli_debug = args.debug or bool(bare)  # not `debug`: a field of TRL's TrainingArguments
    parsed.command, parsed.run = name, COMMANDS[name].run
    return parsed


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user-caused failure ends in one ``error: …`` line and exit code 2, not a traceback."""
    from . import errors

    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        args = parse_args(argv)
        return args.run(args) or 0
    except KeyboardInterrupt:  # any command but a training step (which saves first), or a second Ctrl-C
        if args is None:
            raise
        print("error: interrupted; nothing new was saved.", file=sys.stderr)
        return 130
    except Exception as err:  # user-caused failures: one line (errors.py); bugs keep their traceback
        # While parsing: train's parser imports the training stack, which can fail for a user's reason.
        debug = args.cli_debug if args is not None else not isinstance(err, SettingsError) and "--debug" in argv
        if (code := errors.report(err, debug=debug)) is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
