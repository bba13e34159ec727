"""Settings carry the article's hyper-parameters into TRL's GRPOConfig, and bad values fail before any model loads."""

import logging
from types import SimpleNamespace

import pytest

from sarashina_grpo.callbacks import SampleLogger
from sarashina_grpo.config import LORA_TARGET_MODULES, Settings, SettingsError, build_grpo_config, grpo_config_kwargs


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
        Settings(**changes).validate()


def test_sample_logger_logs_completions_with_their_rewards(caplog):
    logger = SampleLogger(every=1, samples=1)
    logger.trainer = SimpleNamespace(_logs={
        "completion": [[{"role": "assistant", "content": "<think>\nはい\n</think>"}]],
        "rewards": {"strict_format_reward": [0.0], "xmlcount_reward": [0.25]},
    })
    state = SimpleNamespace(global_step=3, is_world_process_zero=True)
    with caplog.at_level(logging.INFO):
        logger.on_log(None, state, None)
    assert "strict_format_reward=0.000, xmlcount_reward=0.250" in caplog.text and "はい" in caplog.text
