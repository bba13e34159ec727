"""The sarashina-grpo command: help for every command, and the README's CPU smoke run."""

import subprocess
import sys

import pytest

from sarashina_grpo.cli import COMMANDS, build_parser


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
    args = build_parser().parse_args(["train"])
    assert (args.model, args.max_steps, args.save_steps, args.num_generations, args.learning_rate) == (
        "sbintuitions/sarashina2.2-3b-instruct-v0.1", 500, 250, 6, 5e-6,
    )


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
