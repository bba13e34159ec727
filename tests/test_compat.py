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


def test_settings_declare_no_field_of_trls_a_second_time():
    import dataclasses

    from trl import GRPOConfig

    from sarashina_grpo.config import Settings

    ours = {f.name: f for f in dataclasses.fields(Settings)}
    # why: one schema: TRL's fields keep TRL's defaults and help; the project adds only fields TRL lacks
    for f in dataclasses.fields(GRPOConfig):
        assert ours[f.name].default == f.default and ours[f.name].metadata == f.metadata, f.name


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


# --- the KL reference (compat.choose_reference) -----------------------------------------------------------------


def unsloth_source(relative: str) -> str:
    """A file of the installed Unsloth, read without importing it."""
    return (Path(importlib.util.find_spec("unsloth").origin).parent / relative).read_text(encoding="utf-8")


def toy_lora(**config):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    return get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False)),
                          LoraConfig(r=2, target_modules=["0"], **config))


def toy_trainer(model, beta=0.04):
    import types

    loads = []
    return types.SimpleNamespace(model=model, beta=beta, loads=loads,
                                 accelerator=types.SimpleNamespace(unwrap_model=lambda m: m),
                                 _load_from_checkpoint=lambda path, model=None: loads.append(path))


def set_lora_b(model, adapter: str, value: float) -> None:
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if f"lora_B.{adapter}." in name:
                param.fill_(value)


def test_trl_scores_the_reference_through_ref_or_with_the_adapter_disabled():
    # why: choose_reference drops or adds "ref" because this one line picks the reference from its presence
    assert compat.REFERENCE_CHOICE in trl_grpo_source()


def test_trl_copies_the_policy_adapter_into_ref_by_parameter_name():
    source = trl_grpo_source()
    # why: copy_adapter (used where Unsloth removed this block) must build the same copy TRL builds
    assert f'model.peft_config["{compat.POLICY_ADAPTER}"]' in source
    assert (f'name.replace(".{compat.POLICY_ADAPTER}.", ".{compat.TRL_REFERENCE_ADAPTER}.")' in source
            and "ref_param.data.copy_(param.data)" in source)


def test_trls_use_adapter_without_a_name_is_the_base_model():
    import torch
    from trl.trainer.utils import use_adapter

    model = toy_lora()
    set_lora_b(model, "default", 0.5)
    x = torch.ones(1, 4)
    layers = model.base_model.model
    base = x @ layers[0].base_layer.weight.t() @ layers[1].weight.t()
    with use_adapter(model, adapter_name=None):
        # why: "base" in choose_reference means exactly this: TRL's fallback when there is no "ref" adapter
        assert torch.equal(model(x), base)
    assert not torch.equal(model(x), base)


def test_unsloths_trainer_drops_trls_reference_copy_so_it_scores_the_base_model():
    import re

    rl = unsloth_source("models/rl.py")
    # the pattern Unsloth (models/rl.py, trl >= 1.4.0) deletes from TRL's GRPOTrainer.__init__ source
    pieces = (r"\s*elif is_peft_model\(model\) and args\.beta != 0\.0:", r".*?",
              r"ref_param\.data\.copy_\(param\.data\)")
    assert all(f'r"{piece}"' in rl for piece in pieces) and "PEFT initialization logic removed" in rl
    pattern = "".join(pieces)
    # why: it matches the installed TRL, so on CUDA there is no "ref" adapter unless choose_reference adds one
    assert re.search(pattern, trl_grpo_source(), flags=re.DOTALL)


def test_transformers_resume_reads_only_adapter_subfolders_when_a_checkpoint_has_any():
    from transformers import Trainer

    source = inspect.getsource(getattr(Trainer, compat.TRAINER_LOAD_METHOD))
    subfolders = source.index("if adapter_subdirs:")
    root = source.index("model.load_adapter(resume_from_checkpoint, active_adapter, is_trainable=True)")
    # why: the root (trained) adapter is loaded only in the else branch: resume_loads_the_policy adds it back
    assert subfolders < source.index("else:", subfolders) < root


def test_a_fresh_lora_is_the_identity_and_a_trained_one_is_not():
    model = toy_lora()
    assert compat.adapter_is_identity(model, "default")  # why: PEFT starts lora_B at zero
    set_lora_b(model, "default", 0.1)
    assert not compat.adapter_is_identity(model, "default")
    assert not compat.adapter_is_identity(model, "missing")


@pytest.mark.parametrize("config", [{"use_dora": True}, {"modules_to_save": ["1"]}])
def test_adapters_with_more_than_lora_factors_are_never_called_the_identity(config):
    # why: a zero B does not make DoRA's rescaling or a saved module copy equal to the base model
    assert not compat.adapter_is_identity(toy_lora(**config), "default")


def test_a_reference_copy_of_a_fresh_lora_is_dropped_for_the_base_model():
    model = toy_lora()
    compat.copy_adapter(model, "default", compat.TRL_REFERENCE_ADAPTER)  # what TRL's __init__ does
    trainer = toy_trainer(model)
    assert compat.choose_reference(trainer) == "base"
    assert list(model.peft_config) == ["default"] and model.active_adapters == ["default"]


def test_a_reference_copy_of_a_trained_lora_is_kept_and_resume_loads_the_policy_too(tmp_path):
    model = toy_lora()
    set_lora_b(model, "default", 0.1)
    compat.copy_adapter(model, "default", compat.TRL_REFERENCE_ADAPTER)
    trainer = toy_trainer(model)
    assert compat.choose_reference(trainer) == compat.TRL_REFERENCE_ADAPTER
    assert list(model.peft_config) == ["default", compat.TRL_REFERENCE_ADAPTER]
    trainer._load_from_checkpoint(str(tmp_path))  # no adapter files there: only the original load runs
    assert trainer.loads == [str(tmp_path)]


def test_where_unsloth_removed_the_copy_a_trained_start_gets_one_equal_and_frozen():
    import torch

    model = toy_lora()
    set_lora_b(model, "default", 0.1)
    assert compat.choose_reference(toy_trainer(model)) == compat.TRL_REFERENCE_ADAPTER
    layer = model.base_model.model[0]
    assert torch.equal(layer.lora_B["ref"].weight, layer.lora_B["default"].weight)
    assert torch.equal(layer.lora_A["ref"].weight, layer.lora_A["default"].weight)
    assert not layer.lora_B["ref"].weight.requires_grad and model.active_adapters == ["default"]


def test_where_unsloth_removed_the_copy_a_fresh_start_scores_the_base_model():
    model = toy_lora()
    assert compat.choose_reference(toy_trainer(model)) == "base"
    assert list(model.peft_config) == ["default"]


def test_without_a_kl_term_the_reference_is_left_alone():
    model = toy_lora()
    compat.copy_adapter(model, "default", compat.TRL_REFERENCE_ADAPTER)
    assert compat.choose_reference(toy_trainer(model, beta=0.0)) is None
    assert list(model.peft_config) == ["default", compat.TRL_REFERENCE_ADAPTER]


def trl_method_source(name: str) -> str:
    source = trl_grpo_source()
    start = source.index(f"    def {name}(")
    return source[start:source.index("\n    def ", start + 1)]


def test_trls_rollout_func_is_handed_messages_so_the_fast_rollout_keeps_its_hook():
    generate = trl_method_source("_generate")
    handed = generate.index("output = self.rollout_func(prompts, self)")
    tokenized = generate.index("prompt_ids, images, multimodal_fields = self._tokenize_prompts(prompts)")
    # why: rollout_func gets the prompts before TRL tokenizes them (docs/speed.md); when this fails, TRL may hand it
    # token ids, and the fast rollout can move onto the public hook
    assert handed < generate.index("else:", handed) < tokenized
    assert 'required_keys = {"prompt_ids", "completion_ids", "logprobs"}' in generate


def test_unsloth_keeps_its_packing_trust_in_the_attributes_packing_trust_extends():
    import re

    zoo = (Path(importlib.util.find_spec("unsloth_zoo").origin).parent / "rl_replacements.py").read_text("utf-8")
    scorer = unsloth_source("models/rl_replacements.py")
    sources = {"_unsloth_seq_packing_grad": zoo, "_unsloth_seq_packing_nograd": scorer}
    assert set(sources) == set(compat.PACKING_TRUST)
    for prefix, source in sources.items():
        # why: the loss (grad) and the scorer (no grad) each skip their per-row comparison only when the packed
        # length and the longest row lie within these, only while "_ok" is True, and never past "_unsafe_T"
        for suffix in ("_ok", "_verified_T", "_verified_seg", "_unsafe_T"):
            assert re.search(rf"getattr\(\s*unwrapped_model,\s*\"{prefix}{suffix}\"", source), prefix + suffix
    # why the trust may be extended: each re-compares only a batch longer than the one compared (packed length,
    # longest row), for the reason it gives, a length-dependent RoPE (compat.length_dependent)
    assert "_pack_T <= _pack_vT and _pack_maxseg <= _pack_vS" in zoo
    assert "_pk_T <= _pk_vT and _pk_maxseg <= _pk_vS" in scorer
    assert "a LongRoPE cache switch can change the result" in zoo
    # and a pass on a single row widens nothing: the trust extended is always one a multi-row batch earned
    assert "if _pack_active >= 2:" in zoo
    assert f'"{compat.PACKING_VARIABLE}", "1"' in zoo
    # its prefix grouping keeps {layout: (packed tokens, longest row)} per kind and skips its own comparison within it
    for name, source in zip(compat.PREFIX_GROUPER_TRUST, (zoo, scorer), strict=True):
        assert f"unwrapped_model.{name} = _pg_v" in source
        assert "_pg_v[_pg_layout.signature] = (" in source and "max(_pg_vT, _pg_old[0])" in source
    assert "_pg_T <= _pg_env[0] and _pg_maxseg <= _pg_env[1]" in zoo
    assert re.search(r"_pg_T <= _pg_env\[0\]\s+and _pg_maxseg <= _pg_env\[1\]", scorer)


def test_unsloth_offloads_checkpointed_inputs_only_in_its_own_mode():
    # why modeling.offload_activations picks between "unsloth" and True: "unsloth" installs the offloading
    # checkpoint function, True puts torch's back (the saved inputs stay on the GPU)
    source = unsloth_source("models/_utils.py")
    body = source[source.index("def apply_unsloth_gradient_checkpointing("):]
    body = body[:body.index("\ndef ")]
    assert 'patch_unsloth_smart_gradient_checkpointing(dtype = dtype)' in body
    assert ("elif use_gradient_checkpointing in (True, False):\n        unpatch_unsloth_smart_gradient_checkpointing()"
            in body)


def test_trl_keeps_the_completion_table_columns_we_read():
    import re

    # why: completions.CompletionLog reads the latest batch from GRPOTrainer._logs, which TRL fills in
    # _generate_and_score_completions and otherwise sends only to W&B/trackio
    init = re.search(r"self\._logs = \{(.*?)\n        \}", trl_grpo_source(), re.DOTALL).group(1)
    assert all(f'"{key}"' in init for key in compat.COMPLETION_LOG_KEYS)


def test_completion_rows_pairs_each_completion_with_its_rewards():
    trainer = type("T", (), {"_logs": {"prompt": ["p1", "p2"], "completion": ["c1", "c2"],
                                       "rewards": {"r": [0.5, 0.0]}, "advantages": [1.0, -1.0]}})()
    assert compat.completion_rows(trainer)[1] == {"prompt": "p2", "completion": "c2", "rewards": {"r": 0.0},
                                                  "advantage": -1.0}


def test_a_changed_completion_log_is_reported_not_ignored():
    with pytest.raises(compat.CompatError, match="_logs"):
        compat.completion_rows(type("T", (), {"_logs": {"prompt": []}})())


def test_trl_averages_the_training_figures_we_add_to():
    # why: dynamic sampling's counts reach TensorBoard only through GRPOTrainer._metrics["train"]
    assert 'self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}' in trl_grpo_source()


def test_a_missing_scoring_step_is_reported_not_ignored():
    with pytest.raises(compat.CompatError, match=compat.SCORE_METHOD):
        compat.replace_scoring_step(object(), lambda inputs: inputs)


def test_the_loss_types_accepted_before_loading_are_the_ones_trl_documents():
    import re

    from trl import GRPOConfig

    from sarashina_grpo.project import LOSS_TYPES

    help_text = GRPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    documented = re.search(r"Supported values are (.*?)\.", help_text)
    # why: a loss TRL adds would be refused, one it drops would fail only at the first step, after loading
    assert documented and set(re.findall(r"'(\w+)'", documented[1])) == set(LOSS_TYPES)
