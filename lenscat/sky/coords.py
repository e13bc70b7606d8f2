"""Sky positions and angles at the user edge: parsing, IAU names, and the zone sky index.

The database stores plain ICRS degrees plus ``zone = floor((dec + 90) * 60)`` (1 arcmin stripes)
with a btree on ``(zone, ra)``; see ``migrations/versions/0001_catalogue.py``.
"""

from __future__ import annotations

import math
import re

import astropy.units as u
import numpy as np
from astropy.coordinates import Angle, SkyCoord

from lenscat.errors import LenscatError

ZONES_PER_DEGREE = 60

_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


def separation_arcsec(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Angular separation of two ICRS positions given in degrees, in arcsec (haversine; no astropy objects).

    For comparisons inside a loop over a file's rows, where building a ``SkyCoord`` per pair would
    dominate; arrays of positions go through :func:`lenscat.sky.service.pairs_within`.
    """
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    h = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h)))) * 3600.0


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

    Sexagesimal right ascension is in hours; declination in degrees. A right ascension outside
    [0, 360] deg (or 24 h) is an error rather than being wrapped: it is usually a typo.
    """
    degrees = bool(_NUMBER.match(str(ra)) and _NUMBER.match(str(dec)))
    if degrees and not 0.0 <= float(ra) <= 360.0:
        # astropy would wrap 400 to 40 deg; a catalogue ingest rejects such a value, so do we
        raise LenscatError(f"right ascension {float(ra):g} deg out of range [0, 360)")
    try:
        if degrees:
            coord = SkyCoord(float(ra) * u.deg, float(dec) * u.deg, frame="icrs")
        else:
            coord = SkyCoord(str(ra), str(dec), unit=(u.hourangle, u.deg), frame="icrs")
    except (ValueError, TypeError) as exc:
        raise LenscatError(
            f"cannot read position ({ra!r}, {dec!r}): use degrees (150.1 2.2) or sexagesimal "
            f"(10:00:24 +02:12:00); RA must be within [0, 360) deg or [0, 24) h and dec must be within [-90, 90]"
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


def iau_names(ra_deg: np.ndarray, dec_deg: np.ndarray, prefix: str = "J") -> list[str]:
    """IAU-style designations ``J123456.78+123456.7`` for arrays of positions [deg].

    Fields are truncated, not rounded, as the IAU recommends.
    """
    ra_s = np.floor(np.mod(np.asarray(ra_deg, dtype=float), 360.0) / 15.0 * 3600.0 * 100.0 + 1e-6)
    ra_s = ra_s.astype(np.int64)  # hundredths of a second of time
    d = np.abs(np.asarray(dec_deg, dtype=float))
    dec_s = np.floor(d * 3600.0 * 10.0 + 1e-6).astype(np.int64)  # tenths of an arcsec
    out = []
    for rs, ds, neg in zip(ra_s.tolist(), dec_s.tolist(), (np.asarray(dec_deg) < 0).tolist(), strict=True):
        h, rem = divmod(rs, 360000)
        m, cs = divmod(rem, 6000)
        dd, rem = divmod(ds, 36000)
        dm, ts = divmod(rem, 600)
        out.append(
            f"{prefix}{h:02d}{m:02d}{cs // 100:02d}.{cs % 100:02d}{'-' if neg else '+'}"
            f"{dd:02d}{dm:02d}{ts // 10:02d}.{ts % 10:d}"
        )
    return out


def iau_name(ra_deg: float, dec_deg: float, prefix: str = "J") -> str:
    """IAU-style designation of one position, e.g. ``J123456.78+123456.7``."""
    return iau_names(np.array([ra_deg]), np.array([dec_deg]), prefix)[0]
