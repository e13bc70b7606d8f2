"""File readers: every astropy format, Stein HDF5, and broken files with one-line errors."""

import h5py
import numpy as np
import pytest
from astropy.table import Table

from lenscat.errors import InputFileError
from lenscat.readers import read_table


def _table():
    return Table({"objid": np.arange(5), "ra": np.linspace(10, 11, 5), "dec": np.linspace(-1, 1, 5),
                  "name": [f"s{i}" for i in range(5)]})


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
        fh["images"] = np.zeros((2, 3, 8, 8), dtype="f4")
    t = read_table(path)
    assert t.format == "hdf5-stein"
    assert t.images_shape == (2, 3, 8, 8)
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
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_csv_row_is_padded_for_row_level_rejects(tmp_path):
    # astropy pads a row cut short with masked values; the ingest then rejects that row by name
    path = tmp_path / "trunc.csv"
    path.write_text("objid,ra,dec\n1,10.0,1.0\n2,11.0")
    t = read_table(path)
    assert t.n_rows == 2 and bool(np.ma.getmaskarray(t.columns["dec"])[1])


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
    Table({"name": np.array([b"Abell 370", "Einstein ring é".encode(), b"\xff"]),
           "ra": [1.0, 2.0, 3.0]}).write(utf8_path)
    a = read_table(ascii_path).columns["type"]
    assert a.dtype.kind == "U" and list(a) == ["PSF", "DEV", "REX"]
    u = read_table(utf8_path).columns["name"]
    assert u.dtype.kind == "U" and list(u) == ["Abell 370", "Einstein ring é", "\ufffd"]
