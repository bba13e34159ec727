"""Load the prompt file (columns ``prompt,lang``) into a ``datasets.Dataset`` of ``[system, user]`` chat prompts.

The file is a CSV, or by its suffix JSON Lines or Parquet; ``tables.py`` reads all three into the same header and
line-numbered records and refuses what is wrong with the file as a file (missing, a folder or pipe, too big, its
encoding, its quoting). This module checks what the columns hold.

Only rows whose ``lang`` is the target language (Japanese by default) are kept. Every problem names the file and
the line (docs/troubleshooting.md lists every message):
- fatal (``DataError``): no ``prompt`` or ``lang`` header, a column named like one of TRL's reward arguments, a
  ``lang`` that is not an ISO 639-1 code (all offending lines listed), no usable row in the target language;
- skipped with one warning per kind that counts them and names their lines: blank or NaN prompts, prompts made only
  of invisible characters (zero-width space, word joiner, BOM, other format/control characters) or holding control
  characters (NUL, ESC, …; tab and line breaks are fine), rows without ``lang``, duplicates, prompts over the limit;
- silently fine: extra columns (passed through to the dataset, e.g. ``answer`` for rewards), header case/spaces,
  region subtags (``ja-JP`` counts as ``ja``);
- an optional ``role`` column (or ``system``, same meaning): that row's persona/scenario, added to its system prompt
  after the format instructions (``roles.with_role``) instead of being passed through; a blank cell means no role.
  The same prompt under two roles is not a duplicate.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .project import HOME_VARIABLE, SYSTEM_PROMPT, project_dir
from .roles import with_role
from .tables import MAX_LINES_NAMED, DataError, lines_named, read_table

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("prompt", "lang")
ROLE_COLUMNS = ("role", "system")  # optional; the first present is the row's role
# TRL calls every reward function with these keyword arguments and then with every dataset column by name: a column
# of the same name would collide with them (TRL 1.15 GRPOTrainer._calculate_rewards).
RESERVED_COLUMNS = ("prompts", "completions", "completion", "completion_ids", "trainer_state", "log_extra",
                    "log_metric", "environments")
# ISO 639-1 language codes. A row's `lang` may add a region or script subtag (ja-JP, zh-Hant, pt_BR); only the
# language part is compared, so "ja-JP" rows count as "ja".
ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee el en
eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv
ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne
ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st
su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
""".split())
LANG_CODE_RE = re.compile(r"([a-z]{2})(?:[-_][a-z0-9]{2,8})*")
# Codes people write instead of ISO 639-1 ones; named in the error so the fix is obvious.
LANG_SUGGESTIONS = {
    "jp": "ja", "jpn": "ja", "japanese": "ja", "日本語": "ja", "eng": "en", "english": "en", "英語": "en",
    "cn": "zh", "chi": "zh", "zho": "zh", "chinese": "zh", "中国語": "zh",
}
# Cells pandas reads as NaN (and writes back as these words with na_rep): treated as blank, never as a prompt.
NA_MARKERS = frozenset({"nan", "none", "null", "na", "n/a", "#n/a"})
# Unicode categories that print nothing: format (Cf: U+200B zero-width space, U+2060 word joiner, U+FEFF BOM, …),
# control (Cc), and separators (Z*: spaces, which str.strip() already removes, and line/paragraph separators).
INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Zs", "Zl", "Zp"})
ALLOWED_CONTROLS = frozenset("\t\n\r")  # line breaks inside quoted prompts, tabs: ordinary text


@dataclass
class Row:
    line: int  # 1-based line of the file where the row starts (the header is line 1)
    prompt: str  # stripped; "" for blank and NaN cells
    lang: str  # ISO 639-1 language part, lower case ("ja" for "ja-JP"); "" when missing
    extra: dict[str, str] = field(default_factory=dict)  # other columns by (lower-case) header name, e.g. answer
    role: str = ""  # the row's role (column `role` or `system`), stripped; "" when none


def visible_text(text: str) -> str:
    """``text`` without the characters that print nothing; "" for a prompt a reader would see as blank."""
    return "".join(ch for ch in text if unicodedata.category(ch) not in INVISIBLE_CATEGORIES)


def control_characters(text: str) -> list[str]:
    """The control characters in ``text`` other than tab and line breaks, as ``U+0000``."""
    found = {ch for ch in text if unicodedata.category(ch) == "Cc" and ch not in ALLOWED_CONTROLS}
    return sorted(f"U+{ord(ch):04X}" for ch in found)


def _lang_code(value: str) -> str | None:
    """The ISO 639-1 part of ``value`` ("" when blank), or None when it is not a language code."""
    value = value.strip().lower()
    if not value or value in NA_MARKERS:
        return ""
    match = LANG_CODE_RE.fullmatch(value)
    return match.group(1) if match and match.group(1) in ISO_639_1 else None


def outside_the_project(path: Path) -> str:
    """A hint for a missing prompt file when the project folder holds no ``datasets/``: the command was most likely
    run outside the repository, where relative paths such as datasets/smalltalk.csv cannot be found."""
    home = project_dir()
    if path.exists() or (home / "datasets").is_dir():
        return ""
    return (f" Relative paths are read from the project folder, here {home}, which has no datasets/: run from the "
            f"repository's folder, or set ${HOME_VARIABLE} to it.")


def read_rows(path: str | Path) -> list[Row]:
    """Parse ``path`` (CSV; JSONL or Parquet by suffix) into rows, checking the columns and the ``lang`` codes.
    Extra columns go to ``Row.extra``. A Parquet row's ``line`` is its row number."""
    path = Path(path)
    try:
        header, records, csv_file = read_table(path)
    except DataError as err:
        raise DataError(f"{err}{outside_the_project(path)}") from None
    header = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    where = "header (line 1)" if csv_file else "columns"
    if missing:
        fix = ("The first line must name the columns, e.g. 'prompt,lang'." if csv_file
               else "Give every row the keys prompt and lang.")
        raise DataError(f"{path}: {where} has no {' or '.join(repr(c) for c in missing)} column (found {header}). "
                        f"{fix}")
    repeated = sorted({c for c in header if c and header.count(c) > 1})
    if repeated:  # the first of them would win silently, the others be dropped
        raise DataError(f"{path}: {where} names the column {repeated[0]!r} {header.count(repeated[0])} times (found "
                        f"{header}). Keep one column of each name.")
    reserved = [c for c in header if c in RESERVED_COLUMNS]
    if reserved:
        raise DataError(f"{path}: {where} has a column named {reserved[0]!r}, which is the name of an "
                        "argument TRL passes to every reward function. Rename that column.")
    prompt_at, lang_at = header.index("prompt"), header.index("lang")
    role_at = next((header.index(c) for c in ROLE_COLUMNS if c in header), None)
    extras = {name: at for at, name in enumerate(header) if name and name not in REQUIRED_COLUMNS and at != role_at}
    text_columns = {at: header[at] for at in (prompt_at, lang_at, role_at) if at is not None}
    rows, bad_lang = [], []
    for line, fields in records:
        check_text_cells(path, line, fields, text_columns)
        fields = [f if isinstance(f, str) else str(f) for f in fields]  # extra columns ride along as text
        prompt = fields[prompt_at].strip() if prompt_at < len(fields) else ""
        raw_lang = fields[lang_at] if lang_at < len(fields) else ""
        lang = _lang_code(raw_lang)
        if lang is None:
            bad_lang.append((line, raw_lang.strip()))
        extra = {name: fields[at].strip() if at < len(fields) else "" for name, at in extras.items()}
        role = fields[role_at].strip() if role_at is not None and role_at < len(fields) else ""
        rows.append(Row(line, "" if prompt.lower() in NA_MARKERS else prompt, lang or "", extra,
                        "" if role.lower() in NA_MARKERS else role))
    if bad_lang:
        raise DataError(f"{path}: {_bad_lang_message(bad_lang)}")
    if not rows:
        raise DataError(f"{path} has a header but no rows: add one row per prompt, e.g. 'こんにちは,ja'.")
    return rows


def check_text_cells(path: Path, line: int, fields: list, columns: dict[int, str]) -> None:
    """Raise ``DataError`` when a prompt, lang or role cell of a JSONL or Parquet row holds an object, a list, bytes
    or a struct: read as text they would be trained on in their Python spelling ("['a', 'b']", "b'\\xe6…'")."""
    for at, name in columns.items():
        value = fields[at] if at < len(fields) else ""
        if isinstance(value, str):
            continue
        kind = {dict: "an object", list: "a list", bytes: "bytes", bytearray: "bytes"}.get(type(value),
                                                                                         type(value).__name__)
        where = "row" if path.suffix.lower() == ".parquet" else "line"
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        fix = " (decode them first, e.g. df[col].str.decode('utf-8'))" if kind == "bytes" else ""
        raise DataError(f"{path}, {where} {line}: the {name!r} cell holds {kind} ({shown}), not text. Give it as a "
                        f"string{fix}.")


def _bad_lang_message(bad: list[tuple[int, str]]) -> str:
    def hint(value: str) -> str:
        better = LANG_SUGGESTIONS.get(value.lower())
        return f" (did you mean {better!r}?)" if better else ""

    shown = "; ".join(f"line {n}: {v!r}{hint(v)}" for n, v in bad[:MAX_LINES_NAMED])
    more = f"; and {len(bad) - MAX_LINES_NAMED} more" if len(bad) > MAX_LINES_NAMED else ""
    return (
        f"field 'lang' holds {len(bad)} value(s) that are not ISO 639-1 language codes ({shown}{more}). "
        "Use two-letter codes such as 'ja' or 'en' (a region is fine: 'ja-JP')."
    )


def warn_skipped(path: Path, lines: list[int], what: str, after: str = "") -> None:
    """One warning for the rows skipped for one reason: how many, and their lines."""
    if lines:
        logger.warning("%s: skipped %d %s on line(s) %s%s.", path, len(lines), what, lines_named(lines), after)


def select_rows(rows: list[Row], path: Path, lang: str, prompt_too_long=None) -> list[Row]:
    """Keep rows in ``lang``; skip blank, duplicate and over-long prompts with one warning per kind."""
    blank = [r.line for r in rows if not r.prompt]
    invisible = [r.line for r in rows if r.prompt and not visible_text(r.prompt)]
    controls = {r.line: control_characters(r.prompt) for r in rows if visible_text(r.prompt)}
    controls = {line: found for line, found in controls.items() if found}
    unusable = set(invisible) | set(controls)
    rows = [r for r in rows if r.line not in unusable]
    no_lang = [r.line for r in rows if r.prompt and not r.lang]
    warn_skipped(path, blank, "blank prompt(s)", " (empty, spaces or NaN)")
    warn_skipped(path, invisible, "prompt(s) made only of invisible characters (zero-width spaces, word joiners, BOMs, "
                 "control characters)")
    if controls:
        shown = list(controls.items())[:MAX_LINES_NAMED]
        named = "; ".join(f"line {line}: {', '.join(found)}" for line, found in shown)
        more = f"; and {len(controls) - MAX_LINES_NAMED} more" if len(controls) > MAX_LINES_NAMED else ""
        logger.warning("%s: skipped %d prompt(s) holding control characters (%s%s). Remove them; a NUL (U+0000) "
                       "often means part of the file is binary or UTF-16.", path, len(controls), named, more)
    warn_skipped(path, no_lang, "row(s) with no 'lang'")
    kept = [r for r in rows if r.prompt and r.lang == lang]
    if not kept:
        langs = sorted({r.lang for r in rows if r.lang and r.prompt})
        raise DataError(
            f"{path}: no rows with lang == {lang!r} and a non-blank prompt (found {langs or 'none'}); nothing to "
            "train on. "
            f"Add rows whose 'lang' column is {lang!r}."
        )
    seen, unique, dupes = set(), [], []
    for r in kept:
        if (r.prompt, r.role) in seen:
            dupes.append(r.line)
        else:
            seen.add((r.prompt, r.role))
            unique.append(r)
    warn_skipped(path, dupes, "duplicate prompt(s)")
    return unique if prompt_too_long is None else drop_too_long(unique, path, prompt_too_long)


def drop_too_long(rows: list[Row], path: Path, prompt_too_long) -> list[Row]:
    """Skip rows whose prompt is over the limit, naming their lines: TRL 1.x would feed them whole."""
    too_long = {r.line for r in rows if prompt_too_long(r.prompt)}
    if not too_long:
        return rows
    warn_skipped(path, sorted(too_long), "prompt(s) longer than the prompt limit", " (they are not truncated). "
                 "Shorten them or raise max_prompt_length (CLI: --max-prompt-length)")
    kept = [r for r in rows if r.line not in too_long]
    if not kept:
        raise DataError(
            f"{path}: every prompt is longer than the prompt limit; raise max_prompt_length "
            "(CLI: --max-prompt-length) or shorten them."
        )
    return kept


def to_messages(prompt: str, system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]


def check_prompts(path: str | Path, lang: str = "ja") -> list[Row]:
    """The usable rows of ``path`` (``select_rows``). Cheap and model-free: training calls it before loading the
    model, so a bad file fails in seconds."""
    path = Path(path)
    return select_rows(read_rows(path), path, lang)


def chat_prompt_tokens(tokenizer, messages: list[dict], **template_kwargs) -> int:
    """Tokens of ``messages`` in the chat template with the generation prompt, as TRL formats a prompt.
    ``apply_chat_template`` gives a BatchEncoding, or a plain list where Unsloth has patched the tokenizer."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **template_kwargs)
    return len(ids["input_ids"] if hasattr(ids, "keys") else ids)


def prompts_dataset(rows: list[Row], path: str | Path, *, system_prompt: str = SYSTEM_PROMPT, tokenizer=None,
                    max_prompt_length: int | None = None):
    """``rows`` as a ``datasets.Dataset`` of chat prompts, skipping those over ``max_prompt_length`` tokens."""
    from datasets import Dataset

    if tokenizer is not None and max_prompt_length:
        roles: dict[str, str] = {}
        for r in rows:  # a prompt under several roles is measured with its longest one: never fed over the limit
            roles[r.prompt] = max(roles.get(r.prompt, ""), r.role, key=len)

        def too_long(prompt: str) -> bool:
            messages = to_messages(prompt, with_role(system_prompt, roles.get(prompt)))
            return chat_prompt_tokens(tokenizer, messages) > max_prompt_length

        rows = drop_too_long(rows, Path(path), too_long)
    logger.info("%s: %d prompts.", path, len(rows))
    # Extra columns ride along: TRL hands every dataset column to the reward functions by name.
    return Dataset.from_list([{"prompt": to_messages(r.prompt, with_role(system_prompt, r.role)), "lang": r.lang,
                               **r.extra} for r in rows])


def load_prompts(path: str | Path, *, lang: str = "ja", system_prompt: str = SYSTEM_PROMPT, tokenizer=None,
                 max_prompt_length: int | None = None):
    """``check_prompts`` then ``prompts_dataset``: a ``datasets.Dataset`` with a ``prompt`` column of ``[system,
    user]`` messages, the row's ``lang`` and the file's other columns (as text)."""
    return prompts_dataset(check_prompts(path, lang), path, system_prompt=system_prompt, tokenizer=tokenizer,
                           max_prompt_length=max_prompt_length)
