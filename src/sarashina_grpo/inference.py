"""Generate with the base model or a trained checkpoint, one prompt, a batch, or a multi-turn chat.

    sarashina-grpo infer --model artifact/outputs/<run>/checkpoint-500 "週末は何をしようかな？"
    sarashina-grpo infer --model tiny --role-file my_role.txt "このサボテン、いくら？"

A ``role`` (persona or scenario, see ``roles.py``) is added to the system prompt after its format instructions.
"""

from __future__ import annotations

import errno
import logging
import typing
from dataclasses import dataclass, field

from .data import ordinal, text_problem, to_messages
from .project import SYSTEM_PROMPT, SettingsError
from .roles import read_role, with_role

if typing.TYPE_CHECKING:
    from .config import Settings

__all__ = ["Chat", "GenerationSettings", "answer", "chat_loop", "check_prompt_texts", "generate", "generate_counted",
           "load_for_inference", "read_role", "with_role"]

logger = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    """How to generate; checked on construction by ``preflight.check_generation``, as ``infer``/``eval``'s flags are."""

    max_new_tokens: int = 512
    do_sample: bool = False  # greedy by default: reproducible outputs to compare checkpoints
    temperature: float = 0.7
    top_p: float = 0.95
    batch_size: int = 8

    def __post_init__(self):
        from .preflight import check_generation  # preflight imports much this module does not need

        try:
            check_generation(self.max_new_tokens, self.do_sample, self.temperature, self.top_p, self.batch_size)
        except SettingsError as err:
            raise SettingsError(f"GenerationSettings: {err}") from None


def load_for_inference(settings: Settings, *, threads: int | None = None):
    """(model, tokenizer) for generation: a checkpoint's LoRA applied, none added; ``threads``: torch's CPU threads."""
    from .modeling import load_model, use_cpu_threads
    from .noise import import_unsloth

    use_cpu_threads(threads)
    FastLanguageModel = import_unsloth().FastLanguageModel
    model, tokenizer = load_model(settings, lora=False)
    FastLanguageModel.for_inference(model)
    tokenizer.padding_side = "left"  # decoder-only batches must be left-padded
    return model, tokenizer


def generate(model, tokenizer, conversations: list[list[dict]], gen: GenerationSettings | None = None,
             progress: bool = False) -> list[str]:
    """The assistant's reply to each conversation (a list of chat messages), in order."""
    return [text for text, _ in generate_counted(model, tokenizer, conversations, gen, progress)]


def count_generated(row, stop_ids: set[int], pad_id: int | None) -> int:
    """Tokens generated in one row of new ids: up to and including the first stop token, else the non-padding ones."""
    ids = row.tolist()
    stop = next((i + 1 for i, token in enumerate(ids) if token in stop_ids), None)
    return stop if stop is not None else sum(token != pad_id for token in ids)


def generate_counted(model, tokenizer, conversations: list[list[dict]], gen: GenerationSettings | None = None,
                     progress: bool = False) -> list[tuple[str, int]]:
    """(reply, generated token count) per conversation: the ids generated, not the reply re-tokenized (maybe longer)."""
    import torch
    from tqdm.auto import tqdm

    gen = gen or GenerationSettings()
    replies: list[tuple[str, int]] = []
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stop_ids = {*(eos if isinstance(eos, list | tuple) else [eos]), tokenizer.eos_token_id} - {None}
    sampling = dict(temperature=gen.temperature, top_p=gen.top_p) if gen.do_sample else {}
    starts = range(0, len(conversations), gen.batch_size)
    for start in tqdm(starts, desc="generating", disable=not progress, unit="batch"):
        batch = conversations[start:start + gen.batch_size]
        texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in batch]
        # The chat template already writes every special token it needs.
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=gen.max_new_tokens, do_sample=gen.do_sample,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
        new_tokens = out[:, enc["input_ids"].shape[1]:]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        replies += [(text, count_generated(row, stop_ids, tokenizer.pad_token_id))
                    for text, row in zip(texts, new_tokens, strict=True)]
    return replies


def chat_loop(chat: Chat, read=input, write=print) -> None:
    """Chat at a ``you>`` prompt; an empty line, Ctrl-D, Ctrl-C or a closed stdin ends it cleanly (no traceback)."""
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("")  # the shell's prompt then starts on a line of its own
            return
        except (RuntimeError, OSError, ValueError) as err:
            # no stdin at all: closed (`<&-`: "lost sys.stdin"), a descriptor that no longer reads, a closed file
            if ("lost sys.stdin" in str(err) or "closed file" in str(err)
                    or (isinstance(err, OSError) and err.errno == errno.EBADF)):
                return
            raise
        if not line:
            return
        write(chat.say(line))


@dataclass
class Chat:
    """A multi-turn chat under the system prompt (plus ``role``); ``say`` returns the reply and remembers both turns."""

    model: object
    tokenizer: object
    system_prompt: str = SYSTEM_PROMPT
    gen: GenerationSettings = field(default_factory=GenerationSettings)
    messages: list[dict] = field(default_factory=list)
    role: str | None = None

    def __post_init__(self):
        if not self.messages:
            self.messages = [{"role": "system", "content": with_role(self.system_prompt, self.role)}]

    def say(self, text: str) -> str:
        if problem := text_problem(text):
            raise SettingsError(f"The chat turn {problem}: say something, or end the chat.")
        self.messages.append({"role": "user", "content": text})
        reply = generate(self.model, self.tokenizer, [self.messages], self.gen)[0]
        self.messages.append({"role": "assistant", "content": reply})
        return reply


def answer(model, tokenizer, prompts: list[str], gen: GenerationSettings | None = None,
           system_prompt: str = SYSTEM_PROMPT, progress: bool = False, role: str | None = None) -> list[str]:
    """Single-turn replies to plain prompts under the system prompt (plus ``role``, if any)."""
    if isinstance(prompts, str):  # iterated, a string is one prompt per character
        raise SettingsError(f"answer() takes a list of prompts, got the text {prompts[:40]!r}; for one prompt give "
                            "[prompt].")
    check_prompt_texts(prompts)
    return generate(model, tokenizer, [to_messages(p, with_role(system_prompt, role)) for p in prompts], gen, progress)


def check_prompt_texts(prompts: list[str]) -> None:
    """Each prompt is text a reader sees (``data.text_problem``); the error counts them as the user gave them."""
    for n, prompt in enumerate(prompts, 1):
        if problem := text_problem(prompt):
            raise SettingsError(f"The {ordinal(n)} prompt {problem}: write the text to answer, or leave it out.")
