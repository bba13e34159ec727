"""Warm-start (cold-start) a model by a short supervised pass on the tag layout, so GRPO has something to amplify.

    sarashina-grpo warmstart --model artifact/models/smollm2 --output artifact/models/smollm2-warm
    sarashina-grpo train --model artifact/models/smollm2-warm --no-4bit ...       # GRPO from the warm start

GRPO only reinforces what a group already samples. The examples come from a JSONL file or, for the tiny model, from
``synthetic`` sentence pools; a share is malformed on purpose, so the strict rate stays low enough for GRPO to raise.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, fields
from pathlib import Path

from .data import DataError, check_prompts, to_messages
from .preflight import check_finite_model, check_new_folder, check_warm_start, lora_targets
from .project import LORA_TARGET_MODULES, SYSTEM_PROMPT, project_path, read_text_setting, setting
from .tables import read_text

logger = logging.getLogger(__name__)

JA_THOUGHTS = ("質問の内容を確認します。", "大事な点を整理します。", "相手の気持ちを考えます。", "まず状況を考えます。",
               "理由を順番に考えます。", "短く答えるのがよさそうです。", "具体的な例を考えます。",
               "できることを考えます。")
EN_THOUGHTS = ("Let me think about it.", "I will answer in short.", "This is a simple question.",
               "First I check the point.", "Let me think step by step.", "I think the user is asking.")
JA_RESPONSES = ("いい質問ですね。", "無理をしないでください。", "少しずつ試してみましょう。", "楽しんでくださいね。",
                "それはよい考えです。", "まずは休んでください。", "一緒に考えましょう。", "ありがとうございます。")
KINDS = ("ja", "drift", "malformed")
SYNTHETIC = "synthetic"
FORMAT_EXAMPLES = "datasets/format_examples.jsonl"
EXAMPLE_KEYS = ("prompt", "think", "response")


@dataclass
class WarmStart:
    """The warm start's recipe; defaults suit a real instruct model (SmolLM2), ``DEMO_RECIPE`` the tiny model."""

    model: str = setting("tiny", "model to warm-start: a model folder, a hub id or 'tiny'")
    output: str | None = setting(None, "new (or empty) folder to write the warm-started model to (required)")
    data: str = setting(FORMAT_EXAMPLES, "JSONL of written examples (keys prompt, think, response), or "
                        f"'{SYNTHETIC}': sentence-pool completions over the training prompts (the demo's)")
    system_prompt_file: str | None = setting(None, "system prompt of the examples (use the one training will "
                                             "use); unset: the project's Japanese format prompt")
    malformed_share: float = setting(0.5, "share of examples whose layout is broken on purpose, so the strict "
                                     "rate stays low enough for GRPO to raise")
    steps: int = setting(60, "optimizer steps")
    batch_size: int = setting(8, "examples per step")
    learning_rate: float = setting(2e-4, "learning rate (constant)")
    lora_rank: int = setting(16, "LoRA rank of the supervised pass, merged afterwards; 0: full fine-tune (for "
                             "random-weight models)")
    seed: int = setting(0, "seed of the example draw, the LoRA init and the batch order")
    threads: int | None = setting(None, "CPU threads for torch; unset: 1 on a machine without a CUDA GPU (unless "
                                  "OMP_NUM_THREADS is set), torch's default with one")
    # 'synthetic' only (instead of malformed_share): the kinds' shares, the rest malformed, and how many are drawn.
    ja_share: float = 0.3
    drift_share: float = 0.3
    examples: int = 512

    def __post_init__(self):
        check_warm_start(self, None if self.data == SYNTHETIC else project_path(self.data))

    def system_prompt(self) -> str:
        file = self.system_prompt_file
        return read_text_setting(file, "--system-prompt-file") if file else SYSTEM_PROMPT


CLI_FIELDS = tuple(f.name for f in fields(WarmStart) if "help" in f.metadata)  # synthetic-only knobs: code-level
# The tiny model's recipe (demo, learning proof): synthetic completions, a full fine-tune of random weights.
DEMO_RECIPE = WarmStart(data=SYNTHETIC, steps=150, batch_size=16, learning_rate=3e-3, lora_rank=0)


def layout(think: str, response: str) -> str:
    return f"<think>\n{think}\n</think>\n<response>\n{response}\n</response>"


def malform(think: str, response: str, rng: random.Random) -> str:
    """One of the near-misses a model makes: right words, broken layout."""
    return rng.choice((
        f"<think>{think}</think><response>{response}</response>",  # soft format only: newlines missing
        f"<think>\n{think}\n</think>\n{response}",  # no response tags
        f"{think}\n<response>\n{response}\n</response>",  # no think tags
        f"<think>\n{think}\n</think>\n<response>\n{response}\n</response>\n{response}",  # trailing text
        f"{think}{response}",  # no tags at all
    ))


def synthetic_completion(kind: str, rng: random.Random) -> str:
    """A completion of ``kind`` (``ja``, ``drift`` or ``malformed``) from the sentence pools."""
    ja_think = "".join(rng.sample(JA_THOUGHTS, 2))
    # Drift usually starts in Japanese and slides into English, so it mixes within the thinking.
    drift_think = rng.choice(JA_THOUGHTS) + " " + rng.choice(EN_THOUGHTS)
    response = rng.choice(JA_RESPONSES)
    if kind == "malformed":
        # Layout and language vary independently, so a format reward alone has no reason to change the language.
        return malform(ja_think if rng.random() < 0.5 else drift_think, response, rng)
    return layout(ja_think if kind == "ja" else drift_think, response)


def synthetic_examples(prompts: list[str], config: WarmStart, system_prompt: str = SYSTEM_PROMPT,
                       ) -> list[tuple[list[dict], str]]:
    """(chat prompt, completion) pairs drawn with the configured shares of the three kinds."""
    rng = random.Random(config.seed)
    weights = (config.ja_share, config.drift_share, max(0.0, 1 - config.ja_share - config.drift_share))
    examples = []
    for _ in range(config.examples):
        kind = rng.choices(KINDS, weights)[0]
        examples.append((to_messages(rng.choice(prompts), system_prompt), synthetic_completion(kind, rng)))
    return examples


def read_format_examples(path: str | Path) -> list[dict]:
    """The rows of a JSONL file of written examples, each with a non-empty prompt, think and response."""
    path = project_path(path)
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not JSON ({err.msg}).") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip() for k in EXAMPLE_KEYS):
            raise DataError(f"{path}, line {number}: needs non-empty text under {', '.join(EXAMPLE_KEYS)}.")
        rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no examples.")
    return rows


def format_examples(rows: list[dict], config: WarmStart, system_prompt: str) -> list[tuple[list[dict], str]]:
    """(chat prompt, completion) for every written example: strict layout, or broken with ``malformed_share``."""
    rng = random.Random(config.seed)
    examples = []
    for row in rows:
        think, response = row["think"].strip(), row["response"].strip()
        broken = rng.random() < config.malformed_share
        examples.append((to_messages(row["prompt"], system_prompt),
                         malform(think, response, rng) if broken else layout(think, response)))
    return examples


def build_examples(config: WarmStart, prompts: list[str] | None = None) -> list[tuple[list[dict], str]]:
    """The recipe's examples: from its JSONL file, or synthetic over ``prompts`` (the training prompts)."""
    if config.data == SYNTHETIC:
        if not prompts:
            prompts = [r.prompt for r in check_prompts(project_path("datasets/smalltalk.csv"))]
        return synthetic_examples(prompts, config, config.system_prompt())
    return format_examples(read_format_examples(config.data), config, config.system_prompt())


def encode(tokenizer, examples: list[tuple[list[dict], str]]):
    """Right-padded input ids and labels with the prompt and padding masked out (-100)."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    ids, labels = [], []
    for messages, completion in examples:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(torch.tensor(prompt_ids + completion_ids))
        labels.append(torch.tensor([-100] * len(prompt_ids) + completion_ids))
    return (pad_sequence(ids, batch_first=True, padding_value=tokenizer.pad_token_id),
            pad_sequence(labels, batch_first=True, padding_value=-100),
            pad_sequence([torch.ones_like(row) for row in ids], batch_first=True))


def warm_start(config: WarmStart, prompts: list[str] | None = None) -> Path:
    """Train ``config.model`` on the recipe's examples; write a plain model folder to ``config.output``; return it."""
    from .modeling import cpu_threads, resolve_model_name

    out_dir = check_new_folder(config.output, "warmstart --output")
    if config.model == "tiny" and config.lora_rank and config.learning_rate <= WarmStart.learning_rate:
        # A LoRA at a real model's learning rate barely moves random weights (loss 6.80 -> 6.78 in 60 steps).
        logger.warning("The tiny model has random weights; this recipe (LoRA rank %d, learning rate %g) suits a real "
                       "instruct model and will barely change it. The demo's recipe for it: --data %s --steps %d "
                       "--batch-size %d --learning-rate %g --lora-rank 0.", config.lora_rank, config.learning_rate,
                       DEMO_RECIPE.data, DEMO_RECIPE.steps, DEMO_RECIPE.batch_size, DEMO_RECIPE.learning_rate)
    examples = build_examples(config, prompts)  # before the model loads: a bad file costs seconds
    model_dir = resolve_model_name(config.model)
    started = time.monotonic()
    with cpu_threads(config.threads):
        model, tokenizer = supervised_pass(model_dir, examples, config)
    check_finite_model(model, f"The warm start of {config.model}", f"Nothing was written to {out_dir}. The "
                       f"supervised pass diverged: run it again with a lower --learning-rate (now "
                       f"{config.learning_rate:g}).")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    logger.info("warm start of %s: %d examples, %d steps, %.0f s -> %s", config.model, len(examples), config.steps,
                time.monotonic() - started, out_dir)
    return out_dir


def supervised_pass(model_dir: str, examples: list[tuple[list[dict], str]], config: WarmStart):
    """(model, tokenizer) after completion-only NLL on batches drawn with replacement, with a LoRA merged afterwards
    or every weight (fp32). Not ``SFTTrainer``: TRL 1.15 patches in its Triton fused LM head, far too slow on a CPU."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(config.seed)
    device = "cuda" if config.lora_rank and torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # fp32 on CPU (bf16 matmuls there are slow); a LoRA pass saves the merged weights in the model's own dtype.
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    saved_dtype = (AutoConfig.from_pretrained(model_dir).dtype or torch.float32 if config.lora_rank
                   else model.config.dtype)
    if config.lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=config.lora_rank, lora_alpha=config.lora_rank, lora_dropout=0.0, bias="none",
            target_modules=lora_targets(model_dir, LORA_TARGET_MODULES), task_type="CAUSAL_LM"))
    input_ids, labels, mask = encode(tokenizer, examples)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=config.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    for step in tqdm(range(config.steps), desc="warm start", unit="step", mininterval=5):
        batch = torch.randint(len(input_ids), (config.batch_size,), generator=generator)
        # LoRA: cut the batch's common right padding (speed). Not for the full fine-tune: the learning proof's
        # recorded runs used whole rows, and its seeds are sensitive to the last bit.
        width = int(mask[batch].sum(1).max()) if config.lora_rank else input_ids.shape[1]
        loss = model(input_ids=input_ids[batch, :width].to(device), attention_mask=mask[batch, :width].to(device),
                     labels=labels[batch, :width].to(device)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step == config.steps - 1:
            logger.info("warm start step %d: loss %.3f", step, loss.item())
    if config.lora_rank:
        model = model.merge_and_unload()
    return model.to(saved_dtype), tokenizer
