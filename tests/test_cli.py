"""The sarashina-grpo command: help for every command, and the README's CPU smoke run."""

import dataclasses
import json
import subprocess
import sys

import pytest

from sarashina_grpo.cli import COMMANDS, build_parser, settings_from_args
from sarashina_grpo.config import Settings, flag_of


def cli(*args, cwd=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "sarashina_grpo.cli", *args], capture_output=True, text=True, cwd=cwd,
        timeout=timeout,
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0 and "usage: sarashina-grpo" in capsys.readouterr().out


def test_train_defaults_are_the_articles():
    # why: no flag given means the Settings defaults, which are the article's run
    assert settings_from_args(build_parser().parse_args(["train"])) == Settings()


def test_every_setting_is_a_train_flag_with_its_default_shown_once(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for field in dataclasses.fields(Settings):
        assert flag_of(field.name) in text, field.name  # why: one source of settings, every field reachable
    assert text.count("(default: 500)") == 1 and "(default: 0.04)" in text and "--loss-type" in text


def test_flags_override_a_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_steps: 7\nloss_type: dapo\nbeta: 0.0\n")
    args = build_parser().parse_args(["train", "--config", str(recipe), "--max-steps", "3", "--rewards", "xmlcount"])
    settings = settings_from_args(args)
    # why: precedence is defaults < recipe < flags given now
    assert (settings.max_steps, settings.loss_type, settings.reward_names) == (3, "dapo", ("xmlcount",))


def test_json_flag_for_further_grpo_arguments():
    args = build_parser().parse_args(["train", "--extra-grpo-args", '{"steps_per_generation": 6}'])
    assert settings_from_args(args).extra_grpo_args == {"steps_per_generation": 6}


def test_invalid_settings_fail_before_loading_a_model():
    result = cli("train", "--model", "tiny", "--num-generations", "4", "--batch-size", "6")
    assert result.returncode == 2 and "multiple of num_generations" in result.stderr


@pytest.mark.slow
def test_train_tiny_smoke_run_then_infer_from_its_checkpoint(tmp_path):
    artifact = tmp_path / "artifact"
    train = cli("train", "--model", "tiny", "--max-steps", "2", "--save-steps", "2", "--max-completion-length",
                "32", "--artifact-dir", str(artifact), "--run-name", "smoke")
    assert train.returncode == 0, train.stderr[-3000:]
    checkpoint = artifact / "outputs" / "smoke" / "checkpoint-2"
    assert (checkpoint / "checkpoint_complete").exists()
    infer = cli("infer", "--model", str(checkpoint), "--max-new-tokens", "8", "こんにちは")
    assert infer.returncode == 0 and "### こんにちは" in infer.stdout, infer.stderr[-3000:]


@pytest.mark.slow
def test_train_runs_the_article_recipe_on_the_tiny_model_with_overrides(tmp_path, repo_root):
    artifact = tmp_path / "artifact"
    train = cli("train", "--config", str(repo_root / "configs" / "recipes" / "article.yaml"), "--model", "tiny",
                "--max-steps", "1", "--max-completion-length", "8", "--artifact-dir", str(artifact),
                "--run-name", "recipe", cwd=repo_root)
    assert train.returncode == 0, train.stderr[-3000:]
    recorded = json.loads((artifact / "outputs" / "recipe" / "run.json").read_text())["settings"]
    # why: run.json records every setting: the recipe's algorithm and the overrides given on the command line
    assert (recorded["loss_type"], recorded["beta"], recorded["max_steps"], recorded["model_name"]) == (
        "grpo", 0.04, 1, "tiny")
    assert set(recorded) == {f.name for f in dataclasses.fields(Settings)}


def test_top_level_help_has_no_rest_markup(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "``" not in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "infer", "eval", "demo"])
def test_every_cpu_command_takes_threads(command):
    assert build_parser().parse_args([command, "--threads", "2"]).threads == 2


@pytest.mark.slow
def test_eval_prints_rounded_figures_and_no_none(tmp_path, capsys):
    from sarashina_grpo.cli import main

    assert main(["eval", "--model", "tiny", "--limit", "2", "--max-new-tokens", "4", "--artifact-dir",
                 str(tmp_path), "--name", "t"]) == 0
    figures = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    # why: unrounded floats and "None" (nothing judged) made the figures hard to read
    assert figures and all(line.split(": ")[1].replace(".", "").isdigit() for line in figures)
    assert all(len(line.split(".")[-1]) == 3 for line in figures if "." in line.split(": ")[1])
