"""Load the prompt CSV (columns ``prompt,lang``) into a ``datasets.Dataset`` of ``[system, user]`` chat prompts.

Only rows whose ``lang`` is the target language (Japanese by default) are kept. Every problem is reported with
the file and the line it is on: fatal ones raise ``DataError``, recoverable ones (blank prompts, duplicates,
prompts over the length limit) are skipped with one warning that counts them and names their lines.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .config import SYSTEM_PROMPT

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("prompt", "lang")
# ISO 639-1/639-3 codes with an optional region or script subtag: ja, en, zh-Hant, pt-BR.
LANG_CODE_RE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?")
MAX_LINES_NAMED = 8  # lines named in one message; the rest are counted


class DataError(ValueError):
    """The prompt file cannot be used; the message names the file, line and field, and what to do."""


@dataclass
class Row:
    line: int  # 1-based line of the file where the row starts (the header is line 1)
    prompt: str
    lang: str


def _lines(lines: list[int]) -> str:
    named = ", ".join(str(n) for n in lines[:MAX_LINES_NAMED])
    more = len(lines) - MAX_LINES_NAMED
    return named + (f" and {more} more" if more > 0 else "")


def read_text(path: Path) -> str:
    """The file's text: UTF-8 (a BOM is fine), else cp932/Shift_JIS with a warning; otherwise a DataError."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as utf8_err:
        try:
            text = raw.decode("cp932")  # cp932 is Windows' superset of Shift_JIS, what Excel writes in Japan
        except UnicodeDecodeError:
            raise DataError(
                f"{path}: not valid UTF-8 (byte {utf8_err.start}) nor Shift_JIS/cp932. "
                "Save the file as UTF-8 (Excel: 'CSV UTF-8')."
            ) from None
        logger.warning("%s is not UTF-8; decoded it as Shift_JIS (cp932). Save it as UTF-8 to avoid guessing.", path)
        return text


def read_rows(path: str | Path) -> list[Row]:
    """Parse ``path`` into rows, checking the header and the ``lang`` codes; prompts are stripped."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Prompt file not found: {path}. Expected a CSV with columns prompt,lang.")
    if path.is_dir():
        raise DataError(f"{path} is a folder; expected a CSV file with columns prompt,lang.")
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path} is empty: expected a header line 'prompt,lang' and one row per prompt.")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"{path}: header has no {' or '.join(repr(c) for c in missing)} column (found {header}). "
            "The first line must name the columns, e.g. 'prompt,lang'."
        )
    reader.fieldnames = header  # stripped names, so ' lang' still counts; extra columns are ignored
    rows, bad_lang = [], []
    line = 2
    for record in reader:
        prompt = (record.get("prompt") or "").strip()
        lang = (record.get("lang") or "").strip().lower()
        if lang and not LANG_CODE_RE.fullmatch(lang):
            bad_lang.append((line, lang))
        rows.append(Row(line, prompt, lang))
        line = reader.line_num + 1
    if bad_lang:
        shown = "; ".join(f"line {n}: {v!r}" for n, v in bad_lang[:MAX_LINES_NAMED])
        raise DataError(
            f"{path}: field 'lang' holds {len(bad_lang)} value(s) that are not language codes ({shown}). "
            "Use ISO 639-1 codes such as 'ja' or 'en'."
        )
    return rows


def select_rows(rows: list[Row], path: Path, lang: str, prompt_too_long=None) -> list[Row]:
    """Keep rows in ``lang``; skip blank, duplicate and over-long prompts with one warning per kind."""
    blank = [r.line for r in rows if not r.prompt]
    no_lang = [r.line for r in rows if r.prompt and not r.lang]
    if blank:
        logger.warning("%s: skipped %d blank prompt(s) on line(s) %s.", path, len(blank), _lines(blank))
    if no_lang:
        logger.warning("%s: skipped %d row(s) with no 'lang' on line(s) %s.", path, len(no_lang), _lines(no_lang))
    kept = [r for r in rows if r.prompt and r.lang == lang]
    if not kept:
        langs = sorted({r.lang for r in rows if r.lang})
        raise DataError(
            f"{path}: no rows with lang == {lang!r} (found {langs or 'none'}); nothing to train on. "
            f"Add rows whose 'lang' column is {lang!r}."
        )
    seen, unique, dupes = set(), [], []
    for r in kept:
        if r.prompt in seen:
            dupes.append(r.line)
        else:
            seen.add(r.prompt)
            unique.append(r)
    if dupes:
        logger.warning("%s: skipped %d duplicate prompt(s) on line(s) %s.", path, len(dupes), _lines(dupes))
    if prompt_too_long is None:
        return unique
    too_long = [r.line for r in unique if prompt_too_long(r.prompt)]
    if too_long:
        logger.warning(
            "%s: skipped %d prompt(s) longer than the prompt limit on line(s) %s (they are not truncated).",
            path, len(too_long), _lines(too_long),
        )
        unique = [r for r in unique if r.line not in set(too_long)]
        if not unique:
            raise DataError(f"{path}: every {lang!r} prompt is longer than the prompt limit; raise it or shorten them.")
    return unique


def to_messages(prompt: str, system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]


def load_prompts(
    path: str | Path,
    *,
    lang: str = "ja",
    system_prompt: str = SYSTEM_PROMPT,
    tokenizer=None,
    max_prompt_length: int | None = None,
):
    """A ``datasets.Dataset`` with a ``prompt`` column of ``[system, user]`` messages and the row's ``lang``.

    With a ``tokenizer`` and ``max_prompt_length``, prompts whose chat-formatted length exceeds the limit are
    skipped with a warning (TRL would otherwise feed them whole).
    """
    from datasets import Dataset

    path = Path(path)
    too_long = None
    if tokenizer is not None and max_prompt_length:
        def too_long(prompt: str) -> bool:
            ids = tokenizer.apply_chat_template(
                to_messages(prompt, system_prompt), add_generation_prompt=True, tokenize=True
            )
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            return len(ids) > max_prompt_length

    rows = select_rows(read_rows(path), path, lang, too_long)
    logger.info("%s: %d %r prompts.", path, len(rows), lang)
    return Dataset.from_list([{"prompt": to_messages(r.prompt, system_prompt), "lang": r.lang} for r in rows])
