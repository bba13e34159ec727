"""The one upfront check of Unsloth's sequence packing (``compat.check_packing_upfront``, ``modeling.check_packing``).

On the CPU the forward is plain transformers, which honours packed rows through their restarting position ids: the
check then finds no gap and records Unsloth's trust for the whole run. A forward that lets rows see each other, cuts
rows of unequal (or of equal) length in the wrong places, or goes wrong only with gradients on, is refused where it
goes wrong and records nothing there, so Unsloth goes on checking those batches itself. The GPU side, where
Unsloth's own checks are counted, is tests/gpu/test_gpu_packing.py.
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest
import torch

from sarashina_grpo import compat, modeling
from sarashina_grpo.data import chat_prompt_tokens
from scripts import bench_patches

GRAD, NOGRAD = compat.PACKING_TRUST


@pytest.fixture
def plain_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


@pytest.fixture
def sharp_model(plain_model):
    """The tiny Llama with its output scaled up: random weights give near-uniform next-token log-probs, on which
    rows mixing into each other would move the log-probs by less than Unsloth's tolerance; a trained model's don't."""
    with torch.no_grad():
        plain_model.get_output_embeddings().weight.mul_(30)
    return plain_model


class Faulty(torch.nn.Module):
    """The model, with a forward that goes wrong on packed rows when ``wrong(lengths)`` says so: it then lets every
    row see the rows before it (an attention backend that ignores where rows end)."""

    def __init__(self, inner, wrong):
        super().__init__()
        self.inner, self.config, self.wrong = inner, inner.config, wrong

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, position_ids, packed_seq_lengths=None, use_cache=False):
        if packed_seq_lengths is not None and self.wrong(packed_seq_lengths.tolist()):
            position_ids = torch.arange(input_ids.shape[1])[None]
        return self.inner(input_ids=input_ids, position_ids=position_ids, use_cache=False)


def trust(model) -> dict:
    return {f"{p}{k}": getattr(model, f"{p}{k}", None) for p in compat.PACKING_TRUST
            for k in ("_ok", "_verified_T", "_verified_seg")}


def check(model, rows=3, longest=20, **kwargs):
    return compat.check_packing_upfront(model, loss_rows=rows, score_rows=kwargs.pop("score_rows", rows),
                                        longest=longest, **kwargs)


def test_packing_that_keeps_rows_apart_is_trusted_for_the_largest_batches(sharp_model):
    gaps = check(sharp_model, rows=3, score_rows=6, longest=20)
    assert max(gaps.values()) < 1e-4
    assert trust(sharp_model) == {f"{GRAD}_ok": True, f"{GRAD}_verified_T": 60, f"{GRAD}_verified_seg": 20,
                                  f"{NOGRAD}_ok": True, f"{NOGRAD}_verified_T": 120, f"{NOGRAD}_verified_seg": 20}


def test_the_check_leaves_no_gradients_behind(sharp_model):
    check(sharp_model)
    assert all(param.grad is None for param in sharp_model.parameters())


def test_rows_that_see_each_other_are_refused_and_nothing_is_trusted(sharp_model):
    model = Faulty(sharp_model, wrong=lambda lengths: True)
    assert min(check(model).values()) > 10 * compat.PACKING_TOLERANCE
    assert set(trust(model).values()) == {None}


@pytest.mark.parametrize("layout", ["unequal", "equal"])
def test_both_batch_layouts_are_checked(sharp_model, layout):
    # why both: Unsloth attends one run of equal rows per call and unequal runs through other kernels, so a forward
    # can be right for one layout and wrong for the other; a batch of either kind must be covered by what is trusted
    wrong = (lambda n: len(set(n)) > 1) if layout == "unequal" else (lambda n: len(set(n)) == 1)
    model = Faulty(sharp_model, wrong=wrong)
    assert min(check(model).values()) > 10 * compat.PACKING_TOLERANCE
    assert set(trust(model).values()) == {None}


def test_a_forward_wrong_only_with_gradients_loses_only_the_loss_trust(sharp_model):
    model = Faulty(sharp_model, wrong=lambda lengths: torch.is_grad_enabled())
    gaps = check(model)
    assert gaps[GRAD] > 10 * compat.PACKING_TOLERANCE and gaps[NOGRAD] < 1e-4
    assert trust(model)[f"{GRAD}_ok"] is None and trust(model)[f"{NOGRAD}_ok"] is True


def test_the_gap_is_measured_at_the_sampling_temperature(plain_model):
    # random weights: rows leaking into each other move log-probs by less than the tolerance at temperature 1, but
    # Unsloth compares log-probs at the sampling temperature, where the same leak is larger
    model = Faulty(plain_model, wrong=lambda lengths: True)
    assert max(check(model, temperature=1.0).values()) < compat.PACKING_TOLERANCE
    assert min(check(Faulty(plain_model, wrong=lambda n: True), temperature=0.1).values()) > compat.PACKING_TOLERANCE


def test_the_checked_rows_mix_lengths_and_cover_the_largest_batch():
    for rows, longest in [(2, 10), (6, 606), (36, 606)]:
        lengths = compat.packing_lengths(rows, longest)
        assert rows * longest <= sum(lengths) <= rows * longest + 2 and max(lengths) == longest >= min(lengths) >= 2
        assert len(set(lengths)) >= 3  # neighbours of unequal length: several runs, as in a real batch


def test_the_check_never_narrows_trust_nor_revives_packing_unsloth_turned_off(sharp_model):
    setattr(sharp_model, f"{GRAD}_verified_T", 500)
    setattr(sharp_model, f"{GRAD}_verified_seg", 400)
    setattr(sharp_model, f"{NOGRAD}_ok", False)
    check(sharp_model)
    assert trust(sharp_model)[f"{GRAD}_verified_T"] == 500 and trust(sharp_model)[f"{GRAD}_verified_seg"] == 400
    assert trust(sharp_model)[f"{NOGRAD}_ok"] is False and trust(sharp_model)[f"{NOGRAD}_verified_T"] is None


def test_a_single_row_proves_nothing_about_rows_mixing(sharp_model):
    check(sharp_model, rows=1)
    assert set(trust(sharp_model).values()) == {None}


def test_the_model_mode_and_the_hidden_states_switch_are_put_back_even_on_failure(sharp_model, monkeypatch):
    monkeypatch.setenv(compat.HIDDEN_STATES_VARIABLE, "0")
    sharp_model.eval()
    check(sharp_model, rows=2, longest=8)
    assert os.environ[compat.HIDDEN_STATES_VARIABLE] == "0" and not sharp_model.training
    monkeypatch.delenv(compat.HIDDEN_STATES_VARIABLE)
    bench_patches.forget_packing_checks(sharp_model)

    def broken(*args, **kwargs):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(sharp_model, "forward", broken)
    with pytest.raises(RuntimeError):
        check(sharp_model, rows=2, longest=8)
    assert compat.HIDDEN_STATES_VARIABLE not in os.environ and not sharp_model.training
    assert set(trust(sharp_model).values()) == {None}


def test_the_check_runs_in_unsloths_training_mode_with_checkpointing_and_goes_back_to_inference(sharp_model,
                                                                                                 monkeypatch):
    # why: Unsloth's trainer ends its __init__ in for_inference (checkpointing off); a grad forward without
    # for_training keeps every layer's activations, 4x training's memory on an H100
    calls, forward = [], sharp_model.forward
    sharp_model._unsloth_gradient_checkpointing = "unsloth"
    monkeypatch.setattr(sharp_model, "for_training", lambda use_gradient_checkpointing=None: (
        calls.append(("for_training", use_gradient_checkpointing)), sharp_model.train()), raising=False)
    monkeypatch.setattr(sharp_model, "for_inference", lambda: (calls.append("for_inference"), sharp_model.eval()),
                        raising=False)
    monkeypatch.setattr(sharp_model, "forward", lambda *a, **k: (calls.append("forward"), forward(*a, **k))[1])
    sharp_model.eval()
    check(sharp_model, rows=2, longest=8)
    assert calls[0] == ("for_training", "unsloth") and calls[-1] == "for_inference"
    assert set(calls[1:-1]) == {"forward"}


def test_the_benchmark_forgets_every_verdict_between_configurations(sharp_model):
    check(sharp_model)
    sharp_model._unsloth_prefix_grouper_grad_verified = {"sig": (10, 5)}
    bench_patches.forget_packing_checks(sharp_model)
    assert not [n for n in vars(sharp_model) if n.startswith(bench_patches.UNSLOTH_VERDICT_PREFIXES)]


class UnslothGRPOTrainer(SimpleNamespace):
    """Stands for Unsloth's compiled trainer: ``check_packing`` reads only these attributes."""


@pytest.fixture
def unsloth_like_trainer(sharp_model, tiny_model_dir, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setattr(modeling, "cuda_available", lambda: True)
    monkeypatch.setenv(modeling.PACKING_CHECK_VARIABLE, "1")  # opt-in
    prompts = [[{"role": "user", "content": "短い"}], [{"role": "system", "content": "長い" * 30},
                                                      {"role": "user", "content": "質問です"}]]
    args = SimpleNamespace(per_device_train_batch_size=4, steps_per_generation=2, max_completion_length=16,
                           bf16=False, fp16=False, chat_template_kwargs=None, temperature=1.0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = UnslothGRPOTrainer(processing_class=tokenizer, args=args, train_dataset={"prompt": prompts},
                                 model=sharp_model, accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    return trainer, max(chat_prompt_tokens(tokenizer, p) for p in prompts)


def test_the_loss_batch_and_the_scored_generation_batch_are_checked_at_the_longest_row(unsloth_like_trainer):
    trainer, longest_prompt = unsloth_like_trainer
    checked = modeling.check_packing(trainer)
    longest = longest_prompt + 16
    # why two sizes: TRL scores a whole generation batch (steps_per_generation optimizer steps) in one go
    assert (checked["loss_rows"], checked["score_rows"], checked["longest"]) == (4, 8, longest)
    assert trust(trainer.model)[f"{GRAD}_verified_T"] == 4 * longest
    assert trust(trainer.model)[f"{NOGRAD}_verified_T"] == 8 * longest


def test_a_check_that_cannot_run_leaves_the_checking_to_unsloth_and_training_goes_on(unsloth_like_trainer,
                                                                                      monkeypatch, caplog):
    trainer, _ = unsloth_like_trainer
    monkeypatch.setattr(trainer.model, "forward", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no kernel")))
    with caplog.at_level(logging.WARNING, logger="sarashina_grpo.modeling"):
        assert modeling.check_packing(trainer) is None
    assert "could not run (RuntimeError: no kernel)" in caplog.text
    assert set(trust(trainer.model).values()) == {None}


@pytest.mark.parametrize("why", ["not asked for", "left empty", "asked off", "packing off", "no cuda", "plain trl",
                                 "one row"])
def test_nothing_is_checked_unless_asked_for_and_where_unsloths_packing_does_not_run(unsloth_like_trainer,
                                                                                    monkeypatch, why):
    trainer, _ = unsloth_like_trainer
    if why == "not asked for":  # the default: Unsloth checks each longer batch itself (modeling.PACKING_CHECK_VARIABLE)
        monkeypatch.delenv(modeling.PACKING_CHECK_VARIABLE)
    elif why == "left empty":  # `SARASHINA_GRPO_PACKING_CHECK= sarashina-grpo train` is the default too
        monkeypatch.setenv(modeling.PACKING_CHECK_VARIABLE, "")
    elif why == "asked off":
        monkeypatch.setenv(modeling.PACKING_CHECK_VARIABLE, "off")
    elif why == "packing off":
        monkeypatch.setenv(compat.PACKING_VARIABLE, "0")
    elif why == "no cuda":
        monkeypatch.setattr(modeling, "cuda_available", lambda: False)
    elif why == "one row":
        trainer.args.per_device_train_batch_size, trainer.args.steps_per_generation = 1, 1
    else:
        trainer = SimpleNamespace(**vars(trainer))
    assert modeling.check_packing(trainer) is None
    assert set(trust(trainer.model).values()) == {None}


def test_a_callers_choice_beats_the_variable_both_ways(unsloth_like_trainer, monkeypatch):
    trainer, _ = unsloth_like_trainer  # the variable says "1"
    assert modeling.check_packing(trainer, asked=False) is None
    monkeypatch.setenv(modeling.PACKING_CHECK_VARIABLE, "0")
    assert modeling.check_packing(trainer, asked=True)["loss_rows"] == 4  # why: bench -checked rows ask for it
