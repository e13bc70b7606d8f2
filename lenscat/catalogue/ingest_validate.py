"""Read and validate a survey source catalogue without touching the database.

:func:`prepare_sources` finds the coordinate, object-id, scalar and per-band columns (or takes them
from a :class:`~lenscat.catalogue.types.SourceMapping`), and gives every refused row a
:class:`~lenscat.catalogue.ingest_log.Reject` naming its row, column and reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lenscat.catalogue.ingest_log import Reject, file_sha256
from lenscat.catalogue.types import PreparedSources, SourceMapping
from lenscat.db.pgbinary import FLOAT4_MAX
from lenscat.errors import InputFileError
from lenscat.images.formats.hdf5_stein import NAME as HDF5_STEIN
from lenscat.io.columns import angle_column, float_column
from lenscat.io.readers import ColumnTable, read_table
from lenscat.sky.coords import iau_names

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
ID_ROW = "@row"
ID_IAU = "@iau"


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

    def reject_rows(
        bad: np.ndarray,
        column: str,
        values: np.ndarray,
        reason: str | Callable[[int], str],
        params: tuple[str, ...] = (),
    ) -> None:
        idx = np.flatnonzero(bad & good)
        for i in idx:
            why = reason(int(i)) if callable(reason) else reason
            rejects.append(Reject(int(i) + 1, column, str(values[i]), why, params))
        good[idx] = False

    def reject_beyond_real(v: np.ndarray, column: str, raw: np.ndarray) -> None:
        """Photometry and redshifts are stored as real (float4): refuse what it cannot hold."""
        with np.errstate(invalid="ignore"):
            big = np.isfinite(v) & (np.abs(v) > FLOAT4_MAX)
        reject_rows(big, column, raw, "beyond the range of a 32-bit real (|x| > 3.4e38)")

    # coordinates ------------------------------------------------------------------------------
    ra_name = mapping.ra_col and table.require(mapping.ra_col, "right ascension", "ra_col")
    ra_name = ra_name or table.find(RA_NAMES)
    dec_name = mapping.dec_col and table.require(mapping.dec_col, "declination", "dec_col")
    dec_name = dec_name or table.find(DEC_NAMES)
    if ra_name is None or dec_name is None:
        missing = "ra" if ra_name is None else "dec"
        raise InputFileError(
            f"{table.path}: no {missing} column found (looked for "
            f"{', '.join(RA_NAMES if missing == 'ra' else DEC_NAMES)}); pass {{{missing}_col}} NAME; "
            f"columns are: {', '.join(table.columns)}",
            params=f"{missing}_col",
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
            + ("" if mapping.wrap_ra else " (use {wrap_ra} for -180..180 catalogues)"),
            ("wrap_ra",),
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
                    "pass {id_col} NAME[,NAME2] (joined with '_'), {id_col} @iau (J-name from the "
                    "position) or {id_col} @row (row number)",
                    params="id_col",
                )
            id_cols = [found]
    if id_cols == [ID_ROW]:
        objid = np.array([str(i + 1) for i in range(n)], dtype=object)
        id_missing = np.zeros(n, dtype=bool)
        id_label = ID_ROW
    elif id_cols == [ID_IAU]:
        names = iau_names(np.where(good, ra, 0.0), np.where(good, dec, 0.0))
        objid = np.array([nm if g else "" for nm, g in zip(names, good, strict=True)], dtype=object)
        id_missing = np.zeros(n, dtype=bool)
        id_label = ID_IAU
    else:
        real = [table.require(c, "object id", "id_col") for c in id_cols]
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
                    f"{','.join(bands) or '(none)'}; pass {{bands}}",
                    params="bands",
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
