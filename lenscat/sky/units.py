"""Units at the database edge: astropy types in, plain ICRS degrees and arcsec out, and back.

Callers of the sky layer pass ``SkyCoord``, ``Angle`` or ``Quantity``; only this module turns them
into the floats the SQL functions take (``lenscat_sky_ranges`` and the pair search in degrees,
``public.cone_search`` in arcsec), and turns SQL rows back into astropy Tables with units, as
skyportal's healpix-alchemy converts astropy types at the database boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from lenscat.errors import LenscatError, Step

MAX_RADIUS = 10 * u.deg
"""The largest cone or match radius the sky layer searches."""

CONE_UNITS: dict[str, u.UnitBase] = {
    "ra": u.deg,
    "dec": u.deg,
    "separation": u.arcsec,
    "mag_g": u.mag,
    "mag_r": u.mag,
    "mag_i": u.mag,
    "mag_z": u.mag,
    "mag_y": u.mag,
    "ebv": u.mag,
}
"""Units of the columns of a cone search's Table."""


def radius_degrees(radius: u.Quantity, *, what: str = "radius") -> float:
    """A positive angle of at most :data:`MAX_RADIUS`, in degrees.

    Raises
    ------
    LenscatError
        The radius is not a finite, positive angle, or is larger than :data:`MAX_RADIUS`.
    """
    try:
        r = float(u.Quantity(radius).to_value(u.deg))
    except (u.UnitsError, TypeError, ValueError) as exc:
        raise LenscatError(f"{what} must be an angle, got {radius!r}") from exc
    if not np.isfinite(r) or r <= 0:
        raise LenscatError(f"{what} must be positive, got {radius}")
    if r > MAX_RADIUS.to_value(u.deg):
        raise LenscatError(
            f"{what} {radius} is larger than {MAX_RADIUS}; for large regions, {{step}}",
            step=Step(("sql",), ((None, "QUERY"),), "query the catalogue with SQL"),
        )
    return r


def centre_degrees(coord: SkyCoord) -> tuple[float, float]:
    """ICRS (ra, dec) of one position, in degrees."""
    icrs = coord.icrs
    return float(icrs.ra.deg), float(icrs.dec.deg)


def positions_degrees(coords: SkyCoord) -> tuple[np.ndarray, np.ndarray]:
    """ICRS ra in [0, 360) and dec of one or more positions, in degrees (1-d float arrays)."""
    icrs = coords.icrs
    ra = np.atleast_1d(np.asarray(icrs.ra.wrap_at(360 * u.deg).deg, dtype=np.float64))
    dec = np.atleast_1d(np.asarray(icrs.dec.deg, dtype=np.float64))
    return np.where(ra >= 360.0, 0.0, ra), dec


def rows_to_table(keys: Any, rows: Sequence[Any], units: dict[str, u.UnitBase] | None = None) -> Table:
    """An astropy Table from SQL rows, with units attached to known columns.

    Parameters
    ----------
    keys
        Column names (e.g. ``result.keys()``).
    rows
        The rows, each a sequence in the order of ``keys``.
    units
        Units of float columns, by name.

    Returns
    -------
    astropy.table.Table
        Booleans as bool, integers as int64, floats as float (NULL as NaN), integers with NULLs as
        a masked column, anything else as objects.
    """
    names = list(keys)
    units = units or {}
    cols = []
    for j in range(len(names)):
        values = [row[j] for row in rows]
        if values and all(isinstance(v, bool) for v in values):
            cols.append(np.array(values, dtype=bool))
            continue
        if (
            values
            and all(isinstance(v, int | float) or v is None for v in values)
            and any(isinstance(v, float) for v in values)
        ):
            arr: Any = np.array([np.nan if v is None else v for v in values], dtype=float)
        elif values and all(isinstance(v, int) for v in values):
            arr = np.array(values, dtype=np.int64)
        elif (
            values
            and all(isinstance(v, int | float) or v is None for v in values)
            and any(v is not None for v in values)
        ):
            arr = np.ma.masked_array([0 if v is None else v for v in values], mask=[v is None for v in values])
        else:
            arr = np.array(values, dtype=object) if values else np.array([], dtype=float)
        cols.append(arr)
    table = Table(cols, names=names) if names else Table()
    for name, unit in units.items():
        if name in table.colnames and table[name].dtype.kind == "f":
            table[name].unit = unit
    return table
