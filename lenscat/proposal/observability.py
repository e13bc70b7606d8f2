"""Observability of many targets over many nights, vectorised (targets x time grid), offline.

Method
------
* Nights: the night starting on the evening of each date from ``start`` to ``end`` (inclusive); its
  grid runs from 9 h before to 9 h after the site's mean local midnight in steps of ``step``
  (default 5 min), so the darkness of any night shorter than 18 h is covered.
* The Sun and the Moon: astropy ``get_body`` and ``AltAz`` every 30 min (the Moon topocentric),
  interpolated as unit vectors onto the grid; astronomical darkness is Sun altitude < -18 deg; the
  Moon's illumination is astroplan's ``moon_illumination`` at the night's mean local midnight.
* The targets: ICRS -> CIRS once per night, at its mean local midnight (precession, nutation and
  annual aberration, which moves a target by up to ~0.3 arcsec per hour), then the hour angle from the Earth rotation
  angle, ``HA = ERA + longitude - RA_CIRS``, and ``sin(alt) = sin(dec) sin(lat) + cos(dec) cos(lat)
  cos(HA)`` for every target and time at once. No refraction (as astropy's AltAz without pressure);
  tests check it against astropy's AltAz to a few arcsec.
* Offline: the IERS tables are astropy's bundled copy (``astropy-iers-data``): automatic download
  off, no maximum age, and degraded accuracy (dates past the bundled predictions) warned about, not
  raised; the warnings are silenced here. UT1 - UTC errors of < 1 s move altitudes by < 0.004 deg.
* Per target and night: hours above ``min_altitude`` in darkness, the best (lowest) airmass sec(z)
  then, the Moon's separation and altitude at that best time (at mean local midnight when the
  target is not observable) and the night's Moon illumination.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.coordinates import CIRS, AltAz, EarthLocation, SkyCoord, get_body
from astropy.table import Column, MaskedColumn, Table
from astropy.time import Time
from astropy.utils import iers

from lenscat.errors import InvalidParameter
from lenscat.proposal.sites import Site

DARK_SUN_ALT_DEG = -18.0
"""Astronomical darkness: the Sun's centre below this altitude [deg]."""

KNOT_HOURS = 0.5
"""The Sun and the Moon are computed every KNOT_HOURS and interpolated (unit vectors) onto the grid [h]."""


@contextlib.contextmanager
def offline_iers() -> Iterator[None]:
    """astropy's bundled IERS tables only: no download, no age limit, degraded accuracy warned (silenced)."""
    with (
        iers.conf.set_temp("auto_download", False),
        iers.conf.set_temp("auto_max_age", None),
        iers.conf.set_temp("iers_degraded_accuracy", "warn"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield


def parse_date(value: str | dt.date, param: str) -> dt.date:
    """A calendar date from ``YYYY-MM-DD`` (or a date)."""
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise InvalidParameter(param, f"{{{param}}} {value!r} is not a date YYYY-MM-DD") from None


def night_dates(
    start: dt.date, end: dt.date, *, max_nights: int = 366, names: tuple[str, str] = ("start", "end")
) -> list[dt.date]:
    """The evening dates from ``start`` to ``end`` inclusive.

    Raises
    ------
    InvalidParameter
        ``end`` before ``start``, or more than ``max_nights`` nights (``param`` from ``names``, the
        shells' names of the two dates).
    """
    a, b = names
    if end < start:
        raise InvalidParameter((b, a), f"{{{b}}} {end} is before {{{a}}} {start}")
    n = (end - start).days + 1
    if n > max_nights:
        raise InvalidParameter(b, f"{n} nights from {{{a}}} to {{{b}}}; at most {max_nights}")
    return [start + dt.timedelta(days=k) for k in range(n)]


def local_midnights(dates: Sequence[dt.date], longitude_deg: float) -> Time:
    """Mean local midnight (UTC) following the evening of each date at a longitude [deg East]."""
    base = Time([f"{(d + dt.timedelta(days=1)).isoformat()}T00:00:00" for d in dates], scale="utc")
    return base - (longitude_deg / 15.0) * u.hour


def _cirs(coords: SkyCoord, when: Time) -> tuple[np.ndarray, np.ndarray]:
    """CIRS (ra, dec) [rad] of N targets at M times: (N, M) arrays (one broadcast transform)."""
    c = coords.icrs.reshape(-1, 1).transform_to(CIRS(obstime=when.reshape(1, -1)))
    return np.asarray(c.ra.rad, dtype=float), np.asarray(c.dec.rad, dtype=float)


def altitudes(coords: SkyCoord, times: Time, location: EarthLocation) -> np.ndarray:
    """Altitude [deg] of every target (N) at every time (T): an (N, T) array, by the module's method."""
    lat = float(location.geodetic.lat.rad)
    lon = float(location.geodetic.lon.rad)
    times = times.reshape(-1)
    with offline_iers():
        ra, dec = _cirs(SkyCoord(coords).reshape(-1), times)
        era = np.atleast_1d(np.asarray(times.earth_rotation_angle(0.0).rad, dtype=float))
    ha = era[None, :] + lon - ra
    s = np.sin(dec) * np.sin(lat) + np.cos(dec) * np.cos(lat) * np.cos(ha)
    out: np.ndarray = np.degrees(np.arcsin(np.clip(s, -1.0, 1.0)))
    return out


def _azimuth(ra: np.ndarray, dec: np.ndarray, era: np.ndarray, lat: float, lon: float) -> np.ndarray:
    """Azimuth [rad, from North through East] of targets (CIRS ra, dec) at Earth rotation angles ``era``."""
    ha = era + lon - ra
    y = -np.cos(dec) * np.sin(ha)
    x = np.sin(dec) * np.cos(lat) - np.cos(dec) * np.sin(lat) * np.cos(ha)
    az: np.ndarray = np.arctan2(y, x)
    return az


def _interpolate_altaz(
    body: SkyCoord, knots: np.ndarray, offsets: np.ndarray, n_nights: int
) -> tuple[np.ndarray, np.ndarray]:
    """(altitude [deg], azimuth [rad]) of a body on the fine grid, interpolated between knots as unit vectors."""
    alt = np.radians(np.asarray(body.alt.deg)).reshape(n_nights, len(knots))
    az = np.asarray(body.az.rad).reshape(n_nights, len(knots))
    vec = np.stack([np.cos(alt) * np.cos(az), np.cos(alt) * np.sin(az), np.sin(alt)], axis=-1)
    out = np.empty((n_nights, len(offsets), 3))
    for j in range(n_nights):
        for c in range(3):
            out[j, :, c] = np.interp(offsets, knots, vec[j, :, c])
    out /= np.linalg.norm(out, axis=-1, keepdims=True)
    return np.degrees(np.arcsin(np.clip(out[..., 2], -1, 1))), np.arctan2(out[..., 1], out[..., 0])


@dataclass
class Observability:
    """Per target (N) and night (M): hours, best airmass, Moon separation; per night: darkness, Moon."""

    site: Site
    dates: list[dt.date]
    min_altitude_deg: float
    step_minutes: float
    hours: np.ndarray  #: (N, M) hours above min_altitude in darkness
    best_airmass: np.ndarray  #: (N, M) lowest sec(z) then (NaN: not observable)
    best_time: list[list[str]]  #: (N, M) ISO UTC of the best airmass ('' when not observable)
    moon_sep_deg: np.ndarray  #: (N, M) Moon separation at the best time (or at midnight)
    moon_alt_deg: np.ndarray  #: (N, M) Moon altitude then
    dark_hours: np.ndarray  #: (M,) astronomical darkness
    moon_illumination: np.ndarray  #: (M,) illuminated fraction at mean local midnight

    def nights_table(self, names: Sequence[str]) -> Table:
        """One row per target and night (long form), with units."""
        n, m = self.hours.shape
        t = Table()
        t["name"] = Column(np.repeat(np.asarray(names, dtype=str), m), description="Target name.")
        t["night"] = Column(np.tile([d.isoformat() for d in self.dates], n), description="Evening date (local).")
        t["hours"] = Column(self.hours.ravel(), unit=u.hour, description=self._hours_doc())
        t["best_airmass"] = MaskedColumn(
            np.nan_to_num(self.best_airmass.ravel(), nan=0.0),
            mask=~np.isfinite(self.best_airmass.ravel()),
            description="Lowest airmass sec(z) while observable (dimensionless).",
        )
        t["best_time_utc"] = Column([s for row in self.best_time for s in row], description="UTC of best airmass.")
        t["moon_sep"] = Column(self.moon_sep_deg.ravel(), unit=u.deg, description="Moon separation at that time.")
        t["moon_alt"] = Column(self.moon_alt_deg.ravel(), unit=u.deg, description="Moon altitude at that time.")
        t["moon_illumination"] = Column(
            np.tile(self.moon_illumination, n), description="Moon illuminated fraction at local midnight (0-1)."
        )
        t["dark_hours"] = Column(np.tile(self.dark_hours, n), unit=u.hour, description="Astronomical darkness.")
        t.meta["SITE"] = self.site.label
        t.meta["MINALT"] = self.min_altitude_deg
        return t

    def _hours_doc(self) -> str:
        return f"Hours above {self.min_altitude_deg:g} deg altitude in astronomical darkness (Sun < -18 deg)."

    def summary(self) -> dict[str, np.ndarray]:
        """Per target: total hours, nights with >= 1 h, best airmass, best night, its Moon separation."""
        hours = self.hours
        air = np.where(np.isfinite(self.best_airmass), self.best_airmass, np.inf)
        best_night = np.argmin(np.where(hours > 0, air, np.inf), axis=1)
        rows = np.arange(hours.shape[0])
        best_air = air[rows, best_night]
        return {
            "obs_hours_total": hours.sum(axis=1),
            "obs_nights": (hours >= 1.0).sum(axis=1),
            "obs_best_airmass": np.where(np.isfinite(best_air), best_air, np.nan),
            "obs_best_night": np.array(
                [self.dates[j].isoformat() if np.isfinite(best_air[i]) else "" for i, j in enumerate(best_night)]
            ),
            "obs_moon_sep": self.moon_sep_deg[rows, best_night],
            "obs_moon_illumination": self.moon_illumination[best_night],
        }


def observability(
    coords: SkyCoord,
    site: Site,
    start: dt.date,
    end: dt.date,
    *,
    min_altitude: u.Quantity = 30 * u.deg,
    step: u.Quantity = 5 * u.min,
) -> Observability:
    """Hours in darkness above ``min_altitude``, best airmass and the Moon for targets x nights.

    Parameters
    ----------
    coords
        The targets (ICRS), any number.
    site
        The observing site (:func:`lenscat.proposal.sites.resolve_site`).
    start, end
        First and last evening dates (inclusive).
    min_altitude
        Lowest useful altitude (default 30 deg, airmass 2).
    step
        Time grid step (default 5 min).

    Returns
    -------
    Observability
    """
    from astroplan import moon_illumination

    alt_min = float(u.Quantity(min_altitude).to_value(u.deg))
    if not 0 <= alt_min < 90:
        raise InvalidParameter("min_altitude", f"{{min_altitude}} must be in [0, 90) deg, not {alt_min}")
    step_min = float(u.Quantity(step).to_value(u.min))
    if not 0.5 <= step_min <= 60:
        raise InvalidParameter("step", f"{{step}} must be between 0.5 and 60 min, not {step_min}")
    dates = night_dates(start, end)
    coords = SkyCoord(coords).reshape(-1) if coords.isscalar else coords
    loc = site.location
    lat = float(loc.geodetic.lat.rad)
    lon = float(loc.geodetic.lon.rad)
    offsets = np.arange(-9 * 60, 9 * 60 + 1e-9, step_min) / 60.0  # hours from midnight
    mids = local_midnights(dates, site.longitude_deg)
    n_t = len(offsets)
    times = Time(np.repeat(mids.jd, n_t) + np.tile(offsets / 24.0, len(dates)), format="jd", scale="utc")
    knots = np.arange(-9.0, 9.0 + 1e-9, KNOT_HOURS)
    knot_times = Time(np.repeat(mids.jd, len(knots)) + np.tile(knots / 24.0, len(dates)), format="jd", scale="utc")
    with offline_iers():
        frame = AltAz(obstime=knot_times, location=loc)
        sun = get_body("sun", knot_times, loc).transform_to(frame)
        moon = get_body("moon", knot_times, loc).transform_to(frame)
        illum = np.atleast_1d(np.asarray(moon_illumination(mids), dtype=float))
        era = np.asarray(times.earth_rotation_angle(0.0).rad, dtype=float)
        ra_n, dec_n = _cirs(coords, mids)  # (N, M): the targets' CIRS place at each night's midnight
    sun_alt, _ = _interpolate_altaz(sun, knots, offsets, len(dates))
    dark = sun_alt < DARK_SUN_ALT_DEG
    m_alt_deg, m_az = _interpolate_altaz(moon, knots, offsets, len(dates))
    m_alt = np.radians(m_alt_deg)
    era = era.reshape(len(dates), n_t)
    n, m = ra_n.shape[0], len(dates)
    hours = np.zeros((n, m))
    best_air = np.full((n, m), np.nan)
    sep = np.zeros((n, m))
    malt = np.zeros((n, m))
    best_time: list[list[str]] = [[""] * m for _ in range(n)]
    iso = np.asarray(times.isot).reshape(len(dates), n_t) if n else None
    mid_k = int(np.argmin(np.abs(offsets)))
    for j in range(m):
        ra, dec = ra_n[:, j], dec_n[:, j]
        ha = era[j][None, :] + lon - ra[:, None]
        s_alt = np.sin(dec)[:, None] * np.sin(lat) + np.cos(dec)[:, None] * np.cos(lat) * np.cos(ha)
        alt = np.arcsin(np.clip(s_alt, -1, 1))
        ok = (alt >= np.radians(alt_min)) & dark[j][None, :]
        hours[:, j] = ok.sum(axis=1) * step_min / 60.0
        alt_ok = np.where(ok, alt, -np.inf)
        k = np.argmax(alt_ok, axis=1)
        k = np.where(ok.any(axis=1), k, mid_k)
        rows = np.arange(n)
        a = alt[rows, k]
        az = _azimuth(ra, dec, era[j][k], lat, lon)
        cos_sep = np.sin(a) * np.sin(m_alt[j][k]) + np.cos(a) * np.cos(m_alt[j][k]) * np.cos(az - m_az[j][k])
        sep[:, j] = np.degrees(np.arccos(np.clip(cos_sep, -1, 1)))
        malt[:, j] = np.degrees(m_alt[j][k])
        has = ok.any(axis=1)
        best_air[has, j] = 1.0 / np.sin(a[has])
        for i in np.flatnonzero(has):
            best_time[i][j] = str(iso[j][k[i]])[:16] if iso is not None else ""
    return Observability(
        site=site,
        dates=dates,
        min_altitude_deg=alt_min,
        step_minutes=step_min,
        hours=hours,
        best_airmass=best_air,
        best_time=best_time,
        moon_sep_deg=sep,
        moon_alt_deg=malt,
        dark_hours=dark.sum(axis=1) * step_min / 60.0,
        moon_illumination=illum,
    )
