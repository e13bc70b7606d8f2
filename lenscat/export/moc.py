"""A MOC (IVOA Multi-Order Coverage map) of the candidates' positions, written with mocpy.

Each candidate's position becomes its HEALPix cell at ``order`` (default 14: cells of about 13
arcsec); the union is written as MOC FITS (``MOC.save``), which mocpy, Aladin and TOPCAT read back.
Cross-matching the MOC with a survey in a VO tool tells which candidates it covers.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.table import Table

from lenscat.errors import InvalidParameter, LenscatError

DEFAULT_MOC_ORDER = 14
"""Default order of the candidates' MOC cells (nside 16384, about 12.9 arcsec)."""


def candidates_moc(table: Table, order: int = DEFAULT_MOC_ORDER) -> object:
    """The mocpy ``MOC`` of the cells at ``order`` that hold the table's ``ra``, ``dec`` [deg]."""
    from mocpy import MOC

    if not 0 <= int(order) <= 29:
        raise InvalidParameter("moc_order", "{moc_order} must be between 0 and 29")
    ra = np.asarray(u.Quantity(table["ra"], u.deg).value, dtype=np.float64)
    dec = np.asarray(u.Quantity(table["dec"], u.deg).value, dtype=np.float64)
    return MOC.from_lonlat(lon=ra * u.deg, lat=dec * u.deg, max_norder=int(order))


def write_moc(table: Table, path: str | Path, order: int = DEFAULT_MOC_ORDER) -> Path:
    """Write the candidates' MOC as MOC FITS, replacing ``path`` atomically.

    Parameters
    ----------
    table
        Candidates with ``ra``, ``dec`` [deg] (:func:`lenscat.export.catalogue.candidate_table`).
    path
        The FITS file.
    order
        HEALPix order of the cells (0-29).

    Returns
    -------
    Path
        The file written.
    """
    moc = candidates_moc(table, order)
    dest = Path(path).expanduser()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part.fits")
        os.close(fd)
    except OSError as exc:
        raise LenscatError(f"{dest}: cannot write here ({exc.strerror or exc})") from exc
    try:
        moc.save(tmp, format="fits", overwrite=True)  # type: ignore[attr-defined]
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except OSError as exc:
        raise LenscatError(f"{dest}: cannot write the MOC ({exc.strerror or exc})") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dest
