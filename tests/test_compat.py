"""Contract tests for the library internals ``sarashina_grpo.compat`` relies on.

Each test pins one private or version-specific name of the locked TRL / Unsloth / PEFT / bitsandbytes
(``uv.lock``). When an upgrade renames or reshapes one of them, the test here fails in CI, instead of a training
run failing (or, worse, silently doing something else) on a GPU.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest

from sarashina_grpo import compat


def trl_grpo_source() -> str:
    """The text of TRL's own grpo_trainer.py: once Unsloth is imported, ``trl.GRPOTrainer`` is its patched copy."""
    return Path(importlib.util.find_spec("trl.trainer.grpo_trainer").origin).read_text(encoding="utf-8")


def test_trl_grpo_trainer_has_the_rollout_hook_we_replace():
    from trl import GRPOTrainer

    compat.check_generate_hook(GRPOTrainer)  # why: rollout="fast" swaps exactly this method per instance


def test_grpo_trainer_has_the_scoring_step_the_benchmark_times():
    from trl import GRPOTrainer

    assert callable(getattr(GRPOTrainer, compat.SCORE_METHOD, None))


def test_a_changed_rollout_hook_is_reported_not_ignored():
    class Moved:
        def _generate_single_turn(self, prompts, num_generations):
            pass

    # why: a silently different signature would make the fast rollout feed TRL the wrong thing
    with pytest.raises(compat.CompatError, match="not the locked one"):
        compat.check_generate_hook(Moved)


def test_a_missing_rollout_hook_is_reported_not_ignored():
    with pytest.raises(compat.CompatError, match="is gone"):
        compat.check_generate_hook(type("Gone", (), {}))


def test_trl_exports_unwrap_model_for_generation_with_the_arguments_we_pass():
    import importlib

    module = importlib.import_module(compat.TRL_UNWRAP_MODULE)
    params = inspect.signature(module.unwrap_model_for_generation).parameters
    assert {"model", "accelerator", "gather_deepspeed3_params"} <= set(params)


def test_generation_context_fails_loudly_when_the_lookup_fails(monkeypatch):
    import sys
    import types

    trainer = type("T", (), {"__module__": "no.such.module"})()
    monkeypatch.setitem(sys.modules, compat.TRL_UNWRAP_MODULE, types.ModuleType("moved"))
    # why: falling back to a no-op context would generate in training mode without anyone noticing
    with pytest.raises(compat.CompatError, match="unwrap_model_for_generation"):
        compat.generation_context(trainer)


def test_grpo_config_has_every_algorithm_field_we_set():
    from trl import GRPOConfig

    from sarashina_grpo.config import Settings, grpo_config_kwargs

    fields = set(GRPOConfig.__dataclass_fields__)
    # why: an argument TRL dropped would raise in GRPOConfig(...); one it renamed would be lost silently
    assert set(grpo_config_kwargs(Settings(), "out")) - {"output_dir"} <= fields


def test_grpo_fields_read_from_the_source_are_the_imported_classes():
    import dataclasses

    from transformers.trainer_utils import SchedulerType
    from trl import GRPOConfig

    from sarashina_grpo.grpo_fields import grpo_fields, loss_types, scheduler_names

    # why: flags and recipe keys are checked against this reading before TRL is imported; it must be TRL's truth
    assert set(grpo_fields()) == {f.name for f in dataclasses.fields(GRPOConfig) if not f.name.startswith("_")}
    assert scheduler_names() == tuple(s.value for s in SchedulerType)
    assert {"grpo", "dapo", "dr_grpo", "vespo"} <= set(loss_types())


def test_grpo_trainer_reads_the_algorithm_attributes_our_test_checks():
    source = trl_grpo_source()
    for attribute in ("self.loss_type", "self.beta", "self.scale_rewards", "self.epsilon_low", "self.epsilon_high",
                      "self.mask_truncated_completions", "self.importance_sampling_level"):
        assert attribute in source, attribute


def test_unsloth_rotary_embedding_recomputes_its_frequencies():
    import unsloth  # noqa: F401
    from unsloth.models import llama

    assert callable(getattr(llama.LlamaRotaryEmbedding, compat.UNSLOTH_ROPE_METHOD, None))


def test_rotary_frequencies_without_unsloth_come_from_the_buffer():
    import torch

    rotary = type("Rotary", (), {"inv_freq": torch.ones(4)})()
    assert torch.equal(compat.rotary_inv_freq(rotary), torch.ones(4))
    with pytest.raises(compat.CompatError):
        compat.rotary_inv_freq(object())


def test_bitsandbytes_dequantizes_4bit_weights_by_quant_state():
    import bitsandbytes.functional as bnbf

    params = inspect.signature(bnbf.dequantize_4bit).parameters
    assert list(params)[:2] == ["A", "quant_state"]


def test_peft_lora_layers_expose_what_the_fast_rollout_reads():
    import torch
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False)),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["0"]))
    layer = model.base_model.model[0]
    (a, b, scaling, dora), = compat.lora_pairs(layer)
    assert (tuple(a.shape), tuple(b.shape), scaling, dora) == ((2, 4), (4, 2), 2.0, False)
    with model.disable_adapter():
        assert compat.lora_pairs(layer) == []  # why: disabled adapters must not be decoded


def test_trl_adds_its_reference_adapter_under_the_name_we_drop():
    # why: with beta > 0 TRL copies the adapter into "ref"; a second trainer on the same model fails unless dropped
    assert f'add_adapter("{compat.TRL_REFERENCE_ADAPTER}"' in trl_grpo_source()


def test_dropping_the_reference_adapter_leaves_the_policy():
    import torch
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False)),
                           LoraConfig(r=2, target_modules=["0"]))
    model.add_adapter(compat.TRL_REFERENCE_ADAPTER, LoraConfig(r=2, target_modules=["0"]))
    compat.drop_reference_adapter(model)
    compat.drop_reference_adapter(model)  # a model without one: nothing happens
    assert list(model.peft_config) == ["default"]
