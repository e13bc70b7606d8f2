"""Validation of source files before anything is written: mapping, rejects, errors."""

import h5py
import numpy as np
import pytest
from astropy.table import Table

from lenscat.catalogue.ingest_validate import prepare_sources
from lenscat.catalogue.types import SourceMapping
from lenscat.cli.common import error_message, flag
from lenscat.errors import InputFileError


def _write_csv(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_auto_mapping_and_bands(tmp_path):
    p = _write_csv(
        tmp_path / "c.csv",
        [
            "objid,RA,Dec,mag_g,mag_r,mag_z,ebv,type,z_spec,z_phot_mean,notes",
            "1,10.5,-3.25,21.0,20.0,19.5,0.02,DEV,-99,0.31,x",
            "2,11.5,-3.5,22.0,21.0,20.5,0.03,EXP,0.2,0.25,y",
        ],
    )
    prep = prepare_sources(p, "s")
    assert prep.bands == ["g", "r", "z"]
    assert prep.mapped_columns["ra"] == "RA" and prep.mapped_columns["source_type"] == "type"
    assert prep.ignored_columns == ["notes"]
    assert np.isnan(prep.scalars["z_spec"][0]) and prep.scalars["z_spec"][1] == pytest.approx(0.2)
    assert prep.band_values["mag"][1].tolist() == [22.0, 21.0, 20.5]
    assert prep.good.all() and not prep.rejects


def test_rejects_name_row_column_and_reason(tmp_path):
    p = _write_csv(
        tmp_path / "bad.csv",
        [
            "objid,ra,dec,z_spec",
            "a,10,10,0.1",
            "b,nan,10,0.1",  # row 2: NaN ra
            "c,10,95,0.1",  # row 3: dec out of range
            "a,11,11,0.1",  # row 4: duplicate of row 1
            "d,abc,5,0.1",  # row 5: unparseable ra
            "e,12,5,zz",  # row 6: unparseable z_spec
            "f,12:30:00,+05:00:00,",  # row 7: sexagesimal, fine
            "g,400,5,0.1",  # row 8: ra out of range
            ",12,5,0.1",  # row 9: missing id
        ],
    )
    prep = prepare_sources(p, "s")
    got = {(r.row, r.column) for r in prep.rejects}
    assert got == {(2, "ra"), (3, "dec"), (4, "objid"), (5, "ra"), (6, "z_spec"), (8, "ra"), (9, "objid")}
    dup = next(r for r in prep.rejects if r.row == 4)
    assert "first at row 1" in dup.reason
    assert prep.good.tolist() == [True, False, False, False, False, False, True, False, False]
    assert prep.ra[6] == pytest.approx(187.5) and prep.dec[6] == pytest.approx(5.0)
    line = prep.rejects[0].line(p)
    assert str(p) in line and "row 2" in line and "'ra'" in line and "\n" not in line


def test_values_a_real_column_cannot_hold_are_rejected(tmp_path):
    """Photometry and redshifts are stored as 32-bit reals: 1e300 is a reject, not an infinity."""
    p = _write_csv(
        tmp_path / "big.csv",
        [
            "objid,ra,dec,mag_r,z_spec",
            "a,10,10,20.0,0.1",
            "b,10,11,1e300,0.1",
            "c,10,12,20.0,-5e38",
        ],
    )
    prep = prepare_sources(p, "s")
    assert {(r.row, r.column) for r in prep.rejects} == {(2, "mag_r"), (3, "z_spec")}
    assert "32-bit real" in prep.rejects[0].reason
    assert prep.good.tolist() == [True, False, False]


def test_wrap_ra_option(tmp_path):
    p = _write_csv(tmp_path / "w.csv", ["objid,ra,dec", "1,-10,0", "2,370,0"])
    refused = prepare_sources(p, "s")
    assert refused.n_rejected == 2
    first = refused.rejects[0]
    assert first.why() == "right ascension out of range [0, 360) deg (use wrap_ra for -180..180 catalogues)"
    assert first.line(p, flag).endswith("(use --wrap-ra for -180..180 catalogues) (value '-10'); row rejected")
    prep = prepare_sources(p, "s", SourceMapping(wrap_ra=True))
    assert prep.good.all() and prep.ra.tolist() == [350.0, 10.0]


def test_missing_coordinate_column_is_one_line_error(tmp_path):
    p = _write_csv(tmp_path / "noradec.csv", ["objid,alpha,delta", "1,10,10"])
    with pytest.raises(InputFileError) as err:
        prepare_sources(p, "s")
    msg = str(err.value)
    assert str(p) in msg and "pass ra_col NAME" in msg and "\n" not in msg
    assert err.value.param == "ra_col" and "pass --ra-col NAME" in error_message(err.value)
    prep = prepare_sources(p, "s", SourceMapping(ra_col="alpha", dec_col="delta"))
    assert prep.good.all()
    with pytest.raises(InputFileError, match="no column 'nope'"):
        prepare_sources(p, "s", SourceMapping(ra_col="nope", dec_col="delta"))


def test_missing_id_column_suggests_options(tmp_path):
    p = _write_csv(tmp_path / "noid.csv", ["ra,dec", "10,10", "20,-20"])
    with pytest.raises(InputFileError, match="@iau"):
        prepare_sources(p, "s")
    prep = prepare_sources(p, "s", SourceMapping(id_cols=["@iau"]))
    assert prep.objid.tolist() == ["J004000.00+100000.0", "J012000.00-200000.0"]
    assert prepare_sources(p, "s", SourceMapping(id_cols=["@row"])).objid.tolist() == ["1", "2"]


def test_truncated_last_row_is_rejected(tmp_path):
    p = tmp_path / "trunc.csv"
    p.write_text("objid,ra,dec\n1,10.0,1.0\n2,11.0")
    prep = prepare_sources(p, "s")
    assert [(r.row, r.column) for r in prep.rejects] == [(2, "dec")]


def test_stein_hdf5_composite_ids_flux_to_mag(tmp_path):
    p = tmp_path / "stein.h5"
    with h5py.File(p, "w") as fh:
        fh["ra"] = np.array([150.0, 150.1, 150.2])
        fh["dec"] = np.array([2.0, 2.1, 2.2])
        fh["brickid"] = np.array([7, 7, 8])
        fh["objid"] = np.array([1, 2, 1])
        fh["flux"] = np.array([[1.0, 10.0, 100.0]] * 3, dtype="f4")
        fh["ebv"] = np.array([0.01, 0.02, 0.03], dtype="f4")
        fh["images"] = np.zeros((3, 3, 16, 16), dtype="f4")
    prep = prepare_sources(p, "decals")
    assert prep.objid.tolist() == ["7_1", "7_2", "8_1"]
    assert prep.bands == ["g", "r", "z"]
    assert prep.band_values["mag"][0].tolist() == pytest.approx([22.5, 20.0, 17.5])
    assert prep.images_shape == (3, 3, 16, 16)


def test_fits_units_radians_converted(tmp_path):
    t = Table({"objid": [1], "ra": [np.pi / 2], "dec": [0.1]})
    t["ra"].unit = "rad"
    t["dec"].unit = "rad"
    t.write(tmp_path / "rad.fits")
    prep = prepare_sources(tmp_path / "rad.fits", "s")
    assert prep.ra[0] == pytest.approx(90.0) and prep.dec[0] == pytest.approx(np.degrees(0.1))
