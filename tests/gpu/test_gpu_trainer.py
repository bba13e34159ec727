"""The article's path on a GPU: Unsloth's patched GRPOTrainer on the 4-bit Sarashina 3B shape trains with the
article's algorithm, logs the KL term and moves the LoRA weights, with the default rollout and with the fast one."""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_suite.sh)")]

STEPS = 2


@pytest.fixture(scope="module")
def loaded_3b(model_3b_dir, text_hash, tmp_path_factory):
    """The 3B shape loaded once through the pipeline (4-bit: the default on CUDA), for both rollouts."""
    from sarashina_grpo.config import article_settings
    from sarashina_grpo.pipeline import load_model, prepare

    run = prepare(article_settings(model_name=str(model_3b_dir), max_steps=STEPS),
                  artifact_dir=tmp_path_factory.mktemp("load"), run_name="load")
    return load_model(run)


def train_3b(loaded, model_3b_dir, tmp_path, rollout: str, reward: str):
    from peft import get_peft_model_state_dict

    from sarashina_grpo.config import article_settings
    from sarashina_grpo.modeling import lora_fingerprint
    from sarashina_grpo.pipeline import train

    model, tokenizer = loaded
    with torch.no_grad():  # a fresh adapter for each rollout's run: lora_B = 0 means "not trained yet"
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.zero_()
    # lr 1e-4 instead of the article's 5e-6: one step must move the policy far enough for the KL to show
    settings = article_settings(model_name=str(model_3b_dir), max_steps=STEPS, save_steps=1000,
                                max_completion_length=32, learning_rate=1e-4, warmup_steps=0.0, rollout=rollout,
                                log_completions=False,
                                reward_names=["xmlcount", "soft_format", "strict_format", reward])
    trainer = train(settings, artifact_dir=tmp_path, model_and_tokenizer=(model, tokenizer), report_to="none")
    return trainer, lora_fingerprint(get_peft_model_state_dict(trainer.model))


@pytest.fixture(scope="module")
def default_run(loaded_3b, model_3b_dir, text_hash, tmp_path_factory):
    return train_3b(loaded_3b, model_3b_dir, tmp_path_factory.mktemp("default"), "default", text_hash)


@pytest.fixture(scope="module")
def fast_run(default_run, loaded_3b, model_3b_dir, text_hash, tmp_path_factory):
    return train_3b(loaded_3b, model_3b_dir, tmp_path_factory.mktemp("fast"), "fast", text_hash)


def test_the_trainer_is_unsloths_patched_class(default_run):
    import sys
    from pathlib import Path

    from sarashina_grpo.compat import library_class

    trainer, _ = default_run
    source = Path(sys.modules[library_class(trainer).__module__].__file__)
    # why: on CUDA, importing Unsloth swaps trl.GRPOTrainer for its compiled copy; a CPU never runs that class
    assert (library_class(trainer).__name__, source.parent.name) == ("UnslothGRPOTrainer", "unsloth_compiled_cache")


def test_the_base_weights_are_4_bit(default_run):
    trainer, _ = default_run
    kinds = {type(m).__name__ for m in trainer.model.modules()}
    assert "Linear4bit" in kinds  # why: the article's QLoRA default on a CUDA GPU


def test_the_patched_trainer_carries_the_articles_algorithm(default_run):
    trainer, _ = default_run
    args = trainer.args
    epsilon_high = args.epsilon if args.epsilon_high is None else args.epsilon_high  # TRL: None means epsilon
    found = (args.loss_type, args.beta, args.scale_rewards, args.epsilon, epsilon_high, args.bf16,
             trainer.loss_type, trainer.beta, trainer.epsilon_low, trainer.epsilon_high)
    # why: Unsloth's own defaults (dapo, beta 0) must not replace the article's loss grpo, beta 0.04, eps 0.2
    assert found == ("grpo", 0.04, "group", 0.2, 0.2, True, "grpo", 0.04, 0.2, 0.2)


def test_the_kl_term_is_logged_and_grows_after_an_update(default_run):
    trainer, _ = default_run
    kl = [h["kl"] for h in trainer.state.log_history if "kl" in h]
    # why: beta > 0 must compute the KL against the reference; at step 1 policy = reference, after it they differ
    assert len(kl) == STEPS and all(math.isfinite(v) for v in kl) and kl[-1] > 0


def test_a_step_with_varying_rewards_moves_the_lora_weights_default_rollout(default_run):
    trainer, fingerprint = default_run
    assert trainer.state.global_step == STEPS
    assert fingerprint["lora_b_abs_sum"] > 0  # why: lora_B started at zero; only real gradient steps move it


def test_a_step_with_varying_rewards_moves_the_lora_weights_fast_rollout(fast_run):
    trainer, fingerprint = fast_run
    # why: the CUDA-graph engine made every rollout, and its completions trained the adapter
    assert (trainer.fast_rollout.calls, trainer.state.global_step) == (STEPS, STEPS)
    assert fingerprint["lora_b_abs_sum"] > 0


def test_the_fast_rollout_ran_its_cuda_graphs_and_triton_attention(fast_run):
    trainer, _ = fast_run
    engine = trainer.fast_rollout
    # why: on CUDA the engine must replay captured graphs and the split-K kernel, not fall back to eager SDPA
    assert engine._split_k_ok is True and engine.use_cuda_graph is not False
