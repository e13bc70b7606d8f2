"""Sky positions and angles at the user edge: parsing, IAU names, and the zone sky index.

The database stores plain ICRS degrees plus ``zone = floor((dec + 90) * 60)`` (1 arcmin stripes)
with a btree on ``(zone, ra)``; see ``migrations/versions/0001_catalogue.py``.
"""

from __future__ import annotations

import re

import astropy.units as u
import numpy as np
from astropy.coordinates import Angle, SkyCoord

from lenscat.errors import LenscatError

ZONES_PER_DEGREE = 60

_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


def zone_of(dec_deg: np.ndarray | float) -> np.ndarray:
    """Sky-index zone of declinations in degrees (same formula as the database)."""
    return np.floor((np.asarray(dec_deg, dtype=float) + 90.0) * ZONES_PER_DEGREE).astype(np.int64)


def parse_angle_quantity(text: str | u.Quantity, default_unit: u.UnitBase = u.arcsec) -> u.Quantity:
    """Parse an angle such as ``5arcsec``, ``1.5 arcmin``, ``0.1deg``, ``3"`` or ``2'``.

    A bare number is taken in ``default_unit``.
    """
    if isinstance(text, u.Quantity):
        return text.to(u.deg)
    s = str(text).strip()
    s = s.replace('"', "arcsec").replace("''", "arcsec").replace("'", "arcmin")
    try:
        if _NUMBER.match(s):
            q = float(s) * default_unit
        else:
            q = u.Quantity(s)
        q = q.to(u.deg)
    except (ValueError, TypeError, u.UnitsError) as exc:
        raise LenscatError(
            f"cannot read angle {text!r}: give a number with a unit, e.g. 5arcsec, 1arcmin, 0.1deg"
        ) from exc
    if not np.isfinite(q.value) or q.value < 0:
        raise LenscatError(f"angle {text!r} must be a finite, non-negative angle")
    return q


def parse_position(ra: str | float, dec: str | float) -> SkyCoord:
    """Parse a position given in decimal degrees or sexagesimal (``12:34:56.7 -01:02:03``).

    Sexagesimal right ascension is in hours; declination in degrees.
    """
    try:
        if _NUMBER.match(str(ra)) and _NUMBER.match(str(dec)):
            coord = SkyCoord(float(ra) * u.deg, float(dec) * u.deg, frame="icrs")
        else:
            coord = SkyCoord(str(ra), str(dec), unit=(u.hourangle, u.deg), frame="icrs")
    except (ValueError, TypeError) as exc:
        raise LenscatError(
            f"cannot read position ({ra!r}, {dec!r}): use degrees (150.1 2.2) or sexagesimal "
            f"(10:00:24 +02:12:00); dec must be within [-90, 90]"
        ) from exc
    return coord


def parse_sexagesimal(values: np.ndarray, hours: bool) -> tuple[np.ndarray, np.ndarray]:
    """Parse an array of angle strings (decimal degrees or sexagesimal) to degrees.

    Parameters
    ----------
    values
        Strings such as ``'150.1'``, ``'10:00:24.5'``, ``'10h00m24.5s'``, ``'-02d12m00s'``.
    hours
        Sexagesimal values are hours (right ascension) rather than degrees.

    Returns
    -------
    degrees, ok
        Parsed angles in degrees (NaN where ``ok`` is False).
    """
    out = np.full(len(values), np.nan)
    ok = np.zeros(len(values), dtype=bool)
    unit = u.hourangle if hours else u.deg
    for i, v in enumerate(values):
        s = str(v).strip()
        if not s:
            continue
        try:
            if _NUMBER.match(s):
                out[i] = float(s)
            else:
                out[i] = Angle(s, unit=unit).to_value(u.deg)
            ok[i] = True
        except (ValueError, TypeError, u.UnitsError):
            continue
    return out, ok


def iau_name(ra_deg: float, dec_deg: float, prefix: str = "J") -> str:
    """IAU-style designation, e.g. ``J123456.78+123456.7``, truncated (not rounded) as the IAU asks."""
    c = SkyCoord(ra_deg * u.deg, dec_deg * u.deg)
    ra_h = c.ra.hms
    sign = "-" if dec_deg < 0 else "+"
    d = abs(dec_deg)
    dd = int(d)
    dm = int((d - dd) * 60)
    ds = (d - dd - dm / 60) * 3600
    rs = np.floor(ra_h.s * 100) / 100
    ds = np.floor(ds * 10) / 10
    return f"{prefix}{int(ra_h.h):02d}{int(ra_h.m):02d}{rs:05.2f}{sign}{dd:02d}{dm:02d}{ds:04.1f}"
