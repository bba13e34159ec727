"""Verifiable arithmetic: read the final number of a ``<response>`` and reward it when it equals the answer.

    from sarashina_grpo.arithmetic import extract_answer
    extract_answer("<think>\\n300×4=1200\\n</think>\\n<response>\\n合計は１，２００円です。\\n</response>")  # 1200.0

Reading rules (docs/arithmetic.md): only ``<response>`` counts, its *last* number is the answer (as GSM8K graders
do), full-width text is NFKC-normalised, ``万`` multiplies, a minus right after a digit is a range ("3-5").
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


def extract_answer(text) -> float | None:
    """The last number of the ``<response>`` section as a float; ``None`` without a response or a number in it."""
    try:
        _, response = split_sections(text)
        if response is None:
            return None
        response = unicodedata.normalize("NFKC", response).translate(MINUS_SIGNS)
        matches = list(NUMBER_RE.finditer(response))
        if not matches:
            return None
        match = matches[-1]
        value = Decimal(match["value"].replace(",", ""))
        if match["man"]:
            value = value * 10_000 + Decimal((match["rest"] or "0").replace(",", ""))
        return float(-value if match["sign"] else value)
    except (ValueError, ArithmeticError, InvalidOperation, TypeError):
        return None


def expected_value(answer) -> float | None:
    """An ``answer`` cell as a finite number (read as a response is: "−6" and "１，２００" are numbers), else None."""
    try:
        if isinstance(answer, str):
            answer = unicodedata.normalize("NFKC", answer).translate(MINUS_SIGNS).replace(",", "")
        value = float(answer)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def is_correct(text, answer) -> bool:
    """The response's final number equals ``answer`` (a number or a string such as ``"1,200"``), up to float
    rounding (0.1 + 0.2 counts as 0.3); an unusable or non-finite answer is never matched."""
    expected, got = expected_value(answer), extract_answer(text)
    return None not in (got, expected) and math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)
