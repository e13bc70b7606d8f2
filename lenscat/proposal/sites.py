"""Observing sites from the list lenscat ships (``sites.json``) or ``LAT,LON,HEIGHT``; nothing is downloaded.

``astropy.coordinates.EarthLocation.of_site`` downloads astropy's site registry; lenscat ships a
copy of the major optical observatories of that registry instead (astropy-data, BSD-3-Clause; the
licence note is inside ``sites.json``), so a proposal pack is made offline.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import astropy.units as u
from astropy.coordinates import EarthLocation

from lenscat.errors import InvalidParameter

SITES_FILE = Path(__file__).with_name("sites.json")
_NUMBER = r"[-+]?\d+(?:\.\d*)?"
_LATLON = re.compile(rf"^\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*(m|km)?\s*$")


@dataclass(frozen=True)
class Site:
    """An observing site: a key, a readable name and its geodetic position."""

    key: str
    name: str
    latitude_deg: float
    longitude_deg: float
    height_m: float

    @property
    def location(self) -> EarthLocation:
        """The site as an astropy EarthLocation (WGS84 geodetic)."""
        return EarthLocation.from_geodetic(
            lon=self.longitude_deg * u.deg, lat=self.latitude_deg * u.deg, height=self.height_m * u.m
        )

    @property
    def label(self) -> str:
        """``name (lat, lon, height)`` for summaries."""
        return f"{self.name} ({self.latitude_deg:+.4f} deg, {self.longitude_deg:+.4f} deg, {self.height_m:.0f} m)"


@cache
def _registry() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SITES_FILE.read_text(encoding="utf-8"))["sites"]
    return data


def site_names() -> list[str]:
    """Keys of the shipped sites, sorted."""
    return sorted(_registry())


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def resolve_site(spec: str) -> Site:
    """A shipped site by key, name or alias (case and punctuation ignored), or ``LAT,LON,HEIGHT``.

    ``LAT`` and ``LON`` are geodetic degrees (longitude East positive), ``HEIGHT`` metres above the
    WGS84 ellipsoid (a ``km`` suffix is accepted).

    Raises
    ------
    InvalidParameter
        Unknown site, or coordinates out of range (``param`` "site").
    """
    text = str(spec).strip()
    m = _LATLON.match(text)
    if m:
        lat, lon, height = float(m.group(1)), float(m.group(2)), float(m.group(3))
        if m.group(4) == "km":
            height *= 1000.0
        if not -90 <= lat <= 90 or not -180 <= lon <= 360 or not -500 <= height <= 9000:
            raise InvalidParameter(
                "site",
                f"{{site}} {text!r}: latitude must be in [-90, 90], longitude in [-180, 360] deg, "
                "height in [-500, 9000] m",
            )
        lon = ((lon + 180.0) % 360.0) - 180.0
        return Site("custom", f"site at {lat:+.4f}, {lon:+.4f}", lat, lon, height)
    want = _norm(text)
    for key, entry in _registry().items():
        if want in {_norm(key), _norm(entry["name"]), *(_norm(a) for a in entry.get("aliases", []))}:
            return Site(
                key,
                str(entry["name"]),
                float(entry["latitude_deg"]),
                float(entry["longitude_deg"]),
                float(entry["height_m"]),
            )
    raise InvalidParameter(
        "site",
        f"unknown {{site}} {text!r}; expected one of {', '.join(site_names())} or LAT,LON,HEIGHT "
        "(degrees, degrees East, metres)",
    )
