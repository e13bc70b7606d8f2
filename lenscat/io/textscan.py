"""Check the structure of a text table before astropy parses it, in time linear in its size.

astropy's readers accept some broken text silently (a CSV row cut short is padded with missing
values; a row whose quote is never closed disappears), stop on others with a message that names a
byte offset or ``chr() arg not in range``, and take time quadratic in the length of a header field
(a 60 MB line never finishes). :func:`scan_text` reads the bytes once, vectorised where the file
has no quotes, and finds

* bytes that are not UTF-8 (an error naming the row and column);
* fields longer than ``ingest_max_field_bytes``, column names longer than :data:`MAX_NAME_BYTES`
  and headers with more than ``ingest_max_columns`` columns (an error naming the row and column,
  raised before astropy sees the line);
* data rows with more or fewer fields than the header (:class:`BadRow`, one per row: the ingest
  rejects the row with its reason and keeps the rest);
* a quote that is never closed (an error naming the row where it opens).

Row numbers are 1-based data rows, as astropy numbers them: blank lines, comment lines (``#``, in
the whitespace and tab formats; CSV has none) and the header line are not rows.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lenscat.errors import InputFileError
from lenscat.settings import get_settings

_WINDOW = 32 * 2**20
"""Bytes examined at a time by the vectorised scan (then extended to the end of a line)."""
_VALUE_CHARS = 200
"""Characters of a bad row kept as its value."""
MAX_NAME_BYTES = 1024
"""Longest column name accepted, bytes: astropy's C header parser takes time quadratic in a name's
length, so a header of many long names could take hours however short each data field is."""
_WS = (9, 13, 32)  # tab, carriage return, space (newline ends the line)


@dataclass(frozen=True)
class BadRow:
    """A data row refused for its structure.

    Attributes
    ----------
    row
        1-based data row.
    column
        The first missing column of a row cut short; ``''`` for a row with too many fields.
    value
        The row's text (the first 200 characters).
    reason
        Why, e.g. ``expected 4 fields, found 2``.
    """

    row: int
    column: str
    value: str
    reason: str

    def message(self, path: Path | str) -> str:
        """One line naming file, row and (where known) column."""
        col = f"column {self.column!r}: " if self.column else ""
        return f"{path}: row {self.row}: {col}{self.reason} (value {self.value!r})"


@dataclass
class TextScan:
    """What :func:`scan_text` found.

    Attributes
    ----------
    text
        The file decoded as UTF-8 (a leading byte-order mark removed), with the bad rows' lines
        removed; None when the file is ASCII, has no bad rows and can be parsed as it is.
    ascii
        The file is pure ASCII (astropy's fast C reader handles it).
    n_rows
        Data rows in the file, bad ones included.
    bad_rows
        Rows with the wrong number of fields, in file order.
    """

    text: str | None
    ascii: bool
    n_rows: int
    bad_rows: list[BadRow] = field(default_factory=list)


@dataclass(frozen=True)
class _Dialect:
    delimiter: str | None  # None: runs of blanks (astropy's basic format)
    comment: bool  # lines starting with '#' are comments
    count_fields: bool  # check each row's field count against the header


def _dialect(fmt: str, delimiter: str | None) -> _Dialect:
    if fmt == "ascii.csv":
        return _Dialect(delimiter or ",", False, True)
    if fmt == "ascii.tab":
        return _Dialect(delimiter or "\t", True, True)
    if fmt in ("ascii", "ascii.basic"):
        return _Dialect(None if delimiter in (None, " ") else delimiter, True, True)
    # ECSV and astropy's other text formats describe their own layout: only lengths and encoding
    return _Dialect(delimiter, True, False)


def _limits() -> tuple[int, int]:
    s = get_settings()
    return s.ingest_max_field_bytes, s.ingest_max_columns


def _split(line: str, dialect: _Dialect) -> list[str]:
    """Naive fields of one line (no quote handling): to name the column of an error."""
    if dialect.delimiter is None:
        return line.split()
    return line.split(dialect.delimiter)


def _too_long(path: Path, where: str, col: str, size: int, limit: int) -> InputFileError:
    return InputFileError(
        f"{path}: {where}: column {col}: field of {size} bytes is longer than the limit of {limit} "
        f"bytes (LENSCAT_INGEST_MAX_FIELD_BYTES); nothing read"
    )


class _Rows:
    """Numbers data rows and names their columns while the records of a file go by."""

    def __init__(self, path: Path, dialect: _Dialect, max_field: int, max_columns: int) -> None:
        self.path, self.dialect = path, dialect
        self.max_field, self.max_columns = max_field, max_columns
        self.header: list[str] | None = None
        self.n_rows = 0
        self.bad: list[BadRow] = []
        self.bad_lines: list[tuple[int, int]] = []  # (first, last) 0-based physical lines to drop

    def column_label(self, index: int) -> str:
        if self.header is not None and index < len(self.header):
            return repr(self.header[index])
        return f"{index + 1}"

    def next_where(self) -> str:
        """How messages name the record about to be read."""
        return "header" if self.header is None else f"row {self.n_rows + 1}"

    def check_lengths(self, fields: list[str] | None, line: str) -> None:
        """Raise if a field of the next record (``fields``, or else ``line`` split) is too long."""
        parts = fields if fields is not None else _split(line, self.dialect)
        limit = self.max_field if self.header is not None else min(self.max_field, MAX_NAME_BYTES)
        for j, f in enumerate(parts):
            if len(f) <= limit // 4:
                continue  # at most 4 bytes a character
            size = len(f.encode("utf-8", "surrogatepass"))
            if size <= limit:
                continue
            if self.header is None and limit < self.max_field:
                raise InputFileError(
                    f"{self.path}: header: column {j + 1}: a column name of {size} bytes is longer than "
                    f"the limit of {limit} bytes; nothing read"
                )
            raise _too_long(self.path, self.next_where(), self.column_label(j), size, self.max_field)

    def header_seen(self, names: list[str]) -> None:
        if len(names) > self.max_columns:
            raise InputFileError(
                f"{self.path}: header: {len(names)} columns, more than the limit of {self.max_columns} "
                f"(LENSCAT_INGEST_MAX_COLUMNS); nothing read"
            )
        self.header = [n.strip() for n in names]

    def record(self, n_fields: int, text: str, first_line: int, last_line: int) -> None:
        """A data record with ``n_fields`` fields spanning physical lines first..last."""
        self.n_rows += 1
        if self.header is None or not self.dialect.count_fields:
            return
        k = len(self.header)
        if n_fields == k:
            return
        column = self.header[n_fields] if n_fields < k else ""
        value = text.rstrip("\r\n")
        if len(value) > _VALUE_CHARS:
            value = value[:_VALUE_CHARS] + "…"
        self.bad.append(BadRow(self.n_rows, column, value, f"expected {k} fields, found {n_fields}"))
        self.bad_lines.append((first_line, last_line))


def _decode(path: Path, raw: bytes, dialect: _Dialect) -> str:
    """The bytes as text; a one-line error naming row and column where they are not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.end]
        line_no = raw.count(b"\n", 0, exc.start)
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        before = raw[:line_start].decode("utf-8", "replace").split("\n")
        rows = _Rows(path, dialect, 2**62, 2**62)
        for line in before:
            if _is_blank_or_comment(line, dialect):
                continue
            if rows.header is None:
                rows.header_seen(_split(line, dialect))
            else:
                rows.n_rows += 1
        prefix = raw[line_start : exc.start].decode("utf-8", "replace")
        column = rows.column_label(len(_split(prefix + "x", dialect)) - 1)
        where = "header" if rows.header is None else f"row {rows.n_rows + 1}"
        raise InputFileError(
            f"{path}: {where} (line {line_no + 1}): column {column}: bytes {bad!r} are not UTF-8 "
            f"(re-save the file as UTF-8); nothing read"
        ) from exc


def _is_blank_or_comment(line: str, dialect: _Dialect) -> bool:
    s = line.strip()
    return not s or (dialect.comment and s.startswith("#"))


def scan_text(path: Path, raw: bytes, fmt: str, delimiter: str | None = None) -> TextScan:
    """Check a text table's bytes (see the module docstring).

    Parameters
    ----------
    path
        The file, for messages.
    raw
        Its bytes (decompressed).
    fmt
        astropy format name (``ascii.csv``, ``ascii.tab``, ``ascii``, ``ascii.ecsv``, ...).
    delimiter
        Field delimiter, when not the format's own.

    Raises
    ------
    InputFileError
        Bytes that are not UTF-8, a field longer than ``ingest_max_field_bytes``, too many columns,
        or a quote never closed; the one-line message names file, row and column.
    """
    dialect = _dialect(fmt, delimiter)
    max_field, max_columns = _limits()
    bom = raw.startswith(b"\xef\xbb\xbf")
    if bom:
        raw = raw[3:]
    is_ascii = raw.isascii()
    rows = _Rows(path, dialect, max_field, max_columns)
    if b'"' in raw or not is_ascii:
        text = _decode(path, raw, dialect)
        _scan_with_csv(text, rows)
    else:
        text = None
        _scan_vectorised(raw, rows)
    if not rows.bad and is_ascii and not bom:
        return TextScan(text=None, ascii=True, n_rows=rows.n_rows)
    if text is None:
        text = raw.decode("ascii")
    if rows.bad:  # lines are what ends in "\n" (a "\r" before it stays part of the line)
        lines = text.split("\n")
        drop = np.zeros(len(lines), dtype=bool)
        for first, last in rows.bad_lines:
            drop[first : last + 1] = True
        text = "\n".join(line for line, d in zip(lines, drop.tolist(), strict=True) if not d)
    return TextScan(text=text, ascii=is_ascii, n_rows=rows.n_rows, bad_rows=rows.bad)


def _scan_with_csv(text: str, rows: _Rows) -> None:
    """Records of a file with quotes (or non-ASCII text), through Python's C ``csv`` parser."""
    dialect = rows.dialect
    lines = text.split("\n")  # the lines the vectorised scan sees, and the dropping of bad rows
    if dialect.delimiter is None:  # blank-separated: one record per line
        for i, line in enumerate(lines):
            if _is_blank_or_comment(line, dialect):
                continue
            if rows.header is None or len(line) > rows.max_field // 4:
                rows.check_lengths(None, line)
            try:
                fields = next(
                    csv.reader([line.strip().replace("\t", " ")], delimiter=" ", skipinitialspace=True, strict=True)
                )
            except csv.Error as exc:
                raise InputFileError(f"{rows.path}: {rows.next_where()} (line {i + 1}): {exc}; nothing read") from exc
            fields = [f for f in fields if f != ""] or [""]
            if rows.header is None:
                rows.header_seen(fields)
            else:
                rows.record(len(fields), line, i, i)
        return
    old_limit = csv.field_size_limit()
    csv.field_size_limit(rows.max_field)
    reader = csv.reader((line + "\n" for line in lines), delimiter=dialect.delimiter, quotechar='"', strict=True)
    last_line = 0
    try:
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                where = rows.next_where()
                if "field limit" in str(exc):
                    rows.check_lengths(None, "\n".join(lines[last_line : reader.line_num]))
                    raise InputFileError(  # a quoted field holding delimiters: no column to name
                        f"{rows.path}: {where} (line {last_line + 1}): a field is longer than the limit of "
                        f"{rows.max_field} bytes (LENSCAT_INGEST_MAX_FIELD_BYTES); nothing read"
                    ) from exc
                if "end of data" in str(exc) or "EOF" in str(exc):
                    raise InputFileError(
                        f"{rows.path}: {where} (line {last_line + 1}): a quoted field is never closed; nothing read"
                    ) from exc
                raise InputFileError(f"{rows.path}: {where} (line {reader.line_num}): {exc}; nothing read") from exc
            first, last_line = last_line, reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if dialect.comment and fields[0].lstrip().startswith("#"):
                continue
            rows.check_lengths(fields, "")
            if rows.header is None:
                rows.header_seen(fields)
            else:
                rows.record(len(fields), dialect.delimiter.join(fields), first, last_line - 1)
    finally:
        csv.field_size_limit(old_limit)


def _scan_vectorised(raw: bytes, rows: _Rows) -> None:
    """Records of an ASCII file without quotes: one per line, counted with numpy a window at a time.

    Lines longer than the field limit are split first, so an absurd field stops the scan before
    any work proportional to the whole window is done.
    """
    buf = np.frombuffer(raw, dtype=np.uint8)
    n = len(buf)
    dialect = rows.dialect
    delim = None if dialect.delimiter is None else ord(dialect.delimiter)
    line_base = 0
    w0 = 0
    while w0 < n:
        w1 = min(n, w0 + _WINDOW)
        if w1 < n:
            nl = raw.find(b"\n", w1 - 1)
            w1 = n if nl < 0 else nl + 1
        win = buf[w0:w1]
        nls = np.flatnonzero(win == 10)
        starts = np.concatenate(([0], nls + 1))
        ends = np.concatenate((nls, [len(win)]))
        if starts[-1] == len(win):  # the window ends with a newline: no line after it
            starts, ends = starts[:-1], ends[:-1]

        def line_text(i: int, w0: int = w0, starts: np.ndarray = starts, ends: np.ndarray = ends) -> str:
            return raw[w0 + int(starts[i]) : w0 + int(ends[i])].decode("ascii")

        # blank and comment lines: look closer only at those that start with a blank
        lengths = ends - starts
        first = win[np.minimum(starts, max(len(win) - 1, 0))]
        skip = lengths == 0
        if dialect.comment:
            skip |= first == ord("#")
        for i in np.flatnonzero(~skip & np.isin(first, _WS)).tolist():
            skip[i] = _is_blank_or_comment(line_text(i), dialect)
        data = np.flatnonzero(~skip)
        if rows.header is None and len(data):
            h = int(data[0])
            line = line_text(h)
            rows.check_lengths(None, line)
            rows.header_seen(_split(line, dialect))
            data = data[1:]
        if not len(data):
            line_base += len(starts)
            w0 = w1
            continue
        # fields longer than the limit, in file order, before anything proportional to the window
        long_lines = np.flatnonzero(lengths[data] > rows.max_field)
        for j in long_lines.tolist():
            rows.n_rows += j
            rows.check_lengths(None, line_text(int(data[j])))
            rows.n_rows -= j
        if dialect.count_fields:
            if delim is None:
                nonblank = (win != 32) & (win != 9) & (win != 13) & (win != 10)
                run_start = nonblank
                run_start[1:] &= ~nonblank[:-1].copy()
                marks = np.flatnonzero(run_start)
                del nonblank, run_start
                n_fields = np.searchsorted(marks, ends[data]) - np.searchsorted(marks, starts[data])
            else:
                marks = np.flatnonzero(win == delim)
                n_fields = np.searchsorted(marks, ends[data]) - np.searchsorted(marks, starts[data]) + 1
            del marks
            wrong = np.flatnonzero(n_fields != len(rows.header or []))
        else:
            wrong = np.zeros(0, dtype=np.int64)
        done = 0
        for j in wrong.tolist():
            rows.n_rows += j - done
            i = int(data[j])
            rows.record(int(n_fields[j]), line_text(i), line_base + i, line_base + i)
            done = j + 1
        rows.n_rows += len(data) - done
        line_base += len(starts)
        w0 = w1
