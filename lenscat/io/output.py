"""Write query results as an aligned table, CSV, or JSON lines (one object per row)."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from typing import IO, Any

import numpy as np
from astropy.table import Table

FORMATS = ("table", "csv", "json")


def _plain(v: Any) -> Any:
    """A JSON-able Python value (NaN and masked become None)."""
    if v is None or v is np.ma.masked:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, bytes | memoryview):
        return bytes(v).hex()
    return v


def table_rows(table: Table) -> tuple[list[str], list[list[Any]]]:
    """Column names and plain rows of an astropy Table."""
    names = list(table.colnames)
    rows = [[_plain(table[n][i]) for n in names] for i in range(len(table))]
    return names, rows


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.10g}"
    if isinstance(v, list | dict):
        return json.dumps(v)
    return str(v)


#: Rows the aligned table reads ahead to size its columns; later rows stream with those widths.
TABLE_WIDTH_ROWS = 1000


def write_rows(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str, out: IO[str], units: dict[str, str] | None = None
) -> int:
    """Write rows in ``fmt`` ('table', 'csv' or 'json'), streaming: memory does not grow with the rows.

    The aligned table sizes its columns from the first :data:`TABLE_WIDTH_ROWS` rows; a longer
    value further down widens its own line only.

    Returns
    -------
    int
        The number of rows written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    plain = ([_plain(v) for v in row] for row in rows)
    n = 0
    if fmt == "json":
        for row in plain:
            out.write(json.dumps(dict(zip(columns, row, strict=True)), default=str) + "\n")
            n += 1
        return n
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(columns)
        for row in plain:
            w.writerow(["" if v is None else (json.dumps(v) if isinstance(v, list | dict) else v) for v in row])
            n += 1
        return n
    units = units or {}
    header = [f"{c} [{units[c]}]" if c in units else c for c in columns]
    cells = ([_cell(v) for v in row] for row in plain)
    head = list(itertools.islice(cells, TABLE_WIDTH_ROWS))
    widths = [max([len(h)] + [len(r[j]) for r in head]) for j, h in enumerate(header)]
    out.write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for r in itertools.chain(head, cells):
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
        n += 1
    out.write(f"({n} row{'s' if n != 1 else ''})\n")
    return n


def write_table(table: Table, fmt: str, out: IO[str]) -> None:
    """Write an astropy Table (units go into the text header; JSON/CSV keep plain names)."""
    columns, rows = table_rows(table)
    units = {n: str(table[n].unit) for n in table.colnames if table[n].unit is not None}
    write_rows(columns, rows, fmt, out, units=units)
