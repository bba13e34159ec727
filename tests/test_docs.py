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


LOG = ROOT / "docs" / "LOG.md"


def heading_anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation and symbols dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_to_results_log_entries_name_an_entry():
    anchors = {heading_anchor(h) for h in re.findall(r"^#+ (.+)$", LOG.read_text(encoding="utf-8"), re.MULTILINE)}
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        targets = re.findall(r"\]\((?:[\w./]*LOG\.md)?#([^)\s]+)\)", text) if doc == LOG else re.findall(
            r"\]\([\w./]*LOG\.md#([^)\s]+)\)", text)
        # why: a renamed entry would leave README's results rows pointing nowhere
        assert set(targets) <= anchors, f"{relative(doc)}: {sorted(set(targets) - anchors)}"


def test_readme_and_the_speed_page_quote_the_speed_entry_of_the_log():
    board = LOG.read_text(encoding="utf-8").split("## Leaderboard", 1)[1].split("\n## ", 1)[0]
    speed = [re.sub(r"\*", "", row.split("|")[2]).strip() for row in board.splitlines()
             if row.startswith("| completion tok/s") and "| 1 × H100 |" in row]
    readme_row = next(line for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
                      if line.startswith("| speed,"))
    speed_page = (ROOT / "docs" / "speed.md").read_text(encoding="utf-8")
    assert len(speed) == 3  # why: the article's path and the fast rollout at 6, the fast rollout at 36
    for value in speed:  # why: README once quoted one run and docs/speed.md another for the same row
        assert re.search(rf"\b{value}\b", readme_row) and re.search(rf"\b{value}\b", speed_page), value
