"""Warm-start a small model by supervised fine-tuning on synthetic completions, so GRPO has something to amplify.

    from sarashina_grpo.warmstart import WarmStart, warm_start
    warm_start("artifact/models/tiny", "artifact/models/tiny-warm", prompts, WarmStart(seed=0))

GRPO only reinforces what a group already samples: a random-weight model never writes the tag layout, so every
group scores the same and nothing is learned. A short SFT on a mix of completions leaves the model *partly*
compliant, the situation of a real instruct model at the start of the article's run:

- ``ja``: the strict layout, Japanese thinking and response;
- ``drift``: the strict layout, but the thinking drifts into English (the failure the article reports);
- ``malformed``: the right words with a broken layout (a missing tag or newline, text after ``</response>``).

The loop is plain PyTorch on the Hugging Face model (no LoRA, no Unsloth): it is small and runs in seconds on CPU.
Loss is taken on completion tokens only, as in TRL's SFT with completion-only loss.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from .data import to_messages

logger = logging.getLogger(__name__)

JA_THOUGHTS = (
    "質問の内容を確認します。", "大事な点を整理します。", "相手の気持ちを考えます。", "まず状況を考えます。",
    "理由を順番に考えます。", "短く答えるのがよさそうです。", "具体的な例を考えます。", "できることを考えます。",
)
EN_THOUGHTS = (
    "Let me think about it.", "I will answer in short.", "This is a simple question.", "First I check the point.",
    "Let me think step by step.", "I think the user is asking.",
)
JA_RESPONSES = (
    "いい質問ですね。", "無理をしないでください。", "少しずつ試してみましょう。", "楽しんでくださいね。",
    "それはよい考えです。", "まずは休んでください。", "一緒に考えましょう。", "ありがとうございます。",
)
KINDS = ("ja", "drift", "malformed")


@dataclass
class WarmStart:
    """How to build and run the warm-start SFT. Shares are of the synthetic completions."""

    ja_share: float = 0.3
    drift_share: float = 0.3  # the rest is malformed
    examples: int = 512
    steps: int = 150
    batch_size: int = 16
    learning_rate: float = 3e-3
    seed: int = 0


def layout(think: str, response: str) -> str:
    return f"<think>\n{think}\n</think>\n<response>\n{response}\n</response>"


def malform(think: str, response: str, rng: random.Random) -> str:
    """One of the near-misses a model makes: right words, broken layout."""
    broken = (
        f"<think>{think}</think><response>{response}</response>",  # soft format only: newlines missing
        f"<think>\n{think}\n</think>\n{response}",  # no response tags
        f"{think}\n<response>\n{response}\n</response>",  # no think tags
        f"<think>\n{think}\n</think>\n<response>\n{response}\n</response>\n{response}",  # trailing text
        f"{think}{response}",  # no tags at all
    )
    return rng.choice(broken)


def synthetic_completion(kind: str, rng: random.Random) -> str:
    """A completion of ``kind`` (``ja``, ``drift`` or ``malformed``) from the sentence pools."""
    ja_think = "".join(rng.sample(JA_THOUGHTS, 2))
    # Drift usually starts in Japanese and slides into English, so it mixes within the thinking.
    drift_think = rng.choice(JA_THOUGHTS) + " " + rng.choice(EN_THOUGHTS)
    response = rng.choice(JA_RESPONSES)
    if kind == "ja":
        return layout(ja_think, response)
    if kind == "drift":
        return layout(drift_think, response)
    if kind == "malformed":
        # Half Japanese, half drifting, like the well-formed ones: layout and language vary independently, so a
        # format reward alone has no reason to change the language.
        return malform(ja_think if rng.random() < 0.5 else drift_think, response, rng)
    raise ValueError(f"Unknown completion kind {kind!r}; choose one of {', '.join(KINDS)}.")


def synthetic_examples(prompts: list[str], config: WarmStart) -> list[tuple[list[dict], str]]:
    """(chat prompt, completion) pairs drawn with the configured shares of the three kinds."""
    rng = random.Random(config.seed)
    weights = (config.ja_share, config.drift_share, max(0.0, 1 - config.ja_share - config.drift_share))
    examples = []
    for _ in range(config.examples):
        kind = rng.choices(KINDS, weights)[0]
        examples.append((to_messages(rng.choice(prompts)), synthetic_completion(kind, rng)))
    return examples


def encode(tokenizer, examples: list[tuple[list[dict], str]]):
    """Right-padded input ids and labels with the prompt and padding masked out (-100)."""
    import torch

    rows = []
    for messages, completion in examples:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(lab)] = torch.tensor(lab)
        mask[i, :len(ids)] = 1
    return input_ids, labels, mask


def warm_start(model_dir: str | Path, out_dir: str | Path, prompts: list[str], config: WarmStart | None = None) -> Path:
    """Fine-tune the model in ``model_dir`` on synthetic completions; save model and tokenizer to ``out_dir``."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = config or WarmStart()
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    input_ids, labels, mask = encode(tokenizer, synthetic_examples(prompts, config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    for step in tqdm(range(config.steps), desc="warm start", unit="step", mininterval=5):
        batch = torch.randint(len(input_ids), (config.batch_size,), generator=generator)
        loss = model(input_ids=input_ids[batch], attention_mask=mask[batch], labels=labels[batch]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step == config.steps - 1:
            logger.info("warm start step %d: loss %.3f", step, loss.item())
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
