"""The fast rollout path (sarashina_grpo.rollout) decodes what the article's path decodes.

On CPU the engine runs eagerly (no CUDA graph) through the same code the graph captures, so greedy equality with
the default Unsloth/TRL generation here checks the cache, masks, positions, RoPE, GQA and unmerged LoRA maths.
The comparison runs in float32: in bf16 the two paths round differently (different kernels, fused q/k/v), which
moves logits by about one bf16 ulp and flips greedy choices only where the top two logits tie within that.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch

from sarashina_grpo.config import article_settings
from sarashina_grpo.project import SettingsError
from sarashina_grpo.rollout import FastRollout, choose, sample_tokens

COMPLETION_TOKENS = 24


def test_greedy_sampling_is_argmax():
    logits = torch.randn(4, 50)
    assert torch.equal(sample_tokens(logits, temperature=0.0), logits.argmax(-1))  # why: temperature 0 = greedy


def test_top_k_one_and_tiny_top_p_keep_only_the_best_token():
    logits = torch.randn(8, 50)
    best = logits.argmax(-1)
    assert torch.equal(sample_tokens(logits, 1.0, top_k=1), best)  # why: one candidate left
    assert torch.equal(sample_tokens(logits, 1.0, top_p=1e-6), best)  # why: the top token alone exceeds top_p


def test_sampling_follows_the_softmax_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, 2.0]]).repeat(20000, 1)
    freq = torch.bincount(sample_tokens(logits, temperature=1.0), minlength=3).float() / 20000
    # why: the exponential race must draw from softmax(logits), like HF's multinomial
    assert torch.allclose(freq, logits[0].softmax(-1), atol=0.015)


def test_unknown_rollout_is_rejected_by_name():
    with pytest.raises(SettingsError, match="rollout"):
        article_settings(rollout="turbo")


# --- rollout='auto', the default: the fast rollout where it decodes what the default path decodes -------------


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))


def trainer_of(model, *, use_vllm=False, repetition_penalty=None, min_p=None, generation_kwargs=None):
    """What ``choose`` reads of a TRL ``GRPOTrainer`` (its config: Unsloth's class, without the project's fields)."""
    args = SimpleNamespace(use_vllm=use_vllm, generation_kwargs=generation_kwargs)
    return SimpleNamespace(model=model, args=args, repetition_penalty=repetition_penalty, min_p=min_p)


def rollout_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sarashina_grpo.rollout"]


FREE = {"bytes": 80 << 30}  # the free GPU memory the mocked card reports


@pytest.fixture
def cuda(monkeypatch):
    # what choose asks; nothing here touches a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (FREE["bytes"], 80 << 30))


def test_auto_is_the_default_rollout():
    assert article_settings().rollout == "auto"  # why: the faster path wherever it is exact, without a flag


def test_auto_takes_the_fast_rollout_for_a_llama_model_on_a_cuda_gpu(cuda, caplog):
    with caplog.at_level(logging.INFO, logger="sarashina_grpo.rollout"):
        assert choose(trainer_of(tiny_llama()), "auto") == "fast"  # why: the GPU suite checks it decodes the same
    assert rollout_lines(caplog) == []  # the engine's own line says that it is on (install)


def test_auto_keeps_the_default_rollout_on_the_cpu_without_a_word(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="sarashina_grpo.rollout"):
        assert choose(trainer_of(tiny_llama()), "auto") == "default"  # why: no CUDA graphs to gain from on a CPU
    assert rollout_lines(caplog) == []  # why: every CPU smoke run would print it, telling nobody anything


def test_auto_leaves_generation_to_vllm(cuda, caplog):
    with caplog.at_level(logging.INFO, logger="sarashina_grpo.rollout"):
        assert choose(trainer_of(tiny_llama(), use_vllm=True), "auto") == "vllm"  # why: vLLM is the engine
    assert rollout_lines(caplog) == []


def test_use_vllm_is_accepted_with_auto_and_refused_with_the_fast_rollout_by_name():
    assert article_settings(use_vllm=True).rollout == "auto"  # why: the default must not refuse --use-vllm
    with pytest.raises(SettingsError, match="'fast' and use_vllm are alternatives"):
        article_settings(use_vllm=True, rollout="fast")


def test_auto_keeps_the_default_rollout_for_sampling_the_engine_does_not_do(cuda, caplog):
    with caplog.at_level(logging.INFO, logger="sarashina_grpo.rollout"):
        assert choose(trainer_of(tiny_llama(), repetition_penalty=1.1), "auto") == "default"
    assert rollout_lines(caplog) == [
        "rollout='auto' generates with the default rollout: the fast one does not decode or sample with "
        "repetition_penalty (--rollout default silences this line)."]


def biased_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, attention_bias=True))


def dora_llama():
    from peft import LoraConfig, get_peft_model

    return get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], use_dora=True))


def mistral():
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1))


# Each: what 'auto' meets on a GPU that the GPU suite's greedy-agreement test does not cover, and the line it prints
@pytest.mark.parametrize("trainer, backend, why", [
    (lambda: trainer_of(biased_llama()), "unsloth", "the fast one does not decode or sample with biased projections"),
    (lambda: trainer_of(dora_llama()), "unsloth", "the fast one does not decode or sample with DoRA adapters"),
    (lambda: trainer_of(tiny_llama(), generation_kwargs={"suppress_tokens": [5]}), "unsloth",
     "the fast one does not decode or sample with generation_kwargs"),
    (lambda: trainer_of(mistral()), "unsloth", "the fast one is checked on Llama models only, not this mistral model"),
    (lambda: trainer_of(tiny_llama()), "trl-peft", "the fast one is checked with --backend unsloth only, not trl-peft"),
], ids=["bias", "dora", "generation_kwargs", "mistral", "trl-peft"])
def test_auto_keeps_the_default_rollout_where_the_fast_one_is_not_checked_saying_why(cuda, caplog, trainer, backend,
                                                                                     why):
    with caplog.at_level(logging.INFO, logger="sarashina_grpo.rollout"):
        assert choose(trainer(), "auto", backend) == "default"  # why: a crash at the first rollout, or unchecked
    assert rollout_lines(caplog) == [
        f"rollout='auto' generates with the default rollout: {why} (--rollout default silences this line)."]


def test_auto_keeps_the_default_rollout_on_a_card_without_room_for_the_bf16_copy(cuda, caplog, monkeypatch):
    from sarashina_grpo.rollout import STEP_HEADROOM_BYTES, copy_bytes

    model = tiny_llama()
    need = copy_bytes(model) + STEP_HEADROOM_BYTES
    monkeypatch.setitem(FREE, "bytes", need)
    assert choose(trainer_of(model), "auto") == "fast"
    monkeypatch.setitem(FREE, "bytes", need - 1)  # why: the article's users train on 8 GB cards, where 4-bit fits and
    with caplog.at_level(logging.INFO, logger="sarashina_grpo.rollout"):  # the engine's bf16 weights do not
        assert choose(trainer_of(model), "auto") == "default"
    assert "GiB free for its bf16 weights" in rollout_lines(caplog)[0]


def test_the_copy_the_fast_rollout_adds_is_the_3b_models_measured_growth():
    from transformers import LlamaConfig, LlamaForCausalLM

    from sarashina_grpo.rollout import copy_bytes
    from sarashina_grpo.tiny import SHAPES

    # why: docs/speed.md measures the article's 3B recipe at 4.3 GiB reserved on the default path and 9.9 on the fast
    # one; the bf16 copy of its projections is most of the 5.6 GiB between them
    with torch.device("meta"):
        shape = LlamaForCausalLM(LlamaConfig(**SHAPES["sarashina-3b"]))
    assert 5.0 < copy_bytes(shape) / 2**30 < 6.0


def test_the_fast_rollout_by_name_refuses_a_sliding_attention_window():
    from sarashina_grpo.rollout import UnsupportedModelError, install

    trainer = trainer_of(mistral())  # Mistral's config: a 4,096-token window
    # why: the engine attends to the whole context, the model to its window: past it they would decode differently
    with pytest.raises(UnsupportedModelError, match="does not decode or sample with a sliding attention window"):
        install(trainer)


def test_the_fast_rollout_by_name_refuses_weights_it_cannot_decode_in_one_error_line():
    from sarashina_grpo.errors import user_error_message
    from sarashina_grpo.rollout import UnsupportedModelError, install

    trainer = trainer_of(biased_llama())
    trainer.model.train()
    with pytest.raises(UnsupportedModelError) as raised:  # why: when the trainer is built, not at the first rollout
        install(trainer)
    assert user_error_message(raised.value) == (
        "rollout='fast' does not decode or sample with biased projections: use rollout='default' (or 'auto', which "
        "picks it) for this run.")


@pytest.mark.parametrize("asked", ["default", "fast", "static", "paged"])
def test_a_rollout_asked_for_by_name_is_the_one_chosen(cuda, asked):
    # why: --rollout default keeps Unsloth's generate on a GPU; --rollout fast keeps install's own fallback
    assert choose(trainer_of(tiny_llama()), asked) == asked


def test_run_json_records_the_rollout_that_ran_each_time_training_starts(tmp_path):
    from sarashina_grpo.pipeline import Run, RunPaths, run_training

    (tmp_path / "run.json").write_text(json.dumps({"settings": {"rollout": "auto"}}))
    trainer = SimpleNamespace(rollout="fast", state=SimpleNamespace(global_step=1), add_callback=lambda c: None,
                              remove_callback=lambda c: None, train=lambda resume_from_checkpoint: None)
    # a resumed run (a checkpoint to start from): its record is this start's, whatever the last start's was
    run_training(trainer, Run(None, RunPaths("r", tmp_path / "logs", tmp_path), checkpoint=tmp_path / "checkpoint-1"))
    info = json.loads((tmp_path / "run.json").read_text())
    # why: settings keep what was asked (a resume resolves 'auto' again), "rollout" says what generated
    assert (info["settings"]["rollout"], info["rollout"]) == ("auto", "fast")


@pytest.fixture(scope="module")
def tiny_trainer(tiny_model_dir, tmp_path_factory):
    """A default-rollout GRPOTrainer on the tiny model, with non-zero LoRA B so that the adapters change outputs."""
    from sarashina_grpo.pipeline import build_trainer, load_model, prepare

    settings = article_settings(model_name=str(tiny_model_dir), load_in_4bit=False, rollout="default",
                                max_completion_length=COMPLETION_TOKENS, max_steps=1, save_steps=1000)
    run = prepare(settings, artifact_dir=tmp_path_factory.mktemp("rollout"), run_name="t")
    model, tokenizer = load_model(run)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    # float32: in bf16 the random tiny model has exact logit ties (gap 0.0), which the two paths' different
    # rounding breaks either way; without rounding noise greedy decoding has one answer.
    model.to(torch.float32)
    trainer = build_trainer(run, model, tokenizer, report_to="none")
    return trainer, trainer.train_dataset


def _prompt_ids(trainer, dataset, n=4):
    tok = trainer.processing_class
    # Rows of different lengths so that left padding, positions and masks matter.
    rows = sorted(dataset.select(range(40))["prompt"], key=lambda p: len(p[-1]["content"]))
    picked = [rows[0], rows[-1], rows[len(rows) // 2], rows[1]][:n]
    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in picked]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def _fast(trainer, **kwargs):
    return FastRollout(trainer.model, eos_token_ids=trainer.eos_token_ids,
                       pad_token_id=trainer.processing_class.pad_token_id, max_new_tokens=COMPLETION_TOKENS,
                       temperature=0.0, **kwargs)


@pytest.mark.slow
def test_fast_rollout_generates_the_default_paths_greedy_tokens(tiny_trainer):
    trainer, dataset = tiny_trainer
    prompt_ids = _prompt_ids(trainer, dataset)
    assert len({len(p) for p in prompt_ids}) > 1  # the batch really is padded
    trainer.generation_config.do_sample = False
    trainer.generation_kwargs["do_sample"] = False
    default_ids, _ = trainer._generate_single_turn(prompt_ids, None, {}, 1)
    fast_ids = _fast(trainer).generate(prompt_ids)
    # why: same weights, same greedy decoding: the fast path must reproduce the default rollout token for token
    assert fast_ids == [list(map(int, ids)) for ids in default_ids]


@pytest.mark.slow
def test_fast_rollout_applies_the_lora_adapters(tiny_trainer):
    trainer, dataset = tiny_trainer
    prompt_ids = _prompt_ids(trainer, dataset)
    with_lora = _fast(trainer).generate(prompt_ids)
    with trainer.model.disable_adapter():
        without_lora = _fast(trainer).generate(prompt_ids)
    # why: rollouts must come from the policy being trained, not from the frozen base model
    assert with_lora != without_lora


@pytest.mark.slow
def test_fast_setting_routes_training_rollouts_through_the_engine(tiny_model_dir, tmp_path):
    from sarashina_grpo.pipeline import train

    settings = article_settings(model_name=str(tiny_model_dir), load_in_4bit=False, rollout="fast", max_steps=1,
                        save_steps=1000, max_completion_length=8)
    trainer = train(settings, artifact_dir=tmp_path)
    assert trainer.fast_rollout.calls == 1  # why: one optimizer step, one rollout, made by the fast engine
    assert trainer.state.global_step == 1
    assert json.loads((trainer.run.paths.output_dir / "run.json").read_text())["rollout"] == "fast"


@pytest.mark.slow
def test_a_reused_engine_decodes_like_a_fresh_one_and_sees_lora_updates(tiny_trainer):
    trainer, dataset = tiny_trainer
    prompt_ids = _prompt_ids(trainer, dataset)
    engine = _fast(trainer)
    engine.generate(prompt_ids[::-1])  # leaves its cache, buffers and weights behind for the next rollout
    # why: stale cache rows of an earlier rollout must stay masked, and a kept engine must match a new one
    assert engine.generate(prompt_ids) == _fast(trainer).generate(prompt_ids)
    lora_b = [p for name, p in trainer.model.named_parameters() if "lora_B" in name]
    saved = [p.detach().clone() for p in lora_b]
    try:
        with torch.no_grad():
            for p in lora_b:
                p.mul_(-1.0)  # an "optimizer step" between two rollouts
        # why: the engine keeps the base weights but must decode from the adapters as they are now
        assert engine.generate(prompt_ids) == _fast(trainer).generate(prompt_ids)
    finally:
        with torch.no_grad():
            for p, s in zip(lora_b, saved, strict=True):
                p.copy_(s)


SPLIT_K_CHECK = """
import torch, torch.nn.functional as F
from sarashina_grpo.rollout import decode_attention
torch.manual_seed(0)
batch, length, nkv, rep, d = 3, 192, 2, 2, 20  # d: not a power of two, as 160 in the 3B
kv = torch.randn(2, batch, length, nkv, d)
q = torch.randn(batch, nkv * rep, d)
slot = 100  # slots 0..100 are filled; 101.. hold stale values that must not count
mask = torch.zeros(batch, length)
mask[0, :7] = mask[2, :40] = torch.finfo(torch.float32).min  # left padding
out = decode_attention(q, kv, mask, torch.tensor([slot]))
keys, values = (kv[i, :, : slot + 1].transpose(1, 2) for i in (0, 1))
ref = F.scaled_dot_product_attention(q.view(batch, nkv, rep, d), keys, values,
                                     attn_mask=mask[:, None, None, : slot + 1]).reshape(batch, nkv * rep, d)
print(((out - ref).abs().max() / ref.abs().max()).item())
"""


@pytest.mark.slow
def test_split_k_decode_attention_matches_sdpa_over_the_filled_slots():
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    # Triton's CPU interpreter must be on before triton is first imported, hence a fresh interpreter; float32
    # only (the interpreter mishandles bf16 dots). The kernels run on CUDA in the fast rollout.
    done = subprocess.run([sys.executable, "-c", SPLIT_K_CHECK], capture_output=True, text=True, check=False,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    # why: blocks past the filled slots must be skipped and the blocks' softmax partials combined exactly
    assert float(done.stdout.split()[-1]) < 1e-5


@pytest.mark.slow
def test_forced_lengths_end_each_completion_with_eos_at_its_length(tiny_trainer):
    trainer, dataset = tiny_trainer
    prompt_ids = _prompt_ids(trainer, dataset)
    natural = _fast(trainer).generate(prompt_ids)
    engine = _fast(trainer)
    cuts = [1, 5, 9, 30]  # 30 > max_new_tokens: that row is not cut
    engine.forced_lengths = lambda n: cuts[:n]
    eos = min(int(e) for e in trainer.eos_token_ids)
    expected = [ids if len(ids) < cut else ids[: cut - 1] + [eos] for ids, cut in zip(natural, cuts, strict=True)]
    # why: the benchmark's realistic lengths must end each completion exactly there, the tokens before unchanged
    assert engine.generate(prompt_ids) == expected
    assert engine.generate(prompt_ids) == expected  # and again from the kept graphs and buffers
