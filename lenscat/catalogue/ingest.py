"""Ingest survey source catalogues: validate, COPY into staging, one upsert per batch, ANALYZE.

The work splits in two:

* :func:`prepare_sources` reads and validates the whole file without touching the database; every
  refused row gets a :class:`~lenscat.catalogue.ingest_log.Reject` naming its row, column and reason;
* :func:`write_batch` writes one batch in the caller's transaction (COPY -> staging -> upsert on
  ``uq_sources_survey_objid`` -> batch marker), and :func:`run_source_ingest` drives the batches,
  one transaction each (two at a time, on two connections), skipping those an earlier run
  committed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lenscat.catalogue import ingest_log
from lenscat.catalogue.ingest_log import Reject
from lenscat.catalogue.surveys import ensure_survey
from lenscat.db.pgbinary import FLOAT4_MAX, Column, encode_copy_binary
from lenscat.db.session import raw_connection, session_scope
from lenscat.errors import InputFileError, LenscatError
from lenscat.images.formats.hdf5_stein import NAME as HDF5_STEIN
from lenscat.io.columns import angle_column, float_column
from lenscat.io.readers import ColumnTable, read_table

RA_NAMES = ("ra", "ra_deg", "radeg", "raj2000", "ra_icrs", "ra [deg]", "alpha_j2000", "target_ra", "plug_ra")
DEC_NAMES = (
    "dec",
    "dec_deg",
    "decdeg",
    "dej2000",
    "decj2000",
    "dec_icrs",
    "dec [deg]",
    "delta_j2000",
    "target_dec",
    "plug_dec",
)
ID_NAMES = ("objid", "object_id", "id", "source_id", "targetid", "specobjid", "objname", "name")
SCALAR_NAMES: dict[str, tuple[str, ...]] = {
    "ebv": ("ebv", "e_bv", "ebv_sfd", "e(b-v)"),
    "source_type": ("source_type", "type", "morphtype"),
    "z_spec": ("z_spec", "zspec", "specz", "z"),
    "z_phot": ("z_phot_mean", "z_phot", "zphot", "photoz", "z_phot_median"),
    "z_phot_l68": ("z_phot_l68",),
    "z_phot_u68": ("z_phot_u68",),
}
NUMERIC_SCALARS = ("ebv", "z_spec", "z_phot", "z_phot_l68", "z_phot_u68")
BAND_FIELDS: dict[str, tuple[str, ...]] = {
    "mag": ("mag_{b}", "{b}mag", "{b}_mag", "mag{b}"),
    "mag_err": ("magerr_{b}", "mag_err_{b}", "e_{b}mag", "{b}magerr", "{b}_mag_err"),
    "flux": ("flux_{b}",),
    "flux_ivar": ("flux_ivar_{b}",),
}
BAND_ORDER = ["u", "g", "r", "i", "z", "y", "Y", "J", "H", "K"]
DEFAULT_NULL_VALUES = (-99.0, -999.0, -9999.0)
ID_ROW = "@row"
ID_IAU = "@iau"


@dataclass
class SourceMapping:
    """How file columns map onto the sources table.

    Attributes
    ----------
    ra_col, dec_col
        Coordinate columns (degrees, or sexagesimal strings: RA in hours). Auto-detected if None.
    id_cols
        Object-id column(s); several are joined with ``_`` (e.g. ``brickid,objid``). ``@row``
        uses the 1-based row number, ``@iau`` an IAU J-name from the position.
    bands
        Band names of the per-band columns, e.g. ``['g', 'r', 'z']``.
    columns
        Explicit field -> file column overrides, e.g. ``{'z_spec': 'ZSPEC', 'mag_g': 'gmag'}``.
    keep_extra
        Store unmapped columns in the ``extra`` JSON column.
    wrap_ra
        Accept right ascensions in [-360, 720) and wrap them into [0, 360).
    null_values
        Sentinels that mean "missing" in optional numeric columns.
    """

    ra_col: str | None = None
    dec_col: str | None = None
    id_cols: list[str] | None = None
    bands: list[str] | None = None
    columns: dict[str, str] = field(default_factory=dict)
    keep_extra: bool = False
    wrap_ra: bool = False
    null_values: tuple[float, ...] = DEFAULT_NULL_VALUES

    def as_options(self) -> dict[str, Any]:
        """JSON-able form (part of the ingest's natural key)."""
        return {
            "ra_col": self.ra_col,
            "dec_col": self.dec_col,
            "id_cols": self.id_cols,
            "bands": self.bands,
            "columns": dict(sorted(self.columns.items())),
            "keep_extra": self.keep_extra,
            "wrap_ra": self.wrap_ra,
            "null_values": list(self.null_values),
        }


@dataclass
class PreparedSources:
    """A validated file, ready to be written in batches."""

    path: Path
    survey: str
    format: str
    sha256: str
    options: dict[str, Any]
    bands: list[str]
    n_rows: int
    objid: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    scalars: dict[str, np.ndarray]
    band_values: dict[str, np.ndarray]  # field -> (N, nbands) float array (NaN = missing)
    extra: list[str] | None
    good: np.ndarray  # bool mask of rows to write
    rejects: list[Reject]
    mapped_columns: dict[str, str]
    ignored_columns: list[str]
    images_shape: tuple[int, ...] | None
    pixel_scale_arcsec: float | None = None
    image_digests: np.ndarray | None = None  # (N, 16) per-row digests of a Stein file's images

    @property
    def n_rejected(self) -> int:
        """Rows refused."""
        return int((~self.good).sum())


@dataclass
class IngestSummary:
    """What an ingest did."""

    path: Path
    target: str
    ingest_id: int
    n_rows: int
    inserted: int
    updated: int
    unchanged: int
    rejected: int
    batches_total: int
    batches_skipped: int
    mapped_columns: dict[str, str] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    cutouts_moved_from: list[str] = field(default_factory=list)
    """Earlier paths of this file's content, gone now; their sources' cutouts are read from ``path``."""
    cutouts_changed: CutoutChanges | None = None
    """Image rows whose pixels differ from the earlier ingest of the file, and what was made stale."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "path": str(self.path),
            "target": self.target,
            "ingest_id": self.ingest_id,
            "rows": self.n_rows,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "batches": self.batches_total,
            "batches_already_done": self.batches_skipped,
            "mapped_columns": self.mapped_columns,
            "ignored_columns": self.ignored_columns,
            "cutouts_moved_from": self.cutouts_moved_from,
            "cutouts_changed": self.cutouts_changed.as_dict() if self.cutouts_changed else None,
        }


# --------------------------------------------------------------------------------------------
# validation


def _id_strings(table: ColumnTable, cols: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Object-id strings (joined with '_') and a mask of missing ids."""
    parts: list[list[str]] = []
    missing = np.zeros(table.n_rows, dtype=bool)
    for c in cols:
        arr = table.columns[c]
        mask = np.ma.getmaskarray(arr)
        data = np.ma.getdata(arr)
        if data.dtype.kind == "f":
            integral = np.isfinite(data) & (np.mod(data, 1) == 0)
            text_ids = np.where(
                integral, np.char.mod("%d", np.where(integral, data, 0).astype(np.int64)), data.astype(str)
            )
            mask = mask | ~np.isfinite(data)
            missing |= mask | (np.char.str_len(text_ids) == 0)
            parts.append(text_ids.tolist())
        elif data.dtype.kind in "iu":  # never empty; str() of a Python int is numpy's astype(str)
            missing |= mask
            parts.append(list(map(str, data.tolist())))
        else:
            text_ids = np.char.strip(data.astype(str))
            missing |= mask | (np.char.str_len(text_ids) == 0)
            parts.append(text_ids.tolist())
    joined = parts[0] if len(parts) == 1 else list(map("_".join, zip(*parts, strict=True)))
    out = np.empty(len(joined), dtype=object)
    out[:] = joined
    return out, missing


def _infer_bands(table: ColumnTable) -> list[str]:
    found: set[str] = set()
    pat = re.compile(r"^(?:mag|flux)_([A-Za-z])$")
    for name in table.columns:
        m = pat.match(name)
        if m:
            found.add(m.group(1))
    for name in ("flux", "mag"):
        col = table.find([name])
        if col is not None and table.columns[col].ndim == 2 and table.format == HDF5_STEIN:
            if table.columns[col].shape[1] == 3:
                return ["g", "r", "z"]
    return sorted(found, key=lambda b: (BAND_ORDER.index(b) if b in BAND_ORDER else 99, b))


def prepare_sources(
    path: str | Path,
    survey: str,
    mapping: SourceMapping | None = None,
    *,
    format: str | None = None,
    existing_bands: list[str] | None = None,
    sha256: str | None = None,
) -> PreparedSources:
    """Read and validate a source catalogue file (no database access).

    Parameters
    ----------
    path
        Catalogue file (FITS, CSV, ECSV, VOTable, Parquet, or Stein-layout HDF5).
    survey
        Survey the sources belong to.
    mapping
        Column mapping; auto-detected where fields are None.
    format
        astropy format name or ``'hdf5-stein'`` (default: from the suffix).
    existing_bands
        Bands of the survey if it already exists (used when the mapping gives none).

    Returns
    -------
    PreparedSources
        Parsed columns, a mask of good rows and the list of rejects.
    """
    mapping = mapping or SourceMapping()
    table = read_table(path, format=format, bad_rows="keep")
    n = table.n_rows
    if n == 0:
        raise InputFileError(f"{table.path}: the table has no data rows")
    mapped: dict[str, str] = {}
    # rows with more or fewer fields than the header: refused first, whatever their cells
    rejects: list[Reject] = [Reject(b.row, b.column, b.value, b.reason) for b in table.bad_rows]
    good = np.ones(n, dtype=bool)
    good[[b.row - 1 for b in table.bad_rows]] = False

    def reject_rows(bad: np.ndarray, column: str, values: np.ndarray, reason: str | Callable[[int], str]) -> None:
        idx = np.flatnonzero(bad & good)
        for i in idx:
            why = reason(int(i)) if callable(reason) else reason
            rejects.append(Reject(int(i) + 1, column, str(values[i]), why))
        good[idx] = False

    def reject_beyond_real(v: np.ndarray, column: str, raw: np.ndarray) -> None:
        """Photometry and redshifts are stored as real (float4): refuse what it cannot hold."""
        with np.errstate(invalid="ignore"):
            big = np.isfinite(v) & (np.abs(v) > FLOAT4_MAX)
        reject_rows(big, column, raw, "beyond the range of a 32-bit real (|x| > 3.4e38)")

    # coordinates ------------------------------------------------------------------------------
    ra_name = mapping.ra_col and table.require(mapping.ra_col, "right ascension (--ra-col)")
    ra_name = ra_name or table.find(RA_NAMES)
    dec_name = mapping.dec_col and table.require(mapping.dec_col, "declination (--dec-col)")
    dec_name = dec_name or table.find(DEC_NAMES)
    if ra_name is None or dec_name is None:
        missing = "ra" if ra_name is None else "dec"
        raise InputFileError(
            f"{table.path}: no {missing} column found (looked for "
            f"{', '.join(RA_NAMES if missing == 'ra' else DEC_NAMES)}); pass --{missing}-col NAME; "
            f"columns are: {', '.join(table.columns)}"
        )
    mapped["ra"], mapped["dec"] = ra_name, dec_name
    ra, ra_bad = angle_column(table, ra_name, hours=True)
    dec, dec_bad = angle_column(table, dec_name, hours=False)
    raw_ra = np.ma.getdata(table.columns[ra_name])
    raw_dec = np.ma.getdata(table.columns[dec_name])
    reject_rows(ra_bad, ra_name, raw_ra, "cannot parse right ascension (degrees or sexagesimal hours)")
    reject_rows(dec_bad, dec_name, raw_dec, "cannot parse declination (degrees or sexagesimal degrees)")
    reject_rows(~np.isfinite(ra), ra_name, raw_ra, "right ascension is missing or NaN")
    reject_rows(~np.isfinite(dec), dec_name, raw_dec, "declination is missing or NaN")
    with np.errstate(invalid="ignore"):
        if mapping.wrap_ra:
            wrap_ok = (ra >= -360) & (ra < 720)
            ra = np.where(wrap_ok, np.mod(ra, 360.0), ra)
        ra = np.where(ra == 360.0, 0.0, ra)
        reject_rows(
            ~((ra >= 0) & (ra < 360)),
            ra_name,
            raw_ra,
            "right ascension out of range [0, 360) deg"
            + ("" if mapping.wrap_ra else " (use --wrap-ra for -180..180 catalogues)"),
        )
        reject_rows(~((dec >= -90) & (dec <= 90)), dec_name, raw_dec, "declination out of range [-90, 90] deg")

    # object ids ------------------------------------------------------------------------------
    id_cols = mapping.id_cols
    if id_cols is None:
        if table.find(["brickid"]) and table.find(["objid"]):
            id_cols = [table.find(["brickid"]) or "", table.find(["objid"]) or ""]
        else:
            found = table.find(ID_NAMES)
            if found is None:
                raise InputFileError(
                    f"{table.path}: no object-id column found (looked for {', '.join(ID_NAMES)}); "
                    f"pass --id-col NAME[,NAME2] (joined with '_'), --id-col @iau (J-name from the "
                    f"position) or --id-col @row (row number)"
                )
            id_cols = [found]
    if id_cols == [ID_ROW]:
        objid = np.array([str(i + 1) for i in range(n)], dtype=object)
        id_missing = np.zeros(n, dtype=bool)
        id_label = ID_ROW
    elif id_cols == [ID_IAU]:
        from lenscat.sky.coords import iau_names

        names = iau_names(np.where(good, ra, 0.0), np.where(good, dec, 0.0))
        objid = np.array([nm if g else "" for nm, g in zip(names, good, strict=True)], dtype=object)
        id_missing = np.zeros(n, dtype=bool)
        id_label = ID_IAU
    else:
        real = [table.require(c, "object id (--id-col)") for c in id_cols]
        objid, id_missing = _id_strings(table, real)
        id_label = ",".join(real)
    mapped["objid"] = id_label
    reject_rows(id_missing, id_label, objid, "object id is missing")
    # duplicates: keep the first occurrence among otherwise-good rows
    order = np.flatnonzero(good)
    if len(order):
        _, first_idx, inverse = np.unique(objid[order].astype(str), return_index=True, return_inverse=True)
        first_row = order[first_idx][inverse]
        dup = np.zeros(n, dtype=bool)
        dup[order] = first_row != order
        first_of = np.zeros(n, dtype=np.int64)
        first_of[order] = first_row
        reject_rows(
            dup, id_label, objid, lambda i: f"duplicate object id in this file (first at row {first_of[i] + 1})"
        )

    # scalar fields -----------------------------------------------------------------------------
    scalars: dict[str, np.ndarray] = {}
    for fieldname, cands in SCALAR_NAMES.items():
        col = mapping.columns.get(fieldname)
        name = table.require(col, fieldname) if col else table.find(cands)
        if name is None or name in (ra_name, dec_name) or name in id_cols:
            continue
        if table.columns[name].ndim != 1:
            continue
        mapped[fieldname] = name
        if fieldname in NUMERIC_SCALARS:
            vals, bad = float_column(table, name)
            reject_rows(bad, name, np.ma.getdata(table.columns[name]), "not a number")
            reject_beyond_real(vals, name, np.ma.getdata(table.columns[name]))
            vals[np.isin(vals, mapping.null_values)] = np.nan
            vals[~np.isfinite(vals)] = np.nan
            scalars[fieldname] = vals
        else:
            data = table.columns[name]
            strings = np.char.strip(np.ma.getdata(data).astype(str)).astype(object)
            strings[np.ma.getmaskarray(data) | (strings == "")] = None
            scalars[fieldname] = strings

    # per-band fields -------------------------------------------------------------------------
    bands = mapping.bands or existing_bands or _infer_bands(table)
    band_values: dict[str, np.ndarray] = {}
    for fieldname, patterns in BAND_FIELDS.items():
        values = np.full((n, len(bands)), np.nan)
        any_found = False
        two_d = mapping.columns.get(fieldname) or table.find([fieldname])
        if two_d and table.columns[table.require(two_d, fieldname)].ndim == 2:
            two_d = table.require(two_d, fieldname)
            width = table.columns[two_d].shape[1]
            if width != len(bands):
                raise InputFileError(
                    f"{table.path}: column {two_d!r} has {width} bands but the bands are "
                    f"{','.join(bands) or '(none)'}; pass --bands"
                )
            for j in range(width):
                v, bad = float_column(table, two_d, col_index=j)
                reject_beyond_real(v, two_d, np.ma.getdata(table.columns[two_d])[:, j])
                values[:, j] = v
            mapped[fieldname] = two_d
            any_found = True
        else:
            for j, b in enumerate(bands):
                key = f"{fieldname}_{b}"
                col = mapping.columns.get(key)
                name = table.require(col, key) if col else table.find([p.format(b=b) for p in patterns])
                if name is None or table.columns[name].ndim != 1:
                    continue
                v, bad = float_column(table, name)
                reject_rows(bad, name, np.ma.getdata(table.columns[name]), "not a number")
                reject_beyond_real(v, name, np.ma.getdata(table.columns[name]))
                values[:, j] = v
                mapped[key] = name
                any_found = True
        if any_found:
            values[np.isin(values, mapping.null_values)] = np.nan
            values[~np.isfinite(values)] = np.nan
            band_values[fieldname] = values
    if "flux" in band_values and "mag" not in band_values:
        with np.errstate(divide="ignore", invalid="ignore"):
            f = band_values["flux"]
            band_values["mag"] = np.where(f > 0, 22.5 - 2.5 * np.log10(f), np.nan)
        mapped["mag"] = "22.5 - 2.5 log10(flux)"

    # unmapped columns ------------------------------------------------------------------------
    used = {c for v in mapped.values() for c in v.split(",")}
    ignored = [c for c in table.columns if c not in used]
    extra: list[str] | None = None
    if mapping.keep_extra and ignored:
        extra = []
        cols = {c: table.columns[c] for c in ignored}
        for i in range(n):
            row: dict[str, Any] = {}
            for c, arr in cols.items():
                v = arr[i]
                if v is np.ma.masked:
                    row[c] = None
                elif isinstance(v, np.ndarray):
                    row[c] = [None if not np.isfinite(x) else float(x) for x in v.astype(float)]
                elif isinstance(v, np.floating):
                    row[c] = float(v) if np.isfinite(v) else None
                elif isinstance(v, np.integer | np.bool_):
                    row[c] = v.item()
                else:
                    row[c] = str(v)
            extra.append(json.dumps(row))
        ignored = []

    rejects.sort(key=lambda r: r.row)
    from lenscat.catalogue.ingest_log import file_sha256

    return PreparedSources(
        path=table.path,
        survey=survey,
        format=table.format,
        sha256=sha256 or table.sha256 or file_sha256(table.path),
        options=mapping.as_options(),
        bands=bands,
        n_rows=n,
        objid=objid,
        ra=ra,
        dec=dec,
        scalars=scalars,
        band_values=band_values,
        extra=extra,
        good=good,
        rejects=rejects,
        mapped_columns=mapped,
        ignored_columns=ignored,
        images_shape=table.images_shape,
        image_digests=table.image_digests,
    )


# --------------------------------------------------------------------------------------------
# writing


def _stage_table(nbands: int) -> str:
    return f"lenscat_stage_sources_{nbands}"


def _ensure_stage(session: Session, nbands: int) -> str:
    name = _stage_table(nbands)
    band_cols = ", ".join(f"{f}_{j} real" for f in BAND_FIELDS for j in range(nbands))
    session.execute(
        text(
            f"""
            CREATE TEMP TABLE IF NOT EXISTS {name} (
                row_number bigint, objid text, ra double precision, dec double precision,
                ebv real, source_type text, z_spec real, z_phot real, z_phot_l68 real, z_phot_u68 real,
                cutout_row integer, extra text{", " + band_cols if band_cols else ""}
            )"""
        )
    )
    session.execute(text(f"TRUNCATE {name}"))
    return name


def _value_columns(prep: PreparedSources, rows: np.ndarray) -> dict[str, Column]:
    """The columns both COPY streams share: object id, position, scalar fields."""
    cols: dict[str, Column] = {
        "objid": Column("text", prep.objid[rows], np.zeros(len(rows), bool)),
        "ra": Column("float8", prep.ra[rows]),
        "dec": Column("float8", prep.dec[rows]),
    }
    for name, values in prep.scalars.items():
        v = values[rows]
        cols[name] = Column("text", v) if v.dtype == object else Column("float4", v)
    return cols


def _batch_copy(prep: PreparedSources, rows: np.ndarray, with_cutouts: bool) -> tuple[list[str], bytes]:
    """The staging rows of ``rows`` as one binary COPY stream (non-finite floats as NULL).

    Columns carry the staging table's types: bigint row numbers, float8 positions, real
    (float4) photometry and redshifts, integer cutout rows and text ids, types and extras.
    """
    cols = {"row_number": Column("int8", rows + 1), **_value_columns(prep, rows)}
    if with_cutouts:
        cols["cutout_row"] = Column("int4", rows)
    if prep.extra is not None:
        cols["extra"] = Column("text", [prep.extra[i] for i in rows])
    for fieldname, values in prep.band_values.items():
        for j in range(values.shape[1]):
            cols[f"{fieldname}_{j}"] = Column("float4", values[rows, j])
    return list(cols), encode_copy_binary(list(cols.values()))


def _sources_copy(
    prep: PreparedSources, rows: np.ndarray, *, survey_id: int, ingest_id: int, cutout_file_id: int | None
) -> tuple[list[str], bytes]:
    """The rows ``rows`` as a binary COPY stream in ``lenscat.sources``'s own columns and types.

    The same values the staging path writes: smallint survey, integer ingest and cutout columns,
    real photometry (an array per field, NULL when every band is missing), jsonb extras.
    """
    n = len(rows)
    cols = {
        "survey_id": Column("int2", np.full(n, survey_id)),
        "ingest_id": Column("int4", np.full(n, ingest_id)),
        **_value_columns(prep, rows),
    }
    for fieldname, values in prep.band_values.items():
        cols[fieldname] = Column("float4[]", values[rows])
    if cutout_file_id is not None:
        cols["cutout_file_id"] = Column("int4", np.full(n, cutout_file_id))
        cols["cutout_row"] = Column("int4", rows)
    if prep.extra is not None:
        cols["extra"] = Column("jsonb", [prep.extra[i] for i in rows])
    return list(cols), encode_copy_binary(list(cols.values()))


def _array_expr(fieldname: str, nbands: int) -> str:
    cols = ", ".join(f"{fieldname}_{j}" for j in range(nbands))
    return f"CASE WHEN num_nonnulls({cols}) = 0 THEN NULL ELSE ARRAY[{cols}]::real[] END"


def _target_columns(prep: PreparedSources, with_cutouts: bool) -> tuple[list[str], list[str]]:
    """(sources columns written, staging expressions that fill them)."""
    nb = len(prep.bands)
    target: list[str] = ["ra", "dec"]
    select: list[str] = ["ra", "dec"]
    for name in prep.scalars:
        target.append(name)
        select.append(name)
    for fieldname in prep.band_values:
        target.append(fieldname)
        select.append(_array_expr(fieldname, nb))
    if with_cutouts:
        target += ["cutout_file_id", "cutout_row"]
        select += [":file_id", "cutout_row"]
    if prep.extra is not None:
        target.append("extra")
        select.append("extra::jsonb")
    return target, select


def _is_key_conflict(exc: Exception) -> bool:
    """True when ``exc`` is a unique violation of the natural key (survey_id, objid)."""
    orig = getattr(exc, "orig", exc)  # SQLAlchemy's wrapper, or psycopg's own error from a COPY
    diag = getattr(orig, "diag", None)
    return (
        getattr(orig, "sqlstate", None) == "23505"
        and getattr(diag, "constraint_name", None) == "uq_sources_survey_objid"
    )


def write_batch(
    prep: PreparedSources,
    rows: np.ndarray,
    *,
    session: Session,
    survey_id: int,
    ingest_id: int,
    cutout_file_id: int | None,
) -> tuple[int, int, int]:
    """Write ``rows`` (indices of good rows) into ``lenscat.sources``, as one upsert would.

    Unless the batch's first key exists already, the rows first go in with one binary ``COPY``
    straight into ``lenscat.sources`` inside a SAVEPOINT: when none of their keys exists yet (a
    first load, the common case) that is all, with no staging table, no INSERT ... SELECT and no
    speculative insertion. If any key exists (a re-ingest, a concurrent writer), the unique index
    refuses the COPY, the savepoint is rolled back, and the batch goes through staging: a binary
    COPY into a temporary table, then ``INSERT ... ON CONFLICT DO UPDATE`` of the changed rows
    only. Either way the rows and the counts are those of the upsert, and source ids follow the
    file's row order.

    Returns
    -------
    inserted, updated, unchanged
    """
    import psycopg

    if len(rows) == 0:
        return 0, 0, 0
    conn = raw_connection(session)
    # a re-ingest is seen at its first row: then go straight to the upsert
    known = session.execute(
        text("SELECT EXISTS (SELECT 1 FROM lenscat.sources WHERE survey_id = :s AND objid = :o)"),
        {"s": survey_id, "o": str(prep.objid[rows[0]])},
    ).scalar()
    if not known:
        names, data = _sources_copy(prep, rows, survey_id=survey_id, ingest_id=ingest_id, cutout_file_id=cutout_file_id)
        try:
            with session.begin_nested():
                session.connection()  # emits the SAVEPOINT before the raw COPY
                with (
                    conn.cursor() as cur,
                    cur.copy(f"COPY lenscat.sources ({', '.join(names)}) FROM STDIN (FORMAT binary)") as copy,
                ):
                    copy.write(data)
            return len(rows), 0, 0  # a COPY writes every row or none
        except (IntegrityError, psycopg.errors.UniqueViolation) as exc:
            if not _is_key_conflict(exc):
                raise
        del data
    stage = _ensure_stage(session, len(prep.bands))
    names, data = _batch_copy(prep, rows, cutout_file_id is not None)
    with conn.cursor() as cur, cur.copy(f"COPY {stage} ({', '.join(names)}) FROM STDIN (FORMAT binary)") as copy:
        copy.write(data)
    target, select = _target_columns(prep, cutout_file_id is not None)
    params = {"survey_id": survey_id, "ingest_id": ingest_id, "file_id": cutout_file_id}
    insert = f"""
        INSERT INTO lenscat.sources AS s (survey_id, objid, ingest_id, {", ".join(target)})
        SELECT :survey_id, objid, :ingest_id, {", ".join(select)}
        FROM {stage} ORDER BY row_number
    """
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in target)
    changed = " OR ".join(f"s.{c} IS DISTINCT FROM EXCLUDED.{c}" for c in target)
    sql = f"""
        WITH up AS (
            {insert}
            ON CONFLICT ON CONSTRAINT uq_sources_survey_objid DO UPDATE
            SET {sets}, ingest_id = EXCLUDED.ingest_id, updated_at = now()
            WHERE {changed}
            RETURNING (xmax = 0) AS inserted
        )
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up
    """
    ins, upd = session.execute(text(sql), params).one()
    return int(ins), int(upd), len(rows) - int(ins) - int(upd)


@dataclass
class CutoutChanges:
    """Image rows of a re-ingested file whose pixels changed, and the results made stale by it."""

    rows: list[int]
    sources: int
    embeddings_removed: int
    scores_removed: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (the first 1000 rows)."""
        return {
            "n_rows": len(self.rows),
            "rows": self.rows[:1000],
            "sources": self.sources,
            "embeddings_removed": self.embeddings_removed,
            "scores_removed": self.scores_removed,
        }


ROW_DIGEST_BLOCK = 4096
"""Image rows per ``lenscat.cutout_row_digests`` row."""


def update_row_digests(file_id: int, digests: np.ndarray, *, session: Session) -> list[int]:
    """Store the per-row image digests of a cutout file; return the rows whose digest changed.

    Rows the file did not have before, and a file registered before digests were kept (nothing
    to compare with), count as unchanged. Idempotent: storing the same digests again returns [].
    """
    from lenscat.io.hdf5 import IMAGE_DIGEST_BYTES

    d = np.ascontiguousarray(digests, dtype=np.uint8).reshape(-1, IMAGE_DIGEST_BYTES)
    old = {
        int(b): bytes(v)
        for b, v in session.execute(
            text("SELECT block_no, digests FROM lenscat.cutout_row_digests WHERE file_id = :f"), {"f": file_id}
        ).all()
    }
    changed: list[int] = []
    n_blocks = -(-len(d) // ROW_DIGEST_BLOCK)
    for b in range(n_blocks):
        new = d[b * ROW_DIGEST_BLOCK : (b + 1) * ROW_DIGEST_BLOCK]
        blob = new.tobytes()
        before = old.get(b)
        if before == blob:
            continue
        if before is not None:
            prev = np.frombuffer(before, np.uint8).reshape(-1, IMAGE_DIGEST_BYTES)
            m = min(len(prev), len(new))
            diff = np.flatnonzero((prev[:m] != new[:m]).any(axis=1))
            changed += (diff + b * ROW_DIGEST_BLOCK).tolist()
        session.execute(
            text(
                "INSERT INTO lenscat.cutout_row_digests (file_id, block_no, digests) VALUES (:f, :b, :d) "
                "ON CONFLICT ON CONSTRAINT pk_cutout_row_digests DO UPDATE SET digests = EXCLUDED.digests"
            ),
            {"f": file_id, "b": b, "d": blob},
        )
    session.execute(
        text("DELETE FROM lenscat.cutout_row_digests WHERE file_id = :f AND block_no >= :n"),
        {"f": file_id, "n": n_blocks},
    )
    return changed


def mark_cutouts_stale(file_id: int, rows: list[int], *, session: Session) -> CutoutChanges:
    """Remove the results computed from the old pixels of ``rows`` of a cutout file.

    Embeddings of encoders lenscat can run (not sets of precomputed vectors, which cannot be
    recomputed) and the scores of every classifier except linear ones on precomputed vectors are
    deleted, so ``lenscat embed``/``score`` and ``lenscat reprocess`` plan exactly these sources
    again; recorded item failures of the sources are forgotten (their input changed).
    """
    if not rows:
        return CutoutChanges([], 0, 0, 0)
    sids = [
        int(x)
        for x in session.execute(
            text("SELECT source_id FROM lenscat.sources WHERE cutout_file_id = :f AND cutout_row = ANY(:r)"),
            {"f": file_id, "r": rows},
        ).scalars()
    ]
    if not sids:
        return CutoutChanges(sorted(rows), 0, 0, 0)
    emb = session.execute(
        text(
            "DELETE FROM lenscat.embeddings e USING lenscat.model_versions m WHERE m.model_id = e.model_id "
            "AND m.origin <> 'external' AND e.source_id = ANY(:s)"
        ),
        {"s": sids},
    )
    sc = session.execute(
        text("""DELETE FROM lenscat.scores c USING lenscat.model_versions m
                WHERE m.model_id = c.model_id AND c.source_id = ANY(:s)
                  AND NOT (m.architecture = 'linear' AND EXISTS (
                      SELECT 1 FROM lenscat.model_versions p
                      WHERE p.model_id = m.parent_model_id AND p.origin = 'external'))"""),
        {"s": sids},
    )
    session.execute(text("DELETE FROM lenscat.job_item_failures WHERE item_id = ANY(:s)"), {"s": sids})
    return CutoutChanges(
        sorted(rows), len(sids), int(getattr(emb, "rowcount", 0) or 0), int(getattr(sc, "rowcount", 0) or 0)
    )


def register_cutout_file(
    prep: PreparedSources, *, session: Session
) -> tuple[int | None, list[str], CutoutChanges | None]:
    """Register the file as a cutout store when it carries an ``images`` dataset.

    Returns its ``file_id`` (None without images), the paths of earlier registrations of the same
    content (sha256) whose files no longer exist: their sources now read their cutouts from this
    file, as after ``lenscat db relocate`` (a survey file moved, then ingested again from its new
    place, whose rows are otherwise already done), and the image rows whose pixels changed since
    the file was last ingested (their embeddings and scores are removed: see
    :func:`mark_cutouts_stale`).
    """
    if prep.images_shape is None:
        return None, [], None
    file_id = int(
        session.execute(
            text(
                """
                INSERT INTO lenscat.cutout_files (path, format, sha256, n_images, image_shape)
                VALUES (:p, :fmt, :sha, :n, :shape)
                ON CONFLICT ON CONSTRAINT uq_cutout_files_path
                DO UPDATE SET sha256 = EXCLUDED.sha256, n_images = EXCLUDED.n_images,
                              image_shape = EXCLUDED.image_shape
                RETURNING file_id
                """
            ),
            {
                "p": str(prep.path),
                "fmt": HDF5_STEIN,
                "sha": prep.sha256,
                "n": prep.images_shape[0],
                "shape": list(prep.images_shape[1:]),
            },
        ).scalar_one()
    )
    copies = session.execute(
        text(
            "SELECT file_id, path FROM lenscat.cutout_files WHERE sha256 = :sha "
            "AND format = :fmt AND file_id <> :k ORDER BY file_id"
        ),
        {"sha": prep.sha256, "fmt": HDF5_STEIN, "k": file_id},
    ).all()
    gone = [(int(k), str(p)) for k, p in copies if not Path(p).exists()]
    for old_id, _ in gone:
        session.execute(
            text("UPDATE lenscat.sources SET cutout_file_id = :new, updated_at = now() WHERE cutout_file_id = :old"),
            {"new": file_id, "old": old_id},
        )
        session.execute(text("DELETE FROM lenscat.cutout_files WHERE file_id = :old"), {"old": old_id})
    changes = None
    if prep.image_digests is not None:
        changes = mark_cutouts_stale(
            file_id, update_row_digests(file_id, prep.image_digests, session=session), session=session
        )
    return file_id, [p for _, p in gone], changes


INGEST_WORKERS = 2
"""Batches written at the same time, each on its own connection and in its own transaction."""


def _ingest_workers(n_batches: int) -> int:
    """How many batches to write at once: 1 when sessions join a bound (test) connection."""
    from lenscat.db import session as db_session

    if db_session._bound_connection is not None or n_batches < 2:
        return 1
    return max(1, min(INGEST_WORKERS, os.cpu_count() or 1, n_batches))


def _write_concurrently(
    todo: list[tuple[int, int, int]],
    write_one: Callable[[int, int, int], None],
    workers: int,
    on_done: Callable[[int], object],
) -> int:
    """Run ``write_one(batch_no, start, stop)`` for ``todo`` on ``workers`` threads.

    At most ``workers`` batches are in flight. On an error or an interrupt no new batch starts,
    the batches in flight finish (commit or roll back: each is one transaction), and the
    exception propagates. Returns the number of batches written.
    """
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    written = 0
    running: dict[Future[None], int] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lenscat-ingest")

    def collect(block_until: int) -> None:
        nonlocal written
        while len(running) > block_until:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                n = running.pop(fut)
                fut.result()
                written += 1
                on_done(n)

    try:
        for b, start, stop in todo:
            collect(workers - 1)
            running[pool.submit(write_one, b, start, stop)] = stop - start
        collect(0)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return written


def run_source_ingest(
    prep: PreparedSources,
    *,
    batch_rows: int,
    progress: bool | None = None,
    stop_after_batches: int | None = None,
) -> IngestSummary:
    """Write a prepared file in batches, one transaction each; resumable and idempotent.

    Outside tests (no bound connection) two batches are written at once, on two connections:
    while one batch's upsert runs in the database, the other's binary COPY stream is built and copied.

    Parameters
    ----------
    prep
        Output of :func:`prepare_sources`.
    batch_rows
        Rows per all-or-nothing batch.
    progress
        Show a progress bar (None: only on a terminal).
    stop_after_batches
        Stop after writing this many new batches (simulates an interruption; for tests).
    """
    from tqdm import tqdm

    starts = list(range(0, prep.n_rows, batch_rows))
    with session_scope() as session:
        survey = ensure_survey(prep.survey, prep.bands, session=session, pixel_scale_arcsec=prep.pixel_scale_arcsec)
        record = ingest_log.open_ingest(
            session=session,
            kind="sources",
            target=prep.survey,
            path=prep.path,
            sha256=prep.sha256,
            options=prep.options,
            n_rows=prep.n_rows,
            n_batches=len(starts),
        )
        file_id, moved_from, cutout_changes = register_cutout_file(prep, session=session)
    skipped = len(record.done_batches)
    bounds = [(b, start, min(start + batch_rows, prep.n_rows)) for b, start in enumerate(starts)]
    todo = [x for x in bounds if x[0] not in record.done_batches]
    if stop_after_batches is not None:
        todo = todo[: max(stop_after_batches, 0)]

    def write_one(b: int, start: int, stop: int) -> None:
        rows = np.arange(start, stop)
        good_rows = rows[prep.good[start:stop]]
        batch_rejects = [r for r in prep.rejects if start < r.row <= stop]
        with session_scope() as session:
            ins, upd, unch = write_batch(
                prep,
                good_rows,
                session=session,
                survey_id=survey.survey_id,
                ingest_id=record.ingest_id,
                cutout_file_id=file_id,
            )
            ingest_log.record_rejects(batch_rejects, session=session, ingest_id=record.ingest_id)
            ingest_log.record_batch(
                session=session,
                ingest_id=record.ingest_id,
                batch_no=b,
                row_start=start + 1,
                row_stop=stop,
                n_inserted=ins,
                n_updated=upd,
                n_unchanged=unch,
                n_rejected=int((~prep.good[start:stop]).sum()),
            )

    written = 0
    bar = tqdm(
        total=prep.n_rows,
        unit="rows",
        desc=f"ingest {prep.path.name}",
        disable=progress is False if progress is not None else None,
        leave=False,
    )
    bar.update(sum(stop - start for b, start, stop in bounds if b in record.done_batches))
    try:
        workers = _ingest_workers(len(todo))
        if workers > 1:
            written = _write_concurrently(todo, write_one, workers, bar.update)
        else:
            for b, start, stop in todo:
                write_one(b, start, stop)
                written += 1
                bar.update(stop - start)
    except Exception as exc:
        with session_scope() as session:
            ingest_log.fail_ingest(session=session, ingest_id=record.ingest_id, message=str(exc))
        raise
    finally:
        bar.close()
    complete = written + skipped == len(starts)
    with session_scope() as session:
        if complete:
            totals = ingest_log.close_ingest(session=session, ingest_id=record.ingest_id)
            if written:
                session.execute(text("ANALYZE lenscat.sources"))
        else:
            totals = ingest_log.batch_totals(session=session, ingest_id=record.ingest_id)
    return IngestSummary(
        path=prep.path,
        target=prep.survey,
        ingest_id=record.ingest_id,
        n_rows=prep.n_rows,
        inserted=totals["inserted"],
        updated=totals["updated"],
        unchanged=totals["unchanged"],
        rejected=totals["rejected"],
        batches_total=len(starts),
        batches_skipped=skipped,
        mapped_columns=prep.mapped_columns,
        ignored_columns=prep.ignored_columns,
        rejects=prep.rejects,
        cutouts_moved_from=moved_from,
        cutouts_changed=cutout_changes,
    )


def ingest_sources(
    path: str | Path,
    survey: str,
    mapping: SourceMapping | None = None,
    *,
    format: str | None = None,
    batch_rows: int = 100_000,
    progress: bool | None = None,
    strict: bool = False,
    stop_after_batches: int | None = None,
    pixel_scale: Any = None,
) -> IngestSummary:
    """Validate and load a source catalogue file (see :func:`prepare_sources`).

    With ``strict``, any rejected row stops the ingest before anything is written. ``pixel_scale``
    (an angle Quantity or a number in arcsec per pixel) records the pixel scale of the file's
    cutouts on the survey (a Stein-layout file does not say it; FITS cutouts carry a WCS); a
    survey that already has a different one is an error.
    """
    scale_arcsec: float | None = None
    if pixel_scale is not None:
        from lenscat.sky.coords import parse_angle_quantity

        scale_arcsec = float(parse_angle_quantity(pixel_scale).to_value("arcsec"))
        if not scale_arcsec > 0:
            raise LenscatError(f"pixel scale must be positive, got {pixel_scale!r}")
    existing: list[str] | None = None
    with session_scope() as session:
        row = session.execute(text("SELECT bands FROM lenscat.surveys WHERE name = :n"), {"n": survey}).one_or_none()
        if row is not None and row[0]:
            existing = list(row[0])
    prep = prepare_sources(path, survey, mapping, format=format, existing_bands=existing)
    prep.pixel_scale_arcsec = scale_arcsec
    if strict and prep.rejects:
        first = prep.rejects[0]
        raise LenscatError(f"{first.line(prep.path)} ({len(prep.rejects)} rejects; nothing written: --strict)")
    return run_source_ingest(prep, batch_rows=batch_rows, progress=progress, stop_after_batches=stop_after_batches)
