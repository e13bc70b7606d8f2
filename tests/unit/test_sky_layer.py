"""The sky layer's unit edge and SQL text (no database)."""

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from lenscat.errors import LenscatError
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
