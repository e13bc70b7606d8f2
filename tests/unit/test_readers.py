"""File readers: every astropy format, Stein HDF5, and broken files with one-line errors."""

import os

import h5py
import numpy as np
import pytest
from astropy.table import Table

from lenscat.errors import InputFileError
from lenscat.io.readers import read_table


def _table():
    return Table(
        {
            "objid": np.arange(5),
            "ra": np.linspace(10, 11, 5),
            "dec": np.linspace(-1, 1, 5),
            "name": [f"s{i}" for i in range(5)],
        }
    )


@pytest.mark.parametrize("suffix", [".fits", ".csv", ".ecsv", ".vot", ".parquet"])
def test_reads_astropy_formats(tmp_path, suffix):
    path = tmp_path / f"cat{suffix}"
    kw = {"format": "votable"} if suffix == ".vot" else {}
    _table().write(path, **kw)
    t = read_table(path)
    assert t.n_rows == 5
    assert np.allclose(np.ma.getdata(t.columns["ra"]), np.linspace(10, 11, 5))
    assert [str(x) for x in t.columns["name"]] == [f"s{i}" for i in range(5)]


def test_reads_stein_hdf5_layout(tmp_path):
    path = tmp_path / "stein.h5"
    with h5py.File(path, "w") as fh:
        fh["ra"] = np.array([1.0, 2.0])
        fh["dec"] = np.array([3.0, 4.0])
        fh["flux"] = np.ones((2, 3), dtype="f4")
        fh["images"] = np.zeros((2, 3, 16, 16), dtype="f4")
    t = read_table(path)
    assert t.format == "hdf5-stein"
    assert t.images_shape == (2, 3, 16, 16)
    assert t.columns["flux"].shape == (2, 3)
    assert "images" not in t.columns


def test_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        read_table(tmp_path / "nope.csv")


def test_malformed_csv_names_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("objid,ra,dec\n1,10.0,1.0\n2,11.0,2.0,99,98\n")
    with pytest.raises(InputFileError) as err:
        read_table(path)
    assert str(err.value) == f"{path}: row 2: expected 3 fields, found 5 (value '2,11.0,2.0,99,98')"


def test_rows_cut_short_or_too_long_are_refused_or_kept_as_bad_rows(tmp_path):
    """astropy pads a CSV row cut short with missing values; the reader names it instead."""
    path = tmp_path / "trunc.csv"
    path.write_text("objid,ra,dec\n1,10.0,1.0\n2,11.0\n3,12.0,3.0,7\n4,13.0,4.0\n5,14")
    with pytest.raises(InputFileError) as err:
        read_table(path)
    assert str(err.value) == (
        f"{path}: row 2: column 'dec': expected 3 fields, found 2 (value '2,11.0') (and 2 more such rows)"
    )
    t = read_table(path, bad_rows="keep")
    assert t.n_rows == 5
    assert [(b.row, b.column, b.reason) for b in t.bad_rows] == [
        (2, "dec", "expected 3 fields, found 2"),
        (3, "", "expected 3 fields, found 4"),
        (5, "dec", "expected 3 fields, found 2"),
    ]
    # the bad rows are all-missing; the good ones keep their values and types
    assert np.ma.getmaskarray(t.columns["ra"]).tolist() == [False, True, True, False, True]
    assert t.columns["objid"].dtype.kind == "i" and list(np.ma.compressed(t.columns["objid"])) == [1, 4]


@pytest.mark.parametrize("quoted", [False, True])
def test_row_numbers_skip_header_blank_and_comment_lines(tmp_path, quoted):
    """Rows are numbered as astropy numbers them, with or without quotes (two scanners)."""
    q = '"a b"' if quoted else "ab"
    path = tmp_path / "c.tsv"
    path.write_text(f"# a comment\nobjid\tra\tname\n\n1\t10\t{q}\n# another\n2\t11\n\n3\t12\tc\n")
    t = read_table(path, bad_rows="keep")
    assert t.n_rows == 3 and [(b.row, b.column) for b in t.bad_rows] == [(2, "name")]
    assert list(np.ma.filled(t.columns["name"], "?")) == ["a b" if quoted else "ab", "?", "c"]
    txt = tmp_path / "c.txt"
    txt.write_text(f"objid ra  name\n1 10 {q}\n 2   11\n3 12 c extra\n")
    t = read_table(txt, bad_rows="keep")
    assert [(b.row, b.column, b.reason) for b in t.bad_rows] == [
        (2, "name", "expected 3 fields, found 2"),
        (3, "", "expected 3 fields, found 4"),
    ]


def test_quoted_fields_may_hold_delimiters_and_newlines(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('objid,ra,note\n1,10,"a,b"\n2,11,"two\nlines"\n3,12\n')
    t = read_table(path, bad_rows="keep")
    assert list(np.ma.filled(t.columns["note"], "?")) == ["a,b", "two\nlines", "?"]
    assert [(b.row, b.column) for b in t.bad_rows] == [(3, "note")]


def test_unclosed_quote_is_an_error_not_a_lost_row(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('objid,ra,dec\n1,10,10\n2,11,"12\n3,12,13\n')
    with pytest.raises(InputFileError) as err:
        read_table(path)
    assert str(err.value) == f"{path}: row 2 (line 3): a quoted field is never closed; nothing read"


def test_absurd_field_is_refused_at_once(tmp_path):
    """A 20 MB field: astropy's header parser is quadratic in it (hours); the scan stops at once."""
    header = tmp_path / "header.csv"
    header.write_bytes(b"objid,ra,dec," + b"x" * 20_000_000 + b"\n1,2,3,4\n")
    with pytest.raises(InputFileError) as err:
        read_table(header)
    assert str(err.value) == (
        f"{header}: header: column 4: a column name of 20000000 bytes is longer than "
        "the limit of 1024 bytes; nothing read"
    )
    number = tmp_path / "number.csv"  # a 20 MB number in an otherwise valid row: not a NaN/null
    number.write_bytes(b"objid,ra,dec,z_spec\n1,10,10,0.1\n2,11,11," + b"9" * 20_000_000 + b"\n")
    with pytest.raises(InputFileError) as err:
        read_table(number)
    assert str(err.value) == (
        f"{number}: row 2: column 'z_spec': field of 20000000 bytes is longer than "
        "the limit of 65536 bytes (LENSCAT_INGEST_MAX_FIELD_BYTES); nothing read"
    )
    quoted = tmp_path / "quoted.csv"
    quoted.write_bytes(b'objid,ra,dec,note\n1,10,10,"' + b"y" * 20_000_000 + b'"\n')
    with pytest.raises(InputFileError, match=r"row 1: column 'note': field of 20000002 bytes"):
        read_table(quoted)


def test_field_limit_is_a_setting(tmp_path, monkeypatch):
    from lenscat.settings import get_settings

    path = tmp_path / "a.csv"
    path.write_text("objid,ra,dec,note\n1,10,10," + "n" * 100 + "\n")
    assert read_table(path).n_rows == 1
    monkeypatch.setenv("LENSCAT_INGEST_MAX_FIELD_BYTES", "50")
    get_settings.cache_clear()
    try:
        with pytest.raises(InputFileError, match="column 'note': field of 100 bytes is longer than the limit of 50"):
            read_table(path)
    finally:
        get_settings.cache_clear()


def test_bytes_that_are_not_utf8_name_row_and_column(tmp_path):
    data = tmp_path / "latin1.csv"
    data.write_bytes("objid,ra,dec,name\n1,10,10,a\n2,11,11,café\n".encode("latin-1"))
    with pytest.raises(InputFileError) as err:
        read_table(data)
    assert str(err.value) == (
        f"{data}: row 2 (line 3): column 'name': bytes b'\\xe9' are not UTF-8 (re-save the file as UTF-8); nothing read"
    )
    header = tmp_path / "latin1-header.csv"  # astropy: "chr() arg not in range(0x110000)"
    header.write_bytes("objid,ra,décl\n1,10,10\n".encode("latin-1"))
    with pytest.raises(InputFileError) as err:
        read_table(header)
    assert str(err.value) == (
        f"{header}: header (line 1): column 3: bytes b'\\xe9' are not UTF-8 (re-save the file as UTF-8); nothing read"
    )


def test_utf8_header_and_byte_order_mark_are_read(tmp_path):
    path = tmp_path / "u.csv"
    path.write_bytes("\ufeffobjid,ra,déc,nom\n1,10,10,café\n".encode())
    t = read_table(path)
    assert list(t.columns) == ["objid", "ra", "déc", "nom"] and list(t.columns["nom"]) == ["café"]


def test_path_problems_are_one_line_errors(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "loop.csv").symlink_to(tmp_path / "a")
    (tmp_path / "dir.csv").mkdir()
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "plain.csv.gz").write_text("objid,ra,dec\n1,2,3\n")
    import gzip

    (tmp_path / "nothing.csv.gz").write_bytes(gzip.compress(b""))
    expected = {
        "loop.csv": f"{tmp_path / 'loop.csv'}: symbolic link loop; cannot read it",
        "dir.csv": f"{tmp_path / 'dir.csv'}: is a directory, not a table file",
        "empty.csv": f"{tmp_path / 'empty.csv'}: the file is empty",
        "plain.csv.gz": f"{tmp_path / 'plain.csv.gz'}: not a valid gzip file (truncated or not compressed?): "
        "Not a gzipped file (b'ob')",
        "nothing.csv.gz": f"{tmp_path / 'nothing.csv.gz'}: the file is empty (after decompression)",
        "missing.csv": f"{tmp_path / 'missing.csv'}: no such file",
    }
    for name, message in expected.items():
        with pytest.raises(InputFileError) as err:
            read_table(tmp_path / name)
        assert str(err.value) == message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.csv"
    path.write_text("objid,ra,dec\n1,2,3\n")
    path.chmod(0)
    with pytest.raises(InputFileError) as err:
        read_table(path)
    assert str(err.value) == f"{path}: cannot open: Permission denied"


def test_corrupt_fits_and_hdf5(tmp_path):
    fits = tmp_path / "bad.fits"
    fits.write_bytes(b"SIMPLE  =                    T" + b"\x00" * 50)
    with pytest.raises(InputFileError, match="bad.fits"):
        read_table(fits)
    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as fh:
        fh["ra"] = np.arange(1000.0)
        fh["dec"] = np.arange(1000.0)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputFileError, match="trunc.h5"):
        read_table(trunc)


def test_unknown_suffix(tmp_path):
    p = tmp_path / "cat.xyz"
    p.write_text("hello")
    with pytest.raises(InputFileError, match="unknown table format"):
        read_table(p)


def test_fits_byte_strings_become_text_ascii_fast_path_and_utf8(tmp_path):
    """FITS string columns are bytes: ASCII ones are cast, others decoded as UTF-8 (bad bytes replaced)."""
    ascii_path, utf8_path = tmp_path / "a.fits", tmp_path / "u.fits"
    Table({"type": np.array([b"PSF", b"DEV", b"REX"]), "ra": [1.0, 2.0, 3.0]}).write(ascii_path)
    Table({"name": np.array([b"Abell 370", "Einstein ring é".encode(), b"\xff"]), "ra": [1.0, 2.0, 3.0]}).write(
        utf8_path
    )
    a = read_table(ascii_path).columns["type"]
    assert a.dtype.kind == "U" and list(a) == ["PSF", "DEV", "REX"]
    u = read_table(utf8_path).columns["name"]
    assert u.dtype.kind == "U" and list(u) == ["Abell 370", "Einstein ring é", "\ufffd"]


def test_too_many_columns_is_refused(tmp_path, monkeypatch):
    from lenscat.settings import get_settings

    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(12)) + "\n" + ",".join(["1"] * 12) + "\n")
    monkeypatch.setenv("LENSCAT_INGEST_MAX_COLUMNS", "10")
    get_settings.cache_clear()
    try:
        with pytest.raises(InputFileError) as err:
            read_table(path)
    finally:
        get_settings.cache_clear()
    assert str(err.value) == (
        f"{path}: header: 12 columns, more than the limit of 10 (LENSCAT_INGEST_MAX_COLUMNS); nothing read"
    )


def test_many_long_column_names_are_refused(tmp_path):
    """astropy's header parser is quadratic in each name: 100 names of 60 kB took 5 s, 10,000 hours."""
    path = tmp_path / "names.tsv"
    path.write_text("objid\tra\tdec\t" + "\t".join("h" * 60_000 + str(i) for i in range(100)) + "\n")
    with pytest.raises(InputFileError) as err:
        read_table(path)
    assert str(err.value) == (
        f"{path}: header: column 4: a column name of 60001 bytes is longer than the limit of 1024 bytes; nothing read"
    )
