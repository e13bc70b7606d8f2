"""Parsing the real literature lens lists exactly as shipped."""

import json

import pytest

from lenscat.literature.ingest import first_number, prepare_literature
from lenscat.literature.types import LiteratureColumns

CATS = "catalogs"


def test_community_catalogue(data_dir):
    prep = prepare_literature(data_dir / CATS / "lenscat_catalog.csv.gz", "lenscat")
    assert prep.layout == "lenscat"
    assert len(prep.rows) == 32838 and not prep.rejects
    first = prep.rows[0]
    assert first["name"] == "J0011-0845" and first["ra"] == pytest.approx(2.83435)
    assert first["grade"] == "confident" and first["lens_type"] == "galaxy"
    assert first["z_lens"] is None  # '-'
    assert first["refs"] == ["https://research.ast.cam.ac.uk/lensedquasars/index.html"]
    raw = json.loads(first["raw"])
    assert raw["RA [deg]"] == pytest.approx(2.83435)
    grades = {r["grade"] for r in prep.rows}
    assert grades == {"confident", "probable"}
    assert sum(r["grade"] == "confident" for r in prep.rows) == 2309
    # names like '-' are replaced by IAU J-names
    assert all(r["name"] not in ("-", "") for r in prep.rows)


@pytest.mark.parametrize(
    "cell, expected",
    [
        ("-", None),
        ("measured", None),
        ("not measured", None),
        ("0.1535 | 0.1535", 0.1535),
        (" 0.405 | nan", 0.405),
        ("nan | 0.3", 0.3),
        ("0.33 |0.33", 0.33),
        (0.5, 0.5),
        (-99.0, None),
    ],
)
def test_first_number(cell, expected):
    assert first_number(cell, (-99.0,)) == expected


def test_stein_lists(data_dir):
    train = prepare_literature(data_dir / CATS / "stein2021_training_lenses.tsv", "stein-train")
    assert train.layout == "stein2021" and len(train.rows) == 1615
    assert train.rows[0]["z_lens"] == pytest.approx(0.1102535)
    assert train.rows[1]["z_lens"] is None  # -99
    assert train.rows[0]["name"].startswith("J0109")
    new = prepare_literature(data_dir / CATS / "stein2021_new_lenses.tsv", "stein-new")
    assert len(new.rows) == 1192
    assert {r["grade"] for r in new.rows} == {"A", "B"}
    assert sum(r["grade"] == "A" for r in new.rows) == 404


def test_sled_lists(data_dir):
    gal = prepare_literature(data_dir / CATS / "sled_lensed_galaxies.csv", "sled-galaxies")
    assert gal.layout == "sled" and len(gal.rows) == 407
    multi = [r for r in gal.rows if "|" in (json.loads(r["raw"])["z_lens"] or "")]
    assert multi and all(isinstance(r["z_lens"], float) for r in multi)
    q = prepare_literature(data_dir / CATS / "sled_lensed_quasars.csv", "sled-quasars")
    assert {r["source_type"] for r in q.rows} >= {"QUASAR"}


def test_generic_table_with_options(tmp_path):
    p = tmp_path / "mine.csv"
    p.write_text("sys,alpha,delta,q,zd\nA,10:00:00,+01:00:00,good,0.3\nB,bad,2,ok,0.4\nC,150,91,ok,0.5\n")
    prep = prepare_literature(p, "mine", LiteratureColumns(ra="alpha", dec="delta", name="sys", grade="q", z_lens="zd"))
    assert prep.layout == "generic"
    assert [r["name"] for r in prep.rows] == ["A"]
    assert prep.rows[0]["ra"] == pytest.approx(150.0) and prep.rows[0]["z_lens"] == pytest.approx(0.3)
    assert [(r.row, r.column) for r in prep.rejects] == [(2, "alpha"), (3, "delta")]


def test_duplicate_rows_are_kept_once_and_reported(tmp_path):
    """Two identical lines are one lens; the same name and position with other values is kept."""
    p = tmp_path / "dups.csv"
    p.write_text("name,ra,dec,grade\nL1,10,10,A\nL1,10,10,A\nL2,20,20,B\nL1,10.00001,10,A\nL2,20,20,C\nL1,10.1,10,A\n")
    prep = prepare_literature(p, "dups")
    assert [r["row_number"] for r in prep.rows] == [1, 3, 5, 6]
    assert [(d.row, d.column, d.value, d.reason) for d in prep.duplicates] == [
        (2, "name", "L1", "duplicate of row 1 (same name and values, position within 0.1 arcsec)"),
        (4, "name", "L1", "duplicate of row 1 (same name and values, position within 0.1 arcsec)"),
    ]
    assert prep.repeats == 1 and not prep.rejects  # row 5: L2 at row 3's position, grade C


def test_rows_cut_short_are_rejected(tmp_path):
    p = tmp_path / "short.csv"
    p.write_text("name,ra,dec,grade\nL1,10,10,A\nL2,20\nL3,30,30,B,extra\nL4,40,40,C\n")
    prep = prepare_literature(p, "short")
    assert [r["name"] for r in prep.rows] == ["L1", "L4"]
    assert [(r.row, r.column, r.value, r.reason) for r in prep.rejects] == [
        (2, "dec", "L2,20", "expected 4 fields, found 2"),
        (3, "", "L3,30,30,B,extra", "expected 4 fields, found 5"),
    ]
    assert prep.rejects[0].line(p) == (
        f"{p}: row 2: column 'dec': expected 4 fields, found 2 (value 'L2,20'); row rejected"
    )
    assert prep.rejects[1].line(p) == f"{p}: row 3: expected 4 fields, found 5 (value 'L3,30,30,B,extra'); row rejected"
