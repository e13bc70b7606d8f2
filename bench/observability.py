#!/usr/bin/env python
"""Benchmark: observability of N targets x M nights, vectorised (lenscat.proposal.observability) against a
naive astroplan loop (one ``Observer.altaz`` call per target and night on the same 5-min grid), in one run.

Both work offline (astropy's bundled IERS tables). The naive loop runs on a subset (``--naive``
targets) and its throughput is compared per target-night; the hours above the altitude in darkness
of the subset are compared between the two (they should agree to a grid step).

Usage::

    OMP_NUM_THREADS=2 python bench/observability.py [--targets 1000] [--nights 30] [--naive 10] [--seed 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.time import Time

from lenscat.proposal.observability import DARK_SUN_ALT_DEG, local_midnights, observability, offline_iers
from lenscat.proposal.sites import resolve_site


def naive(coords: SkyCoord, site_name: str, start: dt.date, nights: int, min_alt: float) -> np.ndarray:
    """Hours above ``min_alt`` in darkness per target and night, one astroplan call per target and night."""
    from astroplan import FixedTarget, Observer

    site = resolve_site(site_name)
    observer = Observer(location=site.location)
    dates = [start + dt.timedelta(days=k) for k in range(nights)]
    mids = local_midnights(dates, site.longitude_deg)
    offsets = np.arange(-9 * 60, 9 * 60 + 1e-9, 5.0) / 60.0
    hours = np.zeros((len(coords), nights))
    with offline_iers():
        for j in range(nights):
            times = Time(mids[j].jd + offsets / 24.0, format="jd", scale="utc")
            dark = observer.sun_altaz(times).alt.deg < DARK_SUN_ALT_DEG
            for i in range(len(coords)):
                alt = observer.altaz(times, FixedTarget(coords[i])).alt.deg
                hours[i, j] = ((alt >= min_alt) & dark).sum() * 5.0 / 60.0
    return hours


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--nights", type=int, default=30)
    p.add_argument("--naive", type=int, default=10, help="targets in the naive loop (all nights)")
    p.add_argument("--site", default="keck")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    coords = SkyCoord(
        rng.uniform(0, 360, a.targets) * u.deg, np.degrees(np.arcsin(rng.uniform(-0.9, 0.95, a.targets))) * u.deg
    )
    start = dt.date(2026, 12, 10)
    end = start + dt.timedelta(days=a.nights - 1)
    site = resolve_site(a.site)
    observability(coords[:2], site, start, start)  # warm-up: imports, IERS tables
    t0 = time.perf_counter()
    obs = observability(coords, site, start, end)
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hours = naive(coords[: a.naive], a.site, start, a.nights, 30.0)
    naive_s = time.perf_counter() - t0
    diff = np.abs(hours - obs.hours[: a.naive])
    fast_rate = a.targets * a.nights / fast_s
    naive_rate = a.naive * a.nights / naive_s
    print(f"load average: {os.getloadavg()}")
    print(f"vectorised: {a.targets} targets x {a.nights} nights in {fast_s:.2f} s = {fast_rate:,.0f} target-nights/s")
    print(
        f"naive astroplan loop: {a.naive} targets x {a.nights} nights in {naive_s:.2f} s "
        f"= {naive_rate:,.1f} target-nights/s"
    )
    print(f"speed-up: {fast_rate / naive_rate:,.0f}x; naive 1000 x 30 would take {1000 * 30 / naive_rate:,.0f} s")
    print(f"hours agreement on the subset: max |diff| {diff.max():.3f} h, mean {diff.mean():.4f} h (grid step 0.083 h)")


if __name__ == "__main__":
    main()
