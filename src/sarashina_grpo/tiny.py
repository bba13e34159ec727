"""Build offline, random-weight stand-ins for Sarashina 2.2: a ~1 MB Llama for tests and CPU runs
(``sarashina-grpo build-tiny artifact/models/tiny``), or the exact 3B shape for benchmarks (``--shape sarashina-3b``).

The tokenizer is a byte-level BPE trained on the project's prompts, with Sarashina's chat format. The XML tags are
ordinary text: TRL decodes completions with ``skip_special_tokens=True`` and the rewards must see the tags.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}</s>"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}</s>"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SHAPES = {
    # Small enough to train on 2 CPU cores in seconds, big enough to learn the tag layout.
    "tiny": dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    # The GPU suite's quick model: head_dim 64 like common kernels expect, seconds to load and step on a GPU.
    "small": dict(vocab_size=4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4),
    # config.json of sbintuitions/sarashina2.2-3b-instruct-v0.1
    "sarashina-3b": dict(vocab_size=102400, hidden_size=2560, intermediate_size=8960, num_hidden_layers=32,
                         num_attention_heads=16, num_key_value_heads=8),
}
TAG_LINES = ["<think>\n", "\n</think>\n", "<response>\n", "\n</response>"]


def build_tokenizer(vocab_size: int):
    """A byte-level BPE of ``vocab_size`` ids, its merges learnt from the project's prompts and the tag layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .data import read_rows
    from .project import SYSTEM_PROMPT, project_path

    texts = [SYSTEM_PROMPT] * 4 + ["".join(TAG_LINES)] * 50 + TAG_LINES * 20
    for name in ("smalltalk.csv", "eval.csv"):
        path = project_path(Path("datasets") / name)
        if path.exists():
            texts += [r.prompt for r in read_rows(path)]
    texts += ["Hello! How are you today? I think the weather is nice.", "Let me think about it step by step."] * 5
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(vocab_size, 4096), special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    # the 3B shape needs 102,400 ids: pad with pieces no text produces
    vocab.update({f"<unused{i}>": len(vocab) + i for i in range(vocab_size - len(vocab))})
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>", pad_token="<pad>", chat_template=CHAT_TEMPLATE,
                                   model_max_length=8192)


def build_model(out_dir: str | Path, shape: str = "tiny", seed: int = 0, device: str | None = None) -> Path:
    """Write a random-weight Llama of ``shape`` and its tokenizer to ``out_dir``; return the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape not in SHAPES:
        raise ValueError(f"Unknown shape {shape!r}; choose one of {', '.join(SHAPES)}.")
    out_dir = Path(out_dir)
    dims = dict(SHAPES[shape])
    tokenizer = build_tokenizer(dims.pop("vocab_size"))
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192, rope_theta=500000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         torch_dtype="bfloat16", **dims)
    torch.manual_seed(seed)
    device = device or ("cuda" if torch.cuda.is_available() and shape != "tiny" else "cpu")
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16 if shape != "tiny" else torch.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    logger.info("built %s model at %s: %.1fM parameters, vocab %d", shape, out_dir,
                sum(p.numel() for p in model.parameters()) / 1e6, len(tokenizer))
    return out_dir
