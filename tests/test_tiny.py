"""The offline tiny model: Sarashina's chat format, tags as plain text, loadable by transformers."""

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_chat_template_is_sarashinas(tokenizer):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>S</s><|user|>U</s><|assistant|>"


def test_assistant_turns_are_closed_with_eos(tokenizer):
    messages = [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == "<|user|>U</s><|assistant|>A</s>"


def test_tags_survive_decoding_without_special_tokens(tokenizer):
    text = "<think>\n考える\n</think>\n<response>\n答え\n</response>"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # TRL decodes this way


def test_tags_are_not_special_tokens(tokenizer):
    assert not {"<think>", "</think>", "<response>", "</response>"} & set(tokenizer.all_special_tokens)


def test_model_is_a_few_megabytes(tiny_model_dir):
    size = sum(p.stat().st_size for p in tiny_model_dir.iterdir())
    assert size < 8 * 2**20


def test_model_generates(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tokenizer("<|user|>こんにちは</s><|assistant|>", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert ids.input_ids.shape[1] < out.shape[1] <= ids.input_ids.shape[1] + 5
