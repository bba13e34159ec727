"""README.md and docs/demo.md show what `sarashina-grpo demo` printed: their demo tables are exactly the ones the
recorded run (docs/demo-results.json, the run's demo.json) gives. Regenerate both with tools/update_demo_docs.py."""

from __future__ import annotations

import json

import pytest

from sarashina_grpo.demo import demo_table, held_out_table


@pytest.fixture(scope="module")
def recorded(repo_root):
    return json.loads((repo_root / "docs" / "demo-results.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("document", ["README.md", "docs/demo.md"])
def test_the_documented_before_after_table_is_the_recorded_runs(repo_root, recorded, document):
    text = (repo_root / document).read_text(encoding="utf-8")
    assert f"<!-- demo:table -->\n{demo_table(recorded['before'], recorded['after'])}<!-- /demo:table -->" in text


def test_the_documented_held_out_curve_is_the_recorded_runs(repo_root, recorded):
    text = (repo_root / "docs" / "demo.md").read_text(encoding="utf-8")
    assert f"<!-- demo:held-out -->\n{held_out_table(recorded['held_out_curve'])}<!-- /demo:held-out -->" in text


def test_the_held_out_curve_ends_where_the_table_does(recorded):
    # why: the in-training evaluation samples exactly as the table's before/after do, so the two must agree
    strict = recorded["held_out_curve"]["strict_format_rate"]
    steps = sorted(strict, key=int)
    assert (strict[steps[0]], strict[steps[-1]]) == (recorded["before"]["strict_format_rate"],
                                                     recorded["after"]["strict_format_rate"])


def test_the_recorded_run_is_the_documented_recipe(recorded):
    from sarashina_grpo.demo import DemoSettings

    assert recorded["demo"]["steps"] == DemoSettings().steps and recorded["demo"]["seed"] == DemoSettings().seed
