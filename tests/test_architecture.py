"""The package's shape, as docs/architecture.md states it: checked from the source, so it cannot drift.

The page's module list names every module; its layer table holds every module once and every import (function-level
ones included) points to the same or a lower layer; no import cycles; the GRPO trainer is constructed in one place;
one module builds the command line; private library names appear in ``compat.py`` only.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "sarashina_grpo"
SOURCES = sorted(PACKAGE.rglob("*.py"))
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
# Private names of TRL / Unsloth / PEFT / bitsandbytes that compat.py spells out, and no other module.
PRIVATE_NAMES = ("_generate_single_turn", "_generate_and_score_completions", "_unsloth_recompute_inv_freq",
                 "unwrap_model_for_generation", "quant_state")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Package modules that ``path`` imports anywhere in its body (relative imports)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found |= {".".join([*base, alias.name]) for alias in node.names}
    modules = {module_name(p) for p in SOURCES}
    return {m for m in found if m in modules and m != name}


def short(module: str) -> str:
    return module.removeprefix("sarashina_grpo.") if module != "sarashina_grpo" else module


def documented_files() -> set[str]:
    """The ``name.py`` entries of the page's module list (its first code block), with their sub-folder."""
    block = ARCHITECTURE.split("```")[1]
    files, folder = set(), ""
    for line in block.splitlines():
        if match := re.match(r"^  (\w+)/\s", line):
            folder = match.group(1) + "/"
        elif match := re.match(r"^  (  )?(\w+\.py)\s", line):
            files.add((folder if match.group(1) else "") + match.group(2))
    return files


def documented_layers() -> dict[str, int]:
    """Module → layer, from the page's layer table (rows ``| N | `a`, `b` |``)."""
    layers: dict[str, int] = {}
    for number, modules in re.findall(r"^\| (\d+) \| (.+) \|$", ARCHITECTURE, flags=re.MULTILINE):
        for module in re.findall(r"`([\w.]+)`", modules):
            assert module not in layers, f"{module} is in two layers"
            layers[module] = int(number)
    return layers


def test_the_module_list_names_every_module():
    real = {p.relative_to(PACKAGE).as_posix() for p in SOURCES if p.name != "__init__.py" or p.parent == PACKAGE}
    assert documented_files() == real


def test_the_layer_table_holds_every_module():
    assert set(documented_layers()) == {short(module_name(p)) for p in SOURCES}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_point_down_the_layers(path):
    layers, name = documented_layers(), short(module_name(path))
    upward = sorted(t for t in map(short, imports_of(path)) if t != "sarashina_grpo" and layers[t] > layers[name])
    assert upward == [], f"{name} (layer {layers[name]}) imports a higher layer: {upward}"


def test_no_import_cycles():
    graph = {module_name(p): imports_of(p) for p in SOURCES}
    done, on_path = set(), []

    def visit(node):
        if node in on_path:
            pytest.fail("import cycle: " + " -> ".join(on_path[on_path.index(node):] + [node]))
        if node in done:
            return
        on_path.append(node)
        for target in sorted(graph.get(node, ())):
            if target != "sarashina_grpo":  # the package itself: importing it runs only __init__
                visit(target)
        on_path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


def files_containing(text: str) -> list[str]:
    return sorted(p.relative_to(PACKAGE).as_posix() for p in SOURCES if text in p.read_text(encoding="utf-8"))


def test_the_grpo_trainer_is_constructed_in_one_place():
    assert files_containing("GRPOTrainer(") == ["pipeline.py"]


def test_one_module_builds_the_command_line():
    assert files_containing("argparse.ArgumentParser") == ["cli.py"]
    assert files_containing(".add_argument(") == ["cli.py"]  # why: flags come from dataclasses, in one place


@pytest.mark.parametrize("name", PRIVATE_NAMES)
def test_private_library_names_live_in_compat_only(name):
    assert files_containing(name) == ["compat.py"]


# Underscore names that are public API of the standard library (os._exit, namedtuple's _replace and friends).
PUBLIC_UNDERSCORE_API = {"_exit", "_replace", "_asdict", "_fields", "_make"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORE_API


def private_touches() -> set[tuple[str, str]]:
    """(file, name) of each private name of another library the package reaches, found by what the code does, not
    by a list of names: an underscore attribute read or written on anything but ``self``/``cls`` that the package
    does not define itself, an underscore name handed to ``getattr``/``setattr``/``hasattr``/``delattr``, and a
    method of one of the package's classes that overrides an underscore method of a library base class."""
    import importlib

    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in SOURCES}
    own = {node.name for tree in trees.values() for node in tree.body
           if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    found = set()
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr not in own
                    and ast.unparse(node.value) not in ("self", "cls")):
                found.add((path.name, node.attr))
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2
                  and isinstance(node.args[1], ast.Constant) and is_private(str(node.args[1].value))):
                found.add((path.name, node.args[1].value))
        for node in tree.body:  # overrides: the class's bases (its MRO past itself) already define the method
            if isinstance(node, ast.ClassDef):
                methods = [m.name for m in node.body if isinstance(m, ast.FunctionDef) and is_private(m.name)]
                if methods:
                    cls = getattr(importlib.import_module(module_name(path)), node.name)
                    found |= {(path.name, m) for m in methods if any(m in vars(base) for base in cls.__mro__[1:])}
    return found


def private_table() -> list[tuple[str, str]]:
    """(what is touched, where) of each row of docs/architecture.md's table of private names."""
    section = ARCHITECTURE.split("## Private names of the libraries")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    return [tuple(c.strip() for c in row.strip("|").split("|")[:2]) for row in rows]


def test_every_private_touch_outside_compat_is_in_the_table_of_private_names():
    table = private_table()
    undocumented = sorted(
        (file, name) for file, name in private_touches() if file != "compat.py"
        and not any(re.search(rf"\b{re.escape(name)}\b", what) and Path(file).stem in where for what, where in table))
    assert undocumented == [], "add each to docs/architecture.md's table (what, where, why, contract test)"


def test_the_private_touch_finder_sees_a_touch_by_behaviour():
    # why: a finder that saw nothing would pass the test above; these are touched today (reads, an override)
    touches = private_touches()
    assert {("checkpoints.py", "_reconstruct"), ("cli.py", "_actions"),
            ("cli.py", "_format_action_invocation")} <= touches


def test_attributes_set_on_the_trainer_are_the_project_trainers_own():
    """No attribute is set on a library's trainer object: every ``trainer.x = …`` names one that the project's
    ``GRPOTrainer`` subclass (``pipeline.trainer_class``) declares."""
    from sarashina_grpo.pipeline import trainer_class

    declared = set(vars(trainer_class(object)))
    written = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if ast.unparse(node.value) in ("trainer", "self.trainer"):
                    written.add((path.name, node.attr))
    assert written and {(file, name) for file, name in written if name not in declared} == set()


def modules_taking_settings() -> set[str]:
    """Modules with a function that has a parameter annotated ``Settings``."""
    found = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
                if any(a.annotation is not None and ast.unparse(a.annotation) == "Settings" for a in arguments):
                    found.add(short(module_name(path)))
    return found


def test_below_the_pipeline_settings_enter_only_config_preflight_and_modeling():
    layers = documented_layers()
    below = {m for m in modules_taking_settings() if layers[m] < layers["pipeline"]}
    # why: docs/architecture.md's walk: train's settings enter pipeline, preflight, config and modeling only;
    # data, rewards, checkpoints and the callbacks get plain values. inference sits below the pipeline because the
    # held-out evaluation during training generates through it; its Settings are infer's and eval's (load_for_inference)
    assert below <= {"config", "preflight", "modeling", "inference"}
