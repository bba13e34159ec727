"""The KL reference on the GPU path (Unsloth's compiled trainer, 4-bit, bf16): cheap where that is exact, TRL's
copy where it is not (``compat.choose_reference``; the CPU version of these checks is tests/test_reference.py).

Unsloth's trainer deletes TRL's frozen "ref" adapter copy, so it scores the reference with the adapter disabled.
For a fresh LoRA that is exact: one training step's reference log-probs equal those of TRL's route through a
"ref" copy of the fresh adapter, on the same completions (a non-zero copy shows a gap: the check can fail). For a
trained start it is not: the copy is added back, and the first step's KL (policy = starting adapter = reference)
is then about zero, where the base model as reference gives a clear KL.

    pytest -m gpu tests/gpu/test_gpu_reference.py
"""

from __future__ import annotations

import pytest
import torch

from sarashina_grpo import compat

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_suite.sh)")]

# bf16 log-probs of the same tokens through the same kernels: B = 0 adds exact zeros, so the routes should agree to
# the bit; 1e-3 leaves room for a kernel that accumulates in another order, far below the gap a wrong reference makes.
SAME = 1e-3
WRONG = 1e-2


def set_lora_b(model, adapter: str, seed: int | None, scale: float = 0.05) -> None:
    """lora_B of ``adapter``: zero (a fresh LoRA) for seed None, else seeded noise (a trained one)."""
    gen = torch.Generator().manual_seed(seed or 0)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if f"lora_B.{adapter}." in name:
                param.copy_(torch.zeros_like(param) if seed is None
                            else (torch.randn(param.shape, generator=gen) * scale).to(param))


@pytest.fixture(scope="module")
def loaded_small(small_model_dir, tmp_path_factory):
    from sarashina_grpo.config import article_settings
    from sarashina_grpo.pipeline import load_model, prepare

    run = prepare(article_settings(model_name=str(small_model_dir), max_steps=1),
                  artifact_dir=tmp_path_factory.mktemp("load"), run_name="load")
    return load_model(run)


@pytest.fixture
def one_step(loaded_small, small_model_dir, text_hash, tmp_path, monkeypatch):
    """Train one step on the shared model; return the trainer, what its scoring produced, and its completions.
    ``start`` seeds a trained starting adapter; ``reference`` replaces ``compat.choose_reference``;
    ``completions`` are fed instead of generating (the same tokens for every route)."""
    from sarashina_grpo import compat
    from sarashina_grpo.config import article_settings
    from sarashina_grpo.pipeline import build_trainer, prepare, run_training

    def run(name, *, start=None, reference=None, completions=None):
        model, tokenizer = loaded_small
        set_lora_b(model, "default", start)
        settings = article_settings(model_name=str(small_model_dir), max_steps=1, save_steps=1000,
                                    max_completion_length=16, num_generations=4, per_device_train_batch_size=4,
                                    learning_rate=1e-4, warmup_steps=0.0, log_completions=False,
                                    reward_names=[text_hash])
        prepared = prepare(settings, artifact_dir=tmp_path, run_name=name)
        with monkeypatch.context() as patch:
            if reference is not None:
                patch.setattr(compat, "choose_reference", reference)
            trainer = build_trainer(prepared, model, tokenizer, report_to="none")
        seen = {}
        generate, score = getattr(trainer, compat.GENERATE_METHOD), getattr(trainer, compat.SCORE_METHOD)

        def fixed(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            seen["completions"] = completions or generate(prompt_ids, images, multimodal_fields, num_generations,
                                                          has_tool_images)
            return seen["completions"]

        def scored(inputs):
            out = score(inputs)
            seen.update({k: out[k].detach().float().cpu() for k in ("completion_mask", "ref_per_token_logps")})
            return out

        compat.replace_generation(trainer, fixed)
        setattr(trainer, compat.SCORE_METHOD, scored)
        run_training(trainer, prepared)
        seen["kl"] = [h["kl"] for h in trainer.state.log_history if "kl" in h]
        seen["adapters"] = list(model.peft_config)
        compat.drop_reference_adapter(model)  # the next run starts from the policy adapter alone
        return trainer, seen

    return run


def gap(a: dict, b: dict) -> float:
    assert torch.equal(a["completion_mask"], b["completion_mask"])
    return ((a["ref_per_token_logps"] - b["ref_per_token_logps"]).abs() * a["completion_mask"]).max().item()


def trl_copy(ref_seed=None):
    """What TRL's own __init__ does (Unsloth's removes it): a "ref" copy of the starting adapter; with ``ref_seed``
    the copy is then moved away from it, a reference that is not the starting policy."""
    from sarashina_grpo import compat

    def choose(trainer):
        compat.copy_adapter(trainer.model, compat.POLICY_ADAPTER, compat.TRL_REFERENCE_ADAPTER)
        if ref_seed is not None:
            set_lora_b(trainer.model, compat.TRL_REFERENCE_ADAPTER, ref_seed)
        return compat.TRL_REFERENCE_ADAPTER

    return choose


def test_a_fresh_lora_on_unsloths_trainer_scores_trls_reference_without_the_copy(one_step):
    trainer, cheap = one_step("fresh")
    _, copy = one_step("fresh-copy", reference=trl_copy(), completions=cheap["completions"])
    _, wrong = one_step("fresh-wrong-copy", reference=trl_copy(ref_seed=3), completions=cheap["completions"])
    # why: the trainer is Unsloth's, it kept no second adapter, and its adapter-disabled reference is TRL's
    assert compat.library_class(trainer).__name__ == "UnslothGRPOTrainer"
    assert (trainer.kl_reference, cheap["adapters"], copy["adapters"]) == ("base", ["default"], ["default", "ref"])
    assert gap(cheap, copy) <= SAME
    assert gap(cheap, wrong) > WRONG  # the comparison can fail


def test_a_trained_start_on_unsloths_trainer_gets_trls_copy_back(one_step):
    trainer, kept = one_step("warm", start=2)
    _, base = one_step("warm-unsloth-alone", start=2, reference=lambda trainer: None, completions=kept["completions"])
    # why: without the copy Unsloth's trainer would take the base model as the reference of a trained start
    assert trainer.kl_reference == "ref" and kept["adapters"] == ["default", "ref"]
    assert gap(kept, base) > WRONG
    # step 1: policy = starting adapter = reference, so the KL is about zero with the copy and clear without it
    assert kept["kl"][0] < 0.1 * base["kl"][0] and base["kl"][0] > 1e-3
