"""The run's settings are TRL's GRPOConfig, extended: the article's values come from its recipe, every value is
read in its field's type and checked whichever road it came by, and bad values fail before any model loads."""

import dataclasses
import json
import re

import pytest

from sarashina_grpo.config import (
    FIELDS,
    article_settings,
    legacy_settings,
    load_recipe,
    load_settings,
)
from sarashina_grpo.data import DataError
from sarashina_grpo.preflight import check_prompt_file
from sarashina_grpo.project import HOME_VARIABLE, LORA_TARGET_MODULES, SettingsError


def test_defaults_are_the_articles():
    s = article_settings()
    assert (s.lora_rank, s.learning_rate, s.adam_beta1, s.adam_beta2, s.weight_decay, s.warmup_steps) == (
        32, 5e-6, 0.9, 0.99, 0.1, 0.1,
    )
    assert (s.num_generations, s.per_device_train_batch_size, s.max_prompt_length, s.max_completion_length) == (
        6, 6, 1024, 512,
    )
    assert (s.max_steps, s.save_steps, s.max_grad_norm, s.max_seq_length) == (500, 250, 0.1, 4096)
    assert s.asked()["optim"] == "paged_adamw_8bit"
    assert set(LORA_TARGET_MODULES) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_the_settings_are_the_grpo_config_trl_receives():
    from sarashina_grpo import config

    s = article_settings()
    # why: one schema: TRL's own class, extended; the trainer gets this object (or Unsloth's copy of it) as `args`
    assert isinstance(s, config.GRPOConfig) and config.GRPOConfig.__module__ == "trl.trainer.grpo_config"
    assert (s.learning_rate, s.adam_beta1, s.adam_beta2, s.weight_decay) == (5e-6, 0.9, 0.99, 0.1)
    assert (s.warmup_steps, str(s.lr_scheduler_type), s.max_grad_norm) == (0.1, "SchedulerType.COSINE", 0.1)


def test_under_unsloths_config_class_the_trainer_gets_one_built_by_its_own_init(monkeypatch):
    import dataclasses

    import trl

    from sarashina_grpo import config

    @dataclasses.dataclass
    class PatchedConfig(config.GRPOConfig):  # what Unsloth puts in trl's place as it loads a model
        unsloth_num_chunks: int = -1

    settings = article_settings(max_steps=7, steps_per_generation=2)
    monkeypatch.setattr(trl, "GRPOConfig", config.GRPOConfig)  # as before Unsloth loaded a model in this process
    assert settings.for_trainer() is settings  # why: under TRL alone the settings are the trainer's args
    monkeypatch.setattr(trl, "GRPOConfig", PatchedConfig)
    args = settings.for_trainer()
    # why: Unsloth's trainer reads its own fields (args.unsloth_num_chunks); a plain GRPOConfig has none
    assert isinstance(args, PatchedConfig) and args.unsloth_num_chunks == -1
    assert (args.max_steps, args.generation_batch_size, args.learning_rate, args.bf16) == (7, 12, 5e-6, False)



def test_unsloths_own_config_fields_are_not_the_projects_schema():
    from sarashina_grpo import config

    @dataclasses.dataclass
    class UnslothGRPOConfig(config.GRPOConfig):  # Unsloth's import on a GPU puts this in TRL's place
        vllm_sampling_params: object = None

    # and gives it the pristine class's module and name, so that pickle finds it (unsloth/models/rl.py)
    UnslothGRPOConfig.__module__, UnslothGRPOConfig.__qualname__ = "trl.trainer.grpo_config", "GRPOConfig"
    UnslothGRPOConfig.__name__ = "GRPOConfig"

    @dataclasses.dataclass
    class Schema(UnslothGRPOConfig):  # the project's fields over it, as Settings is declared
        model_name: str = "m"

    fields = config.schema_fields(Schema)
    # why: run.json records the schema; a process without Unsloth (--backend trl-peft) must read it back
    assert "model_name" in fields and "learning_rate" in fields and "vllm_sampling_params" not in fields
    assert set(config.FIELDS) <= {f.name for f in dataclasses.fields(config.Settings)}
    assert set(article_settings().asked()) == set(config.FIELDS)

def test_plain_adamw_on_a_cpu():
    # why: bitsandbytes' paged optimiser needs CUDA; the recipe's choice stays what was asked
    s = article_settings()
    assert "8bit" not in str(s.optim) and "adamw_torch" in str(s.optim).lower() and s.asked()["optim"] == \
        "paged_adamw_8bit"


def test_the_default_algorithm_is_the_articles_trl_not_the_installed_default():
    s = article_settings()
    found = {k: getattr(s, k) for k in ("loss_type", "beta", "scale_rewards", "epsilon", "num_iterations",
                                        "mask_truncated_completions", "importance_sampling_level")}
    # why: TRL 0.14 (Jan 2025): per-completion mean loss, KL beta 0.04, group std scaling, one pass, token ratios;
    # every value is in the default recipe so Unsloth's or TRL's "dapo, beta 0" default never applies silently
    assert found == dict(loss_type="grpo", beta=0.04, scale_rewards="group", epsilon=0.2, num_iterations=1,
                         mask_truncated_completions=False, importance_sampling_level="token")


def test_a_bare_settings_object_has_trls_defaults_and_the_recipe_the_articles():
    from sarashina_grpo.config import Settings

    # why: the article's values live in configs/recipes/article.yaml alone, not as a second set of defaults
    assert Settings(use_cpu=True, max_steps=1).loss_type == "dapo" and article_settings().loss_type == "grpo"


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(per_device_train_batch_size=4), "divisible by num_generations"),  # TRL's: whole groups per batch
        (dict(num_generations=1, per_device_train_batch_size=1), "at least 2"),  # no group, no advantage
        (dict(max_steps=0), "max_steps"),
        (dict(max_completion_length=4000), "exceeds max_seq_length"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(reward_names=[]), "reward_names"),
        (dict(save_strategy="no"), "save_strategy"),  # nothing would be saved where --resume looks
    ],
)
def test_invalid_settings_name_the_field(changes, field):
    with pytest.raises(SettingsError, match=field):
        article_settings(**changes)


def test_settings_trl_accepts_on_several_processes_are_accepted():
    # why: TRL forms groups over per-device batch × processes × steps_per_generation; a copy of the rule that
    # looked at the per-device batch alone refused these
    assert article_settings(per_device_train_batch_size=4, steps_per_generation=3).generation_batch_size == 12


def test_a_recipe_is_laid_over_the_articles_and_unknown_keys_fail(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss_type: dapo\nbeta: 0.0\nreward_names: [xmlcount]\n")
    settings = load_settings(recipe=recipe)
    assert (settings.loss_type, settings.beta, settings.reward_names) == ("dapo", 0.0, ["xmlcount"])
    assert settings.learning_rate == 5e-6  # why: what the recipe leaves out stays the article's
    recipe.write_text("learning_rat: 1e-5\n")
    with pytest.raises(SettingsError, match="unknown setting.*learning_rat"):  # why: a typo must not be ignored
        load_settings(recipe=recipe)


def test_a_recipe_that_is_no_file_name_is_one_error_naming_it():
    with pytest.raises(SettingsError) as refused:
        load_settings(recipe=5)  # the notebook's RECIPE = 5; was: a TypeError from pathlib
    assert str(refused.value) == ("The recipe (--config; notebook: RECIPE) must be a YAML file or the name of one in "
                                  "configs/recipes/ (e.g. 'dapo'), got 5 (int); None: the article's run.")


@pytest.mark.parametrize("source", ["recipe", "SETTINGS"])
def test_rollout_auto_is_accepted_from_a_recipe_and_the_notebooks_settings(tmp_path, source):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rollout: auto\n")
    settings = load_settings(recipe=recipe) if source == "recipe" else load_settings({"rollout": "auto"},
                                                                                     source="SETTINGS")
    assert settings.rollout == "auto"  # why: the default's own name is a value like any other
    with pytest.raises(SettingsError, match="rollout.*must be one of 'auto', 'default', 'fast'"):
        load_settings({"rollout": "Auto"}, source="SETTINGS")


@pytest.mark.parametrize("name", ["article", "arithmetic", "dapo", "dr_grpo", "gspo", "roleplay"])
def test_every_recipe_is_valid(repo_root, name):
    load_settings(recipe=repo_root / "configs" / "recipes" / f"{name}.yaml")


def test_system_prompt_can_come_from_a_file(tmp_path):
    (tmp_path / "p.txt").write_text("短く答えてください。\n", encoding="utf-8")
    assert article_settings(system_prompt_file=str(tmp_path / "p.txt")).system_prompt == "短く答えてください。"


def test_a_system_prompt_and_a_file_from_one_source_are_refused(tmp_path):
    (tmp_path / "p.txt").write_text("短く答えてください。", encoding="utf-8")
    # why: the file replaced the prompt given beside it, silently
    with pytest.raises(SettingsError, match="system_prompt and system_prompt_file are both given"):
        article_settings(system_prompt="丁寧に答えてください。", system_prompt_file=str(tmp_path / "p.txt"))


def test_a_later_system_prompt_beats_an_earlier_file(tmp_path):
    (tmp_path / "p.txt").write_text("短く答えてください。", encoding="utf-8")
    (tmp_path / "r.yaml").write_text(f"system_prompt_file: {tmp_path / 'p.txt'}\n", encoding="utf-8")
    # why: a flag beat a recipe everywhere but here, where the recipe's file won
    settings = load_settings({"system_prompt": "丁寧に答えてください。"}, recipe=tmp_path / "r.yaml")
    assert (settings.system_prompt, settings.system_prompt_file) == ("丁寧に答えてください。", None)
    assert load_settings({}, recipe=tmp_path / "r.yaml").system_prompt == "短く答えてください。"


def test_missing_system_prompt_file_is_one_clear_error(tmp_path):
    with pytest.raises(SettingsError, match=r"--system-prompt-file\): file not found"):
        article_settings(system_prompt_file=str(tmp_path / "nope.txt"))


@pytest.mark.slow
def test_the_trainer_runs_with_our_algorithm_after_unsloths_patching(tiny_model_dir, tmp_path):
    from sarashina_grpo.pipeline import train

    settings = article_settings(model_name=str(tiny_model_dir), load_in_4bit=False, max_steps=1, save_steps=10,
                                max_completion_length=8, num_generations=2, per_device_train_batch_size=2,
                                scale_rewards="batch", epsilon=0.3, epsilon_high=0.35, mask_truncated_completions=True)
    trainer = train(settings, artifact_dir=tmp_path)
    found = (trainer.loss_type, trainer.beta, trainer.scale_rewards, trainer.epsilon_low, trainer.epsilon_high,
             trainer.mask_truncated_completions, trainer.importance_sampling_level)
    # why: Unsloth rewrites GRPOConfig's defaults when it patches TRL; the values we pass must survive it
    assert found == ("grpo", 0.04, "batch", 0.3, 0.35, True, "token")
    # why: with beta > 0 the KL to the reference model is computed and logged (TensorBoard: train/kl)
    assert any("kl" in entry for entry in trainer.state.log_history)


# --- every source of settings is read in the fields' types, by the same code --------------------------------------


def recipe_of(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("learning_rate: 5e-6\n", "learning_rate", 5e-6),  # YAML 1.1 would leave it a string
        ("warmup_steps: 1e-1\n", "warmup_steps", 0.1),
        ("max_steps: 1e3\n", "max_steps", 1000),  # a whole number written as a float
        ("lora_target_modules: q_proj, o_proj\n", "lora_target_modules", ["q_proj", "o_proj"]),  # one string
        ("reward_names: [xmlcount]\n", "reward_names", ["xmlcount"]),
        ("lora_alpha: null\n", "lora_alpha", None),  # optional fields take null
        ("report_to: [wandb]\n", "report_to", ["wandb"]),  # TRL's fields are recipe keys under their own names
        ("reward_weights: [1, 2, 1]\nreward_names: [xmlcount, soft_format, strict_format]\n", "reward_weights",
         [1.0, 2.0, 1.0]),
    ],
)
def test_recipe_values_are_read_in_the_fields_types(tmp_path, text, field, expected):
    assert getattr(load_settings(recipe=recipe_of(tmp_path, text)), field) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("reward_names: 3\n", "Settings.reward_names (CLI --rewards) must be a list"),
        ("system_prompt: 7\n", "Settings.system_prompt (CLI --system-prompt) must be text, got 7 (int)"),
        ("data_path: null\n", "Settings.data_path (CLI --data) must be text, got None (null)"),
        ("learning_rate: fast\n", "Settings.learning_rate (CLI --learning-rate) must be a number, got 'fast'"),
        ("max_steps: 2.5\n", "Settings.max_steps (CLI --max-steps) must be an integer, got 2.5"),
        ("log_completions: 1\n", "must be true or false, got 1"),
        ("learning_rat: 1e-5\n", "unknown setting 'learning_rat' (did you mean learning_rate?)"),
        ("save_total_limit: many\n", "Settings.save_total_limit (CLI --save-total-limit) must be an integer"),
        ("beta: -5\n", "Settings.beta (CLI --beta) must be a finite number in [0, ∞)"),  # any road, one check
        ("output_dir: elsewhere\n", "output_dir is set by the project"),
        ("resume_from_checkpoint: x\n", "continue a run with --resume"),
        ("- a\n- b\n", "a recipe is a mapping"),
        ("max_steps: 3\nmax_steps: 4\n", "key 'max_steps' is given twice (line 2)"),
        ("lora_rank: 100000000\n", "Settings.lora_rank (CLI --lora-rank) must be at most 4,096"),
        ("a: &x [1, 2]\nmodel_init_kwargs: {k: *x}\n", "aliases (*name) are not read in recipes"),  # no alias bombs
    ],
)
def test_a_recipe_value_of_the_wrong_type_is_one_error_naming_the_field(tmp_path, text, expected):
    with pytest.raises(SettingsError) as info:
        load_settings(recipe=recipe_of(tmp_path, text))
    assert expected in str(info.value)


@pytest.mark.parametrize("source", ["recipe", "values"])
def test_a_value_is_checked_the_same_whichever_road_it_takes(tmp_path, source):
    kwargs = {"recipe": recipe_of(tmp_path, "learning_rate: 1000\n")} if source == "recipe" else {
        "values": {"learning_rate": 1000}}
    # why: a learning rate given in a recipe once skipped the range check that the flag got
    with pytest.raises(SettingsError, match=r"learning_rate \(CLI --learning-rate\) must be a finite number"):
        load_settings(**kwargs)


def test_a_binary_file_or_a_folder_as_recipe_is_one_clear_error(tmp_path):
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(SettingsError, match="is not UTF-8 text"):
        load_recipe(binary)
    with pytest.raises(SettingsError, match="is a folder"):
        load_recipe(tmp_path)


def test_the_settings_asked_for_rebuild_the_same_settings():
    settings = article_settings(max_steps=7, report_to=["none"], reward_weights=[1, 1, 2])
    # why: run.json records what was asked; a resume rebuilds from it (TRL derives some fields in __post_init__)
    assert load_settings(base=json.loads(json.dumps(settings.asked()))) == settings
    assert settings.replace(max_steps=8).max_steps == 8


def test_an_old_run_json_still_loads():
    # why: run.json of earlier versions carried TRL's further fields in extra_grpo_args and the project's names
    old = {"max_steps": 7, "warmup_ratio": 0.2, "gpu_memory_utilization": 0.5, "held_out_eval_steps": 0,
           "extra_grpo_args": {"save_total_limit": 2}, "reward_names": ["xmlcount"]}
    settings = load_settings(base={**article_settings().asked(), **legacy_settings(old)})
    assert (settings.max_steps, settings.warmup_steps, settings.vllm_gpu_memory_utilization, settings.eval_steps,
            settings.save_total_limit) == (7, 0.2, 0.5, None, 2)


def test_every_field_is_recorded():
    assert set(article_settings().asked()) == set(FIELDS) == {f.name for f in dataclasses.fields(article_settings())}


def test_a_system_prompt_file_over_the_limit_is_refused(tmp_path):
    (tmp_path / "p.txt").write_text("あ" * 20_001, encoding="utf-8")
    with pytest.raises(SettingsError, match="limited to 20,000"):
        article_settings(system_prompt_file=str(tmp_path / "p.txt"))


def test_a_recipe_given_as_a_pipe_is_read_once_and_kept_for_every_reader():
    import os

    from sarashina_grpo.project import load_recipe

    read, write = os.pipe()
    os.write(write, b"model_name: tiny\nmax_steps: 3\n")
    os.close(write)
    try:
        path = f"/dev/fd/{read}"
        # why: `--config <(…)` is read for the backend, then for the settings; the pipe's second read was empty and
        # every value of the recipe was dropped without a word
        assert load_recipe(path) == load_recipe(path) == {"model_name": "tiny", "max_steps": 3}
    finally:
        os.close(read)


def test_a_bad_value_in_a_recipe_names_the_recipe(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("max_steps: five\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"mine\.yaml: Settings\.max_steps \(CLI --max-steps\) must be an int"):
        load_settings(recipe=recipe)


# --- prompt file paths: an error names the setting, and the recipe that set it -------------------------------


@pytest.mark.parametrize(("values", "label"), [
    ({"data_path": ""}, "Settings.data_path (CLI --data)"),
    ({"data_path": "  "}, "Settings.data_path (CLI --data)"),
    ({"eval_data": "", "eval_steps": 1}, "Settings.eval_data (CLI --eval-data)"),
])
def test_an_empty_prompt_file_path_is_refused_as_empty(values, label):
    # why: '' was read as the project folder: "error: . is a folder", naming neither --data nor --eval-data
    with pytest.raises(SettingsError, match=rf"^{re.escape(label)} is empty: give the path of a prompt file"):
        load_settings(values)


def test_an_empty_eval_data_is_left_alone_without_held_out_evaluation():
    assert load_settings({"eval_data": ""}).eval_data == ""  # never read without --eval-steps


def test_an_empty_prompt_file_path_in_a_recipe_names_the_recipe(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("data_path: ''\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=rf"^{re.escape(str(recipe))}: Settings\.data_path \(CLI --data\) is empty"):
        load_settings(recipe=recipe)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with a datasets/ folder (so that data.py's own hint for a run outside one stays silent)."""
    (tmp_path / "datasets").mkdir()
    monkeypatch.setenv(HOME_VARIABLE, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_missing_eval_file_from_a_recipe_names_the_setting_the_recipe_and_the_project_folder(project):
    recipe = project / "mine.yaml"
    recipe.write_text("eval_steps: 1\neval_data: missing_eval.csv\n", encoding="utf-8")
    settings = load_settings(recipe=recipe).replace(max_steps=3)  # a resume rebuilds the settings so
    with pytest.raises(DataError) as info:
        check_prompt_file(settings, "eval_data")
    assert str(info.value).startswith(f"Settings.eval_data (CLI --eval-data), set in {recipe}: Prompt file not found: "
                                      f"{project / 'missing_eval.csv'}.")
    assert f"A relative path is read from the project folder, here {project}" in str(info.value)


def test_a_prompt_file_given_as_a_value_is_not_blamed_on_the_recipe(project):
    recipe = project / "mine.yaml"
    recipe.write_text("data_path: datasets/other.csv\n", encoding="utf-8")
    settings = load_settings({"data_path": str(project / "gone.csv")}, recipe=recipe)
    with pytest.raises(DataError) as info:
        check_prompt_file(settings, "data_path")
    assert str(info.value).startswith(f"Settings.data_path (CLI --data): Prompt file not found: {project}/gone.csv.")
    assert "relative path" not in str(info.value)  # an absolute one


def test_the_default_prompt_file_names_the_default_recipe(project):
    with pytest.raises(DataError, match=r"^Settings\.data_path \(CLI --data\), set in the default recipe .*article"
                       r"\.yaml: Prompt file not found"):
        check_prompt_file(load_settings(), "data_path")


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("beta: 0.1\nmax_steps: [1,\n", encoding="utf-8")
    with pytest.raises(SettingsError) as error:
        load_settings(recipe=recipe)
    assert "\n" not in str(error.value) and "broken.yaml: not valid YAML at line " in str(error.value)


def test_trls_refusal_of_a_field_the_user_never_set_says_which_flags_to_change():
    with pytest.raises(SettingsError) as error:
        load_settings({"num_generations": 4, "per_device_train_batch_size": 6})
    message = str(error.value)
    assert "must be divisible by num_generations (4)" in message
    assert "make --batch-size (or that product) a multiple of --num-generations" in message


@pytest.mark.parametrize("text", ["", "# lr: 1e-5\n# beta: 0.0\n"])
def test_a_recipe_that_sets_nothing_is_warned_about(tmp_path, caplog, text):
    from sarashina_grpo.project import load_recipe

    (recipe := tmp_path / "mine.yaml").write_text(text, encoding="utf-8")
    assert load_recipe(recipe) == {}
    # why: an empty or all-commented file ran the article's recipe without a word
    assert "mine.yaml sets nothing (empty, or only comments)" in caplog.text


def test_a_path_or_a_numpy_number_in_settings_is_taken_as_its_value():
    from pathlib import Path

    import numpy as np

    # why: a notebook's SETTINGS built with pathlib or from a numpy sweep failed with an AttributeError, or was
    # refused as "must be a positive integer, got np.int64(3)"
    settings = load_settings({"model_name": "tiny", "data_path": Path("datasets/smalltalk.csv"),
                              "max_steps": np.int64(3), "learning_rate": np.float32(1e-5), "bf16": np.bool_(False)})
    assert settings.data_path == "datasets/smalltalk.csv"
    assert type(settings.max_steps) is int and settings.max_steps == 3
    assert settings.learning_rate == pytest.approx(1e-5) and settings.bf16 is False


def test_settings_given_as_text_are_read_as_json_or_refused_in_one_line():
    # why: papermill -p passes SETTINGS as text; the notebook's cell failed with "'str' object is not a mapping"
    assert load_settings('{"model_name": "tiny", "max_steps": 3}', source="SETTINGS").max_steps == 3
    with pytest.raises(SettingsError, match=r"^SETTINGS: settings are a mapping of names to values, got the text"):
        load_settings("model_name=tiny", source="SETTINGS")
    with pytest.raises(SettingsError, match=r"^SETTINGS: settings are a mapping of names to values, got list"):
        load_settings([("model_name", "tiny")], source="SETTINGS")


def test_the_notebooks_held_out_parameters_sit_between_the_recipe_and_settings():
    held_out = ("EVAL_STEPS / EVAL_LIMIT", {"eval_steps": 10, "eval_limit": 4})
    assert load_settings({}, between=held_out).eval_steps == 10
    assert load_settings({"eval_steps": 20}, between=held_out).eval_steps == 20  # SETTINGS wins
