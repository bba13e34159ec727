"""Record a demo run's results and regenerate the demo tables of README.md and docs/demo.md from them.

    uv run sarashina-grpo demo --run-name demo-record
    uv run python tools/update_demo_docs.py artifact/outputs/demo-record

Copies the run's ``demo.json`` to ``docs/demo-results.json`` and rewrites every block between
``<!-- demo:NAME -->`` and ``<!-- /demo:NAME -->`` (NAME: ``table``, ``held-out``) in the two documents.
``tests/test_demo_docs.py`` checks that the documents hold exactly what the recorded results give, so the numbers a
reader sees are the ones the demo printed.
"""

import json
import re
import shutil
import sys
from pathlib import Path

from sarashina_grpo.demo import demo_table, held_out_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "demo-results.json"
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "demo.md")
BLOCK_RE = re.compile(r"(<!-- demo:(?P<name>[\w-]+) -->\n)(.*?)(<!-- /demo:(?P=name) -->)", re.DOTALL)


def blocks(results: dict) -> dict[str, str]:
    """The generated text of each block name."""
    return {"table": demo_table(results["before"], results["after"]),
            "held-out": held_out_table(results.get("held_out_curve", {}))}


def regenerate(text: str, results: dict) -> str:
    generated = blocks(results)
    return BLOCK_RE.sub(lambda m: m.group(1) + generated[m.group("name")] + m.group(4), text)


if __name__ == "__main__":
    shutil.copyfile(Path(sys.argv[1]) / "demo.json", RESULTS)
    recorded = json.loads(RESULTS.read_text(encoding="utf-8"))
    for document in DOCUMENTS:
        document.write_text(regenerate(document.read_text(encoding="utf-8"), recorded), encoding="utf-8")
        print("updated", document)
