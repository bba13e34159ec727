"""Settings carry the article's hyper-parameters into TRL's GRPOConfig, and bad values fail before any model loads."""

import pytest

from sarashina_grpo.config import Settings, build_grpo_config, grpo_config_kwargs, load_recipe

from sarashina_grpo.project import LORA_TARGET_MODULES, SettingsError
from sarashina_grpo.validation import check_settings


def test_defaults_are_the_articles():
    s = Settings()
    assert (s.lora_rank, s.learning_rate, s.adam_beta1, s.adam_beta2, s.weight_decay, s.warmup_ratio) == (
        32, 5e-6, 0.9, 0.99, 0.1, 0.1,
    )
    assert (s.num_generations, s.per_device_train_batch_size, s.max_prompt_length, s.max_completion_length) == (
        6, 6, 1024, 512,
    )
    assert (s.max_steps, s.save_steps, s.max_grad_norm, s.max_seq_length, s.optim) == (
        500, 250, 0.1, 4096, "paged_adamw_8bit",
    )
    assert set(LORA_TARGET_MODULES) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_grpo_config_carries_the_settings(tmp_path):
    args = build_grpo_config(Settings(), tmp_path, use_cpu=True)
    assert (args.learning_rate, args.adam_beta1, args.adam_beta2, args.weight_decay) == (5e-6, 0.9, 0.99, 0.1)
    assert (args.warmup_steps, str(args.lr_scheduler_type), args.max_grad_norm) == (0.1, "SchedulerType.COSINE", 0.1)
    assert (args.num_generations, args.per_device_train_batch_size, args.max_completion_length) == (6, 6, 512)
    assert (args.max_steps, args.save_steps, args.output_dir) == (500, 250, str(tmp_path))


def test_paged_8bit_adamw_is_asked_for_on_gpu(tmp_path):
    # The kwargs, not the built config: once Unsloth is imported on a machine without CUDA it rewrites the optimiser.
    assert grpo_config_kwargs(Settings(), tmp_path)["optim"] == "paged_adamw_8bit"


def test_plain_adamw_on_cpu(tmp_path):
    assert grpo_config_kwargs(Settings(), tmp_path, use_cpu=True)["optim"] == "adamw_torch"  # bitsandbytes needs CUDA


def test_overrides_win(tmp_path):
    assert build_grpo_config(Settings(), tmp_path, use_cpu=True, max_steps=3).max_steps == 3


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(per_device_train_batch_size=4), "multiple of num_generations"),  # a group must fit in the batch
        (dict(num_generations=1, per_device_train_batch_size=1), "at least 2"),  # no group, no advantage
        (dict(max_steps=0), "max_steps"),
        (dict(max_completion_length=4000), "exceeds max_seq_length"),
        (dict(warmup_ratio=1.5), "warmup_ratio"),
        (dict(reward_names=("xmlcount", "typo")), "Valid rewards"),
        (dict(reward_names=()), "reward_names"),
    ],
)
def test_invalid_settings_name_the_field(changes, field):
    with pytest.raises(SettingsError, match=field):
        check_settings(Settings(**changes))


def test_the_default_algorithm_is_the_articles_trl_not_the_installed_default(tmp_path):
    kwargs = grpo_config_kwargs(Settings(), tmp_path)
    found = {k: kwargs[k] for k in ("loss_type", "beta", "scale_rewards", "epsilon", "epsilon_high", "num_iterations",
                                    "mask_truncated_completions", "importance_sampling_level")}
    # why: TRL 0.14 (Jan 2025): per-completion mean loss, KL beta 0.04, group std scaling, one pass, token ratios;
    # every value is passed explicitly so Unsloth's "dapo, beta 0" default never applies silently
    assert found == dict(loss_type="grpo", beta=0.04, scale_rewards="group", epsilon=0.2, epsilon_high=0.2,
                         num_iterations=1, mask_truncated_completions=False, importance_sampling_level="token")


def test_recipe_values_override_defaults_and_unknown_keys_fail(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss_type: dapo\nbeta: 0.0\nreward_names: [xmlcount]\n")
    settings = Settings.from_dict(load_recipe(recipe))
    assert (settings.loss_type, settings.beta, settings.reward_names) == ("dapo", 0.0, ("xmlcount",))
    recipe.write_text("learning_rat: 1e-5\n")
    with pytest.raises(SettingsError, match="unknown setting.*learning_rat"):  # why: a typo must not be ignored
        load_recipe(recipe)


def test_the_article_recipe_is_the_defaults(repo_root):
    # why: configs/recipes/article.yaml documents the article's run; it must not drift from Settings' defaults
    assert Settings.from_dict(load_recipe(repo_root / "configs" / "recipes" / "article.yaml")) == Settings()


@pytest.mark.parametrize("name", ["article", "dapo", "dr_grpo", "gspo"])
def test_every_recipe_is_valid(repo_root, name):
    check_settings(Settings.from_dict(load_recipe(repo_root / "configs" / "recipes" / f"{name}.yaml")))


def test_system_prompt_can_come_from_a_file(tmp_path):
    (tmp_path / "p.txt").write_text("短く答えてください。\n", encoding="utf-8")
    assert Settings(system_prompt_file=str(tmp_path / "p.txt")).resolved().system_prompt == "短く答えてください。"


def test_missing_system_prompt_file_is_one_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="system_prompt_file: file not found"):
        Settings(system_prompt_file=str(tmp_path / "nope.txt")).resolved()


@pytest.mark.slow
def test_the_trainer_runs_with_our_algorithm_after_unsloths_patching(tiny_model_dir, tmp_path):
    import unsloth  # noqa: F401

    from sarashina_grpo.pipeline import train

    settings = Settings(model_name=str(tiny_model_dir), load_in_4bit=False, max_steps=1, save_steps=10,
                        max_completion_length=8, num_generations=2, per_device_train_batch_size=2,
                        scale_rewards="batch", epsilon=0.3, epsilon_high=0.35, mask_truncated_completions=True)
    trainer = train(settings, artifact_dir=tmp_path)
    found = (trainer.loss_type, trainer.beta, trainer.scale_rewards, trainer.epsilon_low, trainer.epsilon_high,
             trainer.mask_truncated_completions, trainer.importance_sampling_level)
    # why: Unsloth rewrites GRPOConfig's defaults when it patches TRL; the values we pass must survive it
    assert found == ("grpo", 0.04, "batch", 0.3, 0.35, True, "token")
    # why: with beta > 0 the KL to the reference model is computed and logged (TensorBoard: train/kl)
    assert any("kl" in entry for entry in trainer.state.log_history)


# --- every source of settings is read in the fields' types (config.read_settings) --------------------------------


def recipe_of(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("learning_rate: 5e-6\n", "learning_rate", 5e-6),  # YAML 1.1 would leave it a string
        ("warmup_ratio: 1e-1\n", "warmup_ratio", 0.1),
        ("max_steps: 1e3\n", "max_steps", 1000),  # a whole number written as a float
        ("lora_target_modules: q_proj, o_proj\n", "lora_target_modules", ("q_proj", "o_proj")),  # one string
        ("reward_names: [xmlcount]\n", "reward_names", ("xmlcount",)),
        ("lora_alpha: null\n", "lora_alpha", None),  # optional fields take null
    ],
)
def test_recipe_values_are_read_in_the_fields_types(tmp_path, text, field, expected):
    assert getattr(Settings(**load_recipe(recipe_of(tmp_path, text))), field) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("reward_names: 3\n", "Settings.reward_names (CLI --rewards) must be a list of names"),
        ("system_prompt: 7\n", "Settings.system_prompt (CLI --system-prompt) must be text, got 7 (int)"),
        ("data_path: null\n", "Settings.data_path (CLI --data) must be text, got nothing (null)"),
        ("learning_rate: fast\n", "Settings.learning_rate (CLI --learning-rate) must be a number, got 'fast'"),
        ("max_steps: 2.5\n", "Settings.max_steps (CLI --max-steps) must be an integer, got 2.5"),
        ("log_completions: 1\n", "must be true or false, got 1"),
        ("extra_grpo_args: [1, 2]\n", "extra_grpo_args (CLI --extra-grpo-args) must be a mapping"),
        ("learning_rat: 1e-5\n", "unknown setting 'learning_rat' (did you mean learning_rate?)"),
        ("save_total_limit: many\n", "GRPOConfig.save_total_limit takes a number"),
        ("- a\n- b\n", "a recipe is a mapping"),
    ],
)
def test_a_recipe_value_of_the_wrong_type_is_one_error_naming_the_field(tmp_path, text, expected):
    with pytest.raises(SettingsError) as info:
        load_recipe(recipe_of(tmp_path, text))
    assert expected in str(info.value) and str(tmp_path) in str(info.value)


def test_grpo_config_fields_are_recipe_keys(tmp_path):
    values = load_recipe(recipe_of(tmp_path, "report_to: [wandb]\nsave_total_limit: 2\nreward_weights: [1, 2, 1]\n"))
    # why: every GRPOConfig field is reachable without JSON; they travel in extra_grpo_args (and run.json)
    assert values == {"extra_grpo_args": {"report_to": ["wandb"], "save_total_limit": 2, "reward_weights": [1, 2, 1]}}


def test_a_binary_file_or_a_folder_as_recipe_is_one_clear_error(tmp_path):
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(SettingsError, match="is not UTF-8 text"):
        load_recipe(binary)
    with pytest.raises(SettingsError, match="is a folder"):
        load_recipe(tmp_path)


def test_an_old_run_json_still_loads(tmp_path):
    # why: run.json of earlier versions holds every field by name, lists for tuples, and may lack newer fields
    recorded = {**Settings().to_dict(), "max_steps": 7}
    del recorded["rollout"]
    assert Settings.from_dict(recorded) == Settings(max_steps=7)


def test_a_system_prompt_file_over_the_limit_is_refused(tmp_path):
    (tmp_path / "p.txt").write_text("あ" * 20_001, encoding="utf-8")
    with pytest.raises(SettingsError, match="limited to 20,000"):
        Settings(system_prompt_file=str(tmp_path / "p.txt")).resolved()
