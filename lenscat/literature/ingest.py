"""Ingest published lens lists: the community catalogue, Stein et al.'s TSVs, SLED, any table.

Layouts are recognised from their columns:

``lenscat``
    ``name, RA [deg], DEC [deg], zlens, type, grading, ref``; multi-values joined by ``' | '``;
    ``zlens`` may be ``-``, ``measured``, ``not measured`` or several values.
``stein2021``
    ``ra dec source_type ebv z_spec ... [region grade]``, tab separated, ``-99`` = missing.
``sled``
    ``name, ra, dec, flag, score, image_sep, n_img, lens_type, source_type, z_lens, z_source, ...``
    with ``|``-joined multi-values.
``generic``
    anything else, with ``--ra-col/--dec-col/--name-col`` (and optional grade/redshift columns).

Each lens keeps its raw row as JSON. The natural key is (catalogue, data row number): names repeat
within published lists (the community catalogue has 502 repeated names), positions too. A row that
repeats an earlier one -- the same name, the same other cells, and a position within
:data:`DUPLICATE_ARCSEC` -- is a duplicate: it is not loaded, and is recorded in ``ingest_rejects``
as "duplicate of row K". Rows with the same name and position but other values (another redshift,
another reference) are kept, and counted as repeats in the summary.

:func:`prepare_literature` (here) reads and validates a list without touching the database;
:func:`lenscat.literature.service.write_literature` stores it; the dataclasses live in
:mod:`lenscat.literature.types`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lenscat.catalogue import ingest_log
from lenscat.catalogue.ingest_log import Reject
from lenscat.errors import InputFileError, LenscatError
from lenscat.io.columns import angle_column
from lenscat.io.readers import ColumnTable, read_table
from lenscat.literature.types import LiteratureColumns, PreparedLiterature
from lenscat.sky.coords import iau_name, separation_arcsec

DUPLICATE_ARCSEC = 0.1
"""Two rows of one file with the same name and cells are one lens when this close, arcsec."""

MISSING_TOKENS = {"", "-", "--", "nan", "none", "null", "n/a", "na", "measured", "not measured", "?"}


LAYOUTS: dict[str, dict[str, str | None]] = {
    "lenscat": {
        "ra": "RA [deg]",
        "dec": "DEC [deg]",
        "name": "name",
        "grade": "grading",
        "z_lens": "zlens",
        "z_source": None,
        "lens_type": "type",
        "source_type": None,
        "refs": "ref",
    },
    "stein2021": {
        "ra": "ra",
        "dec": "dec",
        "name": None,
        "grade": "grade",
        "z_lens": "z_spec",
        "z_source": None,
        "lens_type": None,
        "source_type": None,
        "refs": None,
    },
    "sled": {
        "ra": "ra",
        "dec": "dec",
        "name": "name",
        "grade": "flag",
        "z_lens": "z_lens",
        "z_source": "z_source",
        "lens_type": "lens_type",
        "source_type": "source_type",
        "refs": None,
    },
    "generic": {
        "ra": None,
        "dec": None,
        "name": None,
        "grade": None,
        "z_lens": None,
        "z_source": None,
        "lens_type": None,
        "source_type": None,
        "refs": None,
    },
}
GENERIC_CANDIDATES: dict[str, tuple[str, ...]] = {
    "ra": ("ra", "ra_deg", "ra [deg]", "raj2000", "ra_icrs", "target_ra"),
    "dec": ("dec", "dec_deg", "dec [deg]", "dej2000", "decj2000", "dec_icrs", "target_dec"),
    "name": ("name", "sdss_name", "lens_name", "id", "system"),
    "grade": ("grade", "grading", "quality", "flag"),
    "z_lens": ("z_lens", "zlens", "zl", "z_l", "zlens_first"),
    "z_source": ("z_source", "zsource", "zs", "z_s"),
    "refs": ("refs", "ref", "reference", "references"),
}


def detect_layout(table: ColumnTable) -> str:
    """Name of the recognised layout of a literature table."""
    names = {c.lower() for c in table.columns}
    if {"ra [deg]", "dec [deg]", "grading"} <= names:
        return "lenscat"
    if {"ra", "dec", "source_type", "ebv", "z_spec", "nobs_g"} <= names:
        return "stein2021"
    if {"name", "ra", "dec", "flag", "lens_type", "source_type", "z_lens", "z_source"} <= names:
        return "sled"
    return "generic"


def _split_multi(value: str) -> list[str]:
    return [p.strip() for p in str(value).split("|") if p.strip()]


def first_number(value: Any, null_values: tuple[float, ...] = ()) -> float | None:
    """First finite number in a possibly multi-valued cell (``'0.19 | 0.1965'`` -> 0.19)."""
    if value is None or value is np.ma.masked:
        return None
    if isinstance(value, int | float | np.number):
        v = float(value)
        return None if not math.isfinite(v) or v in null_values else v
    for part in _split_multi(str(value)):
        if part.lower() in MISSING_TOKENS:
            continue
        try:
            v = float(part)
        except ValueError:
            continue
        if math.isfinite(v) and v not in null_values:
            return v
    return None


def _text(value: Any) -> str | None:
    if value is None or value is np.ma.masked:
        return None
    s = str(value).strip()
    return None if s.lower() in MISSING_TOKENS else s


def _json_value(v: Any) -> Any:
    if v is np.ma.masked or v is None:
        return None
    if isinstance(v, np.floating | float):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, np.integer | np.bool_):
        return v.item()
    return str(v)


def prepare_literature(
    path: str | Path,
    catalog: str,
    columns: LiteratureColumns | None = None,
    *,
    format: str | None = None,
    layout: str | None = None,
) -> PreparedLiterature:
    """Read and validate a lens list (no database access)."""
    columns = columns or LiteratureColumns()
    table = read_table(path, format=format, bad_rows="keep")
    if table.n_rows == 0:
        raise InputFileError(f"{table.path}: the table has no data rows")
    layout = layout or detect_layout(table)
    if layout not in LAYOUTS:
        raise LenscatError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    chosen: dict[str, str | None] = {}
    for key, default in LAYOUTS[layout].items():
        explicit = getattr(columns, key)
        if explicit:
            chosen[key] = table.require(explicit, f"the {key} column", f"{key}_col")
        elif default is not None and table.find([default]):
            chosen[key] = table.find([default])
        else:
            chosen[key] = table.find(GENERIC_CANDIDATES.get(key, ()))
    if chosen["ra"] is None or chosen["dec"] is None:
        missing = "ra" if chosen["ra"] is None else "dec"
        raise InputFileError(
            f"{table.path}: no {missing} column found; pass {{{missing}_col}} NAME; "
            f"columns are: {', '.join(table.columns)}",
            params=f"{missing}_col",
        )
    ra_col, dec_col = chosen["ra"], chosen["dec"]
    assert ra_col is not None and dec_col is not None
    ra, ra_bad = angle_column(table, ra_col, hours=True)
    dec, dec_bad = angle_column(table, dec_col, hours=False)
    # rows with more or fewer fields than the header are refused whatever their cells
    rejects: list[Reject] = [Reject(b.row, b.column, b.value, b.reason) for b in table.bad_rows]
    structural = {b.row - 1 for b in table.bad_rows}
    rows: list[dict[str, Any]] = []
    duplicates: list[Reject] = []
    repeats = 0
    by_content: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    by_name: dict[str, list[tuple[float, float]]] = {}
    colnames = list(table.columns)
    # per-column Python lists: row-wise numpy element access is slow
    data = {}
    for c in colnames:
        arr = table.columns[c]
        if arr.ndim != 1:
            continue
        values = np.ma.getdata(arr).tolist()
        mask = np.ma.getmaskarray(arr).tolist()
        data[c] = [None if m else _json_value(v) for v, m in zip(values, mask, strict=True)]
    colnames = list(data)
    nulls = columns.null_values
    for i in range(table.n_rows):
        if i in structural:
            continue
        raw = {c: data[c][i] for c in colnames}
        r, d = float(ra[i]), float(dec[i])
        if ra_bad[i] or not math.isfinite(r):
            rejects.append(Reject(i + 1, ra_col, str(raw[ra_col]), "right ascension missing or not a number"))
            continue
        if dec_bad[i] or not math.isfinite(d):
            rejects.append(Reject(i + 1, dec_col, str(raw[dec_col]), "declination missing or not a number"))
            continue
        if r == 360.0:
            r = 0.0
        if not 0.0 <= r < 360.0:
            rejects.append(Reject(i + 1, ra_col, str(raw[ra_col]), "right ascension out of range [0, 360) deg"))
            continue
        if not -90.0 <= d <= 90.0:
            rejects.append(Reject(i + 1, dec_col, str(raw[dec_col]), "declination out of range [-90, 90] deg"))
            continue
        name = _text(raw[chosen["name"]]) if chosen["name"] else None
        name = name or iau_name(r, d)
        # the same lens listed twice: same name, same other cells, (almost) the same position
        others = json.dumps([raw[c] for c in colnames if c not in (ra_col, dec_col)])
        twin = next(
            (
                k
                for r0, d0, k in by_content.get((name, others), ())
                if separation_arcsec(r, d, r0, d0) <= DUPLICATE_ARCSEC
            ),
            None,
        )
        if twin is not None:
            duplicates.append(
                Reject(
                    i + 1,
                    chosen["name"] or ra_col,
                    name,
                    f"duplicate of row {twin} (same name and values, position within {DUPLICATE_ARCSEC} arcsec)",
                )
            )
            continue
        if any(separation_arcsec(r, d, r0, d0) <= DUPLICATE_ARCSEC for r0, d0 in by_name.get(name, ())):
            repeats += 1
        by_content.setdefault((name, others), []).append((r, d, i + 1))
        by_name.setdefault(name, []).append((r, d))
        ref_cell = raw[chosen["refs"]] if chosen["refs"] else None
        refs = _split_multi(str(ref_cell)) if ref_cell else None
        rows.append(
            {
                "row_number": i + 1,
                "name": name,
                "ra": r,
                "dec": d,
                "grade": _text(raw[chosen["grade"]]) if chosen["grade"] else None,
                "z_lens": first_number(raw[chosen["z_lens"]], nulls) if chosen["z_lens"] else None,
                "z_source": first_number(raw[chosen["z_source"]], nulls) if chosen["z_source"] else None,
                "lens_type": _text(raw[chosen["lens_type"]]) if chosen["lens_type"] else None,
                "source_type": _text(raw[chosen["source_type"]]) if chosen["source_type"] else None,
                "refs": refs,
                "raw": json.dumps(raw),
            }
        )
    options = columns.as_options() | {"layout": layout}
    rejects.sort(key=lambda rej: rej.row)
    return PreparedLiterature(
        path=table.path,
        catalog=catalog,
        layout=layout,
        sha256=ingest_log.file_sha256(table.path),
        options=options,
        rows=rows,
        rejects=rejects,
        columns=chosen,
        duplicates=duplicates,
        repeats=repeats,
    )
