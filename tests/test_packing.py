"""The one upfront check of Unsloth's sequence packing (``compat.check_packing_upfront``, ``modeling.check_packing``).

On the CPU the forward is plain transformers, which honours packed rows through their restarting position ids: the
check then finds no gap and records Unsloth's trust for the whole run. A forward that lets rows see each other, or
one that cuts rows of unequal length in the wrong places, is refused and records nothing, so Unsloth goes on checking
each batch itself. The GPU side, where Unsloth's own
checks are counted, is tests/gpu/test_gpu_packing.py.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from sarashina_grpo import compat, modeling

GRAD, NOGRAD = compat.PACKING_TRUST


@pytest.fixture
def sharp_model(tiny_model_dir):
    """The tiny Llama with its output scaled up: random weights give near-uniform next-token log-probs, on which
    rows mixing into each other would move the log-probs by less than Unsloth's tolerance; a trained model's don't."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30)
    return model


class RowsSeeEachOther(torch.nn.Module):
    """A forward that ignores where packed rows end (an attention backend without varlen support)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids, position_ids, packed_seq_lengths=None, use_cache=False):
        return self.inner(input_ids=input_ids, position_ids=torch.arange(input_ids.shape[1])[None], use_cache=False)


class EqualRowsOnly(RowsSeeEachOther):
    """A forward that cuts the packed rows as if all had the first row's length: right for a batch of equal rows,
    wrong as soon as lengths differ (a bug in the code for runs of unequal rows)."""

    def forward(self, input_ids, position_ids, packed_seq_lengths=None, use_cache=False):
        if packed_seq_lengths is None:  # one row on its own
            return self.inner(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        first = int(packed_seq_lengths[0])
        positions = torch.arange(input_ids.shape[1]) % first
        return self.inner(input_ids=input_ids, position_ids=positions[None], use_cache=False)


def trust(model) -> dict:
    return {f"{p}{k}": getattr(model, f"{p}{k}", None) for p in compat.PACKING_TRUST
            for k in ("_ok", "_verified_T", "_verified_seg")}


def test_packing_that_keeps_rows_apart_is_trusted_for_the_largest_batch(sharp_model):
    gap = compat.check_packing_upfront(sharp_model, rows=3, longest=20)
    assert gap < 1e-4
    assert trust(sharp_model) == {f"{p}{k}": v for p in (GRAD, NOGRAD)
                                  for k, v in (("_ok", True), ("_verified_T", 60), ("_verified_seg", 20))}


def test_rows_that_see_each_other_are_refused_and_nothing_is_trusted(sharp_model):
    model = RowsSeeEachOther(sharp_model)
    gap = compat.check_packing_upfront(model, rows=3, longest=20)
    assert gap > 10 * compat.PACKING_TOLERANCE
    assert set(trust(model).values()) == {None}


def test_rows_of_unequal_length_are_checked_not_only_equal_ones(sharp_model, monkeypatch):
    model = EqualRowsOnly(sharp_model)
    assert compat.check_packing_upfront(model, rows=3, longest=20) > 10 * compat.PACKING_TOLERANCE
    assert set(trust(model).values()) == {None}
    # why the lengths are mixed: the same faulty forward passes a check made of equal rows only
    monkeypatch.setattr(compat, "packing_lengths", lambda rows, longest: [longest] * rows)
    assert compat.check_packing_upfront(EqualRowsOnly(sharp_model), rows=3, longest=20) < 1e-4


def test_the_checked_rows_mix_lengths_and_cover_the_largest_batch():
    for rows, longest in [(2, 10), (6, 606), (36, 606)]:
        lengths = compat.packing_lengths(rows, longest)
        assert rows * longest <= sum(lengths) <= rows * longest + 2 and max(lengths) == longest >= min(lengths) >= 2
        assert len(set(lengths)) >= 3  # neighbours of unequal length: several runs, as in a real batch


def test_the_check_never_narrows_trust_nor_revives_packing_unsloth_turned_off(sharp_model):
    setattr(sharp_model, f"{GRAD}_verified_T", 500)
    setattr(sharp_model, f"{GRAD}_verified_seg", 400)
    setattr(sharp_model, f"{NOGRAD}_ok", False)
    compat.check_packing_upfront(sharp_model, rows=3, longest=20)
    assert trust(sharp_model)[f"{GRAD}_verified_T"] == 500 and trust(sharp_model)[f"{GRAD}_verified_seg"] == 400
    assert trust(sharp_model)[f"{NOGRAD}_ok"] is False and trust(sharp_model)[f"{NOGRAD}_verified_T"] is None


def test_a_single_row_proves_nothing_about_rows_mixing(sharp_model):
    compat.check_packing_upfront(sharp_model, rows=1, longest=20)
    assert set(trust(sharp_model).values()) == {None}


def test_the_hidden_states_switch_is_put_back(sharp_model, monkeypatch):
    monkeypatch.setenv(compat.HIDDEN_STATES_VARIABLE, "0")
    compat.check_packing_upfront(sharp_model, rows=2, longest=8)
    assert os.environ[compat.HIDDEN_STATES_VARIABLE] == "0"
    monkeypatch.delenv(compat.HIDDEN_STATES_VARIABLE)
    compat.check_packing_upfront(sharp_model, rows=2, longest=8)
    assert compat.HIDDEN_STATES_VARIABLE not in os.environ


class UnslothGRPOTrainer(SimpleNamespace):
    """Stands for Unsloth's compiled trainer: ``check_packing`` reads only these attributes."""


@pytest.fixture
def unsloth_like_trainer(sharp_model, tiny_model_dir, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setattr(modeling, "cuda_available", lambda: True)
    prompts = [[{"role": "user", "content": "短い"}], [{"role": "system", "content": "長い" * 30},
                                                      {"role": "user", "content": "質問です"}]]
    args = SimpleNamespace(per_device_train_batch_size=4, max_completion_length=16, bf16=False, fp16=False,
                           chat_template_kwargs=None)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = UnslothGRPOTrainer(processing_class=tokenizer, args=args, train_dataset={"prompt": prompts},
                                 model=sharp_model, accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    longest_prompt = max(len(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True)["input_ids"])
                         for p in prompts)
    return trainer, longest_prompt


def test_the_run_is_checked_at_its_batch_size_and_longest_prompt_plus_completion(unsloth_like_trainer):
    trainer, longest_prompt = unsloth_like_trainer
    checked = modeling.check_packing(trainer)
    assert (checked["rows"], checked["longest"]) == (4, longest_prompt + 16)
    assert checked["gap"] < 1e-4 and trust(trainer.model)[f"{GRAD}_verified_T"] == 4 * (longest_prompt + 16)


@pytest.mark.parametrize("why", ["variable", "packing off", "no cuda", "plain trl"])
def test_nothing_is_checked_where_unsloths_packing_does_not_run_or_the_user_said_no(unsloth_like_trainer,
                                                                                     monkeypatch, why):
    trainer, _ = unsloth_like_trainer
    if why == "variable":
        monkeypatch.setenv(modeling.PACKING_CHECK_VARIABLE, "0")
    elif why == "packing off":
        monkeypatch.setenv(compat.PACKING_VARIABLE, "0")
    elif why == "no cuda":
        monkeypatch.setattr(modeling, "cuda_available", lambda: False)
    else:
        trainer = SimpleNamespace(**vars(trainer))
    assert modeling.check_packing(trainer) is None
    assert set(trust(trainer.model).values()) == {None}
