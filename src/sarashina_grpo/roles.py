"""Roles: a persona or scenario added to the system prompt, and how much of the private thinking leaks out.

    from sarashina_grpo.roles import with_role
    system = with_role(SYSTEM_PROMPT, "あなたは100円のサボテンを3万円で売りたい商人です。安いことは隠してください。")

The model plans privately in ``<think>`` and says only what fits the role in ``<response>``. ``think_leak`` is the
share of the response's character 8-grams also in the thinking (0 nothing copied, 1 all). Eight characters are about
a short phrase: shorter n-grams match endings such as 「と思います。」 by chance, longer ones miss a copied clause.
"""

from __future__ import annotations

import re
from pathlib import Path

from .project import MAX_PROMPT_CHARS, SettingsError
from .purity import TAG_RE, split_sections
from .tables import compressed_problem, file_problem

# Placed after the format instructions: the layout stays what the rewards check, the role adds who is speaking.
ROLE_HEADER = (
    "\n\n次の役になりきって会話してください。<think>と</think>の間は相手には見えません。"
    "本音や作戦はそこに書き、相手に伝える言葉だけを<response>と</response>の間に書きます。\n"
    "【役】\n"
)
LEAK_NGRAM = 8
_SPACE_RE = re.compile(r"\s+")


class RoleError(SettingsError):
    """A role file cannot be used; the message names the file and what to do (the CLI prints it as ``error:``)."""


def with_role(system_prompt: str, role: str | None) -> str:
    """``system_prompt`` with ``role`` appended after its format instructions; unchanged for a blank role."""
    # every caller's role and system prompt pass here: a number fails naming the setting, not inside strip()
    if role is not None and not isinstance(role, str):
        raise SettingsError(f"The role (CLI --role; notebook: ROLE) must be text, got {role!r} "
                            f"({type(role).__name__}); None: no role.")
    if not isinstance(system_prompt, str):
        raise SettingsError(f"The system prompt (CLI --system-prompt; notebook: SYSTEM_PROMPT) must be text, got "
                            f"{system_prompt!r} ({type(system_prompt).__name__}).")
    role = (role or "").strip()
    return f"{system_prompt}{ROLE_HEADER}{role}" if role else system_prompt


def read_role(path: str | Path) -> str:
    """The role text of a UTF-8 file (a BOM is fine), stripped; ``RoleError`` for a missing or empty file."""
    path = Path(path).expanduser()
    if problem := file_problem(path):  # a FIFO or /dev/zero would block or be read forever
        raise RoleError(f"Role file {path}: {problem}. Give a UTF-8 text file holding the role, or pass the role "
                        "as text (CLI --role, notebook ROLE).")
    try:
        text = path.read_text(encoding="utf-8-sig").strip()
    except UnicodeDecodeError as err:
        if problem := compressed_problem(path):
            raise RoleError(f"Role file {path} {problem}.") from None
        raise RoleError(f"Role file {path} is not UTF-8 (byte {err.start}); save it as UTF-8.") from None
    if len(text) > MAX_PROMPT_CHARS:
        raise RoleError(f"Role file {path} holds {len(text):,} characters; a role is limited to {MAX_PROMPT_CHARS:,} "
                        "(it goes into every prompt). Check that it is the right file, or shorten it.")
    if not text:
        raise RoleError(f"Role file {path} is empty: write the persona or scenario into it, e.g. "
                        "'あなたはサボテンを売る商人です。'")
    return text


def leak_share(think: str, response: str, n: int = LEAK_NGRAM) -> float | None:
    """Share of ``response``'s character n-grams that also occur in ``think``; None if the response has none."""
    think, response = (_SPACE_RE.sub(" ", text).strip() for text in (think, response))
    grams = [response[i:i + n] for i in range(len(response) - n + 1)]
    private = {think[i:i + n] for i in range(len(think) - n + 1)}
    return sum(g in private for g in grams) / len(grams) if grams else None


def think_leak(text: str) -> float | None:
    """How much of the completion's thinking is repeated verbatim in its response (module docstring)."""
    think, response = split_sections(text)
    # An unclosed <think> runs to the end of the text: cut it where the response starts, or it would contain it.
    return None if think is None or response is None else leak_share(think.split("<response>")[0], response)


NOTHING = "(なし)"
# A tag cut off by max_new_tokens ("</resp") at the end of a reply: a fragment, not speech.
CUT_TAG_RE = re.compile(r"</?[a-z]*$")


def shown_turn(reply: str) -> tuple[str, str]:
    """(thinking, speech) of a role-play reply without tags or tag fragments; a reply with neither section, or text
    after ``</think>`` outside any ``<response>``, is speech, so nothing the model said is hidden."""
    def shown(text: str) -> str:
        return CUT_TAG_RE.sub("", TAG_RE.sub("", text)).strip() or NOTHING

    think, response = split_sections(reply)
    if think is None and response is None:
        return NOTHING, shown(reply)
    think = (think or "").split("<response>")[0]  # an unclosed <think> runs to the end: the response is not thinking
    return shown(think), shown(reply.partition("</think>")[2] if response is None else response)
