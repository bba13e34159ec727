"""The cold start: written format examples, their deliberate malformed share, and `sarashina-grpo warmstart`
writing a model folder that `train --model` takes."""

import json
import subprocess
import sys

import pytest

from sarashina_grpo.data import DataError
from sarashina_grpo.project import SettingsError
from sarashina_grpo.rewards import is_strict_format
from sarashina_grpo.warmstart import (
    FORMAT_EXAMPLES,
    WarmStart,
    build_examples,
    format_examples,
    read_format_examples,
)


def test_the_shipped_format_examples_are_strictly_laid_out(repo_root):
    rows = read_format_examples(repo_root / FORMAT_EXAMPLES)
    examples = format_examples(rows, WarmStart(data=str(repo_root / FORMAT_EXAMPLES), malformed_share=0), "S")
    # why: with no malformed share every completion is what the strict reward pays for
    assert 40 <= len(rows) <= 80 and all(is_strict_format(completion) for _, completion in examples)


def test_format_examples_are_held_out_from_the_evaluation_prompts(repo_root):
    import csv

    evaluated = {r["prompt"] for r in csv.DictReader((repo_root / "datasets" / "eval.csv").open(encoding="utf-8"))}
    assert not evaluated & {r["prompt"] for r in read_format_examples(repo_root / FORMAT_EXAMPLES)}


def test_the_malformed_share_breaks_about_that_share_of_layouts(repo_root):
    config = WarmStart(data=str(repo_root / FORMAT_EXAMPLES), malformed_share=0.5, seed=1)
    strict = [is_strict_format(completion) for _, completion in build_examples(config)]
    assert 0.3 < sum(strict) / len(strict) < 0.7  # why: about half stay strict, leaving GRPO room to raise the rate


def test_examples_carry_the_system_prompt_training_will_use(repo_root, tmp_path):
    prompt_file = tmp_path / "system.txt"
    prompt_file.write_text("Think in <think>, answer in <response>.", encoding="utf-8")
    config = WarmStart(data=str(repo_root / FORMAT_EXAMPLES), system_prompt_file=str(prompt_file))
    messages, _ = build_examples(config)[0]
    assert messages[0] == {"role": "system", "content": "Think in <think>, answer in <response>."}


def test_a_row_without_a_response_is_a_data_error_naming_its_line(tmp_path):
    path = tmp_path / "examples.jsonl"
    path.write_text('{"prompt": "a", "think": "b", "response": "c"}\n{"prompt": "a", "think": "b"}\n',
                    encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        read_format_examples(path)


def test_a_missing_examples_file_fails_when_the_recipe_is_made(tmp_path):
    with pytest.raises(SettingsError, match="file not found"):
        WarmStart(data=str(tmp_path / "none.jsonl"))


def test_the_command_needs_an_output_folder():
    result = subprocess.run([sys.executable, "-m", "sarashina_grpo.cli", "warmstart", "--model", "tiny"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "warmstart needs --output" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_warmstart_writes_a_merged_model_folder_that_loads_without_peft(tiny_model_dir, tmp_path, repo_root):
    out = tmp_path / "warm"
    result = subprocess.run(
        [sys.executable, "-m", "sarashina_grpo.cli", "warmstart", "--model", str(tiny_model_dir), "--output",
         str(out), "--steps", "2", "--batch-size", "2", "--lora-rank", "4", "--threads", "1"],
        capture_output=True, text=True, timeout=280, cwd=repo_root)
    assert result.returncode == 0, result.stderr[-3000:]
    files = {p.name for p in out.iterdir()}
    # why: merged, so `train --model` starts a fresh LoRA on it and the KL reference is this warm start
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files and "adapter_config.json" not in files
    weights = json.loads((out / "config.json").read_text())
    assert weights["architectures"] == ["LlamaForCausalLM"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--threads", "-1"], "--threads must be a positive integer"),  # why: was a torch traceback after the data read
    (["--threads", "0"], "--threads must be a positive integer"),  # why: was silently ignored
    (["--output", "/proc/no/such/place"], "its folder cannot be written"),  # why: failed only when saving
    # why: one message listed all three rules, not which one failed or the value given
    (["--malformed-share", "1.5"], "warmstart --malformed-share must be in [0, 1], got 1.5."),
    (["--lora-rank", "-2"], "warmstart --lora-rank must be >= 0, got -2."),
    (["--learning-rate", "0"], "warmstart --learning-rate must be a finite number in (0, 1], got 0.0."),
    # why: train's ranges apply here too; each of these loaded the model first, then failed with a traceback
    # ("Overflow when unpacking long long"), a 25 GB allocation, or NaN weights after the whole pass
    (["--seed", "99999999999999999999"], "warmstart --seed must be a whole number in [0, 2**32)"),
    (["--seed", "-1"], "warmstart --seed must be a whole number in [0, 2**32)"),
    (["--lora-rank", "100000000"], "warmstart --lora-rank must be at most 4,096"),
    (["--learning-rate", "inf"], "warmstart --learning-rate must be a finite number in (0, 1], got inf."),
    (["--learning-rate", "nan"], "warmstart --learning-rate must be a finite number in (0, 1], got nan."),
    (["--learning-rate", "5"], "warmstart --learning-rate must be a finite number in (0, 1], got 5.0."),
])
def test_warmstart_options_fail_before_the_model_loads(flags, message, capsys, tmp_path, monkeypatch):
    from sarashina_grpo import modeling
    from sarashina_grpo.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(modeling, "resolve_model_name", no_model)

    output = [] if "--output" in flags else ["--output", str(tmp_path / "warm")]
    args = ["warmstart", "--model", "tiny", *output, *flags]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_the_real_model_defaults_on_the_tiny_model_point_to_the_demos_recipe(tmp_path, monkeypatch, caplog):
    import logging

    from sarashina_grpo import warmstart

    def stop(*args):
        raise RuntimeError("stopped before the examples")

    monkeypatch.setattr(warmstart, "build_examples", stop)
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="stopped"):
        warmstart.warm_start(warmstart.WarmStart(model="tiny", output=str(tmp_path / "warm")))
    # why: 60 LoRA steps at 2e-4 moved the tiny model's loss from 6.80 to 6.78
    assert "--data synthetic --steps 150 --batch-size 16 --learning-rate 0.003 --lora-rank 0" in caplog.text
