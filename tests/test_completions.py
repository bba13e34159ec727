"""The completion table of each log step (``completions.py``): Markdown TensorBoard can render, and the JSONL's
reading. The run that writes them is in tests/test_held_out_eval.py."""

from __future__ import annotations

import json

import pytest

from sarashina_grpo.completions import COMPLETIONS_FILE, markdown_table, plain_value, read_completions
from sarashina_grpo.project import SettingsError

ROW = {"step": 3, "prompt": "週末は？", "completion": "<think>\na|b\n</think>", "rewards": {"strict": 0.5, "x": None},
       "advantage": -0.25}


def test_tags_pipes_and_newlines_stay_inside_one_cell():
    line = markdown_table([ROW]).splitlines()[2]
    # why: <think> would be read as HTML and vanish, "|" would split the cell, "\n" would end the table row
    assert line == "| 週末は？ | &lt;think&gt;<br>a&#124;b<br>&lt;/think&gt; | 0.500 | – | -0.250 |"


def test_every_reward_gets_a_column_even_when_a_row_lacks_it():
    table = markdown_table([ROW, {**ROW, "rewards": {"other": 1.0}}])
    assert table.splitlines()[0] == "| prompt | completion | strict | x | other | advantage |"


def test_nan_rewards_are_kept_as_null():
    assert plain_value(float("nan")) is None and plain_value(0.5) == 0.5  # why: JSON has no NaN


def test_read_completions_by_folder_and_step(tmp_path):
    rows = [ROW, {**ROW, "step": 4}]
    (tmp_path / COMPLETIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert read_completions(tmp_path) == rows and read_completions(tmp_path, step=4) == rows[1:]


def test_a_run_without_completions_says_where_it_looked(tmp_path):
    with pytest.raises(SettingsError, match="No completions logged in"):
        read_completions(tmp_path)


@pytest.mark.slow
def test_trls_completion_table_is_printed_once_per_logging_step(tmp_path, tiny_model_dir, capfd):
    from sarashina_grpo import pipeline
    from sarashina_grpo.config import article_settings

    settings = article_settings(model_name=str(tiny_model_dir), max_steps=2, save_steps=10, logging_steps=1,
                                report_to="none", num_generations=2, per_device_train_batch_size=2,
                                max_completion_length=8, log_completions=True)
    pipeline.train(settings, artifact_dir=tmp_path, run_name="tables")
    # why: TRL prints the table in every log, the end-of-training summary too, which repeated the last step's
    assert capfd.readouterr().out.count("┃ Prompt") == 2
