"""Real confirmed lenses for the lens-model network (bench/lensmodel_real.py): data, units, grid.

Checks the shipped Pan-STARRS1 cutouts and literature θ_E table, and the bench's loader: header
zero points to nanomaggies, resampling to 0.262″/px with flux kept, north up / east left from the
WCS, and checkpoint loading. Not the network's accuracy (no trained checkpoint ships).
"""

from __future__ import annotations

import csv
import importlib.util
import math
import re
import sys
import warnings
from pathlib import Path
from types import ModuleType

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from scipy.ndimage import gaussian_filter, maximum_filter

ROOT = Path(__file__).parents[2]
DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """bench/lensmodel_real.py as a module (bench scripts are not a package)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("lensmodel_real", ROOT / "bench" / "lensmodel_real.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["lensmodel_real"] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return mod


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _nmgy(path: Path) -> np.ndarray:
    """A PS1 stack in nanomaggies, by hand: counts summed over EXPTIME at the per-second zero point FPA.ZP."""
    hdr = fits.getheader(path)
    zp = hdr["HIERARCH FPA.ZP"] + 2.5 * math.log10(hdr["EXPTIME"])
    return np.asarray(fits.getdata(path), dtype=np.float64) * 10 ** (-0.4 * (zp - 22.5))


def _wcs(path: Path) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WCS(fits.getheader(path))


def test_table_rows_come_from_the_shipped_tables(bench: ModuleType) -> None:
    lenses = bench.read_theta_table()
    assert len(lenses) == 17 and len({s.stem for s in lenses}) == 17
    sled = {r["name"]: r for r in _rows(DATA / "catalogs" / "sled_lensed_galaxies.csv")}
    slacs = {r["Name"]: r for r in _rows(DATA / "images" / "hst_slacs" / "slacs_params.csv")}
    table = {r["stem"]: r for r in _rows(bench.THETA_TABLE)}
    sources = []
    for lens in lenses:
        files = bench.band_files(lens.stem)
        assert all(f.is_file() for f in files), lens.stem
        # the SLED position is the cutout's centre (the file names are the SLED names)
        centre = _wcs(files[1]).pixel_to_world(59.5, 59.5)
        assert centre.separation(SkyCoord(lens.ra * u.deg, lens.dec * u.deg)).arcsec < 0.5, lens.stem
        row = sled[lens.sled_name]
        assert (float(row["ra"]), float(row["dec"])) == (lens.ra, lens.dec)
        sources.append(lens.source)
        if lens.source == "slacs_params.csv R_Einstein":
            rein = slacs[table[lens.stem]["slacs_name"]]["/R_{Einstein} [arcsec]/"]
            central = re.match(r"[0-9.]+", rein)
            assert central is not None and float(central[0]) == lens.theta_e
            assert lens.theta_e_err is not None and 0 < lens.theta_e_err < 0.1
        elif lens.source == "SLED image_sep / 2":
            assert lens.theta_e == float(row["image_sep"]) / 2
        else:
            assert lens.theta_e is None and lens.source == ""
    assert sources.count("slacs_params.csv R_Einstein") == 6 and sources.count("SLED image_sep / 2") == 1


def test_ps1_counts_become_nanomaggies(bench: ModuleType) -> None:
    from lenscat.images.fits import read_fits_cutout

    files = bench.band_files("SDSSJ1430_6104")
    cut = read_fits_cutout(files, bands=["g", "r", "z"])
    assert cut.unit == "nanomaggy" and cut.bands == ["g", "r", "z"]
    assert cut.pixel_scale.to_value(u.arcsec) == pytest.approx(0.25, abs=1e-4)
    for k, f in enumerate(files):
        np.testing.assert_allclose(cut.data[k], _nmgy(f), rtol=1e-5, atol=1e-9)
    # every lens galaxy then has a plausible r magnitude (a unit slip would be off by ~7 mag)
    stamps = np.stack([bench.network_cutout(bench.band_files(s.stem)).data for s in bench.read_theta_table()])
    mags = bench.aperture_mag(stamps)
    assert np.all((mags > 15.0) & (mags < 20.5)), mags


def test_resampled_grid_keeps_flux_and_sky_positions(bench: ModuleType) -> None:
    lens = next(s for s in bench.read_theta_table() if s.stem == "SDSSJ0753_3416")
    files = bench.band_files(lens.stem)
    centre = SkyCoord(lens.ra * u.deg, lens.dec * u.deg)
    out = bench.network_cutout(files, centre)
    assert out.data.shape == (3, 64, 64) and out.unit == "nanomaggy"
    assert out.pixel_scale.to_value(u.arcsec) == pytest.approx(0.262)
    # north up, east left: +column is West (RA falls), +row is North
    c = (64 - 1) / 2
    here, right, up = (out.wcs.pixel_to_world(*p) for p in ((c, c), (c + 1, c), (c, c + 1)))
    assert here.separation(centre).arcsec < 0.01
    assert right.ra.deg < here.ra.deg and up.dec.deg > here.dec.deg
    assert here.separation(right).arcsec == pytest.approx(0.262, abs=1e-3)

    # flux within 6″ of the lens, on both grids
    w_in = _wcs(files[1])
    raw_r = _nmgy(files[1])
    cx, cy = (float(v) for v in w_in.world_to_pixel(centre))
    yy, xx = np.mgrid[0:120, 0:120]
    flux_in = raw_r[np.hypot(xx - cx, yy - cy) * 0.25 <= 6.0].sum()
    oy, ox = np.mgrid[0:64, 0:64]
    flux_out = out.data[1][np.hypot(ox - c, oy - c) * 0.262 <= 6.0].sum()
    assert flux_out == pytest.approx(flux_in, rel=0.01)

    # a compact neighbour 4.4″ from the lens lands where its sky offset says, on the east-left grid
    sm = gaussian_filter(raw_r, 1.5)
    r_in = np.hypot(xx - cx, yy - cy) * 0.25
    peaks = (sm == maximum_filter(sm, 9)) & (r_in > 3) & (r_in < 7)
    py, px = np.unravel_index(np.argmax(np.where(peaks, sm, -np.inf)), sm.shape)
    peak = w_in.pixel_to_world(px, py).icrs  # the PS1 WCS is FK5
    east, north = (a.to_value(u.arcsec) for a in centre.spherical_offsets_to(SkyCoord(peak.ra, peak.dec)))
    assert abs(east) > 1.0  # off the north-south axis: a left-right flip would move it by > 7 px
    want_col, want_row = c - east / 0.262, c + north / 0.262
    sm_out = gaussian_filter(out.data[1].astype(np.float64), 1.5)
    near = np.hypot(ox - want_col, oy - want_row) <= 4
    gy, gx = np.unravel_index(np.argmax(np.where(near, sm_out, -np.inf)), sm_out.shape)
    assert math.hypot(gx - want_col, gy - want_row) < 1.0
    assert sm_out[gy, gx] == sm_out[max(gy - 4, 0) : gy + 5, max(gx - 4, 0) : gx + 5].max()  # a real peak


def test_east_right_wcs_is_turned_east_left(bench: ModuleType, tmp_path: Path) -> None:
    """A file stored east right (positive RA step along columns) comes out east left."""
    files = []
    ra0, dec0, step = 150.0, 2.0, 0.25 / 3600
    for band in ("g", "r", "z"):
        img = np.zeros((80, 80), np.float32)
        img[40, 60] = 100.0  # column 60 of an east-right image: 4.9″ East of the centre
        hdr = fits.Header()
        hdr.update(
            CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=ra0, CRVAL2=dec0, CRPIX1=40.5, CRPIX2=40.5,
            CD1_1=step, CD1_2=0.0, CD2_1=0.0, CD2_2=step, BUNIT="nanomaggy", FILTER=band,
        )  # fmt: skip
        path = tmp_path / f"X_PS1_{band}.fits"
        fits.PrimaryHDU(img, hdr).writeto(path)
        files.append(path)
    out = bench.network_cutout(files, SkyCoord(ra0 * u.deg, dec0 * u.deg))
    row, col = np.unravel_index(np.argmax(out.data[1]), out.data[1].shape)
    c = (64 - 1) / 2
    expect = c - (20.5 * 0.25) / 0.262  # East is to the left: a smaller column
    assert abs(col - expect) <= 1 and abs(row - c) <= 1
    assert out.data[1].sum() == pytest.approx(100.0, rel=1e-3)


def test_bare_member_checkpoints_load(bench: ModuleType, tmp_path: Path) -> None:
    import torch

    from lenscat.modelling.modeller import network_input
    from lenscat.models.lensmodel import LensModelNet, predict

    torch.manual_seed(0)
    net = LensModelNet(3, 48, 4, target_mean=[1.5] + [0.0] * 8, target_std=[0.5] + [0.1] * 8).eval()
    torch.save({"members": [net.state_dict()]}, tmp_path / "bare.pt")
    modeller, stored = bench.load_modeller(tmp_path / "bare.pt")
    assert not stored and modeller.crop == 48 and not modeller.residual
    assert modeller.members[0].width == 4 and np.all(modeller.calibration == 1.0)
    x = np.random.default_rng(1).normal(0, 0.01, (2, 3, 64, 64)).astype(np.float32)
    mu, sig = modeller.predict(x)
    mu0, sig0 = predict([net], network_input(x, modeller.preprocessing, False))
    np.testing.assert_allclose(mu, mu0, rtol=1e-5)
    np.testing.assert_allclose(sig, sig0, rtol=1e-5)
