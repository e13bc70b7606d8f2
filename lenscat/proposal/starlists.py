"""Target lists observers paste into observatory tools: CSV/ECSV, the Keck starlist and a ds9 region file.

* CSV (``targets.csv``) with the units in the header names (``ra_deg``...) and an ECSV beside it
  (``targets.ecsv``) that keeps units and descriptions.
* Keck starlist (https://www2.keck.hawaii.edu/observing/starlist.html): the name in columns 1-15
  (padded with blanks, no blanks inside), then ``hh mm ss.ss +dd mm ss.s 2000.0`` and optional
  ``key=value`` keywords (``rmag=``, ``pmra=``...); a ``#`` starts a comment.
* ds9 region file (``targets.reg``): one ``fk5`` circle per target labelled with its name; ds9,
  Aladin and most planning tools read it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord

KECK_NAME_WIDTH = 15
_KECK_LINE = re.compile(
    r"^(?P<name>.{15}) (?P<ra>\d\d \d\d \d\d\.\d\d) (?P<dec>[+-]\d\d \d\d \d\d\.\d) (?P<eq>\d{4}\.\d)(?P<rest>.*)$"
)


def keck_name(name: str) -> str:
    """A Keck starlist name: blanks become ``_``, at most 15 characters, left-justified to 15."""
    clean = re.sub(r"\s+", "_", str(name).strip())[:KECK_NAME_WIDTH]
    return clean.ljust(KECK_NAME_WIDTH)


def sexagesimal(coord: SkyCoord) -> tuple[str, str]:
    """``('hh mm ss.ss', '+dd mm ss.s')`` of an ICRS position, rounded (RA wraps to 00 at 24 h)."""
    c = coord.icrs
    cs = int(round(float(c.ra.deg) / 15.0 * 360000.0)) % (24 * 360000)
    h, rem = divmod(cs, 360000)
    m, rem = divmod(rem, 6000)
    ra = f"{h:02d} {m:02d} {rem // 100:02d}.{rem % 100:02d}"
    dec_deg = float(c.dec.deg)
    ds = int(round(abs(dec_deg) * 36000.0))
    d, rem = divmod(ds, 36000)
    m, rem = divmod(rem, 600)
    sign = "-" if dec_deg < 0 and ds > 0 else "+"
    dec = f"{sign}{d:02d} {m:02d} {rem // 10:02d}.{rem % 10:d}"
    return ra, dec


def keck_starlist(
    names: Sequence[str],
    coords: SkyCoord,
    *,
    keywords: Sequence[dict[str, str]] | None = None,
    comments: Sequence[str] | None = None,
) -> str:
    """The Keck starlist text (one line per target, equinox 2000.0)."""
    lines = []
    for k, name in enumerate(names):
        ra, dec = sexagesimal(coords[k])
        extra = " ".join(f"{key}={val}" for key, val in (keywords[k] if keywords else {}).items())
        line = f"{keck_name(name)} {ra} {dec} 2000.0" + (f" {extra}" if extra else "")
        if comments and comments[k]:
            line += f" # {comments[k]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def parse_keck_starlist(text: str) -> list[tuple[str, SkyCoord, dict[str, str]]]:
    """Read a Keck starlist back: (name, ICRS position, keywords) per target line (comments skipped)."""
    out = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        m = _KECK_LINE.match(raw)
        if m is None:
            raise ValueError(f"not a Keck starlist line: {raw!r}")
        rest = m.group("rest").split("#", 1)[0]
        kw = dict(item.split("=", 1) for item in rest.split() if "=" in item)
        c = SkyCoord(m.group("ra"), m.group("dec"), unit=(u.hourangle, u.deg), frame="icrs")
        out.append((m.group("name").strip(), c, kw))
    return out


def ds9_regions(names: Sequence[str], coords: SkyCoord, *, radius_arcsec: float = 5.0) -> str:
    """A ds9 region file: an ``fk5`` circle of ``radius_arcsec`` with the name as text, per target."""
    lines = ["# Region file format: DS9 version 4.1", 'global color=green font="helvetica 10 normal"', "fk5"]
    ra = np.atleast_1d(coords.icrs.ra.deg)
    dec = np.atleast_1d(coords.icrs.dec.deg)
    for name, a, d in zip(names, ra, dec, strict=True):
        label = str(name).replace("}", ")").replace("{", "(")
        lines.append(f'circle({a:.7f},{d:+.7f},{radius_arcsec:g}") # text={{{label}}}')
    return "\n".join(lines) + "\n"
