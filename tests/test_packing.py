"""Unsloth's sequence packing, trusted for the whole run once its own checks pass (``compat.extend_packing_trust``,
``callbacks.PackingTrust``), and where gradient checkpointing keeps its saved inputs (``Settings.offload_activations``).

Unsloth compares its packed forward with one forward per row on the first batch, and again on every batch longer than
any it compared. The trust it records is extended to the run's largest batch only after its own comparison passed on
a real batch of several rows, only for a model whose RoPE does not depend on the sequence's length and that has no
sliding window, and never where Unsloth found a mismatch. The GPU side, where Unsloth's comparisons are counted, is
tests/gpu/test_gpu_packing.py.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from sarashina_grpo import compat, modeling
from sarashina_grpo.callbacks import PackingTrust
from sarashina_grpo.config import article_settings
from scripts import bench_patches

GRAD, NOGRAD = compat.PACKING_TRUST


def llama(**config):
    """A model as the trust reads it: its config and the verdicts Unsloth leaves on it."""
    return SimpleNamespace(config=SimpleNamespace(**config))


def checked_by_unsloth(model, kinds=compat.PACKING_TRUST, tokens=900, longest=150):
    """The verdicts Unsloth records after a comparison that passed on a batch of several rows."""
    for kind in kinds:
        setattr(model, f"{kind}_ok", True)
        setattr(model, f"{kind}_verified_T", tokens)
        setattr(model, f"{kind}_verified_seg", longest)
    return model


def trusted(model, kind):
    return getattr(model, f"{kind}_verified_T", None), getattr(model, f"{kind}_verified_seg", None)


def test_after_unsloths_checks_pass_the_runs_largest_batch_is_trusted():
    model = checked_by_unsloth(llama(rope_parameters={"rope_type": "default", "rope_theta": 1e4}))
    assert compat.extend_packing_trust(model, tokens=36 * 1536, longest=1536) == [GRAD, NOGRAD]
    assert trusted(model, GRAD) == trusted(model, NOGRAD) == (36 * 1536, 1536)


def test_the_prefix_groupings_layouts_that_passed_are_trusted_for_the_same_batch():
    # Unsloth's prefix grouping (one shared prompt per group) keeps its own trust per group layout
    model = llama()
    model._unsloth_prefix_grouper_grad_verified = {(6, (6,) * 6): (2_000, 400), (5, (6,) * 5): (90_000, 2_000)}
    compat.extend_packing_trust(model, tokens=36 * 1536, longest=1536)
    assert model._unsloth_prefix_grouper_grad_verified == {(6, (6,) * 6): (36 * 1536, 1536),
                                                           (5, (6,) * 5): (90_000, 2_000)}
    assert not hasattr(model, "_unsloth_prefix_grouper_nograd_verified")  # nothing passed: nothing trusted


def test_trust_is_never_narrowed():
    model = checked_by_unsloth(llama(), tokens=10_000, longest=2_000)
    compat.extend_packing_trust(model, tokens=500, longest=100)
    assert trusted(model, GRAD) == (10_000, 2_000)


@pytest.mark.parametrize("verdict", ["not compared yet", "one row only", "mismatch", "unsafe lengths"])
def test_nothing_is_trusted_that_unsloth_has_not_passed(verdict):
    model = llama()
    if verdict == "one row only":  # Unsloth sets _ok but widens nothing after a one-row pass: it proves no mixing
        model._unsloth_seq_packing_grad_ok = True
    elif verdict == "mismatch":
        checked_by_unsloth(model)._unsloth_seq_packing_grad_ok = False
    elif verdict == "unsafe lengths":  # a moderate mismatch or an out-of-memory at some packed length
        checked_by_unsloth(model)._unsloth_seq_packing_grad_unsafe_T = 800
    before = trusted(model, GRAD)
    assert GRAD not in compat.extend_packing_trust(model, tokens=10**5, longest=10**4)
    assert trusted(model, GRAD) == before


@pytest.mark.parametrize("config", [dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
                                    dict(rope_parameters={"rope_type": "longrope"}),
                                    dict(rope_parameters={"rope_type": "yarn"}),
                                    dict(rope_parameters={"full_attention": {"rope_type": "default"},
                                                          "sliding_attention": {"rope_type": "dynamic"}}),
                                    dict(sliding_window=512)])
def test_a_model_whose_attention_depends_on_the_length_keeps_unsloths_rechecks(config):
    # why: Unsloth re-compares longer batches because a length-dependent RoPE (or a window) can compute them
    # differently; only where nothing depends on the length does one passed comparison cover every length
    model = checked_by_unsloth(llama(**config))
    assert compat.length_dependent(model.config)
    assert compat.extend_packing_trust(model, tokens=10**5, longest=10**4) == []
    assert trusted(model, GRAD) == (900, 150)


@pytest.mark.parametrize("config", [{}, dict(rope_scaling=None), dict(rope_scaling={"type": "linear", "factor": 2}),
                                    dict(rope_parameters={"rope_type": "llama3", "factor": 8.0}),
                                    dict(rope_parameters={"full_attention": {"rope_type": "default"},
                                                          "local": {"rope_type": "linear", "factor": 2.0}}),
                                    dict(sliding_window=None), dict(sliding_window=4096, use_sliding_window=False)])
def test_llama_style_positions_do_not_depend_on_the_length(config):
    assert compat.length_dependent(SimpleNamespace(**config)) is None


class Trainer(SimpleNamespace):
    """What ``PackingTrust`` reads of the trainer: the wrapped model and the accelerator that unwraps it."""

    def __init__(self, model):
        super().__init__(model=SimpleNamespace(module=model),
                         accelerator=SimpleNamespace(unwrap_model=lambda wrapped: wrapped.module))


def test_the_callback_extends_each_passed_check_after_its_step_and_says_so_once_the_losss_passed(caplog):
    model = llama()
    callback = PackingTrust(rows=36, longest=1536)
    callback.trainer = Trainer(model)
    state = SimpleNamespace(global_step=1)
    callback.on_step_end(None, state, None)  # Unsloth has compared nothing yet
    assert callback.step is None and trusted(model, GRAD) == (None, None)
    checked_by_unsloth(model, kinds=[NOGRAD])  # the scorer compared; the loss not yet
    state.global_step = 2
    callback.on_step_end(None, state, None)
    assert callback.step is None and trusted(model, NOGRAD) == (36 * 1536, 1536)
    checked_by_unsloth(model, kinds=[GRAD])
    state.global_step = 3
    with caplog.at_level(logging.INFO, logger="sarashina_grpo.callbacks"):
        callback.on_step_end(None, state, None)
        callback.on_step_end(None, SimpleNamespace(global_step=4), None)  # said once
    assert callback.step == 3 and trusted(model, GRAD) == (36 * 1536, 1536)
    assert [r.getMessage() for r in caplog.records if "trusted" in r.getMessage()] == [
        "Unsloth's sequence-packing checks passed at step 3: packed batches of up to 36 rows of 1536 tokens are "
        "trusted for the rest of the run, with no re-check."]


def test_without_scoring_the_losss_passed_check_is_enough_to_say_so():
    # why: with beta 0 and one optimizer step per generation TRL computes no log-probs before the loss, so the
    # scorer never packs and never compares
    model = checked_by_unsloth(llama(), kinds=[GRAD])
    callback = PackingTrust(rows=6, longest=1536)
    callback.trainer = Trainer(model)
    callback.on_step_end(None, SimpleNamespace(global_step=1), None)
    assert callback.step == 1 and trusted(model, GRAD) == (6 * 1536, 1536)


def test_the_trainer_trusts_packing_for_its_generation_batch_of_the_longest_rows(tiny_model_dir, tmp_path,
                                                                                   monkeypatch):
    from sarashina_grpo.pipeline import build_trainer, load_model, prepare

    settings = article_settings(model_name=str(tiny_model_dir), load_in_4bit=False, rollout="default",
                                per_device_train_batch_size=6, gradient_accumulation_steps=2,
                                max_completion_length=16, max_prompt_length=300, max_steps=1, save_steps=1000)
    run = prepare(settings, artifact_dir=tmp_path, run_name="t")
    model, tokenizer = load_model(run)
    trust = build_trainer(run, model, tokenizer, report_to="none").packing_trust
    # the scorer packs a generation batch: 6 rows × 2 optimizer steps, each at most 300 + 16 tokens
    assert (trust.rows, trust.longest) == (12, 316)
    assert build_trainer(run, model, tokenizer, report_to="none", trust_packing=False).packing_trust is None
    monkeypatch.setenv(compat.PACKING_VARIABLE, "0")  # no packing: nothing to trust
    assert build_trainer(run, model, tokenizer, report_to="none").packing_trust is None


def test_the_benchmark_forgets_every_verdict_between_configurations():
    model = checked_by_unsloth(llama())
    model._unsloth_prefix_grouper_grad_verified = {"sig": (10, 5)}
    bench_patches.forget_packing_checks(model)
    assert not [n for n in vars(model) if n.startswith(bench_patches.UNSLOTH_VERDICT_PREFIXES)]


# --- where gradient checkpointing keeps its saved inputs ------------------------------------------------------------

@pytest.mark.parametrize(("given", "mode"), [({}, "unsloth"), ({"offload_activations": False}, True)])
def test_unsloth_offloads_checkpointed_inputs_unless_told_to_keep_them_on_the_gpu(monkeypatch, tiny_model_dir,
                                                                                   given, mode):
    # why the default: on an H100 the update was no faster with them on the GPU (docs/speed.md, 2026-12-06)
    from unsloth import FastLanguageModel

    asked = {}
    real = FastLanguageModel.get_peft_model
    monkeypatch.setattr(FastLanguageModel, "get_peft_model",
                        lambda model, **kw: asked.update(kw) or real(model, **kw))
    modeling.load_model(article_settings(model_name=str(tiny_model_dir), load_in_4bit=False, **given))
    assert asked["use_gradient_checkpointing"] == mode
