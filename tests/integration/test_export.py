"""The candidate catalogue: candidate_table, every export format re-read with astropy, galleries, the
summary by grade and region, and ``lenscat export`` (in-process, inside the rolled-back transaction)."""

from __future__ import annotations

import hashlib

import astropy.units as u
import h5py
import numpy as np
import pytest
from astropy.coordinates import Angle
from astropy.table import Table
from sqlalchemy import text

from lenscat.errors import LenscatError
from lenscat.export.catalogue import (
    COLUMN_NAMES,
    add_ucds,
    candidate_table,
    export_bytes,
    region_of,
    summary_table,
    write_candidates,
    write_gallery,
)

PS1 = "images/ps1_sled_lenses"
SHA = {k: hashlib.sha256(k.encode()).hexdigest() for k in ("ck1", "ck2", "ts1", "ts2")}


def _stein_h5(path, ra, dec):
    """A Stein-layout file: catalogue columns and (n, 3, 48, 48) blob images in nanomaggies."""
    n = len(ra)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:48, :48] - 23.5
    images = rng.normal(0, 0.003, size=(n, 3, 48, 48)).astype(np.float32)
    for i in range(n):
        images[i] += np.array([0.2, 0.5, 0.9])[:, None, None] * np.exp(-(xx**2 + yy**2) / (2 * (2 + i) ** 2))
    with h5py.File(path, "w") as fh:
        fh["images"] = images
        fh["ra"] = np.asarray(ra, dtype=float)
        fh["dec"] = np.asarray(dec, dtype=float)
        fh["objid"] = np.arange(2001, 2001 + n, dtype=np.int64)
        fh["mag_g"] = np.linspace(20.0, 21.0, n).astype(np.float32)
        fh["mag_r"] = np.linspace(19.0, 20.0, n).astype(np.float32)
        fh["mag_z"] = np.linspace(18.5, 19.5, n).astype(np.float32)
        fh["ebv"] = np.full(n, 0.03, dtype=np.float32)
        fh["z_spec"] = np.array([0.45, -99, 0.3, -99, -99][:n], dtype=np.float32)


def _world(session, tmp_path, data_dir):
    """Sources (5 with HDF5 cutouts, 1 with real PS1 FITS cutouts, 2 without), grades, scores, a
    literature match and a spectral hit. Returns {key: source_id}."""
    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.catalogue.ingest_fits import ingest_fits_cutouts
    from lenscat.grading.accounts import add_grader
    from lenscat.grading.grades import GradeInput, record_grades
    from lenscat.literature.crossmatch import crossmatch_catalog
    from lenscat.literature.ingest import prepare_literature
    from lenscat.literature.service import write_literature
    from lenscat.literature.types import LiteratureColumns
    from lenscat.registry.versions import register_model

    h5 = tmp_path / "exp.h5"
    # s0-s2 in the northern Galactic cap, s3-s4 in the southern one
    _stein_h5(h5, [150.1, 150.2, 150.3, 30.1, 30.2], [2.1, 2.2, 2.3, -5.1, -5.2])
    ingest_sources(h5, "exp-sim")
    ids = dict(session.execute(text("SELECT objid, source_id FROM public.sources WHERE survey = 'exp-sim'")).all())
    ids = {f"s{k}": int(ids[str(2001 + k)]) for k in range(5)}
    files = sorted((data_dir / PS1).glob("SDSSJ1430_6104_PS1_[grz].fits"))
    (j1430,) = ingest_fits_cutouts(files, "exp-ps1", session=session)
    ids["j1430"] = j1430.source_id
    sv = session.execute(text("SELECT survey_id FROM lenscat.surveys WHERE name = 'exp-sim'")).scalar_one()
    for key, ra, dec in (("nocut", 31.0, -4.0), ("skipped", 150.5, 2.5)):
        ids[key] = int(
            session.execute(
                text(
                    "INSERT INTO lenscat.sources (survey_id, objid, ra, dec) VALUES (:sv, :o, :ra, :dec) "
                    "RETURNING source_id"
                ),
                {"sv": sv, "o": key, "ra": ra, "dec": dec},
            ).scalar_one()
        )
    alice, _ = add_grader("alice", password="alice-pass", session=session)
    bob, _ = add_grader("bob", password="bob-password", session=session)
    carol, _ = add_grader("carol", password="carol-pass", session=session)
    g = GradeInput
    record_grades(
        alice,
        [
            g(ids["s0"], "A"),
            g(ids["s1"], "A"),
            g(ids["s2"], "B"),
            g(ids["s3"], "C"),
            g(ids["s4"], "N"),
            g(ids["j1430"], "A"),
            g(ids["nocut"], "N"),
            g(ids["skipped"], "S"),
        ],
        session=session,
    )
    record_grades(
        bob,
        [g(ids["s0"], "A"), g(ids["s1"], "A"), g(ids["s2"], "B"), g(ids["s4"], "N"), g(ids["j1430"], "B")],
        session=session,
    )
    record_grades(carol, [g(ids["s2"], "C"), g(ids["j1430"], "A")], session=session)
    record_grades(alice, [g(ids["nocut"], "B")], session=session)  # alice changes her mind: N -> B
    # an encoder, two versions of a probe on it, and their scores
    enc, _ = register_model(
        "encoder",
        "exp-enc",
        architecture="external",
        output_dim=8,
        checkpoint_path=None,
        checkpoint_sha256="e" * 64,
        origin="external",
        session=session,
    )
    v1, _ = register_model(
        "classifier",
        "exp-probe",
        architecture="linear",
        output_dim=1,
        checkpoint_path=None,
        checkpoint_sha256=SHA["ck1"],
        training_set_sha256=SHA["ts1"],
        parent_model_id=enc.model_id,
        origin="trained",
        session=session,
    )
    v2, _ = register_model(
        "classifier",
        "exp-probe",
        architecture="linear",
        output_dim=1,
        checkpoint_path=None,
        checkpoint_sha256=SHA["ck2"],
        training_set_sha256=SHA["ts2"],
        parent_model_id=enc.model_id,
        origin="trained",
        session=session,
    )
    scores = [(v1, "s0", 0.9), (v1, "s1", 0.8), (v1, "s2", 0.7), (v1, "j1430", 0.95), (v2, "s0", 0.6), (v2, "s1", 0.85)]
    for m, key, score in scores:
        session.execute(
            text("INSERT INTO lenscat.scores (model_id, source_id, score) VALUES (:m, :s, :v)"),
            {"m": m.model_id, "s": ids[key], "v": score},
        )
    # two literature lenses at J1430 (one with a non-ASCII name), cross-matched
    cat = tmp_path / "lenses.csv"
    Table(
        {"name": ["SDSSJ1430+6104", "Horseshoé"], "ra": [j1430.ra, j1430.ra + 2e-4], "dec": [j1430.dec, j1430.dec]}
    ).write(cat, format="ascii.csv")
    write_literature(prepare_literature(cat, "exp-lit", LiteratureColumns()), session=session)
    crossmatch_catalog("exp-lit", 5 * u.arcsec, session=session)
    # a spectrum of s2 with one clean Lyman-alpha hit and one vetoed hit
    det, _ = register_model(
        "detector",
        "exp-det",
        architecture="matched-filter",
        output_dim=None,
        checkpoint_path=None,
        checkpoint_sha256="d" * 64,
        origin="configured",
        session=session,
    )
    pack = session.execute(
        text(
            "INSERT INTO lenscat.spectrum_packs (name, path, window_k0, window_n, veto_k0, veto_n, dlog) "
            "VALUES ('exp-pack', '/nonexistent', 0, 10, 0, 10, 1e-4) RETURNING pack_id"
        )
    ).scalar_one()
    spec = session.execute(
        text(
            "INSERT INTO lenscat.spectra (survey, spec_key, ra, dec, z, source_id, file_path, file_row, pack_id, "
            "pack_row) VALUES ('sdss', 'exp-1', 150.3, 2.3, 0.3, :s, '/nonexistent', 0, :p, 0) RETURNING spectrum_id"
        ),
        {"s": ids["s2"], "p": pack},
    ).scalar_one()
    session.execute(
        text(
            "INSERT INTO lenscat.spectral_hits (model_id, spectrum_id, pixel, wavelength, z_source, snr, fit_ok, "
            "veto_oii) VALUES (:m, :sp, 10, 3768.6, 2.1, 9.0, true, false), (:m, :sp, 20, 4200.0, 2.455, 12.0, true, "
            "true)"
        ),
        {"m": det.model_id, "sp": spec},
    )
    return ids


def _strings(col):
    return [
        v.decode() if isinstance(v, bytes) else str(v)
        for v in np.asarray(col.filled("") if hasattr(col, "filled") else col)
    ]


def _words(s):
    return " ".join(str(s).split())  # the VOTable writer wraps long descriptions


def test_candidate_table_every_format_and_summary(session, tmp_path, data_dir):
    ids = _world(session, tmp_path, data_dir)
    t = candidate_table(session=session)
    assert t.colnames == list(COLUMN_NAMES)
    # grade A (mean 3, 3, 2.67; the tie broken by score), then B (mean 2, 1.67)
    assert list(t["source_id"]) == [ids[k] for k in ("s0", "s1", "j1430", "nocut", "s2")]
    assert list(t["consensus_grade"]) == ["A", "A", "A", "B", "B"]
    assert t["ra"].unit == u.deg and t["dec"].unit == u.deg and t["mag_r"].unit == u.mag and t["ebv"].unit == u.mag
    assert t["ra"].description and t["classifier_checkpoint_sha256"].description
    np.testing.assert_allclose(Angle(list(t["ra_hms"]), unit=u.hourangle).deg, t["ra"], atol=1e-5)
    np.testing.assert_allclose(Angle(list(t["dec_dms"]), unit=u.deg).deg, t["dec"], atol=1e-5)
    assert t["ra_hms"][0].startswith("10:00:") and t["dec_dms"][0].startswith("+02:06:")
    assert t["name"][0].startswith("J1000") and list(t["region"]) == ["NGC", "NGC", "NGC", "SGC", "NGC"]
    row = {k: t[k][list(t["source_id"]).index(ids["s1"])] for k in t.colnames}
    assert row["best_classifier"] == "exp-probe@2" and row["best_score"] == pytest.approx(0.85)
    assert row["classifier_checkpoint_sha256"] == SHA["ck2"] and row["classifier_training_set_sha256"] == SHA["ts2"]
    assert row["classifier_encoder"] == "exp-enc@1" and row["classifier_architecture"] == "linear"
    assert row["grades"] == "alice:A bob:A" and row["n_votes"] == 2 and row["mean_grade"] == 3
    nocut = t[list(t["source_id"]).index(ids["nocut"])]
    assert nocut["grades"] == "alice:B" and nocut["best_score"] is np.ma.masked
    assert nocut["classifier_id"] is np.ma.masked and nocut["best_classifier"] == "" and nocut["mag_r"] is np.ma.masked
    known = t[2]
    assert known["literature_status"] == "known" and known["literature_names"] == "Horseshoé | SDSSJ1430+6104"
    assert known["literature_catalogs"] == "exp-lit" and set(t["literature_status"][[0, 1, 3, 4]]) == {"new"}
    s2 = t[4]
    assert s2["n_spectral_hits"] == 1 and s2["best_hit_z_source"] == pytest.approx(2.1)
    assert s2["z_spec"] == pytest.approx(0.3) and s2["disagreement"] == 1
    assert t["last_graded_at"][0].endswith("Z")
    assert t.meta["GRADES"] == "A,B" and t.meta["GRADE_A"].startswith("sure lens") and "EXPORTED" in t.meta
    assert "consensus grade A or B" in t.meta["description"]
    # selections
    one = candidate_table(session=session, classifier="exp-probe@1")
    assert one["best_score"][list(one["source_id"]).index(ids["s1"])] == pytest.approx(0.8)
    latest = candidate_table(session=session, classifier="exp-probe")
    assert list(latest["source_id"][:2]) == [ids["s1"], ids["s0"]]  # the tie now goes the other way
    assert list(latest["best_score"][:2]) == pytest.approx([0.85, 0.6]) and latest["best_score"][2] is np.ma.masked
    assert set(latest["best_classifier"][:2]) == {"exp-probe@2"} and latest.meta["CLASSIF"].startswith("exp-probe@2")
    assert list(candidate_table(session=session, surveys=["exp-ps1"])["source_id"]) == [ids["j1430"]]
    assert ids["nocut"] not in list(candidate_table(session=session, min_votes=2)["source_id"])
    assert list(candidate_table(session=session, grades="n,c")["source_id"]) == [ids["s3"], ids["s4"]]
    everything = candidate_table(session=session, grades="A,B,C,N")
    assert len(everything) == 7 and ids["skipped"] not in list(everything["source_id"])
    for bad, msg in (
        (dict(grades="A,Q"), "unknown grade 'Q'"),
        (dict(grades="S"), "never a consensus grade"),
        (dict(grades=""), "no grades given"),
        (dict(surveys=["nope"]), "no survey named 'nope'"),
        (dict(classifier="nope"), "no classifier 'nope'"),
        (dict(min_votes=0), "at least 1"),
    ):
        with pytest.raises(LenscatError, match=msg):
            candidate_table(session=session, **bad)

    # every format, re-read with astropy
    out = tmp_path / "out"
    for name, fmt, units, meta in (
        ("c.fits", "fits", True, True),
        ("c.fits.gz", "fits", True, True),
        ("c.vot", "votable", True, False),
        ("c.xml", "votable", True, False),
        ("c.ecsv", "ascii.ecsv", True, True),
        ("c.csv", "ascii.csv", False, False),
    ):
        path = write_candidates(t, out / name)
        back = Table.read(path, format=fmt)
        assert back.colnames == t.colnames, name
        assert list(back["source_id"]) == list(t["source_id"]), name
        assert _strings(back["consensus_grade"]) == ["A", "A", "A", "B", "B"], name
        assert _strings(back["ra_hms"]) == list(t["ra_hms"]) and _strings(back["dec_dms"]) == list(t["dec_dms"])
        np.testing.assert_allclose(np.asarray(back["ra"], dtype=float), t["ra"], rtol=0, atol=1e-9)
        assert _strings(back["literature_status"])[2] == "known"
        assert _strings(back["classifier_checkpoint_sha256"])[1] == SHA["ck2"], name
        assert _strings(back["classifier_encoder"])[0] == "exp-enc@1", name
        score = back["best_score"]
        assert np.ma.is_masked(score[3]) or np.isnan(score[3]), name  # no score: masked / empty / NaN
        assert back["n_spectral_hits"][4] == 1
        if units:
            assert back["ra"].unit == u.deg and back["mag_g"].unit == u.mag, name
            assert _words(back["best_score"].description) == _words(t["best_score"].description), name
        if meta:
            assert back.meta["GRADES"] == "A,B" and back.meta["LENSCAT"] and back.meta["EXPORTED"], name
            assert back.meta["description"] == t.meta["description"], name
        names = _strings(back["literature_names"])[2]
        assert names == ("Horseshoe | SDSSJ1430+6104" if fmt == "fits" else "Horseshoé | SDSSJ1430+6104"), name
    assert (out / "c.fits.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert ",2.6666667,3,1,alice:A bob:B carol:A,0.95,exp-probe@1," in (out / "c.csv").read_text()  # float32 as such
    from astropy.io.votable import parse

    infos = {i.name: i.value for i in parse(out / "c.vot").resources[0].infos}
    assert infos["GRADES"] == "A,B" and infos["MINVOTES"] == "1" and "CLASSIF" in infos
    assert _words(Table.read(out / "c.vot").meta["description"]) == _words(t.meta["description"])
    # UCDs: the TAP service's (TAP_SCHEMA.columns) for columns of the same name, written into the VOTable
    ucd_t = add_ucds(t.copy(), session=session)
    write_candidates(ucd_t, tmp_path / "u.vot")
    fields = {f.name: f.ucd for f in parse(tmp_path / "u.vot").get_first_table().fields}
    assert fields["ra"] == "pos.eq.ra;meta.main" and fields["dec"] == "pos.eq.dec;meta.main"
    assert fields["mag_r"] == "phot.mag;em.opt.R" and fields["consensus_grade"] == "meta.code.qual"
    # replacing a file: the new content, no temporary files left behind
    write_candidates(t[:2], out / "c.ecsv")
    assert len(Table.read(out / "c.ecsv")) == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(["c.fits", "c.fits.gz", "c.vot", "c.xml", "c.ecsv", "c.csv"])
    with pytest.raises(LenscatError, match="extension says csv but the format is fits"):
        write_candidates(t, out / "x.csv", "fits")
    with pytest.raises(LenscatError, match="cannot tell the format"):
        write_candidates(t, out / "x.txt")
    assert len(Table.read(write_candidates(t, out / "x.txt", "csv"), format="ascii.csv")) == 5
    assert export_bytes(t, "fits")[:6] == b"SIMPLE" and export_bytes(t, "votable").startswith(b"<?xml")
    assert export_bytes(t, "csv").decode().splitlines()[0].startswith("source_id,name,survey,objid,region,ra,dec")
    # an empty selection still writes a readable file with every column
    empty = candidate_table(session=session, grades="N", surveys=["exp-ps1"])
    assert len(empty) == 0 and empty.colnames == list(COLUMN_NAMES)
    for name in ("e.fits", "e.vot", "e.ecsv"):
        assert len(Table.read(write_candidates(empty, out / name))) == 0

    # summary by grade and region
    assert list(region_of([150.0, 30.0], [2.0, -5.0])) == ["NGC", "SGC"]
    s = summary_table(session=session)
    rows = {(r["survey"], r["region"]): [int(r[c]) for c in ("A", "B", "C", "N", "total", "new", "known")] for r in s}
    assert list(rows) == [
        ("exp-ps1", "NGC"),
        ("exp-sim", "NGC"),
        ("exp-sim", "SGC"),
        ("exp-sim", "all"),
        ("all", "all"),
    ]
    assert rows[("exp-ps1", "NGC")] == [1, 0, 0, 0, 1, 0, 1]
    assert rows[("exp-sim", "NGC")] == [2, 1, 0, 0, 3, 3, 0]
    assert rows[("exp-sim", "SGC")] == [0, 1, 1, 1, 3, 3, 0]
    assert rows[("exp-sim", "all")] == [2, 2, 1, 1, 6, 6, 0]
    assert rows[("all", "all")] == [3, 2, 1, 1, 7, 6, 1]
    ab = summary_table(t)
    assert [int(v) for v in ab[-1]["A", "B", "C", "N", "total"].values()] == [3, 2, 0, 0, 5]
    assert "NGC" in s.meta["description"] and s["A"].description


def test_gallery_png_and_pdf(session, tmp_path, data_dir):
    from PIL import Image

    ids = _world(session, tmp_path, data_dir)
    t = candidate_table(session=session)
    res = write_gallery(t, tmp_path / "g" / "gallery.png", session=session, ncols=3)
    assert (res.n_panels, res.n_images, res.n_blank, res.n_left_out, res.n_pages) == (5, 4, 1, 0, 1)
    assert res.blank_source_ids == [ids["nocut"]] and res.problems == []
    with Image.open(res.path) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 300
        pixels = np.asarray(im.convert("RGB"), dtype=float)
    assert pixels.std() > 10  # images and text, not a blank canvas
    pdf = write_gallery(t, tmp_path / "gallery.pdf", session=session, ncols=2, rows_per_page=1, crop_arcsec=8)
    assert pdf.n_pages == 3 and pdf.path.read_bytes()[:5] == b"%PDF-" and pdf.path.stat().st_size > 5000
    few = write_gallery(t, tmp_path / "few.png", session=session, max_images=2)
    assert (few.n_panels, few.n_left_out) == (2, 3)
    # a cutout file that went missing: a labelled blank panel and a problem line, not a crash
    session.execute(
        text(
            "UPDATE lenscat.cutout_files SET path = '/nonexistent/j1430_g.fits', member_paths = "
            "ARRAY['/nonexistent/j1430_g.fits'] WHERE file_id = (SELECT cutout_file_id FROM lenscat.sources "
            "WHERE source_id = :s)"
        ),
        {"s": ids["j1430"]},
    )
    gone = write_gallery(t, tmp_path / "gone.png", session=session)
    assert gone.n_blank == 2 and ids["j1430"] in gone.blank_source_ids
    assert len(gone.problems) == 1 and "/nonexistent/j1430_g.fits" in gone.problems[0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(LenscatError, match="a .png or .pdf file"):
        write_gallery(t, tmp_path / "g.jpg", session=session)
    with pytest.raises(LenscatError, match="no candidates to draw"):
        write_gallery(t[:0], tmp_path / "g.png", session=session)


def test_export_from_the_cli(session, tmp_path, data_dir, monkeypatch, capsys):
    from tests.integration.test_cli import run

    _world(session, tmp_path, data_dir)
    fits = tmp_path / "cands.fits"
    code, out, err = run(
        monkeypatch,
        capsys,
        "export",
        "--grades",
        "A,B",
        "--format",
        "fits",
        "--out",
        str(fits),
        "--gallery",
        str(tmp_path / "cands.pdf"),
        "--summary",
        "--quiet",
    )
    assert code == 0, err
    assert f"wrote 5 candidates (consensus grade A,B) to {fits} (fits)" in out
    assert "wrote gallery" in out and "5 panels, 1 without a cutout" in out
    summary = [line.split() for line in out.splitlines()]
    assert ["all", "all", "3", "2", "0", "0", "5", "4", "1"] in summary
    back = Table.read(fits)
    assert len(back) == 5 and back["ra"].unit == u.deg
    code, out, err = run(monkeypatch, capsys, "export", "--grades", "C", "--out", str(tmp_path / "c.ecsv"))
    assert code == 0 and "wrote 1 candidates" in out and len(Table.read(tmp_path / "c.ecsv")) == 1
    for args, msg in (
        (["--grades", "A,Q", "--out", str(tmp_path / "x.csv")], "unknown grade 'Q'"),
        (["--format", "fits", "--out", str(tmp_path / "x.csv")], "the extension says csv but the format is fits"),
        (["--out", str(tmp_path / "x.dat")], "cannot tell the format from the extension"),
        (
            ["--grades", "A", "--min-votes", "4", "--out", str(tmp_path / "x.csv")],
            "no graded source has consensus grade A with at least 4 vote(s)",
        ),
        (["--survey", "nope", "--out", str(tmp_path / "x.csv")], "no survey named 'nope'"),
        (["--gallery", str(tmp_path / "x.gif")], "a gallery is a .png or .pdf file"),
        ([], "nothing to do"),
    ):
        code, out, err = run(monkeypatch, capsys, "export", *args)
        assert code == 2 and msg in err and err.startswith("lenscat: error:"), (args, err)
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()
