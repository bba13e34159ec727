"""The package's shape, as docs/architecture.md states it: checked from the source, so it cannot drift.

No import cycles between the package's modules (function-level imports included); the GRPO trainer is constructed
in one place; one module builds the command line; private library names appear in ``compat.py`` only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sarashina_grpo"
SOURCES = sorted(PACKAGE.rglob("*.py"))
# Private names of TRL / Unsloth / PEFT / bitsandbytes that only compat.py may spell out.
PRIVATE_NAMES = ("_generate_single_turn", "_generate_and_score_completions", "_unsloth_recompute_inv_freq",
                 "unwrap_model_for_generation", "quant_state", "trainer._logs")


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
    assert files_containing("argparse.ArgumentParser(") == ["cli.py"]
    assert files_containing(".add_argument(") == ["cli.py"]  # why: flags come from dataclasses, in one place


@pytest.mark.parametrize("name", PRIVATE_NAMES)
def test_private_library_names_live_in_compat_only(name):
    assert files_containing(name) in ([], ["compat.py"])
