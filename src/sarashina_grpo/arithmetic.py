"""Verifiable arithmetic: read the final number of a ``<response>`` and reward it when it equals the answer.

    from sarashina_grpo.arithmetic import extract_answer
    extract_answer("<think>\\n300×4=1200\\n</think>\\n<response>\\n合計は１，２００円です。\\n</response>")  # 1200.0

The word problems come from ``scripts/make_arithmetic.py`` (``datasets/arithmetic.csv``, held-out
``datasets/arithmetic_eval.csv``); their ``answer`` column reaches the reward as the ``answer`` keyword, because
TRL passes every dataset column to reward functions by name.

Reading rules (tests/test_arithmetic.py is the specification):
- only the ``<response>`` section counts (an unclosed one runs to the end of the text); numbers that appear only
  in ``<think>``, or text without a ``<response>`` tag, give ``None``;
- the *last* number in it is the answer (as GSM8K graders do): "300円が4個で1,200円" reads 1200;
- full-width digits and signs are normalised (NFKC): ``１，２００．５`` is 1200.5;
- thousands separators are commas between groups of exactly three digits (``1,200``, ``12,345,678``); a comma
  followed by anything else separates numbers, so "3,4" reads 3 then 4;
- a minus sign (``-``, ``−``, ``－``, or the word ``マイナス``) counts only when no digit comes right before it,
  so a range "3-5" reads 3 then 5;
- ``万`` multiplies: ``1万2,000円`` and ``1.2万円`` are 12000; other kanji numerals (三千) are not read;
- units and words after the number (円, 個, 分, km, %, です) are ignored: "25%" reads 25.
"""

from __future__ import annotations

import math
import re
import unicodedata
from decimal import Decimal, InvalidOperation

from .purity import split_sections

CORRECT_REWARD = 1.0  # twice a format reward's 0.5: a right answer outweighs any single format reward
# NFKC leaves these minus signs alone; they become "-" before parsing.
MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\uff0d": "-"})
# A comma group must be exactly three digits: "1,2345" is 1 and 2345, not 1,234 and 5.
NUMBER = r"\d{1,3}(?:,\d{3}(?!\d))+(?:\.\d+)?|\d+(?:\.\d+)?"
# One number: optional sign (not right after a digit, so "3-5" is a range), a value, an optional 万 part.
NUMBER_RE = re.compile(
    rf"(?P<sign>(?<![\d.,])(?:-|マイナス)\s?)?(?P<value>{NUMBER})(?:\s?(?P<man>万)(?P<rest>{NUMBER})?)?",
    re.ASCII,  # after NFKC every digit we read is ASCII; other scripts' digits are not numbers here
)
TEN_THOUSAND = Decimal(10_000)


def _decimal(text: str) -> Decimal:
    return Decimal(text.replace(",", ""))


def numbers_in(text: str) -> list[Decimal]:
    """Every number of ``text`` in order, exact, read by the rules of the module docstring."""
    text = unicodedata.normalize("NFKC", text).translate(MINUS_SIGNS)
    found = []
    for match in NUMBER_RE.finditer(text):
        value = _decimal(match["value"])
        if match["man"]:
            value = value * TEN_THOUSAND + (_decimal(match["rest"]) if match["rest"] else 0)
        found.append(-value if match["sign"] else value)
    return found


def extract_answer(text) -> float | None:
    """The last number of the ``<response>`` section as a float; ``None`` without a response or a number in it."""
    try:
        _, response = split_sections(text)
        if response is None:
            return None
        numbers = numbers_in(response)
        return float(numbers[-1]) if numbers else None
    except (ValueError, ArithmeticError, InvalidOperation, TypeError):
        return None


def parse_expected(answer) -> float | None:
    """The dataset's answer cell as a finite float (``"1200"``, ``1200``, ``"12.5"``); ``None`` when unusable."""
    try:
        value = float(answer.replace(",", "") if isinstance(answer, str) else answer)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def is_correct(text, answer) -> bool:
    """The response's final number equals ``answer`` (up to float rounding: 0.1 + 0.2 counts as 0.3)."""
    expected, got = parse_expected(answer), extract_answer(text)
    if expected is None or got is None:
        return False
    return math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)
