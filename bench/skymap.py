#!/usr/bin/env python
"""Benchmark: a 1,000 deg^2 sky map's 90 % credible region matched against 10^6 sources (issue 34).

One run, on seeded data:

(a) ingest: a flat NESTED HEALPix map (an elongated Gaussian whose 90 % region is ~1,000 deg^2, at
    ``--nside``, written as ``bayestar.fits.gz``) read and stored with ``ingest_skymap`` (COPY of
    its tiles into staging and one upsert);
(b) match: ``match_skymap(..., target="source", store=False)`` -- the region's tiles read from the
    database, turned into (zone, ra) boxes, the sky index probed once per box, the exact pixel test,
    the names of the matches -- timed cold (first call) and warm (median of ``--repeat``), and once
    with ``store=True`` (the matches upserted into ``lenscat.skymap_matches``);
(c) baselines in the same run: the plain astropy-healpix/numpy computation over all 10^6 positions
    held in memory (``lonlat_to_healpix`` at the map's NSIDE, the credible level per pixel), and the
    same after reading every position from the database (``SELECT source_id, ra, dec``: a scan);
    both answers must equal lenscat's.

Usage::

    python bench/skymap.py [--n 1000000] [--nside 256] [--seed 34] [--repeat 5]

The script runs its own embedded PostgreSQL under a fresh temporary ``LENSCAT_HOME`` and removes it
at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import goal, ingest_uniform_sky, loadavg, machine_info, own_embedded_home

GOAL_S = 1.0


def gaussian_map(nside: int, ra0: float, dec0: float, sig_a: float, sig_b: float, pa: float) -> np.ndarray:
    """NESTED pixel probabilities of an elongated Gaussian (sigmas in deg, position angle in deg)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy_healpix import HEALPix

    hp = HEALPix(nside, order="nested")
    lon, lat = hp.healpix_to_lonlat(np.arange(hp.npix))
    c = SkyCoord(lon, lat)
    centre = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    sep = c.separation(centre).deg
    ang = np.radians(centre.position_angle(c).deg - pa)
    x, y = sep * np.cos(ang), sep * np.sin(ang)
    p = np.exp(-0.5 * ((x / sig_a) ** 2 + (y / sig_b) ** 2))
    return p / p.sum()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--nside", type=int, default=256)
    ap.add_argument("--seed", type=int, default=34)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="lenscat-bench-skymap-"))
    own_embedded_home(home)

    import astropy.units as u
    from astropy.io import fits
    from astropy_healpix import lonlat_to_healpix
    from sqlalchemy import text

    from lenscat.db.migrate import ensure_schema
    from lenscat.db.server import stop_embedded
    from lenscat.db.session import dispose_engine, session_scope
    from lenscat.skymaps.readers import credible_levels
    from lenscat.skymaps.service import ingest_skymap, match_skymap

    info = machine_info()
    print(f"# {info['date_utc']}; {info['cpu']} x{info['cpu_count']}; load {info['loadavg_start']}", flush=True)
    print(f"# n={args.n:,} nside={args.nside} seed={args.seed} LENSCAT_HOME={home}", flush=True)
    try:
        ensure_schema()
        ra, dec, rng = ingest_uniform_sky(args.n, args.seed, home, "bench-sky")

        # sigma_a * sigma_b * 2 pi ln(10) = 1000 deg^2 for the 90 % region of a flat-sky Gaussian
        p = gaussian_map(args.nside, 210.0, 25.0, 12.0, 5.76, 30.0)
        hdu = fits.BinTableHDU.from_columns([fits.Column("PROB", "D", array=p)])
        hdu.header.update(PIXTYPE="HEALPIX", ORDERING="NESTED", NSIDE=args.nside, COORDSYS="C", OBJECT="SBENCH")
        path = home / "bayestar.fits.gz"
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
        t0 = time.perf_counter()
        with session_scope() as s:
            res = ingest_skymap(path, "SBENCH", session=s)
        t_ingest = time.perf_counter() - t0
        print(
            f"map ingested: {res.n_tiles:,} tiles in {t_ingest:.2f} s; 50 % region {res.area50_deg2:.1f} deg^2, "
            f"90 % region {res.area90_deg2:.1f} deg^2",
            flush=True,
        )

        times = []
        table = None
        for _ in range(args.repeat + 1):
            with session_scope() as s:
                t0 = time.perf_counter()
                table = match_skymap("SBENCH", session=s, credible=0.9, store=False)
                times.append(time.perf_counter() - t0)
        assert table is not None
        cold, warm = times[0], statistics.median(times[1:])
        with session_scope() as s:
            t0 = time.perf_counter()
            stored = match_skymap("SBENCH", session=s, credible=0.9, store=True)
            t_store = time.perf_counter() - t0
        print(
            f"lenscat match: {len(table):,} sources; probed {table.meta['n_probed']:,} rows in "
            f"{table.meta['n_boxes']:,} zone boxes; cold {cold:.3f} s, warm median {warm:.3f} s "
            f"(all: {', '.join(f'{x:.3f}' for x in times)}); with the upsert of the matches {t_store:.3f} s "
            f"({stored.meta['n_inserted']:,} inserted)",
            flush=True,
        )

        # baselines: astropy-healpix + numpy over every position
        level = credible_levels(p, p)
        t0 = time.perf_counter()
        pix = lonlat_to_healpix(ra * u.deg, dec * u.deg, args.nside, order="nested")
        inside = level[pix] <= 0.9 + 1e-12
        t_mem = time.perf_counter() - t0
        with session_scope() as s:
            t0 = time.perf_counter()
            rows = s.execute(text("SELECT objid, ra, dec FROM lenscat.sources")).all()
            objid = np.array([int(r[0]) for r in rows])
            sra = np.fromiter((r[1] for r in rows), np.float64, len(rows))
            sdec = np.fromiter((r[2] for r in rows), np.float64, len(rows))
            spix = lonlat_to_healpix(sra * u.deg, sdec * u.deg, args.nside, order="nested")
            db_inside = objid[level[spix] <= 0.9 + 1e-12]
            t_scan = time.perf_counter() - t0
        got = sorted(int(str(n).split(":", 1)[1]) for n in table["name"])
        same = got == sorted(np.flatnonzero(inside).tolist()) == sorted(db_inside.tolist())
        print(
            f"baseline astropy-healpix/numpy, positions in memory: {int(inside.sum()):,} sources in {t_mem:.3f} s; "
            f"after reading all {len(rows):,} positions from the database: {t_scan:.3f} s; same answer: {same}",
            flush=True,
        )
        print(
            f"ratio lenscat warm / in-memory baseline {warm / t_mem:.2f}; / database-scan baseline {warm / t_scan:.3f}",
            flush=True,
        )
        print(goal(warm <= GOAL_S, f"90 % region of a {res.area90_deg2:.0f} deg^2 map vs {args.n:,} sources <= 1 s"))
        print(f"# load at end {loadavg()}")
        return 0 if same else 1
    finally:
        dispose_engine()
        stop_embedded()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
