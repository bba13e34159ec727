"""Numbers that wreck a run are refused before the model loads; NaN/inf during training stops it cleanly.

No model is loaded here: the callbacks get the Trainer's arguments as plain objects, checkpoints are written by
hand (tests/checkpoint_files.py).

    .venv/bin/pytest tests/test_guards.py
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from checkpoint_files import COMPLETE_MARKER, make_checkpoint

from sarashina_grpo import project
from sarashina_grpo.callbacks import NonFiniteError, NonFiniteGuard
from sarashina_grpo.config import article_settings
from sarashina_grpo.preflight import settings_warnings
from sarashina_grpo.project import SettingsError

NAN, INF = float("nan"), float("inf")


def test_the_articles_settings_pass():
    article_settings()
    assert settings_warnings(article_settings()) == []


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (dict(learning_rate=INF), "Settings.learning_rate (CLI --learning-rate) must be a finite number in (0, 1], "
                                  "got inf."),
        (dict(learning_rate=NAN), "learning_rate (CLI --learning-rate) must be a finite number"),
        (dict(learning_rate=3.0), "got 3.0"),  # diverges at the first step
        (dict(learning_rate=0.0), "got 0.0"),
        (dict(max_grad_norm=0.0), "Settings.max_grad_norm (CLI --max-grad-norm) must be a finite number in (0, ∞)"),
        (dict(max_grad_norm=INF), "max_grad_norm"),
        (dict(temperature=INF), "Settings.temperature (CLI --temperature) must be a finite number in (0, 10]"),
        (dict(temperature=1e6), "temperature"),
        (dict(beta=NAN), "Settings.beta (CLI --beta) must be a finite number in [0, ∞)"),
        (dict(beta=-0.1), "beta"),
        (dict(epsilon=1.5), "Settings.epsilon (CLI --epsilon) must be a finite number in (0, 1)"),
        (dict(epsilon=0.2, epsilon_high=0.1), "epsilon_high (CLI --epsilon-high) (0.1) must be at least epsilon"),
        (dict(adam_beta2=1.0), "adam_beta2"),
        (dict(weight_decay=NAN), "weight_decay"),
        (dict(learning_rate=True), "learning_rate"),  # a bool is no number
        (dict(max_grad_norm=-1.0), "Settings.max_grad_norm (CLI --max-grad-norm) must be a finite number"),
    ],
)
def test_non_finite_or_absurd_numbers_are_refused_naming_the_field(fields, expected):
    with pytest.raises(SettingsError) as info:
        article_settings(**fields)
    assert expected in str(info.value)


def test_a_huge_max_steps_warns_that_the_warm_up_never_ends():
    (warning,) = settings_warnings(article_settings(max_steps=1_000_000))
    assert warning.startswith("The learning-rate warm-up lasts 100,000 steps (warmup_steps 0.1 × max_steps 1,000,000)")
    assert "--max-steps" in warning


def test_a_long_run_with_a_normal_warm_up_does_not_warn():
    assert settings_warnings(article_settings(max_steps=10_000)) == []  # 1,000 steps of warm-up: long, but realistic


def test_an_explicit_warmup_step_count_is_what_is_checked():
    assert settings_warnings(article_settings(warmup_steps=5_000))[0].startswith(
        "The learning-rate warm-up lasts 5,000 steps")


def test_a_warm_up_as_long_as_the_run_warns_that_the_learning_rate_is_never_reached():
    (warning,) = settings_warnings(article_settings(warmup_steps=50, max_steps=1))
    assert warning.startswith("The learning-rate warm-up (50 steps, warmup_steps) is not shorter than the run "
                              "(max_steps 1)") and "--warmup-steps" in warning
    assert settings_warnings(article_settings(warmup_steps=49, max_steps=50)) == []
    # why: a share below 1 is a part of the run by design, even when a 1-step test run rounds it up to that step
    assert settings_warnings(article_settings(max_steps=1)) == []


def test_a_learning_rate_that_rounds_to_no_update_warns():
    (warning,) = settings_warnings(article_settings(learning_rate=1e-12))
    assert "learning_rate 1e-12 is so small that every update rounds to no change" in warning


def test_a_near_greedy_temperature_warns_that_groups_stop_differing():
    (warning,) = settings_warnings(article_settings(temperature=0.01))
    assert "nearly identical" in warning and "--temperature" in warning


def test_prepare_refuses_an_infinite_learning_rate_before_any_run_folder_or_model(tmp_path, monkeypatch):
    from sarashina_grpo.pipeline import prepare

    monkeypatch.setattr(project, "cuda_available", lambda: False)
    with pytest.raises(SettingsError, match=r"learning_rate \(CLI --learning-rate\) must be .*got inf"):
        prepare(article_settings(model_name="tiny", load_in_4bit=False, learning_rate=INF), artifact_dir=tmp_path)
    assert not (tmp_path / "outputs").exists()


def test_prepare_logs_the_settings_warnings(tmp_path, monkeypatch, caplog):
    from sarashina_grpo.pipeline import prepare

    monkeypatch.setattr(project, "cuda_available", lambda: False)
    prepare(article_settings(model_name="tiny", load_in_4bit=False, max_steps=100_000), artifact_dir=tmp_path)
    assert "The learning-rate warm-up lasts 10,000 steps" in caplog.text


# --- during training ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("logs", "named"),
    [({"loss": NAN}, "loss = nan"), ({"loss": 0.1, "grad_norm": INF}, "grad_norm = inf"),
     ({"learning_rate": NAN}, "learning_rate = nan")],  # what --learning-rate inf logged at step 1
)
def test_a_non_finite_log_stops_training_naming_the_value_and_the_last_good_checkpoint(tmp_path, logs, named):
    good = make_checkpoint(tmp_path, 4)
    make_checkpoint(tmp_path, 5, marker=False)  # saved, never marked: not a resume point
    with pytest.raises(NonFiniteError) as info:
        NonFiniteGuard().on_log(*trainer_args(tmp_path, 6), logs=logs)
    message = str(info.value)
    assert message.startswith(f"Training stopped at step 6: {named}. ")
    assert f"the last good checkpoint is {good}" in message and "--learning-rate" in message


def test_finite_logs_pass():
    NonFiniteGuard().on_log(*trainer_args("unused", 1), logs={"loss": 0.0, "grad_norm": 1e30, "learning_rate": 5e-6,
                                                              "reward": NAN})


def trainer_args(tmp_path, step: int):
    args = SimpleNamespace(output_dir=str(tmp_path))
    return args, SimpleNamespace(global_step=step, is_world_process_zero=True), SimpleNamespace()


def test_the_guard_callback_raises_from_on_log(tmp_path):
    with pytest.raises(NonFiniteError, match="grad_norm = nan"):
        NonFiniteGuard().on_log(*trainer_args(tmp_path, 3), logs={"loss": 0.5, "grad_norm": NAN})


def test_a_checkpoint_with_nan_weights_is_not_marked_and_training_stops(tmp_path):
    from sarashina_grpo.callbacks import CheckpointMarker

    folder = make_checkpoint(tmp_path, 3, marker=False, value=NAN)
    with pytest.raises(NonFiniteError, match=r"step 3: the weights saved in .*checkpoint-3 hold NaN or inf"):
        CheckpointMarker().on_save(*trainer_args(tmp_path, 3))
    assert not (folder / COMPLETE_MARKER).exists()


def test_a_finite_checkpoint_is_marked(tmp_path):
    from sarashina_grpo.callbacks import CheckpointMarker

    folder = make_checkpoint(tmp_path, 3, marker=False)
    CheckpointMarker().on_save(*trainer_args(tmp_path, 3))
    assert (folder / COMPLETE_MARKER).read_text() == "3\n"


# --- a real run of the tiny model on CPU ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_nan_gradient_stops_the_run_and_the_last_good_checkpoint_stays_the_resume_point(tmp_path, monkeypatch):
    import torch
    import unsloth  # noqa: F401 - before transformers, as every entry point does
    from checkpoint_files import find_resume_checkpoint
    from transformers import TrainerCallback

    from sarashina_grpo.checkpoints import complete_checkpoints
    from sarashina_grpo.pipeline import train

    class NanGradientsFromStep(TrainerCallback):
        """What a diverging run looks like to the Trainer: from step ``step`` on every gradient is NaN."""

        def __init__(self, step: int):
            self.step = step

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step + 1 == self.step:
                for param in (p for p in model.parameters() if p.requires_grad):
                    param.register_hook(lambda grad: torch.full_like(grad, NAN))

    monkeypatch.setattr(project, "cuda_available", lambda: False)
    settings = article_settings(model_name="tiny", load_in_4bit=False, max_steps=4, save_steps=1,
                                max_completion_length=16, num_generations=2, per_device_train_batch_size=2)
    with pytest.raises(NonFiniteError, match=r"^Training stopped at step 2: grad_norm = nan\. .*checkpoint-1\)"):
        train(settings, artifact_dir=tmp_path, run_name="r", callbacks=[NanGradientsFromStep(2)])
    run = tmp_path / "outputs" / "r"
    assert complete_checkpoints(run) == [run / "checkpoint-1"]
    assert not (run / "checkpoint-2").exists()  # stopped in on_log, before the Trainer saved the NaN weights
    assert find_resume_checkpoint(tmp_path, "r") == (run, run / "checkpoint-1")


def test_a_lora_target_that_names_no_layer_is_refused_before_loading(tiny_model_dir, tmp_path):
    from sarashina_grpo.preflight import check_run

    settings = article_settings(model_name=str(tiny_model_dir), load_in_4bit=False,
                                lora_target_modules=["q_proj", "foo_proj"])
    # why: PEFT would train q_proj alone without a word about foo_proj
    with pytest.raises(SettingsError, match="foo_proj match no layer of this llama model"):
        check_run(settings, artifact_dir=tmp_path)


def test_the_llama_layers_are_accepted_and_other_architectures_are_left_to_peft(tmp_path):
    from sarashina_grpo.preflight import check_lora_targets, model_type_of

    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "gpt2"}')
    check_lora_targets("tiny", article_settings().lora_target_modules)  # the seven projections of the default
    check_lora_targets(str(other), ("c_attn",))
    assert (model_type_of("tiny"), model_type_of(str(other)), model_type_of("org/unknown")) == ("llama", "gpt2", None)


@pytest.mark.parametrize("limit", [0, -1])
def test_a_save_total_limit_of_zero_or_less_warns_that_every_checkpoint_is_kept(limit):
    (warning,) = settings_warnings(article_settings(save_total_limit=limit))
    # why: transformers reads 0 or less as no limit; a user asking to keep none would fill the disk
    assert warning.startswith(f"save_total_limit {limit} keeps every checkpoint") and "--save-total-limit" in warning
    assert settings_warnings(article_settings(save_total_limit=1)) == []
