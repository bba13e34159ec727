"""Japanese purity of generated text by Unicode script (offline, deterministic, no model).

    japanese_purity("まず考えます。Let me think.")   # 7 / (7 + 10) ≈ 0.41

Purity is Japanese characters (Hiragana, Katakana, Han, CJK punctuation, ``JAPANESE_PUNCTUATION``) over those plus
foreign letters, ``None`` with neither; digits, punctuation, emoji, the tags and ``ALLOWED_LATIN`` units are neutral
("5km走る" stays fully Japanese). A Latin run (≥ ``LATIN_RUN_WORDS`` words) is the drift a ratio can hide.
"""

from __future__ import annotations

from typing import NamedTuple

import regex

LATIN_RUN_WORDS = 3
# Units and abbreviations a Japanese answer writes in Latin letters; matched as whole tokens, case-sensitive.
ALLOWED_LATIN = frozenset("mm cm m km g mg kg ml mL L dl dL cc kcal cal W kW kWh V A Hz kHz MHz GHz B KB MB GB TB bps "
                          "Mbps min ms sec ha a.m p.m am pm AM PM AI IT PC OK SNS URL USB Wi-Fi CPU GPU DIY".split())
JAPANESE_PUNCTUATION = "ー・！？（）：；，．｛｝［］〜～"  # Script=Common, so not in the classes below
JAPANESE_CLASS = r"[\p{Hiragana}\p{Katakana}\p{Han}\u3001-\u303F" + regex.escape(JAPANESE_PUNCTUATION) + "]"
JAPANESE_RE = regex.compile(JAPANESE_CLASS)
FOREIGN_LETTER_RE = regex.compile(r"(?!" + JAPANESE_CLASS + r")\p{L}")
# A Latin token: letters with inner hyphens, apostrophes or dots (Wi-Fi, don't, a.m); digits may follow (kWh2).
LATIN_WORD = r"\p{Latin}+(?:['’.\-]\p{Latin}+)*"
LATIN_WORD_RE = regex.compile(LATIN_WORD)
LATIN_RUN_RE = regex.compile(LATIN_WORD + r"(?:[\s,.;:!?\"'()]+" + LATIN_WORD + r"){" + str(LATIN_RUN_WORDS - 1) + ",}")
THINK_RE = regex.compile(r"<think>(.*?)(?:</think>|$)", regex.DOTALL)
RESPONSE_RE = regex.compile(r"<response>(.*?)(?:</response>|$)", regex.DOTALL)
TAG_RE = regex.compile(r"</?(?:think|response)>")


class ScriptCounts(NamedTuple):
    japanese: int
    foreign: int


def script_counts(text: str) -> ScriptCounts:
    """Japanese characters and foreign letters in ``text``; allowed Latin tokens and the XML tags count as neither."""
    if not isinstance(text, str):
        return ScriptCounts(0, 0)
    text = TAG_RE.sub(" ", text)
    text = LATIN_WORD_RE.sub(lambda m: " " if m.group(0) in ALLOWED_LATIN else m.group(0), text)
    return ScriptCounts(len(JAPANESE_RE.findall(text)), len(FOREIGN_LETTER_RE.findall(text)))


def japanese_purity(text: str) -> float | None:
    """Share of Japanese characters among Japanese characters and foreign letters; ``None`` if there are none."""
    japanese, foreign = script_counts(text)
    return japanese / (japanese + foreign) if japanese + foreign else None


def has_latin_run(text: str) -> bool:
    return isinstance(text, str) and LATIN_RUN_RE.search(text) is not None


def split_sections(text: str) -> tuple[str | None, str | None]:
    """(think, response) contents; a section is ``None`` when its opening tag is missing. An unclosed section runs
    to the end of the text, so a truncated completion is still judged."""
    if not isinstance(text, str):
        return None, None
    think, response = THINK_RE.search(text), RESPONSE_RE.search(text)
    return (think.group(1) if think else None), (response.group(1) if response else None)


def consistency_score(text: str) -> float:
    """The ``<think>`` purity, or the lower of think and response purity with a response; 0 without a ``<think>``
    section or without letters in it: empty or missing thinking earns nothing."""
    think_purity, response_purity = (japanese_purity(section) for section in split_sections(text))
    if think_purity is None:
        return 0.0
    return think_purity if response_purity is None else min(think_purity, response_purity)
