"""The best checkpoint by a held-out measure (``Settings.best_metric``, ``best.py``): saved when reached, marked in
run.json, kept by the rotation, named ``<run>/best`` by infer/eval/export; ``--patience`` stops a run that no longer
improves.

    .venv/bin/pytest tests/test_best_checkpoint.py
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from sarashina_grpo.best import best_checkpoint, is_better, record_best, resolve_best
from sarashina_grpo.config import article_settings
from sarashina_grpo.project import SettingsError


@pytest.mark.parametrize(("eval_data", "refused"), [("datasets/eval.csv", True),
                                                  ("datasets/arithmetic_eval.csv", False)])
def test_a_best_metric_the_held_out_file_cannot_score_is_refused_before_loading(eval_data, refused):
    from sarashina_grpo.preflight import check_best_metric_has_column, check_prompt_file

    settings = article_settings(eval_steps=1, best_metric="answer_accuracy", eval_data=eval_data)
    rows = check_prompt_file(settings, "eval_data")
    # why: without an answer column the metric is null at every evaluation: no best, and --patience stops at once
    with pytest.raises(SettingsError, match=r"best_metric \(CLI --best-metric\) answer_accuracy needs an 'answer' "
                       r"column .*eval_data \(CLI --eval-data\)") if refused else contextlib.nullcontext():
        check_best_metric_has_column(settings, rows)


def test_a_higher_rate_is_better_and_a_tie_keeps_the_earlier():
    assert is_better("strict_format_rate", 0.6, 0.5) and not is_better("strict_format_rate", 0.5, 0.5)


def test_for_leaks_lower_is_better():
    assert is_better("think_leak_mean", 0.1, 0.2)  # why: a leak rate falls as the model improves


def test_the_first_value_is_always_a_best():
    assert is_better("strict_format_rate", 0.0, None)


def test_best_metric_is_one_of_the_held_out_metrics():
    with pytest.raises(SettingsError, match="best_metric.*strict_format_rate"):
        article_settings(best_metric="strict")


def test_patience_must_not_be_negative():
    with pytest.raises(SettingsError, match="patience"):
        article_settings(patience=-1)


def test_a_run_without_a_recorded_best_says_how_to_get_one(tmp_path):
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(SettingsError, match="--eval-steps"):
        resolve_best(str(tmp_path / "best"))


def test_names_other_than_best_pass_unchanged(tmp_path):
    assert resolve_best(str(tmp_path / "checkpoint-3")) == str(tmp_path / "checkpoint-3")


def test_a_recorded_best_whose_folder_is_gone_is_an_error(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"settings": {}}))
    record_best(tmp_path, 4, "strict_format_rate", 0.75)
    assert json.loads((tmp_path / "run.json").read_text())["settings"] == {}  # the run's settings stay
    with pytest.raises(SettingsError, match="checkpoint-4, strict_format_rate 0.75"):
        best_checkpoint(tmp_path)


# Held-out strict-format rates the scripted evaluation reports at steps 0..6: best at step 1, then worse.
SCRIPTED = [0.2, 0.9, 0.5, 0.4, 0.3, 0.95, 0.95]


@pytest.fixture(scope="module")
def stopped(tiny_model_dir, tmp_path_factory):
    """Saving every step with save_total_limit 2 and patience 3: step 1 is best, steps 2-4 are not, so the run
    stops at step 4; without the best's protection the rotation would have deleted checkpoint-1."""
    import unsloth  # noqa: F401

    from sarashina_grpo.callbacks import HeldOutEval
    from sarashina_grpo.pipeline import train

    def scripted(self, args, state, model, tokenizer):
        return {"strict_format_rate": SCRIPTED[state.global_step]} if state.is_world_process_zero else None

    tmp = tmp_path_factory.mktemp("best")
    settings = article_settings(model_name=str(tiny_model_dir), load_in_4bit=False, max_steps=6, save_steps=1,
                                max_completion_length=8, num_generations=2, per_device_train_batch_size=2,
                                eval_steps=1, eval_limit=2, patience=3, log_completions=False, save_total_limit=2)
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
        patch.setattr(HeldOutEval, "evaluate", scripted)
        trainer = train(settings, artifact_dir=tmp / "artifact")
    return trainer


@pytest.mark.slow
def test_the_best_checkpoint_is_marked_in_run_json(stopped):
    run_dir = stopped.run.paths.output_dir
    best = json.loads((run_dir / "run.json").read_text())["best"]
    assert best == {"checkpoint": "checkpoint-1", "step": 1, "metric": "strict_format_rate", "value": 0.9}


@pytest.mark.slow
def test_patience_stops_the_run_after_that_many_evaluations_without_a_new_best(stopped):
    assert stopped.state.global_step == 4  # why: steps 2, 3, 4 did not beat step 1; steps 5-6 never ran


@pytest.mark.slow
def test_the_rotation_never_deletes_the_best_checkpoint(stopped):
    kept = sorted(p.name for p in stopped.run.paths.output_dir.glob("checkpoint-*"))
    assert kept == ["checkpoint-1", "checkpoint-4"]  # save_total_limit 2: the best and the newest


@pytest.mark.slow
def test_infer_and_eval_load_the_best_by_name(stopped):
    from sarashina_grpo.preflight import check_model

    run_dir = stopped.run.paths.output_dir
    settings = check_model(article_settings(model_name=str(run_dir / "best"), load_in_4bit=False), training=False)
    assert settings.model_name == str(run_dir / "checkpoint-1")


@pytest.mark.slow
def test_export_takes_the_best_by_name(stopped, tmp_path):
    from sarashina_grpo.export import export_checkpoint

    out = export_checkpoint(stopped.run.paths.output_dir / "best", tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file() and "checkpoint-1" in (out / "README.md").read_text()


def test_patience_without_held_out_evaluations_is_refused():
    with pytest.raises(SettingsError, match="needs --eval-steps"):
        article_settings(patience=3)  # why: it would never count anything, and never stop the run


@pytest.mark.slow
def test_completions_are_kept_even_when_trl_prints_none(stopped):
    from sarashina_grpo.completions import read_completions

    # why: log_completions only switches TRL's console table; the run's own record stays
    assert sorted({r["step"] for r in read_completions(stopped.run.paths.output_dir)}) == [1, 2, 3, 4]
