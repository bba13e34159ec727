"""The demo main job learns: a short run of `sarashina-grpo demo` (CPU, tiny model) raises the strict-format rate on
held-out prompts and the strict-format reward logged during GRPO, and leaves its table, curve and TensorBoard events
in the run's folder. Figures for several seeds: docs/demo.md."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

SHORT_STEPS = 60
# Margins hold on every seed measured for the 60-step demo (docs/demo.md), with room; rates are measured on 270
# sampled held-out outputs (about ±3% each).
MIN_STRICT_GAIN = 0.10
MIN_CURVE_RISE = 0.03  # mean of the last two logged strict rewards minus the first two (0.5 = every sample strict)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import unsloth  # noqa: F401  (Unsloth patches transformers/TRL; import it first)

    from sarashina_grpo.demo import DemoSettings, run_demo

    return run_demo(tmp_path_factory.mktemp("demo"), DemoSettings(seed=0, steps=SHORT_STEPS), run_name="demo")


def test_demo_starts_partly_compliant(demo):
    assert 0.10 <= demo.before["strict_format_rate"] <= 0.70  # GRPO can only amplify what groups already sample


def test_demo_raises_the_held_out_strict_format_rate(demo):
    assert demo.after["strict_format_rate"] - demo.before["strict_format_rate"] >= MIN_STRICT_GAIN


def test_logged_strict_format_reward_rises(demo):
    from sarashina_grpo.demo import CURVE_KEYS, curve

    _, strict = curve(demo.log_history, CURVE_KEYS[0])
    assert len(strict) == SHORT_STEPS // 5 and sum(strict[-2:]) / 2 - sum(strict[:2]) / 2 >= MIN_CURVE_RISE


def test_demo_writes_table_curve_and_tensorboard_events(demo):
    assert (demo.run_dir / "demo.md").read_text(encoding="utf-8") == demo.table
    assert demo.curve_png.stat().st_size > 0 and list(demo.log_dir.glob("events.out.tfevents.*"))


def test_demo_table_shows_before_and_after(demo):
    assert demo.table.splitlines()[0] == "| metric | before | after | change |"


def test_warm_model_is_cached_in_the_artifact_folder(demo):
    from sarashina_grpo.demo import DemoSettings, warm_model

    artifact = demo.run_dir.parent.parent
    (cached,) = (artifact / "models").glob("tiny-warm-seed0-*")
    built = (cached / "model.safetensors").stat().st_mtime
    assert warm_model(artifact, DemoSettings(seed=0)) == cached  # a second demo reuses it, without rebuilding
    assert (cached / "model.safetensors").stat().st_mtime == built


def test_the_held_out_curve_during_grpo_ends_at_the_tables_rates(demo):
    from sarashina_grpo.demo import curve

    steps, strict = curve(demo.log_history, "eval_strict_format_rate")
    # why: the in-training evaluation samples as the table does, so TensorBoard's eval/strict_format_rate and the
    # table can be read together
    assert steps == [0, 20, 40, 60] and (strict[0], strict[-1]) == (demo.before["strict_format_rate"],
                                                                    demo.after["strict_format_rate"])



@pytest.mark.parametrize(("flags", "message"), [
    (["--threads", "0"], "--threads must be a positive integer"),  # why: was a torch traceback after Unsloth loaded
    (["--steps", "0"], "demo --steps must be a positive integer"),  # why: was refused only after the warm start
    (["--eval-limit", "0"], "demo --eval-limit must be a positive integer"),  # why: was refused after loading
    (["--eval-steps", "-1"], "demo --eval-steps must be 0 (off)"),  # why: evaluated at every step (x % -1 == 0)
    (["--run-name", "../x"], "is not a plain folder name"),  # why: was refused after the first evaluation
])
def test_demo_options_fail_before_unsloth_is_imported(flags, message, capsys, monkeypatch):
    import sys

    from sarashina_grpo.cli import main

    monkeypatch.setitem(sys.modules, "unsloth", None)  # importing it would raise: the check must come first
    assert main(["demo", *flags]) == 2
    assert message in capsys.readouterr().err
