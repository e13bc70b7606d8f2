"""The sky layer's unit edge and SQL text (no database)."""

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from lenscat.errors import LenscatError
from lenscat.sky.service import pairs_within
from lenscat.sky.sql import CONE_SQL, POSITIONS_SQL, matches_sql, pairs_sql, within_sql
from lenscat.sky.units import MAX_RADIUS, centre_degrees, positions_degrees, radius_degrees, rows_to_table


def test_radius_degrees_converts_and_checks():
    assert radius_degrees(36 * u.arcsec) == pytest.approx(0.01)
    assert radius_degrees(1 * u.arcmin) == pytest.approx(1 / 60)
    for bad in (0 * u.arcsec, -1 * u.arcsec, np.nan * u.deg):
        with pytest.raises(LenscatError, match="radius must be positive"):
            radius_degrees(bad)
    with pytest.raises(LenscatError, match="larger than"):
        radius_degrees(MAX_RADIUS * 1.01)
    with pytest.raises(LenscatError, match="link radius must be an angle"):
        radius_degrees(5 * u.kg, what="link radius")


def test_positions_degrees_icrs_and_wrap():
    gal = SkyCoord(l=[0.0, 90.0] * u.deg, b=[0.0, 10.0] * u.deg, frame="galactic")
    ra, dec = positions_degrees(gal)
    assert np.allclose(ra, gal.icrs.ra.deg) and np.allclose(dec, gal.icrs.dec.deg)
    ra, dec = positions_degrees(SkyCoord(360 * u.deg, 0 * u.deg))
    assert ra.shape == (1,) and ra[0] == 0.0 and dec[0] == 0.0
    ra, dec = positions_degrees(SkyCoord([-10.0, 370.0] * u.deg, [5.0, -5.0] * u.deg))
    assert np.allclose(ra, [350.0, 10.0])
    assert centre_degrees(SkyCoord(10 * u.deg, -5 * u.deg)) == pytest.approx((10.0, -5.0))


def test_rows_to_table_types_and_units():
    t = rows_to_table(
        ["id", "ra", "flag", "n", "name"],
        [(1, 10.0, True, 3, "a"), (2, None, False, None, "b")],
        {"ra": u.deg, "n": u.mag},
    )
    assert t["id"].dtype == np.int64 and t["ra"].unit == u.deg and np.isnan(t["ra"][1])
    assert t["flag"].dtype == bool and t["n"].mask.tolist() == [False, True] and t["n"].unit is None
    assert t["name"].tolist() == ["a", "b"]
    assert len(rows_to_table(["a"], [])) == 0


def test_sql_text_keeps_degrees_and_the_probe_per_centre():
    sql = pairs_sql(POSITIONS_SQL, survey_filter=True)
    assert "OFFSET 0" in sql and "lenscat_sky_ranges(l.ra, l.dec, :r)" in sql and ":sids" in sql
    assert "l.pos_id" in sql and ":sids" not in pairs_sql(POSITIONS_SQL)
    assert "DISTINCT ON (p.lens_id)" in matches_sql(
        "SELECT 1 AS lens_id, 0.0 AS ra, 0.0 AS dec", key="lens_id", nearest=True
    )
    assert "row_number()" in matches_sql(POSITIONS_SQL)
    assert within_sql("q", outside=True) == "lenscat_angsep(:q_ra, :q_dec, s.ra, s.dec) > :q_r"
    assert "{survey_filter}" in CONE_SQL and "{limit}" in CONE_SQL


def test_pairs_within_agrees_with_brute_force_at_the_wrap_and_the_poles():
    rng = np.random.default_rng(5)
    centres = [(0.0, 0.0), (359.999, 20.0), (10.0, 89.999), (250.0, -89.9995)]
    ra, dec = [], []
    for cra, cdec in centres:
        pts = SkyCoord(cra * u.deg, cdec * u.deg).directional_offset_by(
            rng.uniform(0, 360, 120) * u.deg, rng.uniform(0, 40, 120) * u.arcsec
        )
        ra.append(pts.ra.deg)
        dec.append(pts.dec.deg)
    ra_all, dec_all = np.concatenate(ra), np.concatenate(dec)
    coords = SkyCoord(ra_all[::2] * u.deg, dec_all[::2] * u.deg)
    targets = SkyCoord(ra_all[1::2] * u.deg, dec_all[1::2] * u.deg, frame="icrs").galactic  # any frame
    radius = 12 * u.arcsec
    got = pairs_within(coords, targets, radius)
    # brute force on unit vectors: every pair, then the same order (position, separation, target)
    a = np.radians(np.stack([ra_all[::2], dec_all[::2]], axis=1))
    b = np.radians(np.stack([ra_all[1::2], dec_all[1::2]], axis=1))
    va = np.stack([np.cos(a[:, 1]) * np.cos(a[:, 0]), np.cos(a[:, 1]) * np.sin(a[:, 0]), np.sin(a[:, 1])], axis=1)
    vb = np.stack([np.cos(b[:, 1]) * np.cos(b[:, 0]), np.cos(b[:, 1]) * np.sin(b[:, 0]), np.sin(b[:, 1])], axis=1)
    chord = np.linalg.norm(va[:, None, :] - vb[None, :, :], axis=2)
    sep = np.degrees(2 * np.arcsin(np.clip(chord / 2, 0, 1))) * 3600
    i, j = np.nonzero(sep <= radius.to_value(u.arcsec))
    order = np.lexsort((j, sep[i, j], i))
    assert len(got) == len(i) > 100
    assert got.index.tolist() == i[order].tolist() and got.target.tolist() == j[order].tolist()
    assert np.allclose(got.separation.arcsec, sep[i, j][order], atol=1e-6)
    assert got.separation.unit == u.arcsec


def test_pairs_within_empty_and_bad_radius():
    some = SkyCoord([1.0, 2.0] * u.deg, [0.0, 0.0] * u.deg)
    empty = pairs_within(some[:0], some, 1 * u.arcsec)
    assert len(empty) == 0 and empty.separation.unit == u.arcsec
    assert len(pairs_within(some, some[:0], 1 * u.arcsec)) == 0
    with pytest.raises(LenscatError, match="radius must be positive"):
        pairs_within(some, some, 0 * u.arcsec)


def test_separation_arcsec_agrees_with_astropy():
    from lenscat.sky.coords import separation_arcsec

    rng = np.random.default_rng(11)
    ra1, ra2 = rng.uniform(0, 360, 200), rng.uniform(0, 360, 200)
    dec1, dec2 = rng.uniform(-90, 90, 200), rng.uniform(-90, 90, 200)
    ra2[:100], dec2[:100] = (ra1[:100] + rng.uniform(-1e-3, 1e-3, 100)) % 360, np.clip(dec1[:100] + 1e-3, -90, 90)
    want = SkyCoord(ra1 * u.deg, dec1 * u.deg).separation(SkyCoord(ra2 * u.deg, dec2 * u.deg)).arcsec
    got = [separation_arcsec(a, b, c, d) for a, b, c, d in zip(ra1, dec1, ra2, dec2, strict=True)]
    assert np.allclose(got, want, rtol=1e-9, atol=1e-6)
