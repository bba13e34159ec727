"""The docs point at what exists: links stay inside the repository, and every launch command they show parses.

    .venv/bin/pytest tests/test_docs.py
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sarashina_grpo.cli import parse_args

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("doc", DOCS, ids=relative)
def test_links_stay_inside_the_repository_and_exist(doc):
    text = doc.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"(https?|mailto):|#", target):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        # why: a reader of a clone has this repository only
        assert path.is_relative_to(ROOT) and path.exists(), f"{relative(doc)} links to {target}"
    assert "../shared/" not in text, f"{relative(doc)} names a file outside the repository"


def launch_commands() -> list[tuple[str, str]]:
    """(where, command) of every `accelerate launch … -m sarashina_grpo …` shown in a config comment or a doc."""
    found = []
    for config in sorted((ROOT / "configs" / "accelerate").glob("*.yaml")):
        comments = "\n".join(line.lstrip("# ") for line in config.read_text().splitlines() if line.startswith("#"))
        found += [(relative(config), c) for c in re.findall(r"accelerate launch [^\n]*", comments)]
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(encoding="utf-8"), re.DOTALL):
            joined = block.replace("\\\n", " ")
            found += [(relative(doc), line.strip()) for line in joined.splitlines()
                      if "accelerate launch" in line and not line.lstrip().startswith("#")]
    return found


@pytest.mark.parametrize(("where", "command"), launch_commands(),
                         ids=lambda v: v if v.endswith((".md", ".yaml")) else "")
def test_every_launch_command_shown_runs_the_cli(where, command):
    words = shlex.split(command[command.index("accelerate launch"):])
    config = words[words.index("--config_file") + 1]
    assert (ROOT / config).is_file(), f"{where}: {config}"
    module = words.index("-m")
    # why: the module must exist, and what follows must be a command line the CLI accepts
    assert words[module + 1] == "sarashina_grpo" and (ROOT / "src" / "sarashina_grpo" / "__main__.py").exists()
    parse_args(words[module + 2:])


def test_every_accelerate_config_shows_its_launch_command():
    named = {where for where, _ in launch_commands()}
    assert {relative(p) for p in (ROOT / "configs" / "accelerate").glob("*.yaml")} <= named
