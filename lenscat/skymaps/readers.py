"""Sky-map files: flat HEALPix probability maps, multi-order (NUNIQ) maps and MOCs, as tiles at order 29.

* **Flat maps** (LIGO/Virgo/KAGRA ``bayestar.fits.gz``, Fermi GBM ``glg_healpix_all_*.fit``, any
  map written by healpy): a binary table whose header gives ``ORDERING`` (``RING`` or ``NESTED``),
  ``NSIDE`` (else inferred from the pixel count) and ``COORDSYS`` (``C``: equatorial; a missing
  card is read as equatorial, ``G`` or ``E`` are refused); the probability per pixel in ``PROB`` or
  ``PROBABILITY`` (or a density per steradian in ``PROBDENSITY``); vector columns (healpy's
  1024-element rows) are flattened.
* **Multi-order maps** (LVK ``*.multiorder.fits``): columns ``UNIQ`` (``4 * 4**order + ipix``) and
  ``PROBDENSITY`` [sr^-1].
* **MOCs** (a table with ``UNIQ`` and no probability, or ``MOCORDER`` in the header), read with
  mocpy's ``MOC.from_fits``: no probability, every cell inside with a uniform density.

Gzip-compressed files are read as they are. Bad input raises :class:`lenscat.errors.InputFileError`
with one line naming the file (and the column or row): not FITS, no table, no probability column,
NaN or negative values, probabilities not summing to 1 within :data:`SUM_TOLERANCE`, an unknown
ORDERING, a non-equatorial COORDSYS, a pixel count that is not 12 nside^2.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy_healpix.core import ring_to_nested

from lenscat.errors import InputFileError
from lenscat.sky.healpix import MAX_ORDER, cells_to_ranges
from lenscat.skymaps.types import STERADIAN_PER_TILE_UNIT, SkyMapData

SUM_TOLERANCE = 0.01
"""Total probability must be within this of 1 (then it is normalised to exactly 1)."""

PROB_COLUMNS: tuple[str, ...] = ("PROB", "PROBABILITY")
"""Column names of a flat map's probability per pixel (case-insensitive)."""

META_CARDS: tuple[str, ...] = (
    "OBJECT",
    "DATE-OBS",
    "MJD-OBS",
    "DATE",
    "INSTRUME",
    "ORIGIN",
    "CREATOR",
    "REFERENC",
    "TRIGTIME",
    "DISTMEAN",
    "DISTSTD",
    "LOGBCI",
    "LOGBSN",
    "VCSVERS",
)
"""Header cards copied into the stored metadata when present."""


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _table_hdu(path: Path, hdus: fits.HDUList) -> fits.BinTableHDU:
    for hdu in hdus[1:]:
        if isinstance(hdu, fits.BinTableHDU):
            return hdu
    raise InputFileError(f"{path}: no binary table HDU (a HEALPix map or MOC is stored as one)")


def _meta(header: fits.Header) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in META_CARDS:
        if key in header:
            value = header[key]
            out[key] = value if isinstance(value, bool | int | float) else str(value)
    return out


def _check_values(path: Path, name: str, values: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise InputFileError(f"{path}: column {name} has a non-finite value (NaN or inf) at pixel {int(bad[0])}")
    neg = np.flatnonzero(values < 0)
    if len(neg):
        raise InputFileError(f"{path}: column {name} has a negative value ({values[neg[0]]:g}) at pixel {int(neg[0])}")


def _check_sum(path: Path, name: str, total: float) -> None:
    if not abs(total - 1.0) <= SUM_TOLERANCE:
        raise InputFileError(f"{path}: the probabilities of column {name} sum to {total:.6g}, not 1")


def credible_levels(density: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Each tile's credible level: the probability of every tile at least as dense (ties share a level).

    Tiles are ranked by decreasing density; the level of a tile is the cumulative probability
    down to and including the last tile of its density, so the region ``level <= c`` never splits
    tiles of equal density and does not depend on the tiles' order.
    """
    if len(density) == 0:
        return np.empty(0)
    order = np.argsort(-density, kind="stable")
    d = density[order]
    cs = np.cumsum(prob[order])
    change = np.r_[d[1:] != d[:-1], True]
    ends = np.flatnonzero(change)
    group = np.r_[0, np.cumsum(change[:-1])]
    level = np.empty(len(d))
    level[order] = np.minimum(cs[ends][group] / cs[-1], 1.0)
    return level


def _merge_equal(lo: np.ndarray, hi: np.ndarray, density: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort tiles by ``lo`` and merge neighbours that touch and have the same density."""
    srt = np.argsort(lo, kind="stable")
    lo, hi, density = lo[srt], hi[srt], density[srt]
    if len(lo) > 1 and np.any(lo[1:] < hi[:-1]):
        k = int(np.flatnonzero(lo[1:] < hi[:-1])[0])
        raise InputFileError(f"overlapping cells: range [{lo[k + 1]}, {hi[k + 1]}) starts inside [{lo[k]}, {hi[k]})")
    start = np.r_[True, (lo[1:] != hi[:-1]) | (density[1:] != density[:-1])]
    first = np.flatnonzero(start)
    last = np.r_[first[1:] - 1, len(lo) - 1]
    return lo[first], hi[last], density[first]


def _tiles(kind: str, lo: np.ndarray, hi: np.ndarray, density: np.ndarray, **kw: Any) -> SkyMapData:
    lo, hi, density = _merge_equal(lo, hi, density)
    area = (hi - lo).astype(np.float64) * STERADIAN_PER_TILE_UNIT
    if kind == "moc":
        cum = np.ones(len(lo))
    else:
        cum = credible_levels(density, density * area)
    return SkyMapData(kind, lo, hi, density, cum, **kw)


def _flat(path: Path, hdu: fits.BinTableHDU) -> SkyMapData:
    header = hdu.header
    names = {n.upper(): n for n in hdu.columns.names}
    col = next((names[c] for c in (*PROB_COLUMNS, "PROBDENSITY") if c in names), None)
    if col is None:
        raise InputFileError(
            f"{path}: no probability column (expected {' or '.join(PROB_COLUMNS)}); "
            f"columns: {', '.join(names.values())}"
        )
    ordering = str(header.get("ORDERING", "")).strip().upper()
    if ordering not in ("RING", "NESTED"):
        raise InputFileError(f"{path}: unknown ORDERING {ordering or '(missing)'!r}; expected RING, NESTED or NUNIQ")
    coordsys = str(header.get("COORDSYS", "C")).strip().upper()
    if coordsys not in ("C", "CEL", "Q", "EQU", "ICRS"):
        raise InputFileError(
            f"{path}: COORDSYS {coordsys!r} is not equatorial (C); convert the map to equatorial coordinates first"
        )
    values = np.asarray(hdu.data[col], dtype=np.float64).ravel()
    npix = len(values)
    nside = int(header.get("NSIDE", 0)) or int(round(np.sqrt(npix / 12)))
    order = int(round(np.log2(nside))) if nside > 0 else -1
    if order < 0 or 2**order != nside or order > MAX_ORDER or 12 * nside * nside != npix:
        raise InputFileError(f"{path}: {npix} pixels in column {col} do not make a HEALPix map of NSIDE {nside}")
    _check_values(path, col, values)
    pix_sr = 4.0 * np.pi / npix
    prob = values * pix_sr if col.upper() == "PROBDENSITY" else values
    _check_sum(path, col, float(prob.sum()))
    prob = prob / prob.sum()
    ipix = np.asarray(ring_to_nested(np.arange(npix), nside), dtype=np.int64) if ordering == "RING" else np.arange(npix)
    lo, hi = cells_to_ranges(np.full(npix, order), ipix)
    meta = _meta(header) | {"ORDERING": ordering, "COORDSYS": coordsys, "column": col}
    return _tiles("flat", lo, hi, prob / pix_sr, nside=nside, max_order=order, meta=meta)


def uniq_cells(uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, ipix) of NUNIQ indices ``uniq = 4 * 4**order + ipix``; -1 orders for invalid ones."""
    uniq = np.asarray(uniq, dtype=np.int64)
    order = np.full(len(uniq), -1, np.int64)
    for k in range(MAX_ORDER + 1):
        order[(uniq >= 4 * 4**k) & (uniq < 16 * 4**k)] = k
    ipix = uniq - 4 * np.left_shift(np.int64(1), 2 * np.maximum(order, 0))
    return order, ipix


def _multiorder(path: Path, hdu: fits.BinTableHDU, names: dict[str, str]) -> SkyMapData:
    header = hdu.header
    coordsys = str(header.get("COORDSYS", "C")).strip().upper()
    if coordsys not in ("C", "CEL", "Q", "EQU", "ICRS"):
        raise InputFileError(
            f"{path}: COORDSYS {coordsys!r} is not equatorial (C); convert the map to equatorial coordinates first"
        )
    uniq = np.asarray(hdu.data[names["UNIQ"]], dtype=np.int64).ravel()
    dens = np.asarray(hdu.data[names["PROBDENSITY"]], dtype=np.float64).ravel()
    order, ipix = uniq_cells(uniq)
    bad = np.flatnonzero(order < 0)
    if len(bad):
        raise InputFileError(f"{path}: column UNIQ has an invalid value ({uniq[bad[0]]}) at row {int(bad[0])}")
    _check_values(path, "PROBDENSITY", dens)
    lo, hi = cells_to_ranges(order, ipix)
    area = (hi - lo).astype(np.float64) * STERADIAN_PER_TILE_UNIT
    total = float((dens * area).sum())
    _check_sum(path, "PROBDENSITY", total)
    meta = _meta(header) | {"ORDERING": "NUNIQ", "COORDSYS": coordsys, "column": names["PROBDENSITY"]}
    try:
        return _tiles("multiorder", lo, hi, dens / total, nside=None, max_order=int(order.max()), meta=meta)
    except InputFileError as exc:
        raise InputFileError(f"{path}: {exc}") from exc


def _moc(path: Path, header: fits.Header) -> SkyMapData:
    from mocpy import MOC

    tmp = None
    try:
        src = str(path)
        if _is_gzip(path):
            fd, tmp = tempfile.mkstemp(suffix=".fits", prefix="lenscat-moc-")
            with os.fdopen(fd, "wb") as out, gzip.open(path, "rb") as fh:
                out.write(fh.read())
            src = tmp
        moc = MOC.from_fits(src)
        ranges = np.asarray(moc.to_depth29_ranges, dtype=np.int64).reshape(-1, 2)
        max_order = int(moc.max_order)
    except InputFileError:
        raise
    except Exception as exc:
        raise InputFileError(f"{path}: not a readable MOC ({exc})") from exc
    finally:
        if tmp is not None:
            os.unlink(tmp)
    if len(ranges) == 0:
        raise InputFileError(f"{path}: the MOC is empty")
    lo, hi = ranges[:, 0], ranges[:, 1]
    area = float(((hi - lo).astype(np.float64) * STERADIAN_PER_TILE_UNIT).sum())
    meta = _meta(header) | {"ORDERING": "NUNIQ", "COORDSYS": "C", "column": None}
    return _tiles("moc", lo, hi, np.full(len(lo), 1.0 / area), nside=None, max_order=max_order, meta=meta)


def read_skymap(path: str | Path) -> SkyMapData:
    """Read a flat HEALPix map, a multi-order map or a MOC (see the module notes).

    Parameters
    ----------
    path
        The FITS file (gzip-compressed or not).

    Returns
    -------
    SkyMapData
        Tiles at order 29 sorted by ``lo``, neighbours of equal density merged, with their density
        [sr^-1] and credible level.

    Raises
    ------
    InputFileError
        One line naming the file (and the column or row) for unreadable or invalid input.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputFileError(f"{p}: no such file")
    try:
        with fits.open(p, memmap=False) as hdus:
            hdus.verify("silentfix")
            hdu = _table_hdu(p, hdus)
            header = hdu.header
            names = {n.upper(): n for n in hdu.columns.names}
            is_moc = "MOCORDER" in header or "MOCORD_S" in header or ("UNIQ" in names and "PROBDENSITY" not in names)
            if is_moc:
                primary = hdus[0].header
                header = header.copy()
                for key in META_CARDS:
                    if key in primary and key not in header:
                        header[key] = primary[key]
                head = header
            elif "UNIQ" in names:
                return _multiorder(p, hdu, names)
            else:
                return _flat(p, hdu)
    except InputFileError:
        raise
    except (OSError, ValueError, TypeError, KeyError, EOFError) as exc:
        raise InputFileError(f"{p}: not a readable FITS file ({exc})") from exc
    return _moc(p, head)
