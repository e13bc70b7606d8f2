"""A realistic simulated source catalogue, DECaLS-like (positions, grz photometry, types, E(B-V)).

Used by the demo and tests until image simulation exists. Sources fill a Legacy-Surveys-like
footprint (-20 < dec < 35, |b| > 20 deg) uniformly on the sphere; r-band magnitudes follow galaxy
number counts (d log N / dm = 0.45 for 14 < r < 23.5); colours, morphological types, photometric
redshifts and SFD-like reddening follow simple but realistic relations. Optionally a galaxy is
placed at each position of a literature lens list (within ~0.3 arcsec, as a real survey detects the
deflector), sometimes with a companion within 5 arcsec, so cross-matches have both matches and
neighbours.
"""

from __future__ import annotations

from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from lenscat.literature.ingest import prepare_literature

TYPES = np.array(["PSF", "REX", "EXP", "DEV", "SER"])
TYPE_P = np.array([0.30, 0.30, 0.20, 0.12, 0.08])
DEC_RANGE = (-20.0, 35.0)
MIN_ABS_B = 20.0


def in_footprint(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """True where (ra, dec) [deg] is inside the simulated footprint."""
    b = SkyCoord(ra * u.deg, dec * u.deg).galactic.b.deg
    return (dec > DEC_RANGE[0]) & (dec < DEC_RANGE[1]) & (np.abs(b) > MIN_ABS_B)


def _sky_positions(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ra_out: list[np.ndarray] = []
    dec_out: list[np.ndarray] = []
    s0, s1 = np.sin(np.radians(DEC_RANGE))
    have = 0
    while have < n:
        m = int((n - have) * 1.6) + 100
        ra = rng.uniform(0.0, 360.0, m)
        dec = np.degrees(np.arcsin(rng.uniform(s0, s1, m)))
        keep = in_footprint(ra, dec)
        ra_out.append(ra[keep])
        dec_out.append(dec[keep])
        have += int(keep.sum())
    return np.concatenate(ra_out)[:n], np.concatenate(dec_out)[:n]


def _r_mags(n: int, rng: np.random.Generator, lo: float = 14.0, hi: float = 23.5, slope: float = 0.45) -> np.ndarray:
    # N(<m) ~ 10^(slope m): inverse-CDF sampling
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    return np.log10(a + rng.uniform(0, 1, n) * (b - a)) / slope


def _galaxies(n: int, rng: np.random.Generator, rmag: np.ndarray, types: np.ndarray) -> dict[str, np.ndarray]:
    star = types == "PSF"
    red = np.isin(types, ["DEV", "SER"])
    g_r = np.where(star, rng.normal(0.6, 0.35, n), np.where(red, rng.normal(1.4, 0.2, n), rng.normal(0.8, 0.3, n)))
    r_z = np.where(star, rng.normal(0.3, 0.3, n), np.where(red, rng.normal(0.9, 0.15, n), rng.normal(0.5, 0.25, n)))
    z_phot = np.clip(0.05 + 0.1 * np.clip(rmag - 15.0, 0.0, None) ** 1.2 / 3.0 + rng.normal(0, 0.05, n), 0.01, 1.5)
    z_phot = np.where(red, np.clip(z_phot * 0.9, 0.02, 1.2), z_phot)
    z_phot = np.where(star, np.nan, z_phot)
    err = 0.03 * (1 + z_phot) * (1 + np.clip(rmag - 20, 0, None))
    z_spec = np.where(
        (rmag < 19.5) & ~star & (rng.uniform(0, 1, n) < 0.3), z_phot + rng.normal(0, 0.02, n) * (1 + z_phot), np.nan
    )
    return {"g_r": g_r, "r_z": r_z, "z_phot": z_phot, "err": err, "z_spec": z_spec}


def simulate_catalog(n: int, *, seed: int = 0, lens_list: Path | None = None) -> Table:
    """Simulate ``n`` sources (plus one deflector per in-footprint lens of ``lens_list``).

    Returns
    -------
    astropy.table.Table
        Columns ``brickid, objid, ra [deg], dec [deg], mag_g, mag_r, mag_z [mag], flux_g, flux_r,
        flux_z [nanomaggies], ebv [mag], type, z_phot_mean, z_phot_l68, z_phot_u68, z_spec``
        (``-99`` marks missing spectroscopic redshifts, as in Legacy Surveys files).
    """
    rng = np.random.default_rng(seed)
    ra, dec = _sky_positions(n, rng)
    types = rng.choice(TYPES, size=n, p=TYPE_P)
    rmag = _r_mags(n, rng)
    if lens_list is not None:
        lra, ldec = _lens_positions(lens_list, rng)
        k = len(lra)
        ra = np.concatenate([ra, lra])
        dec = np.concatenate([dec, ldec])
        types = np.concatenate([types, rng.choice(["DEV", "SER", "EXP"], size=k, p=[0.5, 0.3, 0.2])])
        rmag = np.concatenate([rmag, rng.uniform(16.5, 20.0, k)])
    m = len(ra)
    gal = _galaxies(m, rng, rmag, types)
    gmag = rmag + gal["g_r"]
    zmag = rmag - gal["r_z"]
    b = SkyCoord(ra * u.deg, dec * u.deg).galactic.b.deg
    ebv = np.clip(0.025 / np.abs(np.sin(np.radians(b))) * rng.lognormal(0, 0.3, m), 0.003, 0.5)
    order = np.lexsort((ra, np.floor(dec * 4)))  # "brick" order, as survey files are written
    brick = (np.floor((dec + 90) * 4) * 1440 + np.floor(ra * 4)).astype(np.int64)
    table = Table()
    table["brickid"] = brick[order]
    objid = np.zeros(m, dtype=np.int64)
    bsorted = brick[order]
    starts = np.r_[0, np.flatnonzero(np.diff(bsorted)) + 1]
    for s, e in zip(starts, np.r_[starts[1:], m], strict=True):
        objid[s:e] = np.arange(e - s)
    table["objid"] = objid
    table["ra"] = ra[order] * u.deg
    table["dec"] = dec[order] * u.deg
    for band, mag in (("g", gmag), ("r", rmag), ("z", zmag)):
        table[f"mag_{band}"] = mag[order].astype(np.float32) * u.mag
    for band, mag in (("g", gmag), ("r", rmag), ("z", zmag)):
        table[f"flux_{band}"] = (10 ** (-0.4 * (mag[order] - 22.5))).astype(np.float32)
        table[f"flux_{band}"].description = "flux [nanomaggies]"
    table["ebv"] = ebv[order].astype(np.float32) * u.mag
    table["type"] = types[order]
    zp = gal["z_phot"][order]
    table["z_phot_mean"] = np.where(np.isnan(zp), -99.0, zp).astype(np.float32)
    table["z_phot_l68"] = np.where(np.isnan(zp), -99.0, zp - gal["err"][order]).astype(np.float32)
    table["z_phot_u68"] = np.where(np.isnan(zp), -99.0, zp + gal["err"][order]).astype(np.float32)
    zs = gal["z_spec"][order]
    table["z_spec"] = np.where(np.isnan(zs), -99.0, zs).astype(np.float32)
    table.meta["COMMENT"] = f"lenscat simulated catalogue, seed={seed}"
    return table


def _lens_positions(path: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    prep = prepare_literature(path, "sim")
    ra = np.array([r["ra"] for r in prep.rows])
    dec = np.array([r["dec"] for r in prep.rows])
    keep = in_footprint(ra, dec)
    ra, dec = ra[keep], dec[keep]
    # the deflector is detected within ~0.3" of the published position
    c = SkyCoord(ra * u.deg, dec * u.deg)
    pa = rng.uniform(0, 360, len(ra)) * u.deg
    sep = np.abs(rng.normal(0, 0.3, len(ra))) * u.arcsec
    moved = c.directional_offset_by(pa, sep)
    # a companion within 1.5-5" for 20% of them
    comp = rng.uniform(0, 1, len(ra)) < 0.2
    cpos = c[comp].directional_offset_by(
        rng.uniform(0, 360, comp.sum()) * u.deg, rng.uniform(1.5, 5.0, comp.sum()) * u.arcsec
    )
    return (np.concatenate([moved.ra.deg, cpos.ra.deg]), np.concatenate([moved.dec.deg, cpos.dec.deg]))
