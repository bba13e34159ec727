"""The sarashina-grpo command: help for every command, and the README's CPU smoke run."""

import json
import re
import subprocess
import sys

import pytest

from sarashina_grpo.cli import main, parse_args
from sarashina_grpo.commands import COMMANDS, train_settings
from sarashina_grpo.project import flag_of


def settings_of(*argv):
    """The settings a ``train`` command line asks for."""
    return train_settings(parse_args(["train", *argv]))[0]


def assert_one_error_line(err: str, expected: str) -> None:
    """One ``error:`` line, the last, holding ``expected``; before it only the log lines of ``train``'s import of
    Unsloth (its parser is TRL's, which Unsloth patches first), never a traceback."""
    lines = err.splitlines()
    assert lines and lines[-1].startswith("error: ") and expected in lines[-1], err
    assert not any(line.startswith(("error", "Traceback", "usage")) for line in lines[:-1]), err
    assert all(" INFO " in line for line in lines[:-1]), err


def help_of(*argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def cli(*args, cwd=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "sarashina_grpo.cli", *args], capture_output=True, text=True, cwd=cwd,
        timeout=timeout,
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    text = help_of(command, capsys=capsys)
    assert "usage: sarashina-grpo" in text
    assert "(default: )" not in text  # why: eval --compare's empty list showed as an empty default


def test_a_no_flag_says_what_it_turns_off_instead_of_repeating_the_flags_help(capsys):
    lines = help_of("train", capsys=capsys).splitlines()
    no_flag = next(line for line in lines if line.strip().startswith("--no-log-completions"))
    assert "turn --log-completions off" in no_flag


def test_train_help_lists_the_projects_flags_before_trls_and_every_flag_once(capsys):
    text = help_of("train", capsys=capsys)
    # why: TRL's ~230 flags come first in the dataclass; a newcomer looks for --model, --data, --rollout
    assert text.index("the project's settings:") < text.index("--model-name") < text.index("--rollout") \
        < text.index("TRL's GRPOConfig and transformers' TrainingArguments:") < text.index("--learning-rate")
    flags = re.findall(r"^  (--[\w-]+)", text, flags=re.M)
    assert len(flags) == len(set(flags)) and {"--beta", "--threads", "--resume", "--config"} <= set(flags)
    # why: a project flag's --no-x came after --threads, apart from its --x
    assert flags[flags.index("--dynamic-sampling") + 1] == "--no-dynamic-sampling"


def test_train_help_shows_list_defaults_as_the_names_a_flag_takes(capsys):
    text = " ".join(help_of("train", capsys=capsys).split())
    # why: list defaults showed as Python lists (['xmlcount', ...]), which no flag takes
    assert "(default: xmlcount, soft_format, strict_format) [article recipe: xmlcount, soft_format, strict_format]" \
        in text
    assert "['" not in text


def test_every_no_flag_of_train_follows_its_flag_in_help(capsys):
    flags = re.findall(r"^  (--[\w-]+)", help_of("train", capsys=capsys), flags=re.M)
    # why: ~40 of TRL's --no-x came at the very end of --help, after --vllm, far from their --x
    for at, flag in enumerate(flags):
        if flag.startswith("--no-"):
            assert flags[at - 1] == "--" + flag[5:], flag


@pytest.mark.parametrize(("argv", "expected"), [(["--bf16"], True), (["--bf16", "false"], False),
                                                (["--no-bf16"], False), (["--tf32"], True)])
def test_trls_unset_able_switches_take_no_value_like_the_others(argv, expected):
    # why: `train --bf16` failed with "expected one argument" while `--fp16` alone worked
    parsed = vars(parse_args(["train", *argv]))
    assert parsed[argv[0].removeprefix("--no-").removeprefix("--")] is expected


def test_a_commands_no_flag_says_what_it_turns_off(capsys):
    line = next(x for x in help_of("export", capsys=capsys).splitlines() if x.startswith("  --no-private "))
    assert "turn --private off" in line


def test_train_help_ends_with_examples_that_parse(capsys):
    examples = help_of("train", capsys=capsys).split("\nexamples:\n")[1].splitlines()
    commands = [line.split("#")[0].split()[2:] for line in examples if line.strip()]
    assert len(commands) >= 3
    for argv in commands:
        if "--resume" not in argv:  # needs a run to resume
            settings_of(*argv)


def test_train_defaults_are_the_articles(repo_root):
    from sarashina_grpo.config import load_recipe

    settings = settings_of()
    # why: no flag given means the default recipe, the article's run (its only record)
    for key, value in load_recipe(repo_root / "configs" / "recipes" / "article.yaml").items():
        assert settings.asked()[key] == value, key


def test_every_setting_is_a_train_flag(capsys):
    from sarashina_grpo.config import FIELDS

    text = " ".join(help_of("train", capsys=capsys).split())  # argparse wraps lines
    for name in FIELDS:
        assert flag_of(name) in text, name  # why: one schema: every field of TRL's GRPOConfig and ours is a flag
    assert "--loss-type" in text and "--save-total-limit" in text


def test_flags_override_a_recipe_which_overrides_the_article(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_steps: 7\nloss_type: dapo\nbeta: 0.0\n")
    settings = settings_of("--config", str(recipe), "--max-steps", "3", "--rewards", "xmlcount")
    # why: precedence is the article's recipe < --config < flags given now
    assert (settings.max_steps, settings.loss_type, settings.reward_names) == (3, "dapo", ["xmlcount"])
    assert settings.learning_rate == 5e-6  # a key the recipe does not name keeps the article's value


def test_the_rollout_is_auto_unless_a_flag_names_one():
    # why: the fast rollout where it is exact is the default; --rollout default keeps the article's generate
    assert [settings_of(*argv).rollout for argv in ((), ("--rollout", "auto"), ("--rollout", "default"))] == [
        "auto", "auto", "default"]


def test_every_grpo_config_field_is_a_typed_flag():
    settings = settings_of("--report-to", "wandb", "--save-total-limit", "3", "--reward-weights", "1", "1", "2",
                           "--multi-objective-aggregation=normalize_then_sum", "--steps-per-generation", "2")
    # why: TRL's own parser types TRL's fields: a list of names, an int, a list of floats, a choice
    assert (settings.report_to, settings.save_total_limit, settings.reward_weights,
            settings.multi_objective_aggregation, settings.steps_per_generation) == (
        ["wandb"], 3, [1.0, 1.0, 2.0], "normalize_then_sum", 2)


def test_the_batch_rule_is_trls_global_one():
    # why: groups are formed over the global generation batch (per device × processes × steps_per_generation);
    # a copy of the rule over per-device × accumulation refused this valid setup
    settings = settings_of("--batch-size", "4", "--steps-per-generation", "3", "--num-generations", "6")
    assert settings.generation_batch_size == 12


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--max-step", "5"], "unrecognized arguments: --max-step 5 (did you mean --max-steps?)"),
        (["train", "--lerning-rate", "1e-5"], "did you mean --learning-rate?"),
        (["train", "--save-total-limit", "many"], "--save-total-limit: invalid int value: 'many'"),
        (["train", "--report-to"], "--report-to: expected one argument"),
        (["train", "--rewards", "xmlcount,xmlcount"], "names xmlcount twice"),
        (["train", "--rewards", "xmlcont"], "Unknown reward 'xmlcont' (did you mean xmlcount?)"),
        (["train", "--lr-scheduler-type", "cosin"], "--lr-scheduler-type: invalid choice: 'cosin'"),
        (["train", "--rollout", "turbo"], "--rollout: invalid choice: 'turbo' (choose from 'auto', 'default', 'fast',"),
        (["train", "--warmup-steps", "-1"], "Settings.warmup_steps (CLI --warmup-steps) must be a finite number"),
        (["train", "--seed", "-1"], "Settings.seed (CLI --seed) must be a whole number in [0, 2**32)"),
        (["train", "--output-dir", "x"], "output_dir is set by the project"),
        (["train", "--save-strategy", "no"], "save_strategy 'no': a run saves every --save-steps steps"),
        (["train", "--loss-type", "vespo", "--reward-weights", "1"], "reward_weights has 1 value(s) for 3 rewards"),
        # why: sampling values transformers checks only when the trainer builds its samplers, after the model loads
        (["train", "--top-p", "5"], "Settings.top_p (CLI --top-p) must be a finite number in (0, 1]"),
        (["train", "--top-p", "0"], "--top-p) must be a finite number in (0, 1], got 0.0"),
        (["train", "--min-p", "2"], "--min-p) must be a finite number in [0, 1]"),
        (["train", "--top-k", "-5"], "--top-k) must be 0 or a positive integer"),
        (["train", "--repetition-penalty", "0"], "--repetition-penalty) must be a finite number in (0, ∞)"),
        (["train", "--generation-kwargs", '{"length_penalty": 2}'], "is invalid: - `length_penalty`: `num_beams`"),
        # why: transformers keeps an unknown key without a word; these three overrode the run's own fields
        (["train", "--generation-kwargs", '{"repetiton_penalty": 1.1}'], "(did you mean repetition_penalty?)"),
        (["train", "--generation-kwargs", '{"max_new_tokens": 5000}'], "run's own: give --max-completion-length"),
        (["train", "--generation-kwargs", '{"num_return_sequences": 3}'], "samples --num-generations completions"),
        (["train", "--generation-kwargs", '{"top_p": 3}'], "--generation-kwargs) top_p must be a finite number"),
        (["train", "--reward-weights", "nan", "1", "1"], "--reward-weights) must be finite numbers"),
        (["train", "--reward-weights", "0", "0", "0"], "--reward-weights) are all 0, so every completion"),
        (["train", "--run-name", "latest"], "'latest' is taken by --resume, where it means the newest run"),
        (["train", "--reward-weights", "1", "inf", "1"], "--reward-weights) must be finite numbers"),
        (["train", "--loss-type", "foo"], "--loss-type) must be one of 'grpo', 'dr_grpo', 'dapo'"),
        (["train", "--generation-batch-size", "0"], "--generation-batch-size) must be a positive integer"),
        (["train", "--steps-per-generation", "0"], "--steps-per-generation) must be a positive integer"),
        (["train", "--delta", "-1"], "--delta) must be a finite number in (1, ∞)"),
        (["train", "--delta", "nan"], "--delta) must be a finite number in (1, ∞)"),
        (["train", "--top-entropy-quantile", "5"], "--top-entropy-quantile) must be a finite number in [0, 1]"),
        (["train", "--dataloader-num-workers", "-1"], "--dataloader-num-workers) must be 0 or a positive integer"),
        # why: the optimizer and the schedule are built at the first step, after the model loaded
        (["train", "--optim", "lomo"], "--optim) 'lomo': You need to install `lomo_optim`"),
        (["train", "--optim-args", "garbage=="], "--optim-args) 'garbage==' cannot be read"),
        (["train", "--lr-scheduler-type", "cosine_with_min_lr"], "One of min_lr or min_lr_rate should be set"),
        (["train", "--lr-scheduler-kwargs", '{"foo": 1}'], "unexpected keyword argument 'foo'"),
        (["train", "--use-liger-kernel", "true"], "needs the liger-kernel package, which is not installed"),
        (["train", "--deepspeed", "ds.json"], "GRPOConfig needs a package that is not installed"),
        (["train", "--report-to", "nosuch"], "--report-to) 'nosuch' is not an integration transformers knows"),
        (["train", "--report-to", "tensorbord"], "(did you mean tensorboard?)"),
        (["train", "--eval-steps", "1", "--best-metric", "answer_accuracy"], "needs an 'answer' column"),
        (["infer", "--max-new-tokens", "0", "hi"], "--max-new-tokens (notebook: MAX_NEW_TOKENS) must be at least 1"),
        (["infer", "--batch-size", "0", "hi"], "--batch-size must be at least 1"),
        (["infer", "--sample", "--temperature", "0", "hi"], "--temperature must be in (0, 10]"),
        (["infer", "--temperature", "-1", "hi"], "--temperature must be in (0, 10]"),  # greedy, but still a mistake
        (["eval", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["eval", "--samples-per-prompt", "2"], "--samples-per-prompt 2 needs --sample"),
        (["eval", "--limit", "0"], "--limit (notebook: EVAL_LIMIT) must be at least 1"),
        (["eval", "--limit", "-1"], "--limit (notebook: EVAL_LIMIT) must be at least 1"),
        # why: argparse keeps the last of a repeated flag; the reward correct_answer was dropped without a word
        (["train", "--rewards", "correct_answer", "--rewards", "xmlcount"], "--rewards is given twice"),
        (["train", "--config", "dapo", "--config", "gspo"], "--config is given twice"),
        (["train", "--dynamic-sampling", "--no-dynamic-sampling"], "given twice (again as --no-dynamic-sampling)"),
        (["infer", "--model", "tiny", "--model-name", "x", "hi"], "--model is given twice (again as --model-name)"),
        (["export", "--dtype", "float16", "--dtype=bfloat16", "a", "b"], "--dtype is given twice"),
    ],
)
def test_a_bad_option_is_one_error_line_before_anything_loads(capsys, argv, expected):
    assert main(argv) == 2
    assert_one_error_line(capsys.readouterr().err, expected)


def test_an_unknown_flag_of_another_command_is_a_usage_error_with_a_suggestion(capsys):
    assert main(["infer", "--batch", "3", "hi"]) == 2
    err = capsys.readouterr().err
    assert "(did you mean --batch-size?)" in err and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("argv, expected", [
    (["train", "--learning-rate", "abc"], "--learning-rate: invalid float value: 'abc'"),
    (["export"], "the following arguments are required"),
    (["nosuch"], "unknown command 'nosuch'"),
    (["trian"], "unknown command 'trian' (did you mean train?)"),
])
def test_argparses_own_complaints_are_one_error_line_naming_the_dashed_flag(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    # why: every mistake gets one `error:` line; argparse's usage block and the `_` alias are noise to a user
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1 and "learning_rate" not in err


def test_a_bad_flag_of_a_command_that_trains_nothing_is_reported_before_torch_or_trl_is_imported():
    code = ("import sys; from sarashina_grpo.cli import main; assert main(['infer', '--temperature', '-1']) == 2; "
            "heavy = {'torch', 'trl', 'peft', 'unsloth', 'transformers.modeling_utils', 'transformers.trainer', "
            "'transformers.models.llama.modeling_llama'} & set(sys.modules); assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    # why: a typo must cost a second or two; HfArgumentParser loads only transformers' lazy root
    assert result.returncode == 0, result.stderr[-2000:]


def test_train_imports_unsloth_before_trl_and_refuses_a_typo_before_any_model_code():
    code = ("import builtins; real, order = builtins.__import__, []\n"
            "def record(name, *args, **kwargs):\n"
            "    top = name.split('.')[0]\n"
            "    if top in ('trl', 'unsloth') and top not in order: order.append(top)\n"
            "    return real(name, *args, **kwargs)\n"
            "builtins.__import__ = record\n"
            "from sarashina_grpo.cli import main; assert main(['train', '--rewards', 'nope']) == 2\n"
            "assert order == ['unsloth', 'trl'], order")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    # why: Unsloth patches TRL as it is imported; a train flag is parsed by TRL's parser, so Unsloth comes first
    assert result.returncode == 0, result.stderr[-2000:]


def test_invalid_settings_fail_before_loading_a_model():
    result = cli("train", "--model", "tiny", "--num-generations", "4", "--batch-size", "6")
    # why: TRL's own rule, in TRL's words: the generation batch holds whole groups
    assert result.returncode == 2 and "must be divisible by num_generations" in result.stderr


@pytest.mark.slow
def test_train_tiny_smoke_run_then_infer_from_its_checkpoint(tmp_path):
    artifact = tmp_path / "artifact"
    train = cli("train", "--model", "tiny", "--max-steps", "2", "--save-steps", "2", "--max-completion-length",
                "32", "--artifact-dir", str(artifact), "--run-name", "smoke", "--system-prompt", "考えてから答えて。")
    assert train.returncode == 0, train.stderr[-3000:]
    checkpoint = artifact / "outputs" / "smoke" / "checkpoint-2"
    assert (checkpoint / "checkpoint_complete").exists()
    infer = cli("infer", "--model", str(checkpoint), "--max-new-tokens", "8", "こんにちは")
    assert infer.returncode == 0 and "### こんにちは" in infer.stdout, infer.stderr[-3000:]
    # why: the checkpoint learned the format under its run's prompt, not the article's
    assert "System prompt: the one run smoke trained under" in infer.stderr


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
    from sarashina_grpo.config import FIELDS, RUN_OWNED

    assert set(recorded) == set(FIELDS) - set(RUN_OWNED)


def test_top_level_help_lists_the_commands_without_rest_markup(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and all(name in out for name in COMMANDS)


@pytest.mark.parametrize("command", ["train", "infer", "eval", "demo"])
def test_every_cpu_command_takes_threads(command):
    assert parse_args([command, "--threads", "2"]).threads == 2


@pytest.mark.parametrize("command", [["train", "--model", "tiny"], ["infer", "--model", "tiny", "hi"],
                                     ["eval", "--model", "tiny"]])
def test_zero_threads_is_one_error_line_before_any_model_loads(command, capsys):
    from sarashina_grpo.cli import main

    assert main([*command, "--threads", "0"]) == 2
    assert "--threads must be a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_prints_rounded_figures_and_no_none(tmp_path, capsys):
    from sarashina_grpo.cli import main

    assert main(["eval", "--model", "tiny", "--limit", "2", "--max-new-tokens", "4", "--artifact-dir",
                 str(tmp_path), "--name", "t"]) == 0
    figures = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    # why: unrounded floats and "None" (nothing judged) made the figures hard to read
    assert figures and all(line.split(": ")[1].replace(".", "").isdigit() for line in figures)
    assert all(len(line.split(".")[-1]) == 3 for line in figures if "." in line.split(": ")[1])


def test_a_key_given_twice_in_a_recipe_is_refused(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 1e-5\nmax_steps: 3\nlearning_rate: 1e-4\n", encoding="utf-8")
    # why: YAML keeps the last of two equal keys silently; the run would not be the one the file seems to say
    assert main(["train", "--config", str(recipe)]) == 2
    assert "key 'learning_rate' is given twice (line 3)" in capsys.readouterr().err


def test_a_missing_prompt_file_is_reported_before_the_model_that_needs_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    # why: the default model (Sarashina 3B) cannot train on a CPU either; the file the user typed is fixed first
    assert main(["train", "--data", "no/such/prompts.csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Settings.data_path (CLI --data): Prompt file not found") and "prompts.csv" in err


def test_an_on_off_flag_never_swallows_the_word_after_it():
    # why: `--sample "…"` read the prompt as --sample's yes/no and failed; a switch works wherever it is placed
    args = parse_args(["infer", "--model", "tiny", "--sample", "週末は何をしよう？"])
    assert args.sample is True and args.prompts == ["週末は何をしよう？"]
    args = parse_args(["export", "--merged", "ckpt", "out"])
    assert (args.merged, args.checkpoint, args.out) == (True, "ckpt", "out")
    assert parse_args(["infer", "--sample", "false", "hi"]).sample is False  # a yes/no after it is still its value


@pytest.mark.parametrize("argv", [["--debug", "infer", "hi"], ["infer", "hi", "--debug"], ["infer", "--debug", "hi"]])
def test_debug_works_before_or_after_the_command(argv):
    args = parse_args(argv)
    assert args.cli_debug is True and args.prompts == ["hi"]


def test_trls_own_debug_option_keeps_its_value():
    args = parse_args(["train", "--debug", "underflow_overflow", "--max-steps", "2"])
    assert args.cli_debug is False and "underflow_overflow" in str(args.debug)


def test_a_missing_value_names_the_flag_as_users_write_it(capsys):
    assert main(["infer", "--model"]) == 2
    assert "error: sarashina-grpo infer: --model: expected one argument" in capsys.readouterr().err


def test_a_recipe_is_found_by_its_name_and_a_misspelt_one_is_named(capsys):
    assert settings_of("--config", "dapo").loss_type == "dapo"
    assert main(["train", "--config", "dpo"]) == 2
    err = capsys.readouterr().err
    assert "Recipe not found" in err and "(did you mean dapo?)" in err and "arithmetic, article, dapo" in err


def test_help_shows_a_percent_sign_once(capsys):
    text = help_of("train", capsys=capsys)
    assert "%%" not in text and "20% slower" in " ".join(text.split())


@pytest.mark.parametrize("command", [["infer", "--model", "tiny", "こんにちは"],
                                     ["warmstart", "--model", "tiny", "--output", "OUT"]])
def test_a_missing_system_prompt_file_is_named_by_its_flag(command, tmp_path, capsys):
    args = [a.replace("OUT", str(tmp_path / "warm")) for a in command]
    assert main([*args, "--system-prompt-file", str(tmp_path / "missing.txt")]) == 2
    # why: infer and warmstart said "system_prompt_file", a name no flag of theirs has
    assert f"error: --system-prompt-file: file not found: {tmp_path / 'missing.txt'}." in capsys.readouterr().err


@pytest.mark.parametrize("command", [["infer", "--model", "tiny", "こんにちは"], ["eval", "--model", "tiny"]])
def test_a_system_prompt_and_a_file_together_are_refused(command, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("短く答えてください。", encoding="utf-8")
    assert main([*command, "--system-prompt", "丁寧に", "--system-prompt-file", str(tmp_path / "p.txt")]) == 2
    # why: the file replaced the prompt given beside it, silently
    assert "error: --system-prompt and --system-prompt-file are both given" in capsys.readouterr().err


def write_run(tmp_path, settings) -> str:
    run = tmp_path / "outputs" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"settings": settings}), encoding="utf-8")
    return str(run / "checkpoint-4")


def test_a_checkpoint_is_prompted_with_the_system_prompt_its_run_trained_under(tmp_path):
    from sarashina_grpo.options import ModelOptions
    from sarashina_grpo.preflight import trained_system_prompt

    checkpoint = write_run(tmp_path, {"system_prompt": "考えてから答えてください。"})
    assert trained_system_prompt(ModelOptions(model_name=checkpoint)).system_prompt == "考えてから答えてください。"
    # why: a prompt or file given explicitly is the user's choice
    given = ModelOptions(model_name=checkpoint, system_prompt="別の指示")
    assert trained_system_prompt(given).system_prompt == "別の指示"
    from_file = ModelOptions(model_name=checkpoint, system_prompt="ファイルの指示", system_prompt_file="p.txt")
    assert trained_system_prompt(from_file).system_prompt == "ファイルの指示"


def test_a_run_trained_from_a_system_prompt_file_is_prompted_and_exported_with_that_files_text(tmp_path):
    from sarashina_grpo.config import article_settings
    from sarashina_grpo.export import model_card
    from sarashina_grpo.options import ModelOptions
    from sarashina_grpo.pipeline import new_run_paths, write_run_info
    from sarashina_grpo.preflight import trained_system_prompt

    (tmp_path / "p.txt").write_text("You are a cat. Think in <think> first.", encoding="utf-8")
    paths = new_run_paths(tmp_path / "artifact", "r1")
    write_run_info(paths, article_settings(model_name="tiny", system_prompt_file=str(tmp_path / "p.txt")))
    checkpoint = paths.output_dir / "checkpoint-4"
    checkpoint.mkdir()
    # why: run.json's settings hold the file's path and the article's prompt; the run trained under the file's text
    assert trained_system_prompt(ModelOptions(model_name=str(checkpoint))).system_prompt == (
        "You are a cat. Think in <think> first.")
    card = model_card(checkpoint, merged=False, base="tiny", dtype="bfloat16")
    assert "SYSTEM_PROMPT = 'You are a cat. Think in <think> first.'" in card


@pytest.mark.parametrize("recorded", ["{not json", json.dumps({"settings": {"system_prompt": 3}}),
                                      json.dumps({"settings": {}}), json.dumps([1])])
def test_a_run_json_without_a_usable_system_prompt_leaves_the_articles(tmp_path, recorded):
    from sarashina_grpo.options import ModelOptions
    from sarashina_grpo.preflight import trained_system_prompt
    from sarashina_grpo.project import SYSTEM_PROMPT

    checkpoint = write_run(tmp_path, {})
    (tmp_path / "outputs" / "r1" / "run.json").write_text(recorded, encoding="utf-8")
    assert trained_system_prompt(ModelOptions(model_name=checkpoint)).system_prompt == SYSTEM_PROMPT


def test_a_system_prompt_that_is_not_text_is_refused():
    from sarashina_grpo.options import ModelOptions
    from sarashina_grpo.preflight import trained_system_prompt
    from sarashina_grpo.project import SettingsError

    with pytest.raises(SettingsError, match="SYSTEM_PROMPT.* must be text, got 5"):
        trained_system_prompt(ModelOptions(model_name="tiny", system_prompt=5))
