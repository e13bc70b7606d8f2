"""Sky-map readers (lenscat.skymaps.readers) on maps made here: flat RING/NESTED, multi-order, MOC, bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy_healpix import HEALPix
from astropy_healpix.core import nested_to_ring

from lenscat.errors import InputFileError
from lenscat.sky.healpix import range_index
from lenscat.skymaps.readers import read_skymap
from lenscat.skymaps.types import DEG2_PER_SR

NSIDE = 64


def blob(ra0: float, dec0: float, sigma: float, ring_radius: float = 0.0) -> np.ndarray:
    """Probabilities of a Gaussian blob (or, with ``ring_radius``, a Gaussian ring) in NESTED order."""
    hp = HEALPix(NSIDE, order="nested")
    lon, lat = hp.healpix_to_lonlat(np.arange(hp.npix))
    sep = SkyCoord(lon, lat).separation(SkyCoord(ra0 * u.deg, dec0 * u.deg)).deg
    p = np.exp(-0.5 * ((sep - ring_radius) / sigma) ** 2)
    return p / p.sum()


def write_flat(
    path: Path, prob_nested: np.ndarray, ordering: str = "NESTED", col: str = "PROB", **cards: object
) -> Path:
    values = prob_nested
    if ordering == "RING":
        values = np.empty_like(prob_nested)
        values[np.asarray(nested_to_ring(np.arange(len(prob_nested)), NSIDE))] = prob_nested
    hdu = fits.BinTableHDU.from_columns([fits.Column(col, "D", array=values)])
    hdu.header.update({"PIXTYPE": "HEALPIX", "ORDERING": ordering, "NSIDE": NSIDE, "COORDSYS": "C", **cards})
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    return path


def direct_levels(density: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Credible level of each pixel by definition: the probability of every pixel at least as dense."""
    uniq, inv = np.unique(density, return_inverse=True)
    mass = np.bincount(inv, weights=prob)
    at_least = np.cumsum(mass[::-1])[::-1]  # probability of densities >= each unique density
    return at_least[inv] / prob.sum()


def pixel_view(m, nside: int = NSIDE) -> tuple[np.ndarray, np.ndarray]:
    """The stored density and level at each NESTED pixel centre of ``nside``."""
    hp = HEALPix(nside, order="nested")
    lon, lat = hp.healpix_to_lonlat(np.arange(hp.npix))
    tile = range_index(lon.deg, lat.deg, m.lo, m.hi)
    assert (tile >= 0).all()
    return m.density[tile], m.cumprob[tile]


@pytest.mark.parametrize("shape", ["blob", "ring"])
def test_flat_ring_and_nested_agree_with_a_direct_computation(tmp_path, shape):
    p = blob(350.0, -40.0, 6.0) if shape == "blob" else blob(120.0, 20.0, 2.0, ring_radius=15.0)
    pix_sr = 4 * np.pi / p.size
    nested = read_skymap(write_flat(tmp_path / "n.fits", p, "NESTED", OBJECT="S1", INSTRUME="H1,L1"))
    ring = read_skymap(write_flat(tmp_path / "r.fits.gz", p, "RING"))
    assert nested.kind == ring.kind == "flat" and nested.nside == NSIDE and nested.max_order == 6
    assert nested.meta["OBJECT"] == "S1" and nested.meta["INSTRUME"] == "H1,L1" and ring.meta["ORDERING"] == "RING"
    for m in (nested, ring):
        dens, level = pixel_view(m)
        assert np.allclose(dens, p / pix_sr, rtol=1e-12)
        assert np.allclose(level, direct_levels(p / pix_sr, p), atol=1e-12)
        for c in (0.5, 0.9):
            direct = (direct_levels(p, p) <= c).sum() * pix_sr * DEG2_PER_SR
            assert m.credible_area_deg2(c) == pytest.approx(direct, rel=1e-9)
        assert m.area_sr.sum() == pytest.approx(4 * np.pi)
        assert np.all(m.lo[1:] >= m.hi[:-1])  # sorted and disjoint
    assert np.array_equal(nested.lo, ring.lo) and np.allclose(nested.cumprob, ring.cumprob)


def test_multiorder_map_matches_its_flat_expansion(tmp_path):
    p = blob(10.0, 5.0, 4.0)
    dens6 = p / (4 * np.pi / p.size)
    # coarse (order 4) cells where the map is faint, order-6 cells elsewhere
    parent = np.arange(p.size) // 16
    faint = np.bincount(parent, weights=p) < 1e-4
    uniq: list[int] = []
    dens: list[float] = []
    for k in np.flatnonzero(faint):
        uniq.append(int(4 * 4**4 + k))
        dens.append(float(dens6[parent == k].mean()))
    fine = np.flatnonzero(~faint[parent])
    uniq += (4 * 4**6 + fine).tolist()
    dens += dens6[fine].tolist()
    hdu = fits.BinTableHDU.from_columns(
        [fits.Column("UNIQ", "K", array=np.array(uniq)), fits.Column("PROBDENSITY", "D", array=np.array(dens))]
    )
    hdu.header.update(ORDERING="NUNIQ", COORDSYS="C", OBJECT="MS1")
    path = tmp_path / "m.multiorder.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    m = read_skymap(path)
    assert m.kind == "multiorder" and m.max_order == 6 and m.nside is None and m.meta["ORDERING"] == "NUNIQ"
    expanded = np.where(faint[parent], np.array(dens[: int(faint.sum())])[np.cumsum(faint)[parent] - 1], dens6)
    expanded = expanded / (expanded.sum() * 4 * np.pi / p.size)
    got_dens, got_level = pixel_view(m)
    assert np.allclose(got_dens, expanded, rtol=1e-9)
    pix_sr = 4 * np.pi / p.size
    assert np.allclose(got_level, direct_levels(expanded, expanded * pix_sr), atol=1e-9)
    direct90 = (direct_levels(expanded, expanded) <= 0.9).sum() * pix_sr * DEG2_PER_SR
    assert m.credible_area_deg2(0.9) == pytest.approx(direct90, rel=1e-9)
    # the same map flattened to NSIDE 64 (as bayestar.fits.gz is): siblings merge back into one tile
    flat = read_skymap(write_flat(tmp_path / "flat.fits", expanded * pix_sr))
    assert len(flat) <= len(uniq) < p.size
    assert flat.credible_area_deg2(0.9) == pytest.approx(m.credible_area_deg2(0.9), rel=1e-9)


def test_moc_is_uniform_and_whole(tmp_path):
    from mocpy import MOC

    moc = MOC.from_cone(lon=30 * u.deg, lat=-20 * u.deg, radius=3 * u.deg, max_depth=10)
    path = tmp_path / "region.moc.fits"
    moc.save(str(path), format="fits")
    with open(path, "rb") as fh, gzip.open(tmp_path / "region.moc.fits.gz", "wb") as gz:
        gz.write(fh.read())
    for p in (path, tmp_path / "region.moc.fits.gz"):
        m = read_skymap(p)
        area = moc.sky_fraction * 4 * np.pi
        assert m.kind == "moc" and m.max_order == 10
        assert m.area_sr.sum() == pytest.approx(area, rel=1e-12)
        assert np.allclose(m.density, 1 / area) and np.all(m.cumprob == 1.0)
        idx, lo, hi = m.region(0.5)
        assert len(idx) == len(m)  # a MOC is its own region
    rng = np.random.default_rng(3)
    ra, dec = rng.uniform(20, 40, 5000), rng.uniform(-30, -10, 5000)
    inside = moc.contains_lonlat(ra * u.deg, dec * u.deg)
    assert np.array_equal(range_index(ra, dec, m.lo, m.hi) >= 0, inside) and inside.sum() > 100


def test_bad_files_get_one_line_naming_the_file(tmp_path):
    text_file = tmp_path / "notes.fits"
    text_file.write_text("not a FITS file\n")
    p = blob(0.0, 0.0, 5.0)
    nan = p.copy()
    nan[17] = np.nan
    neg = p.copy()
    neg[5] = -0.1
    cases = [
        (text_file, "not a readable FITS file"),
        (tmp_path / "missing.fits", "no such file"),
        (write_flat(tmp_path / "col.fits", p, col="TEMPERATURE"), "no probability column"),
        (write_flat(tmp_path / "half.fits", p * 0.5), "sum to 0.5, not 1"),
        (write_flat(tmp_path / "nan.fits", nan), "non-finite value (NaN or inf) at pixel 17"),
        (write_flat(tmp_path / "neg.fits", neg), "negative value (-0.1) at pixel 5"),
        (write_flat(tmp_path / "ord.fits", p, ordering="SPIRAL"), "unknown ORDERING 'SPIRAL'"),
        (write_flat(tmp_path / "gal.fits", p, COORDSYS="G"), "COORDSYS 'G' is not equatorial"),
    ]
    for path, words in cases:
        with pytest.raises(InputFileError) as exc:
            read_skymap(path)
        msg = str(exc.value)
        assert words in msg and str(path) in msg and "\n" not in msg, msg
    short = tmp_path / "short.fits"
    hdu = fits.BinTableHDU.from_columns([fits.Column("PROB", "D", array=np.full(100, 0.01))])
    hdu.header.update(ORDERING="RING", NSIDE=4)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(short)
    with pytest.raises(InputFileError, match="100 pixels in column PROB do not make a HEALPix map of NSIDE 4"):
        read_skymap(short)
    bad_uniq = tmp_path / "u.fits"
    hdu = fits.BinTableHDU.from_columns(
        [fits.Column("UNIQ", "K", array=np.array([4, 2])), fits.Column("PROBDENSITY", "D", array=np.ones(2))]
    )
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(bad_uniq)
    with pytest.raises(InputFileError, match=r"column UNIQ has an invalid value \(2\) at row 1"):
        read_skymap(bad_uniq)


def test_overlapping_multiorder_cells_are_refused(tmp_path):
    # cell 0 of order 0 holds cell 1 of order 1: the same sky twice
    uniq = np.array([4 + 0, 16 + 1, 4 + 5])
    hdu = fits.BinTableHDU.from_columns(
        [
            fits.Column("UNIQ", "K", array=uniq),
            fits.Column("PROBDENSITY", "D", array=np.full(3, 1 / (4 * np.pi * 0.1875))),
        ]
    )
    path = tmp_path / "overlap.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    with pytest.raises(InputFileError, match="overlap.fits: overlapping cells"):
        read_skymap(path)


def test_fixed_width_copy_stream_equals_the_general_encoder():
    from lenscat.db.pgbinary import Column, _fixed_width_stream, encode_copy_binary

    rng = np.random.default_rng(0)
    cols = [
        Column("int4", np.full(50, 7, np.int32)),
        Column("int8", rng.integers(0, 2**62, 50)),
        Column("float8", rng.normal(size=50)),
    ]
    fast = _fixed_width_stream(cols)
    # an explicit all-False NULL mask takes the general path: the same bytes
    general = encode_copy_binary([Column(c.pgtype, c.values, np.zeros(50, bool)) for c in cols])
    assert fast is not None and fast == general == encode_copy_binary(cols)
    with_nan = [Column("float8", np.array([1.0, np.nan]))]
    assert _fixed_width_stream(with_nan) is None  # NULLs: the general path


def test_healpy_vector_rows_and_extra_columns(tmp_path):
    # healpy's write_map stores 1024 pixels per row; Fermi GBM names the column PROBABILITY
    p = blob(200.0, -10.0, 7.0)
    hdu = fits.BinTableHDU.from_columns(
        [
            fits.Column("PROBABILITY", "1024D", array=p.reshape(-1, 1024)),
            fits.Column("SIGNIFICANCE", "1024E", array=np.zeros((p.size // 1024, 1024))),
        ]
    )
    hdu.header.update(PIXTYPE="HEALPIX", ORDERING="NESTED", NSIDE=NSIDE, COORDSYS="C", INSTRUME="GBM")
    path = tmp_path / "glg_healpix_all_bn000000000.fit"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    m = read_skymap(path)
    dens, _ = pixel_view(m)
    assert m.meta["column"] == "PROBABILITY" and m.meta["INSTRUME"] == "GBM"
    assert np.allclose(dens, p / (4 * np.pi / p.size), rtol=1e-12)
