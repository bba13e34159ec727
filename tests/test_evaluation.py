"""Specification of the evaluation: per-output scores, the metrics file, the comparison, and `sarashina-grpo eval`."""

from __future__ import annotations

import json

import pytest

from sarashina_grpo.evaluation import (
    METRIC_KEYS,
    check_eval_name,
    compare_runs,
    comparison_table,
    eval_name_for,
    evaluate,
    score_text,
    score_texts,
    write_eval,
)
from sarashina_grpo.project import SettingsError

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


def test_the_japanese_thinking_rate_counts_every_output():
    # why: unlike the purity mean, an output that never thinks (or thinks in English) lowers the share
    assert score_texts([STRICT_JA, DRIFT, SOFT_ONLY, "no tags"])["think_japanese_rate"] == 2 / 4


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
                 "--compare", "greedy", "--role", "あなたは手品師です。"]) == 0
    metrics = json.loads((tmp_path / "eval" / "sampled" / "metrics.json").read_text(encoding="utf-8"))
    lines = (tmp_path / "eval" / "sampled" / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    assert set(METRIC_KEYS) <= set(metrics) and metrics["n"] == len(lines) == 10  # 5 prompts × 2 samples
    assert 0 < metrics["mean_tokens"] <= 12  # generated ids, not the decoded text re-tokenized
    assert metrics["meta"]["role"] == json.loads(lines[0])["role"] == "あなたは手品師です。"  # evaluated in role
    assert (tmp_path / "eval" / "compare-sampled-vs-greedy" / "comparison.png").stat().st_size > 0


LEAKY = "<think>\n本当は百円で買いました。\n</think>\n<response>\n本当は百円で買いました。\n</response>"


def test_leak_is_reported_per_output():
    assert score_text(LEAKY)["think_leak"] == 1.0  # the response repeats the thinking word for word


def test_leak_mean_skips_outputs_without_both_sections():
    assert score_texts([LEAKY, STRICT_JA, "no tags"])["think_leak_mean"] == 1.0  # only LEAKY has 8+ chars to judge


def test_leak_is_a_column_of_the_comparison():
    table = comparison_table({"a": score_texts([LEAKY]), "b": score_texts([STRICT_JA])})
    assert "| think_leak_mean | 1.000 | – |" in table  # "–": STRICT_JA's response is too short to judge


def test_chart_labels_tell_missing_from_zero():
    from sarashina_grpo.evaluation import chart_value, rounded

    assert [rounded(chart_value(v), 2) for v in (None, float("nan"), 0.0, 0.5)] == ["n/a", "n/a", "0.00", "0.50"]


def test_chart_legend_gives_each_runs_number_of_outputs():
    from sarashina_grpo.evaluation import chart_legend

    assert chart_legend("step500", {"n": 20}) == "step500 (n=20)"  # why: n=20 beside n=135 must be visible


def test_a_cpu_evaluation_says_how_long_it_will_take_and_how_to_shorten_it(caplog):
    from sarashina_grpo.evaluation import log_cpu_estimate

    log_cpu_estimate(40.0, 8, 136)
    assert "the other 128 need about 11 min" in caplog.text and "--limit N" in caplog.text


def test_chart_draws_missing_values_without_failing(tmp_path):
    from sarashina_grpo.evaluation import comparison_chart

    chart = comparison_chart({"a": score_texts(["no tags"]), "b": score_texts([STRICT_JA])}, tmp_path / "c.png")
    assert chart.stat().st_size > 0  # "no tags" has no think purity: drawn as n/a


def test_an_existing_evaluation_name_is_refused(tmp_path):
    from sarashina_grpo.evaluation import EvalExistsError, check_eval_name

    write_eval([{"prompt": "p", "completion": STRICT_JA}], tmp_path / "eval" / "base")
    with pytest.raises(EvalExistsError, match="--overwrite"):
        check_eval_name("base", tmp_path)


@pytest.mark.parametrize("data_path", ["", "  "])
def test_an_empty_held_out_file_path_is_refused_as_empty_before_any_model_is_used(tmp_path, data_path):
    # why: '' was read as the project folder, "error: . is a folder", not naming eval --data
    with pytest.raises(SettingsError, match=r"held-out prompt file \(CLI eval --data; evaluate's data_path\) is empty"):
        evaluate(None, None, "e", data_path=data_path, artifact_dir=tmp_path)


def test_overwrite_allows_reusing_an_evaluation_name(tmp_path):
    from sarashina_grpo.evaluation import check_eval_name

    write_eval([{"prompt": "p", "completion": STRICT_JA}], tmp_path / "eval" / "base")
    assert check_eval_name("base", tmp_path, overwrite=True) == tmp_path / "eval" / "base"


# Generated tokens are counted from the generated ids: never more than max_new_tokens, padding not counted.
@pytest.mark.parametrize(("ids", "expected"), [
    ([5, 6, 2, 0, 0], 3),  # stopped at EOS (2): the EOS is generated, the padding (0) after it is not
    ([5, 6, 7, 8], 4),  # ran to max_new_tokens without stopping
    ([5, 2, 2, 2], 2),  # pad == eos (many tokenizers): the first EOS ends the count
    ([0, 0, 5, 6], 2),  # stray padding without EOS is not counted
])
def test_generated_tokens_are_counted_from_ids(ids, expected):
    import torch

    from sarashina_grpo.inference import count_generated

    assert count_generated(torch.tensor(ids), stop_ids={2}, pad_id=0) == expected


GREEDY = {"generation": {"max_new_tokens": 512, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
                         "batch_size": 16}, "samples_per_prompt": 1}


def test_the_comparison_says_when_the_evaluations_decoded_differently():
    sampled = {**GREEDY, "generation": {**GREEDY["generation"], "do_sample": True, "max_new_tokens": 64}}
    table = comparison_table({"a": {"meta": GREEDY}, "b": {"meta": sampled}})
    assert table.strip().splitlines()[-1] == (
        "Note: these evaluations decoded differently, so part of any difference comes from that: a: greedy, up to "
        "512 new tokens; b: sampled at temperature 1.0, top_p 1.0, up to 64 new tokens.")


def test_the_comparison_says_when_the_evaluations_scored_different_prompts():
    few = {**GREEDY, "data": "datasets/eval.csv", "prompts": 8}
    table = comparison_table({"a": {"meta": few}, "b": {"meta": {**few, "prompts": 135}}})
    # why: the notebook put n=8 beside n=135 without a word (EVAL_LIMIT on one side only)
    assert table.strip().splitlines()[-1] == (
        "Note: these evaluations scored different prompts, so their rates are not of the same questions: a: 8 of "
        "datasets/eval.csv; b: 135 of datasets/eval.csv.")
    assert "Note" not in comparison_table({"a": {"meta": few}, "b": {"meta": few}})


def test_the_same_decoding_with_another_batch_size_gets_no_note():
    other = {**GREEDY, "generation": {**GREEDY["generation"], "batch_size": 4}}  # why: batching changes no output
    assert "Note" not in comparison_table({"a": {"meta": GREEDY}, "b": {"meta": other}})


@pytest.mark.parametrize("model, name", [
    ("tiny", "notebook-tiny"),
    ("../artifact/outputs/grpo-1/checkpoint-500", "notebook-grpo-1-checkpoint-500"),
    ("/abs/outputs/run/checkpoint-20/", "notebook-run-checkpoint-20"),
    ("sbintuitions/sarashina2.2-3b-instruct-v0.1", "notebook-sarashina2.2-3b-instruct-v0.1"),
])
def test_a_notebook_evaluation_is_named_after_its_model(model, name):
    # why: a fixed default ("notebook-base") named a checkpoint's evaluation "base"
    assert eval_name_for(model) == name
    check_eval_name(name, "/nonexistent-artifact")  # a plain folder name, as --name must be
