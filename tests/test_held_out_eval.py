"""Evaluation during training (``Settings.eval_steps``): held-out prompts scored greedily with the metrics of
``sarashina-grpo eval``, logged to TensorBoard as ``eval/<metric>``; one completion table per log step; a compact
progress line instead of the raw log dicts.

    .venv/bin/pytest tests/test_held_out_eval.py
"""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from sarashina_grpo.callbacks import CompactProgress, compact_line
from sarashina_grpo.config import article_settings, load_settings
from sarashina_grpo.project import SettingsError


def test_eval_steps_must_not_be_negative():
    with pytest.raises(SettingsError, match="eval_steps"):
        article_settings(eval_steps=-1)


def test_eval_limit_must_be_positive():
    with pytest.raises(SettingsError, match="eval_limit"):
        article_settings(eval_limit=0)


def test_the_held_out_evaluation_never_switches_on_trls_own_evaluation_loop():
    settings = article_settings(eval_steps=5)
    # why: TRL's loop would sample and score rewards on an eval dataset the trainer is never given; eval_steps is
    # read by the project's greedy held-out evaluation (callbacks.HeldOutEval) alone
    assert settings.eval_steps == 5 and settings.eval_strategy == "no"
    with pytest.raises(SettingsError, match="--eval-steps N"):
        article_settings(eval_strategy="steps")


@pytest.mark.parametrize("steps", [0, 2.5, -1])
def test_eval_steps_must_be_a_whole_number_of_steps(steps):
    with pytest.raises(SettingsError, match="eval_steps"):
        load_settings({"eval_steps": steps})


def test_the_eval_flag_sets_the_held_out_evaluation():
    from sarashina_grpo.cli import parse_args
    from sarashina_grpo.commands import train_settings

    settings, given = train_settings(parse_args(["train", "--eval-steps", "5", "--eval-limit", "3"]))
    assert (settings.eval_steps, settings.eval_limit, given) == (5, 3, {"eval_steps", "eval_limit"})


def test_compact_line_names_the_step_and_rounds():
    line = compact_line({"reward": 0.88745, "rewards/strict_format_reward/mean": 0.075, "loss": 0.0068}, 60)
    assert line == "step 60: reward 0.887, strict 0.075, loss 0.007"


def test_compact_line_shows_the_held_out_rate():
    assert compact_line({"eval_strict_format_rate": 0.5}, 10) == "step 10: held-out strict rate 0.500"


def test_the_end_of_training_summary_has_no_compact_line():
    assert compact_line({"train_runtime": 30.8, "train_loss": 0.006}, 100) is None


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    import unsloth  # noqa: F401

    from sarashina_grpo.pipeline import train

    tmp = tmp_path_factory.mktemp("held-out")
    settings = article_settings(model_name=str(tiny_model_dir), load_in_4bit=False, max_steps=2, save_steps=10,
                        max_completion_length=8, num_generations=2, per_device_train_batch_size=2,
                        eval_steps=1,
                        eval_limit=3)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # TRL's rich console prints the completion tables to stdout
        trainer = train(settings, artifact_dir=tmp / "artifact", callbacks=[CompactProgress()])
    return trainer, printed.getvalue()


@pytest.mark.slow
def test_held_out_metrics_reach_tensorboard_before_and_during_training(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, _ = trained
    events = EventAccumulator(str(trainer.run.paths.log_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/strict_format_rate")] == [0, 1, 2]


@pytest.mark.slow
def test_training_is_still_logged_on_the_steps_that_evaluate(trained):
    trainer, _ = trained
    # why: logging the evaluation clears the Trainer's should_log; the step's own log must survive it
    assert [h["step"] for h in trainer.state.log_history if "loss" in h] == [1, 2]


@pytest.mark.slow
def test_each_held_out_evaluation_is_kept_like_an_eval_run(trained):
    trainer, _ = trained
    folder = trainer.run.paths.output_dir / "eval" / "step-2"
    assert (folder / "metrics.json").exists() and len((folder / "generations.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_the_completion_table_is_printed_once_per_log_step(trained):
    trainer, printed = trained
    # why: TRL printed the last step's table again with the end-of-training summary
    assert re.findall(r"Step (\d+)", printed) == ["1", "2"] and trainer.log_completions is True


@pytest.mark.slow
def test_trls_run_readme_names_the_local_base_model(trained, tiny_model_dir):
    trainer, _ = trained
    readme = (trainer.run.paths.output_dir / "README.md").read_text(encoding="utf-8")
    assert "[None]" not in readme and f"the local model `{tiny_model_dir}`" in readme


@pytest.mark.slow
def test_a_compact_progress_line_replaces_the_raw_log_dicts(trained):
    _, printed = trained
    # why: the demo printed 20 dicts of ~1,500 characters each
    assert "step 1: reward" in printed and "{'loss'" not in printed


@pytest.mark.slow
def test_held_out_answers_are_scored_when_the_data_has_them(tiny_model_dir, tmp_path):
    import unsloth  # noqa: F401
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sarashina_grpo.pipeline import train

    settings = article_settings(model_name=str(tiny_model_dir), load_in_4bit=False, max_steps=1, save_steps=10,
                        max_completion_length=8, num_generations=2, per_device_train_batch_size=2,
                        eval_steps=1, eval_limit=2, eval_data="datasets/arithmetic_eval.csv")
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = train(settings, artifact_dir=tmp_path)
    events = EventAccumulator(str(trainer.run.paths.log_dir))
    events.Reload()
    # why: the rows' answer column must reach the held-out outputs, as it does in `sarashina-grpo eval`
    assert [e.step for e in events.Scalars("eval/answer_accuracy")] == [0, 1]


@pytest.mark.slow
def test_the_sampled_completions_reach_tensorboards_text_dashboard(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    trainer, _ = trained
    events = EventAccumulator(str(trainer.run.paths.log_dir), size_guidance={"tensors": 0})
    events.Reload()
    tables = {e.step: tensor_util.make_ndarray(e.tensor_proto).item().decode() for e in
              events.Tensors("completions/text_summary")}
    assert sorted(tables) == [1, 2]  # one table per logged step, none for the end-of-training summary
    header = tables[2].splitlines()[0]
    assert header == "| prompt | completion | xmlcount_reward | soft_format_reward | strict_format_reward | advantage |"
    assert len(tables[2].splitlines()) == 2 + 2  # header, rule, one row per completion of the batch


@pytest.mark.slow
def test_the_same_completions_are_kept_beside_the_run_and_read_back(trained):
    from sarashina_grpo.completions import read_completions

    trainer, _ = trained
    rows = read_completions(trainer.run.paths.output_dir)
    assert [r["step"] for r in rows] == [1, 1, 2, 2]
    assert set(rows[0]["rewards"]) == {"xmlcount_reward", "soft_format_reward", "strict_format_reward"}
    assert read_completions(trainer.run.paths.output_dir, step=2) == rows[2:]
    assert all(isinstance(r["completion"], str) and r["prompt"] for r in rows)
