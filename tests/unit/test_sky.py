import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from lenscat.errors import LenscatError
from lenscat.sky.coords import (
    iau_name,
    parse_angle_quantity,
    parse_position,
    parse_sexagesimal,
    zone_of,
)


@pytest.mark.parametrize(
    "text, arcsec",
    [
        ("5arcsec", 5.0),
        ("5 arcsec", 5.0),
        ("1.5arcmin", 90.0),
        ("0.01deg", 36.0),
        ('3"', 3.0),
        ("2'", 120.0),
        ("7", 7.0),
    ],
)
def test_parse_angle_quantity(text, arcsec):
    assert parse_angle_quantity(text).to_value(u.arcsec) == pytest.approx(arcsec)


@pytest.mark.parametrize("bad", ["five", "5 kg", "-3arcsec", "nan"])
def test_parse_angle_rejects(bad):
    with pytest.raises(LenscatError):
        parse_angle_quantity(bad)


def test_parse_position_sexagesimal_matches_astropy():
    c = parse_position("10:00:24.0", "+02:12:00")
    ref = SkyCoord("10h00m24s", "+02d12m00s")
    assert c.separation(ref).arcsec < 1e-6
    assert parse_position("150.1", "2.2").ra.deg == pytest.approx(150.1)
    with pytest.raises(LenscatError):
        parse_position("150", "95")


@pytest.mark.parametrize("ra", ["400", "-10", "360.5"])
def test_parse_position_rejects_right_ascension_out_of_range(ra):
    """astropy would wrap 400 deg to 40 deg; a typo must not silently move the query."""
    with pytest.raises(LenscatError, match=r"right ascension .* out of range \[0, 360\)"):
        parse_position(ra, "0")
    assert parse_position("360", "0").ra.deg == pytest.approx(0.0)
    with pytest.raises(LenscatError, match=r"RA must be within"):
        parse_position("25:00:00", "+01:00:00")


def test_parse_sexagesimal_array_marks_bad_values():
    deg, ok = parse_sexagesimal(np.array(["12:30:00", "187.5", "garbage", ""]), hours=True)
    assert ok.tolist() == [True, True, False, False]
    assert deg[0] == pytest.approx(187.5) and deg[1] == pytest.approx(187.5)


def test_iau_name_truncates():
    assert iau_name(0.0, 0.0) == "J000000.00+000000.0"
    assert iau_name(187.70593, 12.39112) == "J123049.42+122328.0"  # M87
    assert iau_name(10.0, -5.5)[10] == "-"


def test_zone_matches_database_formula():
    assert zone_of(-90.0) == 0
    assert zone_of(90.0) == 10800
    assert zone_of(0.0) == 5400
    assert zone_of(-0.0001) == 5399


def test_literal_sql_binds_numbers_and_leaves_casts():
    """COPY takes no parameters: lenscat's numbers become exact literals, ``::`` casts stay."""
    from lenscat.literature.crossmatch import _literal_sql

    sql = _literal_sql(
        "SELECT :r::float8, :cid, x::text, :sids, :part", {"r": 1 / 3600, "cid": 3, "sids": [1, 2], "part": 0}
    )
    assert sql == (f"SELECT {1 / 3600!r}::double precision::float8, 3, x::text, ARRAY[1,2]::integer[], 0")
    assert float(sql.split()[1].split("::")[0]) == 1 / 3600
    with pytest.raises(TypeError, match="name"):
        _literal_sql("SELECT :name", {"name": "x'; DROP TABLE y"})


def _xmatch_row(lens, src, sep, nearest, rank, radius=5.0):
    """One row of a binary COPY stream of ranked pairs, as PostgreSQL writes it."""
    import struct

    return (
        struct.pack(">h", 6)
        + struct.pack(">iq", 8, lens)
        + struct.pack(">iq", 8, src)
        + struct.pack(">id", 8, sep)
        + struct.pack(">i?", 1, nearest)
        + struct.pack(">ii", 4, rank)
        + struct.pack(">id", 8, radius)
    )


def test_crossmatch_changed_rows_rewrites_only_lenses_whose_pairs_changed():
    """Unchanged lenses are left alone; a lens with any changed, added or lost row is rewritten."""
    from lenscat.db.pgbinary import SIGNATURE, TRAILER
    from lenscat.literature.crossmatch import _lens_ids, _stream_rows, changed_rows

    r = _xmatch_row
    old = (
        SIGNATURE
        + r(1, 10, 0.2, True, 1)
        + r(1, 11, 3.0, False, 2)
        + r(2, 12, 1.0, True, 1)
        + r(3, 13, 1.0, True, 1)
        + r(5, 16, 2.0, True, 1)
        + TRAILER
    )
    new = (
        SIGNATURE
        + r(1, 10, 0.2, True, 1)
        + r(2, 12, 1.0, True, 1)
        + r(2, 14, 2.0, False, 2)
        + r(4, 15, 1.0, True, 1)
        + r(5, 16, 2.0, True, 1, radius=6.0)
        + TRAILER
    )
    stale, insert = changed_rows(new, _stream_rows(old))
    assert stale.tolist() == [1, 2, 3, 5]  # lost a row, gained one, vanished, new radius
    assert _lens_ids(_stream_rows(insert)).tolist() == [1, 2, 2, 4, 5]  # lens 4 is new: nothing to delete
    stale, insert = changed_rows(old, _stream_rows(old))
    assert stale.size == 0 and insert == SIGNATURE + TRAILER
    stale, insert = changed_rows(old, _stream_rows(SIGNATURE + TRAILER))  # first run: all rows
    assert stale.size == 0 and insert == old


def test_crossmatch_stream_counts_pairs_and_nearest_rows():
    """The counts of a binary COPY stream of ranked pairs come from its fixed-width rows."""
    from lenscat.db.pgbinary import SIGNATURE, TRAILER
    from lenscat.errors import LenscatError
    from lenscat.literature.crossmatch import _stream_counts

    row = _xmatch_row
    data = SIGNATURE + row(1, 10, 0.2, True, 1) + row(1, 11, 3.0, False, 2) + row(2, 12, 1.0, True, 1) + TRAILER
    assert _stream_counts(data) == (3, 2)
    assert _stream_counts(SIGNATURE + TRAILER) == (0, 0)
    with pytest.raises(LenscatError, match="unexpected"):
        _stream_counts(data[:-3])
