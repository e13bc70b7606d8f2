"""The command line end to end (inside the test's rolled-back transaction)."""

import json
import sys

import pytest
from astropy.table import Table

from lenscat.cli import main
from lenscat.simulate.catalogue import simulate_catalog


def run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["lenscat", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_ingest_crossmatch_cone_from_the_cli(monkeypatch, capsys, tmp_path, data_dir):
    stein = data_dir / "catalogs" / "stein2021_new_lenses.tsv"
    sim = tmp_path / "sim.fits"
    simulate_catalog(500, seed=7, lens_list=stein).write(sim)
    code, out, _ = run(monkeypatch, capsys, "ingest", "sources", str(sim), "--survey", "cli-sim")
    assert code == 0 and "inserted" in out
    code, out, _ = run(monkeypatch, capsys, "ingest", "sources", str(sim), "--survey", "cli-sim")
    assert code == 0 and "nothing changed" in out
    code, out, _ = run(monkeypatch, capsys, "ingest", "literature", str(stein), "--catalog", "stein-new", "--json")
    summary = json.loads(out)
    assert summary["loaded"] == 1192 and summary["layout"] == "stein2021"
    code, out, err = run(
        monkeypatch, capsys, "crossmatch", "--catalog", "stein-new", "--radius", "5arcsec", "--format", "json"
    )
    assert code == 0 and "lenses matched" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) > 500 and all(r["is_nearest"] for r in rows)
    assert all(r["separation_arcsec"] <= 5 for r in rows)
    first = rows[0]
    code, out, _ = run(
        monkeypatch, capsys, "cone", str(first["lens_ra"]), str(first["lens_dec"]), "5arcsec", "--format", "csv"
    )
    lines = out.splitlines()
    assert lines[0].startswith("source_id,survey,objid,ra,dec,separation")
    assert str(first["source_id"]) in lines[1]


def test_several_files_in_one_command(monkeypatch, capsys, tmp_path):
    paths = []
    for seed in (1, 2):
        p = tmp_path / f"part{seed}.fits"
        t = simulate_catalog(200, seed=seed)
        t["objid"] += 1000 * seed  # distinct ids per file, as in a survey's per-brick files
        t.write(p)
        paths.append(str(p))
    code, out, _ = run(monkeypatch, capsys, "ingest", "sources", *paths, "--survey", "parts", "--json")
    assert code == 0
    assert [json.loads(line)["inserted"] for line in out.splitlines()] == [200, 200]


def test_one_line_errors(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "nocoords.csv"
    bad.write_text("a,b\n1,2\n")
    code, _, err = run(monkeypatch, capsys, "ingest", "sources", str(bad), "--survey", "x")
    assert code == 2 and err.startswith("lenscat: error: ") and str(bad) in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(monkeypatch, capsys, "crossmatch", "--catalog", "no-such-catalog")
    assert code == 2 and "no literature catalogue named 'no-such-catalog'" in err
    code, _, err = run(monkeypatch, capsys, "cone", "10", "95", "5arcsec")
    assert code == 2 and "dec must be within" in err
    code, _, err = run(monkeypatch, capsys, "cone", "10", "5", "5 parsecs")
    assert code == 2 and "cannot read angle" in err


def test_rejects_printed_with_file_row_column(monkeypatch, capsys, tmp_path):
    p = tmp_path / "rej.csv"
    Table({"objid": ["a", "b"], "ra": ["10", "x"], "dec": [1.0, 2.0]}).write(p)
    code, out, err = run(monkeypatch, capsys, "ingest", "sources", str(p), "--survey", "rej")
    assert code == 0 and "1 rejected" in out
    assert f"{p}: row 2: column 'ra'" in err


def test_sql_is_read_only(monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "sql", "SELECT lenscat_angsep(0, 0, 0, 1) AS d", "--format", "json")
    assert code == 0 and json.loads(out) == {"d": pytest.approx(1.0)}
    for stmt in (
        "DELETE FROM sources",
        "INSERT INTO lenscat.surveys (name) VALUES ('x')",
        "DROP TABLE lenscat.sources",
        "CREATE TABLE t (x int)",
        "UPDATE literature_lenses SET name='x'",
    ):
        code, _, err = run(monkeypatch, capsys, "sql", stmt)
        assert code == 2 and "read-only" in err, stmt
    code, _, err = run(monkeypatch, capsys, "sql", "SELECT 1; DELETE FROM sources")
    assert code == 2 and "one statement" in err
    code, out, _ = run(monkeypatch, capsys, "sql", "SELECT survey FROM surveys WHERE survey LIKE 'no-such%'")
    assert code == 0 and "(0 rows)" in out
    code, _, err = run(monkeypatch, capsys, "sql", "SELECT * FROM lenscat.sources")
    assert code == 2 and "documented views" in err


def test_db_status_and_url(monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "db", "status", "--format", "json")
    info = {json.loads(line)["key"]: json.loads(line)["value"] for line in out.splitlines()}
    assert info["schema_revision"] == info["schema_head"] and info["pgvector"].startswith("0.")
    code, out, _ = run(monkeypatch, capsys, "db", "url")
    assert out.startswith("postgresql://")
