"""TRL's ``GRPOConfig`` fields (with ``TrainingArguments``'), their types and help, read from the installed source.

    from sarashina_grpo.grpo_fields import grpo_fields, scheduler_names
    grpo_fields()["report_to"].annotation    # 'None | str | list[str]'

Why read the source instead of importing the class: importing ``trl`` takes 10-40 s (torch, transformers) and must
come after ``import unsloth``, which patches both. Settings are checked before either is imported, so a typo in a
flag or a recipe key costs a second. ``tests/test_compat.py`` compares this reading with the imported classes,
so a TRL or transformers upgrade that changes them fails there, not here.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

# (package, file inside it, class): GRPOConfig's own fields win over its bases'.
SOURCES = (
    ("transformers", "training_args.py", "TrainingArguments"),
    ("trl", "trainer/base_config.py", "_BaseConfig"),
    ("trl", "trainer/grpo_config.py", "GRPOConfig"),
)
QUOTED_NAME = re.compile(r"'(\w+)'")
TRUE_WORDS, FALSE_WORDS = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


class FieldTypeError(ValueError):
    """A value that does not fit its ``GRPOConfig`` field."""


@dataclass(frozen=True)
class GRPOField:
    name: str
    annotation: str  # as written in the source, e.g. 'list[float] | None'
    help: str

    @property
    def is_list(self) -> bool:
        return "list[" in self.annotation

    @property
    def optional(self) -> bool:
        return "None" in self.annotation


def _source(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{package} is not installed")
    return Path(spec.submodule_search_locations[0]) / relative


def _help_of(value: ast.expr | None) -> str:
    """The ``help`` of ``field(metadata={"help": "..."})``; "" when it is not a plain string."""
    if not isinstance(value, ast.Call):
        return ""
    for keyword in value.keywords:
        if keyword.arg == "metadata" and isinstance(keyword.value, ast.Dict):
            for key, item in zip(keyword.value.keys, keyword.value.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "help" and isinstance(item, ast.Constant):
                    return str(item.value)
    return ""


def _class_body(path: Path, name: str) -> list[ast.stmt]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return next(node.body for node in tree.body if isinstance(node, ast.ClassDef) and node.name == name)


@functools.cache
def grpo_fields() -> dict[str, GRPOField]:
    """Every field of ``trl.GRPOConfig`` by name (inherited ones included), without importing TRL."""
    fields: dict[str, GRPOField] = {}
    for package, relative, cls in SOURCES:
        for node in _class_body(_source(package, relative), cls):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                name = node.target.id
                if name.startswith("_") or "ClassVar" in ast.unparse(node.annotation):
                    continue
                fields[name] = GRPOField(name, ast.unparse(node.annotation), _help_of(node.value))
    return fields


@functools.cache
def scheduler_names() -> tuple[str, ...]:
    """The values of ``transformers.SchedulerType`` (what ``lr_scheduler_type`` accepts)."""
    body = _class_body(_source("transformers", "trainer_utils.py"), "SchedulerType")
    return tuple(node.value.value for node in body
                 if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                 and isinstance(node.value.value, str))


@functools.cache
def loss_types() -> tuple[str, ...]:
    """The loss names TRL's ``loss_type`` help lists ("Supported values are 'grpo', 'dr_grpo', …")."""
    text = grpo_fields()["loss_type"].help
    return tuple(QUOTED_NAME.findall(text.split("Supported values are", 1)[-1].split(".", 1)[0]))


def _scalar(name: str, annotation: str, text):
    """One value of a field, from a flag's text or a recipe's YAML value."""
    if not isinstance(text, str):
        return text  # YAML/JSON already typed it; GRPOConfig checks the rest
    word = text.strip().lower()
    # report_to's "none" is a value of its own (no integration); None would be read as one integration named None.
    if word in ("none", "null") and "None" in annotation and not (name == "report_to" and word == "none"):
        return None
    if re.search(r"\bbool\b", annotation) and word in TRUE_WORDS | FALSE_WORDS:
        return word in TRUE_WORDS
    for kind in (int, float):
        if re.search(rf"\b{kind.__name__}\b", annotation):
            try:
                return kind(text)
            except ValueError:
                continue
    if "dict" in annotation and word.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise FieldTypeError(f"{name}: not JSON ({err.msg}): {text!r}.") from None
    if re.search(r"\b(int|float)\b", annotation) and not re.search(r"\bstr\b", annotation):
        raise FieldTypeError(f"{name} takes a number ({annotation}), got {text!r}.")
    return text


def typed_value(name: str, value):
    """``value`` (a flag's text, or a list of them; or a recipe's value) in the type of ``GRPOConfig.<name>``."""
    field = grpo_fields()[name]
    if isinstance(value, list | tuple):
        items = [_scalar(name, field.annotation, v) for v in value]
        if field.is_list:
            return items
        if len(items) != 1:
            raise FieldTypeError(f"{name} takes one value ({field.annotation}), got {len(items)}: {list(value)}.")
        return items[0]
    typed = _scalar(name, field.annotation, value)
    return [typed] if field.is_list and typed is not None and not isinstance(typed, str | dict) else typed
