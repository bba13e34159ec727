"""Japanese purity of generated text, measured by Unicode script (offline, deterministic, no model); metrics only
(the ``japanese_purity`` reward built on them lives in ``rewards.py``).

    from sarashina_grpo.purity import japanese_purity, has_latin_run, split_sections
    japanese_purity("まず考えます。Let me think.")   # 7 / (7 + 10) ≈ 0.41

Definitions (the evaluation metrics and the ``japanese_purity`` reward both use these):

- **Japanese character**: Script=Hiragana, Katakana or Han (kanji), the prolonged sound mark ``ー``, the marks of
  the CJK Symbols and Punctuation block (``、。「」『』〜々〆`` …, U+3001–U+303F) and the full-width punctuation
  ``！？（）：；，．・``. ``ー``, ``、`` and ``。`` are Script=Common in Unicode, so they are listed explicitly.
  Han alone cannot tell Japanese from Chinese: a Chinese sentence scores as pure.
- **Foreign letter**: any other letter (``\\p{L}``): Latin (full-width ``Ａ`` included), Cyrillic, Hangul, Greek …
- **Neutral** (counted in neither): digits, ASCII punctuation and symbols, whitespace, emoji, and *allowed Latin*:
  unit and common abbreviation tokens standing alone (``km``, ``kg``, ``cm``, ``kWh``, ``GB``, ``AI`` … see
  ``ALLOWED_LATIN``), so that "5km走る" stays fully Japanese.
- **Purity** = Japanese characters / (Japanese characters + foreign letters), in [0, 1]; ``None`` when the text has
  neither (empty, digits only): there is nothing to judge, and the metrics average over judged texts only.
- **Latin run**: at least ``LATIN_RUN_WORDS`` (3) consecutive Latin words separated only by spaces or ASCII
  punctuation, e.g. "Let me think". It marks the drift the article saw, which a ratio can hide in a long answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import regex

LATIN_RUN_WORDS = 3
# Units and abbreviations a Japanese answer writes in Latin letters; matched as whole tokens, case-sensitive.
ALLOWED_LATIN = frozenset(
    "mm cm m km g mg kg ml mL L dl dL cc kcal cal W kW kWh V A Hz kHz MHz GHz B KB MB GB TB bps Mbps "
    "min ms sec ha a.m p.m am pm AM PM AI IT PC OK SNS URL USB Wi-Fi CPU GPU DIY".split()
)
JAPANESE_PUNCTUATION = "ー・！？（）：；，．｛｝［］〜～"
JAPANESE_CLASS = r"[\p{Hiragana}\p{Katakana}\p{Han}\u3001-\u303F" + regex.escape(JAPANESE_PUNCTUATION) + "]"
JAPANESE_RE = regex.compile(JAPANESE_CLASS)
FOREIGN_LETTER_RE = regex.compile(r"(?!" + JAPANESE_CLASS + r")\p{L}")
# A Latin token: letters with inner hyphens, apostrophes or dots (Wi-Fi, don't, a.m); digits may follow (kWh2).
LATIN_WORD = r"\p{Latin}+(?:['’.\-]\p{Latin}+)*"
LATIN_WORD_RE = regex.compile(LATIN_WORD)
LATIN_RUN_RE = regex.compile(
    LATIN_WORD + r"(?:[\s,.;:!?\"'()]+" + LATIN_WORD + r"){" + str(LATIN_RUN_WORDS - 1) + ",}"
)
THINK_RE = regex.compile(r"<think>(.*?)(?:</think>|$)", regex.DOTALL)
RESPONSE_RE = regex.compile(r"<response>(.*?)(?:</response>|$)", regex.DOTALL)
TAG_RE = regex.compile(r"</?(?:think|response)>")


@dataclass(frozen=True)
class ScriptCounts:
    japanese: int
    foreign: int

    @property
    def purity(self) -> float | None:
        total = self.japanese + self.foreign
        return self.japanese / total if total else None


def script_counts(text: str) -> ScriptCounts:
    """Japanese characters and foreign letters in ``text``; allowed Latin tokens and the XML tags count as neither."""
    if not isinstance(text, str):
        return ScriptCounts(0, 0)
    text = TAG_RE.sub(" ", text)
    text = LATIN_WORD_RE.sub(lambda m: " " if m.group(0) in ALLOWED_LATIN else m.group(0), text)
    return ScriptCounts(len(JAPANESE_RE.findall(text)), len(FOREIGN_LETTER_RE.findall(text)))


def japanese_purity(text: str) -> float | None:
    """Share of Japanese characters among Japanese characters and foreign letters; ``None`` if there are none."""
    return script_counts(text).purity


def latin_runs(text: str) -> list[str]:
    """Runs of ≥ ``LATIN_RUN_WORDS`` consecutive Latin words, in order."""
    if not isinstance(text, str):
        return []
    return [m.group(0) for m in LATIN_RUN_RE.finditer(text)]


def has_latin_run(text: str) -> bool:
    return bool(latin_runs(text))


def split_sections(text: str) -> tuple[str | None, str | None]:
    """(think, response) contents; a section is ``None`` when its opening tag is missing. An unclosed section runs
    to the end of the text, so a truncated completion is still judged."""
    if not isinstance(text, str):
        return None, None
    think = THINK_RE.search(text)
    response = RESPONSE_RE.search(text)
    return (think.group(1) if think else None), (response.group(1) if response else None)


def consistency_score(text: str) -> float:
    """Language consistency of a completion in [0, 1]: the Japanese purity of its ``<think>`` section, or the
    lower of think and response purity when a response is present. 0 without a ``<think>`` section or without
    letters in it: empty or missing thinking earns nothing."""
    think, response = split_sections(text)
    think_purity = japanese_purity(think) if think is not None else None
    if think_purity is None:
        return 0.0
    response_purity = japanese_purity(response) if response is not None else None
    return think_purity if response_purity is None else min(think_purity, response_purity)
