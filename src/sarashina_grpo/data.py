"""Load the prompt file (columns ``prompt,lang``) into a ``datasets.Dataset`` of ``[system, user]`` chat prompts.

``tables.py`` reads the file; this module checks what the columns hold and keeps the rows in the target language.
A bad header, ``lang`` code or over-long role is fatal; unusable and duplicate prompts are skipped with one warning
per kind naming their lines. Extra columns pass through (e.g. ``answer`` for rewards); an optional ``role`` (or
``system``) column is that row's persona, added to its system prompt.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .project import HOME_VARIABLE, MAX_PROMPT_CHARS, SYSTEM_PROMPT, project_dir
from .rewards import TRL_REWARD_ARGUMENTS
from .roles import with_role
from .tables import DataError, lines_named, read_table

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("prompt", "lang")
ROLE_COLUMNS = ("role", "system")  # optional; the first present is the row's role
# A column named as an argument TRL passes every reward would collide with it; a "completion" one TRL withholds.
RESERVED_COLUMNS = TRL_REWARD_ARGUMENTS | {"completion"}
# ISO 639-1 language codes; a row's `lang` may add a region or script subtag (ja-JP, zh-Hant, pt_BR).
ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee el en
eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv
ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne
ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st
su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
""".split())
LANG_CODE_RE = re.compile(r"([a-z]{2})(?:[-_][a-z0-9]{2,8})*")
# Codes people write instead of ISO 639-1 ones; named in the error so the fix is obvious.
LANG_SUGGESTIONS = {"jp": "ja", "jpn": "ja", "japanese": "ja", "日本語": "ja", "eng": "en", "english": "en",
                    "英語": "en", "cn": "zh", "chi": "zh", "zho": "zh", "chinese": "zh", "中国語": "zh"}
# Cells pandas reads as NaN (and writes back as these words with na_rep): treated as blank, never as a prompt.
NA_MARKERS = frozenset({"nan", "none", "null", "na", "n/a", "#n/a"})
# Unicode categories that print nothing: format (Cf: zero-width space, word joiner, BOM, …), control (Cc), separators.
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


def text_problem(value) -> str | None:
    """Why ``value`` is no prompt (not text, or blank to a reader), as the end of a sentence; None when it is one."""
    if not isinstance(value, str):
        return f"is not text but {value!r} ({type(value).__name__})"
    return None if visible_text(value) else "is empty" + (" (only spaces or invisible characters)" if value else "")


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, …, 11th, 12th, 21st."""
    return f"{n}{'th' if n % 100 in (11, 12, 13) else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


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


def read_rows(path: str | Path) -> list[Row]:
    """Parse ``path`` into rows, checking the columns and the ``lang`` codes (a Parquet row's line: its number)."""
    path = Path(path)
    try:
        header, records, csv_file = read_table(path)
    except DataError as err:  # a missing file where the project folder has no datasets/: run outside the repository?
        home = project_dir()
        hint = "" if path.exists() or (home / "datasets").is_dir() else (
            f" Relative paths are read from the project folder, here {home}, which has no datasets/: run from the "
            f"repository's folder, or set ${HOME_VARIABLE} to it.")
        raise DataError(f"{err}{hint}") from None
    header = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    where = "header (line 1)" if csv_file else "columns"
    if missing and csv_file:
        check_separator(path, header)
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
    rows, bad_lang, overflowing, long_roles = [], [], [], []

    def cell(fields: list[str], at: int | None) -> str:
        return fields[at].strip() if at is not None and at < len(fields) else ""

    for line, fields in records:
        check_text_cells(path, line, fields, text_columns)
        fields = [f if isinstance(f, str) else str(f) for f in fields]  # extra columns ride along as text
        if any(f.strip() for f in fields[len(header):]):  # text past the last column would be dropped unseen
            overflowing.append(line)
        prompt, raw_lang, role = cell(fields, prompt_at), cell(fields, lang_at), cell(fields, role_at)
        if len(role) > MAX_PROMPT_CHARS:  # the limit of --role-file: a role goes into every prompt of its row
            long_roles.append(f"line {line}: {len(role):,} characters")
        lang = _lang_code(raw_lang)
        if lang is None:
            better = LANG_SUGGESTIONS.get(raw_lang.lower())
            bad_lang.append(f"line {line}: {raw_lang!r}" + (f" (did you mean {better!r}?)" if better else ""))
        rows.append(Row(line, "" if prompt.lower() in NA_MARKERS else prompt, lang or "",
                        {name: cell(fields, at) for name, at in extras.items()},
                        "" if role.lower() in NA_MARKERS else role))
    if overflowing:
        raise DataError(f"{path}: line(s) {lines_named(overflowing)} hold more fields than the header's {len(header)} "
                        f"columns ({', '.join(header)}), so the text after the last column would be dropped: an "
                        'unquoted comma? Wrap a cell that holds commas in "…", or name the extra column in the '
                        "header.")
    if long_roles:
        raise DataError(f"{path}: the {header[role_at]!r} cell of {len(long_roles)} row(s) is over the "
                        f"{MAX_PROMPT_CHARS:,} characters a role may hold, as with --role-file "
                        f"({lines_named(long_roles, '; ', '; and')}). A role goes into the system prompt of its row: "
                        "check that the column holds roles, or shorten them.")
    if bad_lang:
        raise DataError(f"{path}: field 'lang' holds {len(bad_lang)} value(s) that are not ISO 639-1 language codes "
                        f"({lines_named(bad_lang, '; ', '; and')}). Use two-letter codes such as 'ja' or 'en' (a "
                        "region is fine: 'ja-JP').")
    if not rows:
        raise DataError(f"{path} has a header but no rows: add one row per prompt, e.g. 'こんにちは,ja'.")
    return rows


def check_separator(path: Path, header: list[str]) -> None:
    """Refuse a CSV header split by semicolons or tabs, which "no 'prompt' column" would not explain."""
    for sep, name, arg, why in ((";", "semicolons (';')", "';'", "Excel in many European languages writes ';'"),
                                ("\t", "tabs", "'\\t'", "Excel's 'Unicode Text' is tab-separated")):
        if any(sep in cell for cell in header):
            raise DataError(f"{path}: the header (line 1) seems separated by {name}, not commas (found {header}); a "
                            f"prompt CSV must be comma-separated ({why}). Save it as 'CSV UTF-8 (Comma delimited)', "
                            f"or convert it: pandas.read_csv({str(path)!r}, sep={arg}).to_csv('prompts.csv', "
                            "index=False).")


def check_text_cells(path: Path, line: int, fields: list, columns: dict[int, str]) -> None:
    """Refuse a prompt, lang or role cell that is not text: it would be trained on in its Python spelling ("True")."""
    for at, name in columns.items():
        value = fields[at] if at < len(fields) else ""
        if isinstance(value, str):
            continue
        kinds = {dict: "an object", list: "a list", bytes: "bytes", bytearray: "bytes", bool: "true or false",
                 int: "a number", float: "a number"}
        kind = kinds.get(type(value), type(value).__name__)
        parquet = path.suffix.lower() == ".parquet"
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        fix = {"bytes": " (decode them first, e.g. df[col].str.decode('utf-8'))",
               "a number": f" (in pandas: df[{name!r}] = df[{name!r}].astype(str))" if parquet
               else f' in quotes ("{value}")'}.get(kind, "")
        raise DataError(f"{path}, {'row' if parquet else 'line'} {line}: the {name!r} cell holds {kind} ({shown}), "
                        f"not text. Give it as a string{fix}.")


def warn_skipped(path: Path, lines: list[int], what: str, after: str = "") -> None:
    """One warning for the rows skipped for one reason: how many, and their lines."""
    if lines:
        logger.warning("%s: skipped %d %s on line(s) %s%s.", path, len(lines), what, lines_named(lines), after)


def select_rows(rows: list[Row], path: Path, lang: str) -> list[Row]:
    """Keep rows in ``lang``; skip blank, unprintable and duplicate prompts with one warning per kind."""
    blank = [r.line for r in rows if not r.prompt]
    invisible = [r.line for r in rows if r.prompt and not visible_text(r.prompt)]
    controls = {r.line: found for r in rows if visible_text(r.prompt) and (found := control_characters(r.prompt))}
    unusable = set(invisible) | set(controls)
    rows = [r for r in rows if r.line not in unusable]
    no_lang = [r.line for r in rows if r.prompt and not r.lang]
    warn_skipped(path, blank, "blank prompt(s)", " (empty, spaces or NaN)")
    warn_skipped(path, invisible, "prompt(s) made only of invisible characters (zero-width spaces, word joiners, BOMs, "
                 "control characters)")
    if controls:
        named = lines_named([f"line {line}: {', '.join(found)}" for line, found in controls.items()], "; ", "; and")
        logger.warning("%s: skipped %d prompt(s) holding control characters (%s). Remove them; a NUL (U+0000) "
                       "often means part of the file is binary or UTF-16.", path, len(controls), named)
    warn_skipped(path, no_lang, "row(s) with no 'lang'")
    kept = [r for r in rows if r.prompt and r.lang == lang]
    if not kept:
        langs = sorted({r.lang for r in rows if r.lang and r.prompt})
        raise DataError(f"{path}: no rows with lang == {lang!r} and a non-blank prompt (found {langs or 'none'}); "
                        f"nothing to use. Add rows whose 'lang' column is {lang!r}.")
    first: dict[tuple[str, str], Row] = {}
    for r in kept:
        first.setdefault((r.prompt, r.role), r)
    warn_skipped(path, [r.line for r in kept if first[r.prompt, r.role] is not r], "duplicate prompt(s)")
    return list(first.values())


def to_messages(prompt: str, system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]


def check_prompts(path: str | Path, lang: str = "ja") -> list[Row]:
    """The usable rows of ``path``; model-free, so training checks the file before loading the model."""
    path = Path(path)
    return select_rows(read_rows(path), path, lang)


def prompts_dataset(rows: list[Row], path: str | Path, *, system_prompt: str = SYSTEM_PROMPT, tokenizer=None,
                    max_prompt_length: int | None = None):
    """``rows`` as a ``datasets.Dataset`` of chat prompts, skipping those over ``max_prompt_length`` tokens."""
    from datasets import Dataset

    if tokenizer is not None and max_prompt_length:
        roles: dict[str, str] = {}
        for r in rows:  # a prompt under several roles is measured with its longest one: never fed over the limit
            roles[r.prompt] = max(roles.get(r.prompt, ""), r.role, key=len)
        too_long = set()  # skipped, naming their lines: TRL 1.x would feed them whole
        for r in rows:
            # As TRL formats a prompt; a BatchEncoding, or a plain list where Unsloth has patched the tokenizer.
            ids = tokenizer.apply_chat_template(to_messages(r.prompt, with_role(system_prompt, roles[r.prompt])),
                                                add_generation_prompt=True, tokenize=True)
            if len(ids["input_ids"] if hasattr(ids, "keys") else ids) > max_prompt_length:
                too_long.add(r.line)
        if too_long:
            warn_skipped(Path(path), sorted(too_long), "prompt(s) longer than the prompt limit", " (they are not "
                         "truncated). Shorten them or raise max_prompt_length (CLI: --max-prompt-length)")
            rows = [r for r in rows if r.line not in too_long]
            if not rows:
                raise DataError(f"{Path(path)}: every prompt is longer than the prompt limit; raise max_prompt_length "
                                "(CLI: --max-prompt-length) or shorten them.")
    logger.info("%s: %d prompts.", path, len(rows))
    # Extra columns ride along: TRL hands every dataset column to the reward functions by name.
    return Dataset.from_list([{"prompt": to_messages(r.prompt, with_role(system_prompt, r.role)), "lang": r.lang,
                               **r.extra} for r in rows])


def load_prompts(path: str | Path, *, lang: str = "ja", system_prompt: str = SYSTEM_PROMPT, tokenizer=None,
                 max_prompt_length: int | None = None):
    """``check_prompts`` then ``prompts_dataset``: chat prompts, ``lang`` and the file's other columns (as text)."""
    return prompts_dataset(check_prompts(path, lang), path, system_prompt=system_prompt, tokenizer=tokenizer,
                           max_prompt_length=max_prompt_length)
