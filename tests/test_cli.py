"""The sarashina-grpo command: help for every command, and the README's CPU smoke run."""

import dataclasses
import json
import subprocess
import sys

import pytest

from sarashina_grpo.cli import build_parser, main, parse_args
from sarashina_grpo.commands import COMMANDS
from sarashina_grpo.config import Settings, flag_of
from sarashina_grpo.options import settings_from_args


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


def test_a_no_flag_says_what_it_turns_off_instead_of_repeating_the_flags_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    lines = capsys.readouterr().out.splitlines()
    no_flag = next(line for line in lines if line.strip().startswith("--no-log-completions"))
    assert "turn --log-completions off" in no_flag


def test_train_defaults_are_the_articles():
    # why: no flag given means the Settings defaults, which are the article's run
    assert settings_from_args(parse_args(["train"])) == Settings()


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
    args = parse_args(["train", "--config", str(recipe), "--max-steps", "3", "--rewards", "xmlcount"])
    settings = settings_from_args(args)
    # why: precedence is defaults < recipe < flags given now
    assert (settings.max_steps, settings.loss_type, settings.reward_names) == (3, "dapo", ("xmlcount",))


def test_json_flag_for_further_grpo_arguments():
    args = parse_args(["train", "--extra-grpo-args", '{"steps_per_generation": 6}'])
    assert settings_from_args(args).extra_grpo_args == {"steps_per_generation": 6}


def test_every_grpo_config_field_is_a_typed_flag():
    args = parse_args(["train", "--report-to", "wandb", "--save-total-limit", "3", "--reward-weights", "1", "1", "2",
                       "--multi-objective-aggregation=normalize_then_sum", "--bf16", "false"])
    # why: TRL's own field types, read from its source: a list of floats, an int, a list of names, a bool
    assert settings_from_args(args).extra_grpo_args == {
        "report_to": ["wandb"], "save_total_limit": 3, "reward_weights": [1.0, 1.0, 2.0],
        "multi_objective_aggregation": "normalize_then_sum", "bf16": False}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--max-step", "5"], "unrecognized flag --max-step (did you mean --max-steps?)"),  # no prefixes
        (["train", "--lerning-rate", "1e-5"], "did you mean --learning-rate?"),
        (["train", "--save-total-limit", "many"], "save_total_limit takes a number"),
        (["train", "--report-to"], "--report-to needs a value"),
        (["train", "--rewards", "xmlcount,xmlcount"], "names xmlcount twice"),
        (["train", "--rewards", "xmlcont"], "Unknown reward 'xmlcont' (did you mean xmlcount?)"),
        (["train", "--lr-scheduler-type", "cosin"], "got 'cosin' (did you mean cosine?)"),
        (["train", "--seed", "-1"], "Settings.seed (CLI --seed) must be a whole number ≥ 0"),
        (["train", "--loss-type", "vespo", "--reward-weights", "1"], "reward_weights has 1 value(s) for 3 rewards"),
        (["infer", "--max-new-tokens", "0", "hi"], "--max-new-tokens must be at least 1"),
        (["infer", "--batch-size", "0", "hi"], "--batch-size must be at least 1"),
        (["infer", "--sample", "--temperature", "0", "hi"], "--temperature must be in (0, 10]"),
        (["infer", "--temperature", "-1", "hi"], "--temperature must be in (0, 10]"),  # greedy, but still a mistake
        (["eval", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["eval", "--samples-per-prompt", "2"], "--samples-per-prompt 2 needs --sample"),
        (["eval", "--limit", "0"], "--limit must be at least 1"),
        (["eval", "--limit", "-1"], "--limit must be at least 1"),
    ],
)
def test_a_bad_option_is_one_error_line_before_anything_loads(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1


def test_an_unknown_flag_of_another_command_is_a_usage_error_with_a_suggestion(capsys):
    assert main(["infer", "--batch", "3", "hi"]) == 2
    err = capsys.readouterr().err
    assert "(did you mean --batch-size?)" in err and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("argv, expected", [
    (["train", "--learning-rate", "abc"], "--learning-rate: invalid float value: 'abc'"),
    (["export"], "the following arguments are required"),
    (["nosuch"], "invalid choice: 'nosuch'"),
])
def test_argparses_own_complaints_are_one_error_line_naming_the_dashed_flag(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    # why: every mistake gets one `error:` line; argparse's usage block and the `_` alias are noise to a user
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1 and "learning_rate" not in err


def test_a_bad_flag_is_reported_before_torch_trl_or_any_model_code_is_imported():
    code = ("import sys; from sarashina_grpo.cli import main; assert main(['train', '--rewards', 'nope']) == 2; "
            "heavy = {'torch', 'trl', 'peft', 'unsloth', 'transformers.modeling_utils', 'transformers.trainer', "
            "'transformers.models.llama.modeling_llama'} & set(sys.modules); assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    # why: a typo must cost a second or two, not the 10-40 s of importing the training stack; HfArgumentParser loads
    # only transformers' lazy root, and Unsloth's patches stay intact (tests/gpu/test_gpu_import_order.py)
    assert result.returncode == 0, result.stderr[-2000:]


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


@pytest.mark.parametrize("command", [["train", "--model", "tiny"], ["infer", "--model", "tiny", "hi"],
                                     ["eval", "--model", "tiny"]])
def test_zero_threads_is_one_error_line_before_any_model_loads(command, capsys):
    from sarashina_grpo.cli import main

    assert main([*command, "--threads", "0"]) == 2
    assert "--threads must be a positive integer, got 0" in capsys.readouterr().err


def test_help_grpo_leaves_out_the_flags_the_project_owns(capsys):
    # why: --eval-steps is the held-out evaluation (Settings.held_out_eval_steps), not TRL's eval_steps
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help-grpo"])
    listed = capsys.readouterr().out
    assert "--eval-steps " not in listed and "--save-total-limit " in listed


@pytest.mark.slow
def test_eval_prints_rounded_figures_and_no_none(tmp_path, capsys):
    from sarashina_grpo.cli import main

    assert main(["eval", "--model", "tiny", "--limit", "2", "--max-new-tokens", "4", "--artifact-dir",
                 str(tmp_path), "--name", "t"]) == 0
    figures = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    # why: unrounded floats and "None" (nothing judged) made the figures hard to read
    assert figures and all(line.split(": ")[1].replace(".", "").isdigit() for line in figures)
    assert all(len(line.split(".")[-1]) == 3 for line in figures if "." in line.split(": ")[1])


def test_a_grpo_flag_adds_to_the_recipes_grpo_keys(tmp_path):
    from sarashina_grpo.cli import parse_args
    from sarashina_grpo.options import explicit_settings

    recipe = tmp_path / "r.yaml"
    recipe.write_text("report_to: none\nsave_total_limit: 2\n", encoding="utf-8")
    values = explicit_settings(parse_args(["train", "--config", str(recipe), "--logging-first-step"]))
    # why: one flag used to replace every GRPOConfig key the recipe set; "none" is report_to's own value, not None
    assert values["extra_grpo_args"] == {"report_to": "none", "save_total_limit": 2, "logging_first_step": True}


def test_a_missing_prompt_file_is_reported_before_the_model_that_needs_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    # why: the default model (Sarashina 3B) cannot train on a CPU either; the file the user typed is fixed first
    assert main(["train", "--data", "no/such/prompts.csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Prompt file not found") and "prompts.csv" in err
