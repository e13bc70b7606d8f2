"""Source ingest on the real database: COPY + upsert, idempotence, resume, rejects."""

import h5py
import numpy as np
import pytest
from sqlalchemy import text

from lenscat.catalogue.ingest import ingest_sources
from lenscat.catalogue.types import SourceMapping
from lenscat.cli.common import error_message
from lenscat.db.session import session_scope
from lenscat.errors import LenscatError
from lenscat.simulate.catalogue import simulate_catalog


def _count(survey):
    with session_scope() as s:
        return s.execute(text("SELECT count(*) FROM sources WHERE survey = :s"), {"s": survey}).scalar()


@pytest.fixture
def sim_fits(tmp_path):
    path = tmp_path / "sim.fits"
    simulate_catalog(2500, seed=11).write(path)
    return path


def test_ingest_is_idempotent_and_detects_changes(sim_fits, tmp_path):
    s1 = ingest_sources(sim_fits, "sim", batch_rows=1000)
    assert (s1.inserted, s1.rejected, s1.batches_total) == (2500, 0, 3)
    assert _count("sim") == 2500
    s2 = ingest_sources(sim_fits, "sim", batch_rows=1000)
    assert s2.batches_skipped == 3 and _count("sim") == 2500
    # a corrected file: one magnitude changed -> one update, the rest unchanged
    from astropy.table import Table

    t = Table.read(sim_fits)
    t["mag_r"][5] = 12.5
    changed = tmp_path / "sim_v2.fits"
    t.write(changed)
    s3 = ingest_sources(changed, "sim", batch_rows=1000)
    assert (s3.inserted, s3.updated, s3.unchanged) == (0, 1, 2499)
    with session_scope() as s:
        mag = s.execute(
            text("SELECT mag_r FROM sources WHERE survey='sim' AND objid=:o"),
            {"o": f"{t['brickid'][5]}_{t['objid'][5]}"},
        ).scalar()
    assert mag == pytest.approx(12.5)


def test_batch_with_new_rows_first_and_known_rows_later_is_upserted(sim_fits, tmp_path):
    """The direct COPY of a batch whose first key is new but a later one exists falls back to the
    upsert: nothing is duplicated and the counts say which rows were new."""
    from astropy.table import Table, vstack

    t = Table.read(sim_fits)
    ingest_sources(sim_fits, "sim", batch_rows=10_000)
    fresh = t[:300].copy()
    fresh["brickid"] = fresh["brickid"] + 10**6  # new keys
    fresh["ra"] = (fresh["ra"] + 0.5) % 360
    mixed = tmp_path / "mixed.fits"
    vstack([fresh, t[:200]]).write(mixed)
    s = ingest_sources(mixed, "sim", batch_rows=10_000)
    assert (s.inserted, s.updated, s.unchanged) == (300, 0, 200)
    assert _count("sim") == 2800
    with session_scope() as ss:
        ids = (
            ss.execute(
                text("SELECT s.source_id FROM sources s WHERE survey = 'sim' AND objid = ANY(:o) ORDER BY source_id"),
                {"o": [f"{b}_{o}" for b, o in zip(fresh["brickid"], fresh["objid"], strict=True)]},
            )
            .scalars()
            .all()
        )
    assert len(ids) == 300


def test_interrupted_ingest_resumes_without_duplicates(sim_fits):
    part = ingest_sources(sim_fits, "sim", batch_rows=500, stop_after_batches=2)
    assert part.inserted == 1000 and _count("sim") == 1000
    with session_scope() as s:
        assert (
            s.execute(text("SELECT status FROM ingests WHERE ingest_id=:i"), {"i": part.ingest_id}).scalar()
            == "running"
        )
    done = ingest_sources(sim_fits, "sim", batch_rows=500)
    assert done.batches_skipped == 2 and done.inserted == 2500
    assert _count("sim") == 2500
    with session_scope() as s:
        dups = s.execute(text("SELECT count(*) - count(DISTINCT objid) FROM sources WHERE survey='sim'")).scalar()
        status = s.execute(text("SELECT status FROM ingests WHERE ingest_id=:i"), {"i": done.ingest_id}).scalar()
    assert dups == 0 and status == "done"


def test_rejects_are_kept_with_reasons(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text(
        "objid,ra,dec,z_spec\n1,10,10,0.1\n2,nan,10,0.1\n3,10,-91,0.2\n1,11,11,0.3\n4,12,12,oops\n5,13,13,0.4\n"
    )
    summary = ingest_sources(p, "bad", batch_rows=2)
    assert (summary.inserted, summary.rejected) == (2, 4)
    with session_scope() as s:
        rows = s.execute(
            text("SELECT row_number, column_name, reason FROM ingest_rejects WHERE ingest_id=:i ORDER BY row_number"),
            {"i": summary.ingest_id},
        ).all()
        n_loaded = s.execute(
            text("SELECT n_loaded, n_rejected FROM ingests WHERE ingest_id=:i"), {"i": summary.ingest_id}
        ).one()
    assert [(r[0], r[1]) for r in rows] == [(2, "ra"), (3, "dec"), (4, "objid"), (5, "z_spec")]
    assert "duplicate" in rows[2][2]
    assert tuple(n_loaded) == (2, 4)
    # strict mode refuses the file before writing anything
    with pytest.raises(LenscatError, match="nothing written: strict") as strict:
        ingest_sources(p, "bad-strict", strict=True)
    assert error_message(strict.value).endswith("nothing written: --strict)")
    assert _count("bad-strict") == 0


def test_stein_hdf5_registers_cutouts(tmp_path):
    p = tmp_path / "south.h5"
    n = 40
    rng = np.random.default_rng(0)
    with h5py.File(p, "w") as fh:
        fh["ra"] = rng.uniform(10, 11, n)
        fh["dec"] = rng.uniform(-1, 1, n)
        fh["brickid"] = np.full(n, 12345)
        fh["objid"] = np.arange(n)
        fh["ebv"] = rng.uniform(0, 0.1, n).astype("f4")
        fh["flux"] = rng.uniform(1, 100, (n, 3)).astype("f4")
        fh["source_type"] = np.array([b"DEV"] * n)
        fh["z_phot_mean"] = rng.uniform(0.1, 0.8, n).astype("f4")
        fh["z_spec"] = np.full(n, -99.0, dtype="f4")
        fh["images"] = rng.normal(0, 1, (n, 3, 16, 16)).astype("f4")
    ingest_sources(p, "decals-south")
    with session_scope() as s:
        row = s.execute(
            text(
                "SELECT objid, cutout_file, cutout_row, bands, mag_g, source_type, z_spec FROM sources "
                "WHERE survey='decals-south' AND objid='12345_7'"
            )
        ).one()
        shape = s.execute(text("SELECT image_shape FROM lenscat.cutout_files WHERE path=:p"), {"p": str(p)}).scalar()
    assert row.cutout_file == str(p) and row.cutout_row == 7
    assert row.bands == ["g", "r", "z"] and row.mag_g is not None
    assert row.source_type == "DEV" and row.z_spec is None
    assert shape == [3, 16, 16]


@pytest.mark.parametrize("fmt", ["csv", "ecsv", "votable", "parquet"])
def test_formats_load_identically(tmp_path, fmt):
    t = simulate_catalog(300, seed=5)
    p = tmp_path / f"cat.{ {'votable': 'vot'}.get(fmt, fmt) }"
    t.write(p, format={"csv": "ascii.csv", "ecsv": "ascii.ecsv", "votable": "votable", "parquet": "parquet"}[fmt])
    s = ingest_sources(p, f"fmt-{fmt}")
    assert s.inserted == 300 and s.rejected == 0
    with session_scope() as sess:
        got = sess.execute(text(f"SELECT sum(ra), sum(mag_r) FROM sources WHERE survey='fmt-{fmt}'")).one()
    assert got[0] == pytest.approx(float(np.sum(t["ra"])), rel=1e-12)
    assert got[1] == pytest.approx(float(np.sum(t["mag_r"])), rel=1e-5)


def test_band_mismatch_is_refused(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("objid,ra,dec,mag_g,mag_r\n1,1,1,20,19\n")
    ingest_sources(p, "two-band")
    q = tmp_path / "b.csv"
    q.write_text("objid,ra,dec,mag_g,mag_r,mag_i\n2,1,1,20,19,18\n")
    with pytest.raises(LenscatError, match="has bands g,r"):
        ingest_sources(q, "two-band", SourceMapping(bands=["g", "r", "i"]))


def test_unmapped_columns_kept_as_json_on_first_load_and_reingest(tmp_path):
    """--keep-extra: unmapped columns land in the jsonb column, through the direct COPY and the upsert."""
    path = tmp_path / "extra.csv"
    path.write_text("objid,ra,dec,mag_r,flag,note\n1,10.0,1.0,20.1,3,first é\n2,10.1,1.1,20.2,,second\n")
    first = ingest_sources(path, "xtra", SourceMapping(keep_extra=True))
    assert first.inserted == 2
    query = text(
        "SELECT objid, extra FROM lenscat.sources s JOIN lenscat.surveys v USING (survey_id) "
        "WHERE v.name = 'xtra' ORDER BY objid"
    )
    with session_scope() as s:
        rows = s.execute(query).all()
    assert [r.extra for r in rows] == [{"flag": 3, "note": "first é"}, {"flag": None, "note": "second"}]
    path.write_text("objid,ra,dec,mag_r,flag,note\n1,10.0,1.0,20.1,4,first é\n2,10.1,1.1,20.2,,second\n")
    again = ingest_sources(path, "xtra", SourceMapping(keep_extra=True))
    assert (again.inserted, again.updated, again.unchanged) == (0, 1, 1)
    with session_scope() as s:
        assert s.execute(query).all()[0].extra == {"flag": 4, "note": "first é"}


def test_rows_cut_short_or_too_long_are_rejected_with_reasons(tmp_path):
    """A CSV row with fewer (or more) fields than the header is refused, not loaded with empty cells."""
    p = tmp_path / "short.csv"
    p.write_text("objid,ra,dec,z_spec\n1,10,10,0.1\n2,11,11\n3,12,12,0.3,9\n4,13,13,0.4\n5,14")
    summary = ingest_sources(p, "short", batch_rows=2)
    assert (summary.inserted, summary.rejected) == (2, 3)
    with session_scope() as s:
        rows = s.execute(
            text(
                "SELECT row_number, column_name, value, reason FROM ingest_rejects WHERE ingest_id=:i "
                "ORDER BY row_number"
            ),
            {"i": summary.ingest_id},
        ).all()
        objids = s.execute(text("SELECT objid FROM sources WHERE survey='short' ORDER BY objid")).scalars().all()
    assert [tuple(r) for r in rows] == [
        (2, "z_spec", "2,11,11", "expected 4 fields, found 3"),
        (3, "", "3,12,12,0.3,9", "expected 4 fields, found 5"),
        (5, "dec", "5,14", "expected 4 fields, found 2"),
    ]
    assert objids == ["1", "4"]
    with pytest.raises(LenscatError) as err:
        ingest_sources(p, "short-strict", strict=True)
    assert error_message(err.value) == (
        f"{p}: row 2: column 'z_spec': expected 4 fields, found 3 (value '2,11,11'); "
        "row rejected (3 rejects; nothing written: --strict)"
    )
    assert str(err.value).endswith("(3 rejects; nothing written: strict)")
    assert _count("short-strict") == 0
