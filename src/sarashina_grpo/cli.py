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

Each command (``commands.COMMANDS``) is a transformers ``HfArgumentParser`` over its option dataclasses: ``Settings``
for ``train`` (``--max-steps`` and ``--max_steps`` both work, as in TRL's scripts), the option classes of
``options.py`` for the rest. Precedence, as TRL's ``TrlParser`` has it: ``Settings`` defaults < a YAML recipe
(``--config``) < a resumed run's ``run.json`` < flags given on the command line.

What this module adds to ``HfArgumentParser``, and why it cannot be less:

- Defaults are left out of the parsed flags (``argparse.SUPPRESS``), so that only the flags given override a recipe
  and a resumed run's ``run.json``; ``--help`` shows each default inside the field's help (``config.setting``).
- Fields given without a flag (``infer``'s prompts, ``export``'s folders) are positional arguments, which
  ``HfArgumentParser`` has no form for; a tuple of names (``--rewards a,b``) and a JSON mapping are read as text and
  typed by ``config.read_settings``, as in a recipe.
- TRL's further ``GRPOConfig`` fields are read from the strings the parser leaves over (TrlParser's "remaining
  strings"), typed from TRL's source (``grpo_fields.py``): importing ``trl`` (or Unsloth) to get the class would
  cost 10-40 s before a typo is refused, and TRL must come after Unsloth, which patches it.
- A mistake is one ``error:`` line naming the closest flag.

``transformers.hf_argparser`` imports the lazy ``transformers`` root (no torch, no model class, about 1.5 s), so
Unsloth's import-time check sees "transformers" loaded and would warn; ``noise.import_unsloth`` hides exactly that
warning, and ``tests/gpu/test_gpu_import_order.py`` proves Unsloth's patches are the same as with Unsloth imported
first.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import sys
import typing

from . import setup_logging
from .commands import COMMANDS
from .config import FIELDS, SettingsError, did_you_mean, flag_of
from .grpo_fields import grpo_fields

EPILOG_TRAIN = ("Every other field of TRL's GRPOConfig is a flag (and a recipe key) too, e.g. --report-to wandb, "
                "--save-total-limit 3, --reward-weights 1 1 2, --multi-objective-aggregation normalize_then_sum; "
                "--help-grpo lists them.")


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` lists each flag in its dashed spelling (and alias); the ``--field_name`` spelling that
    ``HfArgumentParser`` also accepts would double every line."""

    def _format_action_invocation(self, action):
        dashed = [s for s in action.option_strings if "_" not in s]
        if dashed and len(dashed) < len(action.option_strings):
            action = copy.copy(action)
            action.option_strings = dashed
        return super()._format_action_invocation(action)


def flag_class(cls, names=None, title: str | None = None):
    """``cls`` as ``HfArgumentParser`` reads it: its fields in ``names`` (all when None) that take a flag, a tuple of
    names or a mapping as text (``config.read_settings`` types it), grouped under ``title`` in ``--help``."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        if (names is not None and f.name not in names) or f.metadata.get("positional"):
            continue
        hint, metadata = hints[f.name], dict(f.metadata)
        if typing.get_origin(hint) is tuple or hint is dict:
            hint, metadata["metavar"] = str, "A,B,…" if hint is not dict else "JSON"
        default = None if f.default is dataclasses.MISSING else f.default
        fields.append((f.name, hint, dataclasses.field(default=default, metadata=metadata)))
    return dataclasses.make_dataclass(cls.__name__, fields, namespace={"_argument_group_name": title} if title else {})


def positional_fields(cls, names=None) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("positional") and (names is None or f.name in names)]


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


def add_command(sub, name: str, command) -> argparse.ArgumentParser:
    """The parser of one command: its option dataclasses through ``HfArgumentParser``, its positional fields, and
    defaults left out of the result (only the flags given are there)."""
    loaded = [(cls() if callable(cls) and not dataclasses.is_dataclass(cls) else cls,
               names() if callable(names) else names, title) for cls, names, title in command.options]
    positionals = [f for cls, names, _ in loaded for f in positional_fields(cls, names)]
    usage = " ".join(["%(prog)s [flags]", *(f"[{f.name.upper()} ...]" if f.default_factory is list else f.name.upper()
                                            for f in positionals)])
    parser = sub.add_parser(name, help=command.help, description=command.help, allow_abbrev=False, usage=usage,
                            epilog=EPILOG_TRAIN if command.grpo_flags else None, formatter_class=HelpFormatter,
                            dataclass_types=[flag_class(*entry) for entry in loaded])
    for f in positionals:  # a list (default_factory=list) takes any number of words
        many = f.default_factory is list
        parser.add_argument(f.name, nargs="*" if many else None, help=f.metadata["help"],
                            default=[] if many else f.default)
    for action in parser._actions:  # as TRL's TrlParser.set_defaults_with_config sets them
        if action.option_strings and action.dest != "help":
            action.default = argparse.SUPPRESS
            action.help = action.help and action.help.replace("%", "%%")
        if isinstance(action, argparse._StoreFalseAction):  # HfArgumentParser's --no-x repeats --x's own help
            action.help = f"turn --{action.dest.replace('_', '-')} off"
    if command.grpo_flags:
        parser.add_argument("--help-grpo", action=GRPOHelp, help="list the further GRPOConfig flags")
    parser.set_defaults(run=command.run, takes_grpo_flags=command.grpo_flags)
    return parser


def usage_error(parser: argparse.ArgumentParser, message: str):
    """argparse's own complaints (a value of the wrong type, a missing argument, an unknown flag) as the one
    ``error:`` line every other mistake gets, naming the flag as users spell it (not its ``_`` alias)."""
    def dashed(match) -> str:
        names = match.group(1).split("/")
        return next((n for n in names if "_" not in n.lstrip("-")), names[-1])

    message = re.sub(r"argument ((?:-{1,2}[\w-]+/?)+)", dashed, message)
    raise SettingsError(f"{parser.prog}: {message} (`{parser.prog} --help` lists the flags).")


class OneLineErrors:
    """A parser mixin: its errors are ``usage_error``'s one line, not argparse's usage block."""

    def error(self, message):
        usage_error(self, message)


def build_parser() -> argparse.ArgumentParser:
    from transformers.hf_argparser import HfArgumentParser  # the lazy transformers root: no torch, no model code

    class CommandParser(OneLineErrors, HfArgumentParser):
        pass

    class TopParser(OneLineErrors, argparse.ArgumentParser):
        pass

    # allow_abbrev=False: a prefix of a flag is a typo to report, not a flag to guess. The docstring's ``markup``
    # is for Sphinx readers, not for --help.
    parser = TopParser(prog="sarashina-grpo", description=__doc__.split("\n\n")[0].replace("``", ""),
                       allow_abbrev=False)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="full tracebacks for every error (or set SARASHINA_GRPO_DEBUG=1), for bug reports")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    parser.commands = {name: add_command(sub, name, command) for name, command in COMMANDS.items()}
    return parser


def grpo_flags(extras: list[str], known: list[str]) -> dict[str, list[str]]:
    """``--name value …`` of ``GRPOConfig`` fields among the strings the parser left over, as field name → texts
    (typed later by ``config.read_settings``); an unknown flag is a ``SettingsError`` naming the closest one."""
    found: dict[str, list[str]] = {}
    name = None
    for token in extras:
        if token.startswith("--"):
            name, _, value = token[2:].partition("=")
            name = name.replace("-", "_")
            if name not in grpo_fields():
                flag = token.split("=")[0]
                suggestions = [*known, *(f"--{n.replace('_', '-')}" for n in grpo_fields())]
                raise SettingsError(f"unrecognized flag {flag}{did_you_mean(flag, suggestions)}; "
                                    "`sarashina-grpo train --help` lists the flags.")
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The parsed command line: only the flags given (and positional arguments); ``train``'s further ``GRPOConfig``
    flags in ``args.grpo_flags``."""
    parser = build_parser()
    named = next((token for token in argv if not token.startswith("-")), None)
    if named is not None and named not in parser.commands:  # argparse would list the commands but suggest none
        raise SettingsError(f"invalid choice: {named!r} is not a command{did_you_mean(named, parser.commands)}; "
                            f"the commands are {', '.join(parser.commands)} (`sarashina-grpo --help`).")
    args, extras = parser.parse_known_args(argv)
    command = parser.commands[args.command]
    known = [flag for flag in command._option_string_actions if "_" not in flag.lstrip("-")]
    if extras and not args.takes_grpo_flags:
        command.error(f"unrecognized arguments: {' '.join(extras)}{did_you_mean(extras[0].split('=')[0], known)}")
    args.grpo_flags = grpo_flags(extras, known) if extras else {}
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
    except KeyboardInterrupt:  # any command but a training step (which saves first), or a second Ctrl-C
        print("error: interrupted; nothing new was saved.", file=sys.stderr)
        return 130
    except Exception as err:  # user-caused failures: one line (errors.py); bugs keep their traceback
        code = errors.report(err, debug=args.debug)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
