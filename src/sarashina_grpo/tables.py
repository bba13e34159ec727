"""Read a prompt file (CSV, or by suffix JSON Lines or Parquet) as a header and records, each with its first line.

What is wrong with the file as a file (missing, a pipe, too big, its encoding, its quoting) is refused here with
``DataError`` naming the file and line; what the columns hold is ``data.py``'s concern.
"""

from __future__ import annotations

import codecs
import csv
import errno
import io
import json
import logging
import math
import os
import re
import stat
import traceback
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_LINES_NAMED = 8  # lines named in one message; the rest are counted
# Far above any prompt set (the article's has ~100 rows): a bigger file is most likely the wrong one (a log, a dump).
MAX_FILE_BYTES = 50 * 2**20
MAX_ROWS = 1_000_000
# What no Japanese cp932 text decodes to: U+FFFD (an undecodable byte), control or private-use characters.
UNLIKELY_CP932 = re.compile("[\x00\x80-\x9f\xa0\ue000-\uf8ff\ufffd]")
DEBUG_ENV = "SARASHINA_GRPO_DEBUG"  # set: tracebacks as well as the one line (errors.py, notebook_lines)


def notebook_lines(exc: BaseException) -> list[str]:
    """How Jupyter shows a user error (IPython's ``_render_traceback_``): the CLI's ``error:`` line, after the
    traceback with ``$SARASHINA_GRPO_DEBUG`` set."""
    return [*traceback.format_exception(exc), f"error: {exc}"] if debug_enabled() else [f"error: {exc}"]


def debug_enabled(flag: bool = False) -> bool:
    """``--debug`` was given, or the environment asks for tracebacks."""
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class DataError(ValueError):
    """The prompt file cannot be used; the message names the file, line and field, and what to do."""

    _render_traceback_ = notebook_lines


def lines_named(items: list, sep: str = ", ", more: str = " and") -> str:
    """``items`` as "3, 5, 9": the first ``MAX_LINES_NAMED`` of them and a count of the rest."""
    rest = len(items) - MAX_LINES_NAMED
    return sep.join(map(str, items[:MAX_LINES_NAMED])) + (f"{more} {rest} more" if rest > 0 else "")


# The first bytes of compressed files (the format, the command that decompresses it, keeping the file): read as text
# they are noise, which was reported as an encoding to save the file in ("not valid UTF-8 … nor Shift_JIS").
COMPRESSED = {b"\x1f\x8b": ("gzip", "gunzip -k"), b"BZh": ("bzip2", "bunzip2 -k"), b"\xfd7zXZ\x00": ("xz", "unxz -k"),
              b"(\xb5/\xfd": ("zstd", "unzstd"), b"PK\x03\x04": ("zip", "unzip")}


def compressed_problem(path: str | os.PathLike, head: bytes | None = None) -> str | None:
    """Why ``path`` (whose first bytes are ``head``, read here if None) is no text: compressed, in words that follow
    its name and say how to decompress it; None for any other file."""
    if head is None:
        try:
            with open(path, "rb") as handle:
                head = handle.read(16)
        except OSError:
            return None
    kind = next((kinds for magic, kinds in COMPRESSED.items() if head.startswith(magic)), None)
    if kind is None or kind[0] == "bzip2" and head[4:10] != b"1AY&SY":  # "BZh" alone is text; then level, block magic
        return None
    name = Path(path).name
    if kind[0] == "zip":  # what an .xlsx workbook is too
        return (f"is a zip archive or an Excel workbook, not text: unzip it ({kind[1]} {name}) and give the file it "
                "holds; from Excel, use Save As > 'CSV UTF-8'")
    return f"is {kind[0]}-compressed, not text: decompress it first ({kind[1]} {name}) and give the file it holds"


def read_text(path: Path) -> str:
    """The file's text: UTF-8 (a BOM is fine) or UTF-16 with a BOM, else cp932/Shift_JIS with a warning."""
    raw = path.read_bytes()
    if raw.startswith(b"PK\x03\x04") and path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):  # a workbook is a zip
        raise DataError(f"{path} is an Excel workbook or zip, not a CSV. In Excel use Save As > 'CSV UTF-8'.")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode text" export
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as utf8_err:
        if problem := compressed_problem(path, raw[:16]):  # gzip, zip, bzip2, xz, zstd: not an encoding to save in
            raise DataError(f"{path} {problem}.") from None
        check_mostly_utf8(raw, path)
        text = raw.decode("cp932", errors="replace")  # Windows' superset of Shift_JIS, what Excel writes in Japan
        if UNLIKELY_CP932.search(text):  # the guess is wrong
            raise DataError(f"{path}: not valid UTF-8 (byte {utf8_err.start}) nor Shift_JIS/cp932. Save the file as "
                            "UTF-8 (Excel: 'CSV UTF-8').") from None
        logger.warning("%s is not UTF-8; decoded it as Shift_JIS (cp932). Save it as UTF-8 to avoid guessing.", path)
        return text


def check_mostly_utf8(raw: bytes, path: Path) -> None:
    """Name the undecodable lines of a file whose other non-ASCII lines are UTF-8 (rows pasted from elsewhere),
    rather than read the whole file as cp932 and train on mojibake."""
    good, bad = 0, []
    for number, line in enumerate(raw.split(b"\n"), 1):
        if line.isascii():
            continue  # ASCII lines read the same in every candidate encoding: no evidence either way
        try:
            line.decode("utf-8")
            good += 1
        except UnicodeDecodeError:
            bad.append(number)
    if bad and good > len(bad):
        raise DataError(f"{path}: {len(bad)} line(s) are not valid UTF-8 while the rest of the file is: line(s) "
                        f"{lines_named(bad)}. Retype or delete those rows (they were probably pasted from a file in "
                        "another encoding).")


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is no regular file, in words that follow its name, or None; by ``stat``: a FIFO would block."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link that loops (it leads back to itself)"
        if path.is_symlink():
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return "not found"
        return f"cannot be read ({err.strerror})"
    kinds = ((stat.S_ISDIR, "is a folder"),
             (stat.S_ISFIFO, "is a pipe (FIFO), which would be waited on for a writer; save what it carries to a "
                             "file first"),
             (stat.S_ISCHR, "is a device, not a file"), (stat.S_ISBLK, "is a device, not a file"),
             (stat.S_ISSOCK, "is a socket, not a file"))
    return next((words for test, words in kinds if test(mode)), None)


def folder_problem(path: str | os.PathLike) -> str | None:
    """What ``path`` is instead of a folder, in words that follow its name ("is a pipe (FIFO), not a folder"); None
    for a folder or for nothing there (the caller's "no such folder")."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISDIR(mode):
        return None
    kind = ("a pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a file")
    return f"is {kind}, not a folder"


def _records(text: str, path: Path):
    """(first line, fields) of each non-empty CSV record; quoted fields may span lines."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # strict: an unclosed quote is an error
    count = 0
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            if "field larger than field limit" in str(err):
                message = (f"{path}, line {start}: a prompt longer than {csv.field_size_limit():,} characters (the "
                           "CSV field limit), far beyond any prompt length the model takes. Shorten or split it.")
                if reader.line_num > start:  # the field ran over several lines: more likely a quote never closed
                    message += (f" If it should not run on to line {reader.line_num}, close the quote opened on line "
                                f"{start}.")
                raise DataError(message) from None
            raise DataError(f"{path}, line {start}: not readable as CSV ({err}). Check the quoting of the row starting "
                            'there: a prompt with commas or line breaks must be wrapped in "…", with any " inside '
                            'doubled ("").') from None
        if fields:  # a blank line is no record
            count += 1
            if count > MAX_ROWS + 1:  # + the header
                raise DataError(f"{path} has more than {MAX_ROWS:,} rows (line {start}); prompt files are limited to "
                                f"{MAX_ROWS:,} rows and {MAX_FILE_BYTES // 2**20} MB. Check that it is the right file, "
                                "or split it.")
            yield start, fields


def _csv_table(path: Path):
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path} is empty: expected a header line 'prompt,lang' and one row per prompt.")
    records = _records(text, path)
    _, header = next(records)
    return header, records


def _table_of(objects: list[tuple[int, dict]]):
    """(header, records) of (line, mapping) pairs, the keys as columns; None and NaN are blank, other values kept."""
    header = list(dict.fromkeys(key for _, obj in objects for key in obj))
    return header, ((line, ["" if (v := obj.get(key)) is None or isinstance(v, float) and math.isnan(v) else v
                            for key in header]) for line, obj in objects)


def _jsonl_table(path: Path):
    """(header, records) of a JSON Lines file: one object per line, keys as columns; blank lines are skipped."""
    def unique_keys(pairs):
        keys = [key for key, _ in pairs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:  # json.loads would keep the last silently
            raise DataError(f"{path}, line {line}: the key {repeated[0]!r} appears twice in one object; keep one.")
        return dict(pairs)

    objects = []
    for line, text in enumerate(read_text(path).splitlines(), 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {line}: not valid JSON ({err.msg}). Each line holds one object, e.g. "
                            '{"prompt": "こんにちは", "lang": "ja"}.') from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}, line {line}: a JSON {type(obj).__name__}, not an object with keys prompt, lang.")
        objects.append((line, obj))
    if not objects:
        raise DataError(f"{path} is empty: expected one JSON object per line with keys prompt, lang.")
    return _table_of(objects)


def _parquet_table(path: Path):
    """(header, records) of a Parquet file; a record's "line" is its row number, the first row being 1."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        repeated = sorted({c for c in names if names.count(c) > 1})
        table = None if repeated else pq.read_table(path)  # pyarrow refuses repeats in words about "matches"
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, … for a damaged or foreign file
        raise DataError(f"{path}: not readable as Parquet ({err}).") from None
    if repeated:
        raise DataError(f"{path}: the column {repeated[0]!r} appears twice; keep one.")
    if table.num_rows > MAX_ROWS:
        raise DataError(f"{path} has {table.num_rows:,} rows; prompt files are limited to {MAX_ROWS:,}.")
    header, records = _table_of(list(enumerate(table.to_pylist(), 1)))
    return header or table.column_names, records


# Prompt file formats by suffix; anything else is read as CSV (the project's own files are).
TABLE_READERS = {".jsonl": _jsonl_table, ".ndjson": _jsonl_table, ".parquet": _parquet_table}
FORMATS = "a CSV, JSONL or Parquet file with columns prompt,lang"


def read_table(path: Path):
    """(header, records, is_csv) of the prompt file ``path``; records are (first line, fields) and lazy for a CSV."""
    problem = file_problem(path)
    if problem == "not found":
        raise DataError(f"Prompt file not found: {path}. Expected {FORMATS}.")
    if problem == "is a folder":
        raise DataError(f"{path} is a folder; expected {FORMATS}.")
    if problem and "symbolic link" in problem:
        raise DataError(f"Prompt file {path} {problem}. Give the file itself instead of the link.")
    if problem:  # a pipe, device or socket: nothing is opened (file_problem)
        raise DataError(f"{path} is not a regular file (a pipe, device or socket?). Give a CSV file on disk; save "
                        "a stream to a file first.")
    if (size := path.stat().st_size) > MAX_FILE_BYTES:
        raise DataError(f"{path} is {size / 2**20:.0f} MB; prompt files are limited to {MAX_FILE_BYTES // 2**20} MB "
                        f"and {MAX_ROWS:,} rows. Check that it is the right file, or split it.")
    if path.suffix.lower() == ".json":  # read as CSV, a JSON array would look like a header of odd column names
        raise DataError(f"{path}: a .json file is not read as prompts; give JSON Lines (.jsonl: one object per line, "
                        'e.g. {"prompt": "こんにちは", "lang": "ja"}), a CSV or a Parquet file.')
    reader = TABLE_READERS.get(path.suffix.lower())
    header, records = (reader or _csv_table)(path)
    return header, records, reader is None
