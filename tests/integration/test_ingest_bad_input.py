"""Bad text tables through `lenscat ingest sources|literature`: rows rejected with reasons, or one
line `lenscat: error: ...`, exit 2, and nothing written."""

import gzip

import pytest
from sqlalchemy import text

from lenscat.db.session import session_scope
from tests.integration.test_cli import run


def _written(target):
    """Rows any ingest left for ``target`` (a survey or a literature catalogue)."""
    with session_scope() as s:
        return s.execute(
            text(
                "SELECT (SELECT count(*) FROM lenscat.ingests WHERE target = :t)"
                " + (SELECT count(*) FROM sources WHERE survey = :t)"
                " + (SELECT count(*) FROM lenscat.literature_catalogs WHERE name = :t)"
            ),
            {"t": target},
        ).scalar()


def _bad_files(tmp_path):
    """name -> (path, the message after 'lenscat: error: ')."""
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a").symlink_to(d / "b")
    (d / "b").symlink_to(d / "a")
    (d / "loop.csv").symlink_to(d / "a")
    (d / "dir.csv").mkdir()
    (d / "empty.csv").write_bytes(b"")
    (d / "plain.csv.gz").write_text("name,ra,dec\nL1,10,10\n")
    (d / "latin1.csv").write_bytes("name,ra,dec,note\nL1,10,10,a\nL2,11,11,café\n".encode("latin-1"))
    (d / "latin1-header.csv").write_bytes("name,ra,dec,remarque\xe9\nL1,10,10,a\n".encode("latin-1"))
    # a 20 MB number in an otherwise valid row: astropy made it inf (stored as null)
    (d / "huge-number.csv").write_bytes(b"name,ra,dec,z\nL1,10,10,0.1\nL2,11,11," + b"7" * 20_000_000 + b"\n")
    # a 20 MB line with no newline: astropy's header parser is quadratic in it (hours)
    (d / "one-line.csv").write_bytes(b"n" * 20_000_000)
    (d / "open-quote.csv").write_text('name,ra,dec\nL1,10,10\n"L2,11,11\nL3,12,12\n')
    limit = "is longer than the limit of 65536 bytes (LENSCAT_INGEST_MAX_FIELD_BYTES); nothing read"
    return {
        "loop": (d / "loop.csv", f"{d / 'loop.csv'}: symbolic link loop; cannot read it"),
        "dir": (d / "dir.csv", f"{d / 'dir.csv'}: is a directory, not a table file"),
        "empty": (d / "empty.csv", f"{d / 'empty.csv'}: the file is empty"),
        "gzip": (
            d / "plain.csv.gz",
            f"{d / 'plain.csv.gz'}: not a valid gzip file (truncated or not compressed?): Not a gzipped file (b'na')",
        ),
        "utf8": (
            d / "latin1.csv",
            f"{d / 'latin1.csv'}: row 2 (line 3): column 'note': bytes b'\\xe9' are "
            "not UTF-8 (re-save the file as UTF-8); nothing read",
        ),
        "utf8-header": (
            d / "latin1-header.csv",
            f"{d / 'latin1-header.csv'}: header (line 1): column 4: "
            "bytes b'\\xe9' are not UTF-8 (re-save the file as UTF-8); "
            "nothing read",
        ),
        "huge": (d / "huge-number.csv", f"{d / 'huge-number.csv'}: row 2: column 'z': field of 20000000 bytes {limit}"),
        "one-line": (
            d / "one-line.csv",
            f"{d / 'one-line.csv'}: header: column 1: a column name of 20000000 "
            "bytes is longer than the limit of 1024 bytes; nothing read",
        ),
        "quote": (
            d / "open-quote.csv",
            f"{d / 'open-quote.csv'}: row 2 (line 3): a quoted field is never closed; nothing read",
        ),
    }


@pytest.mark.parametrize("command", ["sources", "literature"])
def test_unreadable_inputs_are_one_line_errors_and_write_nothing(monkeypatch, capsys, tmp_path, command):
    for key, (path, message) in _bad_files(tmp_path).items():
        target = f"bad-{command}-{key}"
        flag = "--survey" if command == "sources" else "--catalog"
        code, out, err = run(monkeypatch, capsys, "ingest", command, str(path), flag, target)
        assert (key, code, out, err) == (key, 2, "", f"lenscat: error: {message}\n")
        assert _written(target) == 0, key


def test_short_rows_rejected_through_both_commands(monkeypatch, capsys, tmp_path):
    p = tmp_path / "short.csv"
    p.write_text("name,ra,dec,grade\nL1,10,10,A\nL2,20\nL3,30,30,B,x\nL4,40,40,C\n")
    code, out, err = run(monkeypatch, capsys, "ingest", "sources", str(p), "--survey", "short-cli", "--id-col", "name")
    assert code == 0 and "2 inserted" in out and "2 rejected" in out
    assert err.splitlines() == [
        f"{p}: row 2: column 'dec': expected 4 fields, found 2 (value 'L2,20'); row rejected",
        f"{p}: row 3: expected 4 fields, found 5 (value 'L3,30,30,B,x'); row rejected",
    ]
    code, out, err = run(monkeypatch, capsys, "ingest", "literature", str(p), "--catalog", "short-cli")
    assert code == 0 and "2 lenses, 2 rejected" in out
    assert err.splitlines()[0] == f"{p}: row 2: column 'dec': expected 4 fields, found 2 (value 'L2,20'); row rejected"
    with session_scope() as s:
        names = (
            s.execute(text("SELECT name FROM literature_lenses WHERE catalog='short-cli' ORDER BY name"))
            .scalars()
            .all()
        )
        rejects = s.execute(
            text(
                "SELECT row_number, reason FROM ingest_rejects r JOIN lenscat.ingests i "
                "USING (ingest_id) WHERE i.kind = 'literature' AND i.target = 'short-cli' "
                "ORDER BY 1"
            )
        ).all()
    assert names == ["L1", "L4"]
    assert [tuple(r) for r in rejects] == [(2, "expected 4 fields, found 2"), (3, "expected 4 fields, found 5")]


def test_duplicate_literature_rows_are_loaded_once_and_recorded(monkeypatch, capsys, tmp_path):
    p = tmp_path / "dups.csv"
    p.write_text("name,ra,dec,grade\nL1,10,10,A\nL1,10,10,A\nL2,20,20,B\n")
    code, out, err = run(monkeypatch, capsys, "ingest", "literature", str(p), "--catalog", "dups")
    assert code == 0
    assert out == f"{p} -> catalogue 'dups' (generic layout): 2 lenses, 0 rejected, 1 duplicate rows skipped\n"
    assert err == (f"{p}: row 2: duplicate of row 1 (same name and values, position within 0.1 arcsec); not loaded\n")
    with session_scope() as s:
        lenses = s.execute(text("SELECT name, ra, dec FROM literature_lenses WHERE catalog='dups' ORDER BY name")).all()
        recorded = s.execute(
            text(
                "SELECT r.row_number, r.column_name, r.value, r.reason, i.n_loaded, i.n_rejected "
                "FROM ingest_rejects r JOIN lenscat.ingests i USING (ingest_id) "
                "WHERE i.kind = 'literature' AND i.target = 'dups'"
            )
        ).all()
    assert [tuple(r) for r in lenses] == [("L1", 10.0, 10.0), ("L2", 20.0, 20.0)]
    assert [tuple(r) for r in recorded] == [
        (2, "name", "L1", "duplicate of row 1 (same name and values, position within 0.1 arcsec)", 2, 1)
    ]
    code, out, _ = run(monkeypatch, capsys, "ingest", "literature", str(p), "--catalog", "dups", "--json")
    assert code == 0 and '"duplicates": 1' in out and '"already_ingested": true' in out
    # a gzip of the same text reads the same
    gz = tmp_path / "dups.csv.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    code, out, _ = run(monkeypatch, capsys, "ingest", "literature", str(gz), "--catalog", "dups-gz")
    assert code == 0 and "2 lenses, 0 rejected, 1 duplicate rows skipped" in out
