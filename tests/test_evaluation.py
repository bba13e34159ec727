"""Specification of the evaluation: per-output scores, the metrics file, the comparison, and `sarashina-grpo eval`."""

from __future__ import annotations

import json

import pytest

from sarashina_grpo.evaluation import (
    METRIC_KEYS,
    compare_runs,
    comparison_table,
    score_text,
    score_texts,
    write_eval,
)

STRICT_JA = "<think>\n考えます。\n</think>\n<response>\nはい。\n</response>"
DRIFT = "<think>\nLet me think about it.\n</think>\n<response>\nはい。\n</response>"
SOFT_ONLY = "<think>考えます。</think><response>はい。</response>"


def test_strict_output_scores_as_strict_and_soft():
    assert score_text(STRICT_JA)["strict_format"] and score_text(STRICT_JA)["soft_format"]  # strict implies soft


def test_think_and_response_purity_are_separate():
    assert (score_text(DRIFT)["think_purity"], score_text(DRIFT)["response_purity"]) == (0.0, 1.0)  # drift in think


def test_drift_has_a_latin_run():
    assert score_text(DRIFT)["latin_run"]  # "Let me think about it" is five Latin words


def test_rates_are_shares_of_all_outputs():
    assert score_texts([STRICT_JA, SOFT_ONLY, "no tags"])["strict_format_rate"] == 1 / 3  # one strict of three


def test_purity_means_skip_outputs_without_the_section():
    assert score_texts([STRICT_JA, "no tags"])["think_purity_mean"] == 1.0  # "no tags" has no think to judge


def test_every_metric_key_is_reported():
    assert set(score_texts([STRICT_JA])) == set(METRIC_KEYS)  # stable keys for metrics.json


def test_empty_output_set_has_no_rates():
    assert score_texts([])["strict_format_rate"] is None  # nothing generated: no rate rather than 0


def test_comparison_table_has_a_column_per_run():
    table = comparison_table({"a": score_texts([STRICT_JA]), "b": score_texts([DRIFT])})
    assert table.splitlines()[0] == "| metric | a | b |"  # runs side by side


def test_write_eval_and_compare(tmp_path):
    for name, text in (("before", DRIFT), ("after", STRICT_JA)):
        write_eval([{"prompt": "p", "completion": text, "tokens": 5}], tmp_path / "eval" / name, {"model": name})
    table, chart = compare_runs(["before", "after"], artifact_dir=tmp_path)
    assert chart.exists() and (chart.parent / "comparison.md").read_text(encoding="utf-8") == table


def test_compare_needs_two_runs(tmp_path):
    with pytest.raises(ValueError, match="at least two"):
        compare_runs(["only"], artifact_dir=tmp_path)


@pytest.mark.slow
def test_eval_command_on_the_tiny_model_writes_metrics_generations_and_comparison(tiny_model_dir, tmp_path):
    from sarashina_grpo.cli import main

    common = ["--model", str(tiny_model_dir), "--no-4bit", "--artifact-dir", str(tmp_path), "--limit", "5",
              "--max-new-tokens", "12"]
    assert main(["eval", *common, "--name", "greedy"]) == 0
    assert main(["eval", *common, "--name", "sampled", "--sample", "--samples-per-prompt", "2",
                 "--compare", "greedy"]) == 0
    metrics = json.loads((tmp_path / "eval" / "sampled" / "metrics.json").read_text(encoding="utf-8"))
    lines = (tmp_path / "eval" / "sampled" / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    assert set(METRIC_KEYS) <= set(metrics) and metrics["n"] == len(lines) == 10  # 5 prompts × 2 samples
    assert (tmp_path / "eval" / "compare-sampled-vs-greedy" / "comparison.png").stat().st_size > 0
