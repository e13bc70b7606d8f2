"""ADQL -> PostgreSQL of the TAP service (lenscat.tap.adql), and its output writers (lenscat.tap.votable)."""

from __future__ import annotations

import io
import re

import pytest
from astropy.io.votable import parse_single_table

from lenscat.errors import InvalidParameter
from lenscat.tap.adql import translate
from lenscat.tap.types import ColumnMeta, TapResult
from lenscat.tap.votable import error_votable, to_votable


def test_cone_on_a_published_view_goes_through_the_sky_index():
    tr = translate(
        "SELECT TOP 5 source_id, DISTANCE(POINT('ICRS', ra, dec), POINT('ICRS', 10.5, -20.25)) AS d "
        "FROM sources WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 10.5, -20.25, 0.01)) ORDER BY d"
    )
    assert tr.sql == (
        "SELECT source_id, lenscat_angsep(ra, dec, 10.5, -20.25) AS d FROM sources "
        "WHERE (source_id IN (SELECT public.tap_cone_source_ids(10.5, -20.25, 0.01))) ORDER BY d LIMIT 5"
    )
    assert tr.top == 5 and tr.indexed_cones == 1 and tr.tables == ["sources"]


def test_cone_through_an_alias_of_a_join_and_circle_of_a_point():
    tr = translate(
        "SELECT s.source_id, l.name FROM crossmatches AS x JOIN literature_lenses l ON l.lens_id = x.lens_id "
        "JOIN sources s ON s.source_id = x.source_id "
        "WHERE CONTAINS(POINT(l.ra, l.dec), CIRCLE(POINT(1, 2), 0.5)) = 1"
    )
    assert "(l.lens_id IN (SELECT public.tap_cone_lens_ids(1, 2, 0.5)))" in tr.sql
    assert tr.tables == ["crossmatches", "literature_lenses", "sources"]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        # outside the circle: the exact separation's complement
        ("CONTAINS(POINT(ra, dec), CIRCLE(1, 2, 0.5)) = 0", "(lenscat_angsep(1, 2, ra, dec) > 0.5)"),
        # a centre that is not a constant: the exact separation (no index to probe)
        ("CONTAINS(POINT(ra, dec), CIRCLE(ra + 1, 2, 0.5)) = 1", "(lenscat_angsep(ra + 1, 2, ra, dec) <= 0.5)"),
        ("DISTANCE(ra, dec, 1.5, 2) < 0.1", "lenscat_angsep(ra, dec, 1.5, 2) < 0.1"),
    ],
)
def test_geometry_without_the_index(where, expected):
    assert translate(f"SELECT source_id FROM sources WHERE {where}").sql.endswith(expected)


def test_a_view_without_a_cone_function_uses_the_exact_separation():
    tr = translate("SELECT source_id FROM lens_models WHERE CONTAINS(POINT(ra, dec), CIRCLE(1, 2, 0.5)) = 1")
    assert tr.indexed_cones == 0 and "lenscat_angsep(1, 2, ra, dec) <= 0.5" in tr.sql


def test_tap_schema_names_pass_through():
    tr = translate("SELECT column_name, unit, ucd FROM TAP_SCHEMA.columns WHERE table_name = 'sources'")
    assert tr.sql == "SELECT column_name, unit, ucd FROM TAP_SCHEMA.columns WHERE table_name = 'sources'"
    assert tr.tables == ["tap_schema.columns"]


@pytest.mark.parametrize(
    ("adql", "words"),
    [
        ("", "empty"),
        ("DELETE FROM sources", "not valid ADQL"),
        ("SELEC source_id FROM sources", "not valid ADQL"),
        ("SELECT TOP 1 source_id FROM sources; DELETE FROM sources", "one ADQL SELECT statement"),
        ("SELECT POINT(ra, dec) FROM sources", "only appear inside CONTAINS or DISTANCE"),
        ("SELECT source_id FROM sources WHERE CONTAINS(POINT(ra, dec), BOX(1, 2, 3, 4)) = 1", "BOX"),
        ("SELECT source_id FROM sources WHERE CONTAINS(POINT(ra, dec), CIRCLE(1, 2, 3)) = 2", "1 or 0"),
    ],
)
def test_refusals_name_the_query(adql, words):
    with pytest.raises(InvalidParameter) as err:
        translate(adql)
    assert err.value.param == "query" and words in str(err.value)


def _result(overflow: bool) -> TapResult:
    meta = {
        "ra": ColumnMeta("sources", "ra", "Right ascension, ICRS [deg].", "deg", "pos.eq.ra;meta.main", "double"),
        "survey": ColumnMeta("sources", "survey", "Survey name (no unit).", None, "meta.id;instr.setup", "char"),
    }
    rows = [(1, 10.25, "hsc", None, True), (2, None, None, 3, False)]
    return TapResult(["source_id", "ra", "survey", "n", "flag"], rows, overflow, meta)


def test_votable_carries_units_ucds_and_nulls():
    xml = to_votable(_result(False))
    table = parse_single_table(io.BytesIO(xml))
    fields = {f.name: f for f in table.fields}
    assert fields["ra"].unit == "deg" and fields["ra"].ucd == "pos.eq.ra;meta.main"
    assert "Right ascension" in str(fields["ra"].description)
    assert fields["source_id"].datatype == "long" and fields["flag"].datatype == "boolean"
    t = table.to_table()
    assert list(t["source_id"]) == [1, 2] and t["ra"].mask[1] and t["survey"][0] == "hsc"
    assert b'name="QUERY_STATUS" value="OK"' in xml and b"OVERFLOW" not in xml


def test_overflow_is_marked_after_the_table():
    xml = to_votable(_result(True))
    assert xml.index(b"</TABLE>") < xml.index(b'<INFO name="QUERY_STATUS" value="OVERFLOW"/>')
    assert len(parse_single_table(io.BytesIO(xml)).to_table()) == 2


def test_error_votable_is_one_line():
    xml = error_votable('SQL error: column "x" does not exist\n  LINE 1 <here>')
    assert b'value="ERROR">SQL error: column "x" does not exist LINE 1 &lt;here&gt;</INFO>' in xml


@pytest.mark.parametrize(
    "adql",
    [
        "SELECT TOP 7 source_id FROM sources WHERE CONTAINS(POINT(ra, dec), CIRCLE({a}, {b}, 2.5e-3)) = 1",
        "SELECT source_id, mag_r - 0.5 AS m FROM sources WHERE mag_r - 2 < {a} AND name = 'J{a}' AND dec > {b}",
        "SELECT DISTANCE(POINT(ra, dec), POINT({a}, {b})) AS d FROM literature_lenses WHERE z_lens > -{a}",
    ],
)
def test_queries_that_differ_in_numbers_share_one_translation(adql):
    from lenscat.tap.adql import _translate

    for a, b in ((150.125, 2.5), (10.0, -20.25), (0.5, -0.75), (3, 1e-3)):
        q = adql.format(a=a, b=b)
        cached, fresh = translate(q), _translate(q)
        # the template keeps a sign with its number ("-20.25"); the parser writes it apart ("- 20.25")
        assert re.sub(r"\s*-\s*", "-", cached.sql) == re.sub(r"\s*-\s*", "-", fresh.sql)
        assert cached.tables == fresh.tables
        assert cached.indexed_cones == fresh.indexed_cones


def test_top_is_the_outer_query_s():
    assert translate("SELECT DISTINCT TOP 3 survey FROM sources").top == 3
    assert translate("SELECT x.source_id FROM (SELECT TOP 5 source_id FROM sources) AS x").top is None
    assert translate("SELECT name FROM literature_lenses WHERE name = 'a;b' AND z_lens > 0.5").top is None
