"""Spectra: ingest real SDSS/BOSS/DESI files, link to sources, scan with detectors, hits, evaluation."""

import json
import shutil

import numpy as np
import pytest
from sqlalchemy import text

from lenscat.catalogue.surveys import ensure_survey
from lenscat.spectra.ingest import ingest_spectra, link_spectra
from lenscat.spectra.readers import read_spectra


@pytest.fixture
def spectra_dir(data_dir, tmp_path):
    """The real test spectra plus a truncated and a fake file, in a temporary directory."""
    d = tmp_path / "spectra"
    shutil.copytree(data_dir / "spectra", d)
    good = d / "sdss" / "spec-0403-51871-0462.fits"
    (d / "sdss" / "spec-9999-59999-0001.fits").write_bytes(good.read_bytes()[:20000])
    (d / "sdss" / "spec-9998-59999-0002.fits").write_text("not a FITS file\n")
    return d


def test_ingest_real_files_skips_bad_ones_and_reingest_changes_nothing(session, spectra_dir):
    s = ingest_spectra([spectra_dir], pack="t-ingest", workers=1, progress=False)
    # 4 SDSS spec files + 20 spPlate fibers + 1 + 1 DESI targets; 4 DESI fibers of tile 169 have
    # no data at all (ivar 0 everywhere) and are rejected, each with its reason
    assert s.spectra_inserted == 26 and s.files_failed == 2 and s.spectra_rejected == 4
    assert all(f.endswith("coadd-5-169-thru20210419.fits") and "ivar > 0" in r for f, r in s.rejections)
    reasons = dict(s.failures)
    assert any("truncated" in r for r in reasons.values())
    assert all(f in r for f, r in s.failures)  # each reason names its file
    rows = session.execute(text("SELECT survey, count(*) FROM public.spectra GROUP BY survey")).all()
    assert dict(rows) == {"sdss": 4, "boss": 20, "desi": 2}
    failed = session.execute(
        text(
            "SELECT count(*) FROM lenscat.ingests WHERE kind = 'spectra' AND status = 'failed' AND message IS NOT NULL"
        )
    ).scalar()
    assert failed == 2
    again = ingest_spectra([spectra_dir], pack="t-ingest", workers=1, progress=False)
    assert again.spectra_inserted == 0 and again.files_skipped == 7 and again.files_failed == 2
    assert session.execute(text("SELECT count(*) FROM lenscat.spectra")).scalar() == 26


def test_packed_window_equals_the_file_and_the_view_has_the_promised_columns(session, spectra_dir):
    from lenscat.spectra.grid import WINDOW
    from lenscat.spectra.ingest import pack_store

    ingest_spectra([spectra_dir / "sdss"], pack="t-pack", workers=1, progress=False)
    row = session.execute(
        text(
            "SELECT spectrum_id, plate, mjd, fiber, z, spec_class, pack_row, window_coverage, window_snr, p.pack_id "
            "FROM lenscat.spectra s JOIN lenscat.spectrum_packs p USING (pack_id) "
            "WHERE spec_key = '0403-51871-0462'"
        )
    ).one()
    assert (row.plate, row.mjd, row.fiber) == (403, 51871, 462) and abs(row.z - 0.137) < 0.002
    assert row.window_coverage > 0.95 and row.window_snr > 1
    packed = pack_store(row.pack_id, session=session).read(np.array([row.pack_row]))
    spec = read_spectra(spectra_dir / "sdss" / "spec-0403-51871-0462.fits")[0]
    k = np.rint(np.log10(spec.wave) / 1e-4).astype(int) - WINDOW.k0
    inside = (k >= 0) & (k < WINDOW.n)
    assert np.array_equal(packed.flux[0][k[inside]], spec.flux[inside])
    assert spec.model is not None
    assert np.array_equal(packed.continuum[0][k[inside]], spec.model[inside])  # the pipeline model
    cols = set(
        session.execute(
            text(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = 'spectra'"
            )
        ).scalars()
    )
    assert {"spectrum_id", "survey", "plate", "mjd", "fiber", "targetid", "ra", "dec", "z", "source_id"} <= cols
    hcols = set(
        session.execute(
            text(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = 'spectral_hits'"
            )
        ).scalars()
    )
    assert {
        "spectrum_id",
        "detector",
        "wavelength",
        "z_source",
        "snr",
        "line_flux",
        "fwhm_kms",
        "skewness",
        "veto_oii",
        "veto_skew",
        "veto_overdensity",
    } <= hcols


def test_spectra_link_to_the_nearest_catalogue_source(session, spectra_dir):
    ingest_spectra([spectra_dir / "sdss"], pack="t-link", workers=1, progress=False)
    ra, dec = session.execute(text("SELECT ra, dec FROM lenscat.spectra WHERE spec_key = '0403-51871-0462'")).one()
    sv = ensure_survey("spec-link", ["g", "r", "z"], session=session)
    ids = (
        session.execute(
            text(
                "INSERT INTO lenscat.sources (survey_id, objid, ra, dec) VALUES "
                "(:s, 'near', :ra, :dec + 0.5/3600), (:s, 'far', :ra, :dec + 1.5/3600) RETURNING source_id"
            ),
            {"s": sv.survey_id, "ra": ra, "dec": dec},
        )
        .scalars()
        .all()
    )
    n = link_spectra(session=session)
    assert n == 1
    sid, sep = session.execute(
        text("SELECT source_id, source_sep_arcsec FROM lenscat.spectra WHERE spec_key = '0403-51871-0462'")
    ).one()
    assert sid == ids[0] and abs(sep - 0.5) < 0.01


def write_injected(src, dest, *, centre=4480.0, line_flux=40.0, fwhm_kms=300.0, fiber=999):
    """A copy of a real SDSS spec file with a Lyman-alpha-like line added to its flux."""
    from lenscat.spectra.injection import inject_line_file

    return inject_line_file(src, dest, wavelength=centre, line_flux=line_flux, fwhm_kms=fwhm_kms, fiber=fiber)


def _scan_all(detector, session):
    from lenscat.jobs.service import run_here
    from lenscat.spectra.scan import plan_scan, refresh_overdensity, scan_chunk

    job = plan_scan(detector, chunk_size=7, session=session)
    run_here(job.job_id, scan_chunk, session=session)
    refresh_overdensity(job.detector, session=session)
    return job


def test_matched_filter_finds_an_injected_line_and_not_the_emission_line_galaxy(session, data_dir, tmp_path):
    from lenscat.spectra.hits import hits_table
    from lenscat.spectra.scan import register_matched_filter

    d = tmp_path / "mf"
    shutil.copytree(data_dir / "spectra" / "sdss", d)
    write_injected(d / "spec-0403-51871-0462.fits", d / "spec-0403-51871-0999.fits")
    ingest_spectra([d], pack="t-mf", workers=1, progress=False)
    mf, created = register_matched_filter("t-mf", session=session)
    assert created and register_matched_filter("t-mf", session=session) == (mf, False)
    job = _scan_all(mf, session)
    assert job.n_items == 5  # the galaxies with a redshift: not the 20 spPlate fibers (no spZbest)
    hits = hits_table(session=session, detector="t-mf", limit=None)
    inj = hits[hits["spec_key"] == "0403-51871-0999"]
    assert len(inj) >= 1
    best = inj[np.argmax(inj["snr"])]
    assert abs(best["wavelength"] - 4480.0) < 3.0 and best["snr"] > 10 and best["is_candidate"]
    assert abs(best["z_source"] - (best["wavelength"] / 1215.67 - 1)) < 1e-6
    assert 20 < best["line_flux"] < 60 and 150 < best["fwhm_kms"] < 600
    # the strong-emission galaxy is not a Lyman-alpha candidate, whatever its lines do
    cands = hits_table(session=session, detector="t-mf", candidates_only=True, limit=None)
    assert "0295-51585-0596" not in set(cands["spec_key"])
    # the original spectrum (same noise, no line) has no candidate near 4480 A
    orig = cands[cands["spec_key"] == "0403-51871-0462"]
    assert not np.any(np.abs(np.asarray(orig["wavelength"]) - 4480.0) < 10)
    # every spectrum scanned once; a second scan has nothing to do
    n_scans = session.execute(
        text("SELECT count(*) FROM lenscat.spectral_scans WHERE model_id = :m"), {"m": mf.model_id}
    ).scalar()
    assert n_scans == 5
    assert _scan_all(mf, session).n_items == 0


def test_resnet_trains_scans_and_both_detectors_are_evaluated_side_by_side(session, data_dir, tmp_path):
    from lenscat.registry.versions import get_model
    from lenscat.spectra.evaluate_fluxgrid import evaluate_detectors
    from lenscat.spectra.evaluate_report import plot_completeness
    from lenscat.spectra.hits import hits_table
    from lenscat.spectra.scan import register_matched_filter
    from lenscat.spectra.training import train_detector

    d = tmp_path / "rn"
    shutil.copytree(data_dir / "spectra", d)
    # real residuals for training come from the real spectra (a store without the injected line)
    ingest_spectra([d], pack="t-rn", workers=1, progress=False)
    mv, metrics = train_detector(
        "t-specnet",
        n_train=3000,
        n_val=1500,
        epochs=3,
        residual_pack="t-rn",
        seed=3,
        progress=False,
        session=session,
        arch="small",
    )  # small: CI time
    from lenscat.registry.versions import training_state_dir

    assert not list(training_state_dir().glob("specnet-*.state"))  # registered: the resumable state is gone
    write_injected(d / "sdss" / "spec-0403-51871-0462.fits", tmp_path / "spec-0403-51871-0999.fits")
    ingest_spectra([tmp_path / "spec-0403-51871-0999.fits"], pack="t-rn", workers=1, progress=False)
    assert metrics["val_auc"] > 0.8 and 0 < metrics["threshold"] < 1
    got = get_model("detector", "t-specnet", session=session)
    assert got.architecture == "specnet" and got.checkpoint_sha256 and got.training_set_sha256
    assert got.hparams["training_set"]["residual_pack"] == "t-rn"
    _scan_all(mv, session)
    hits = hits_table(session=session, detector="t-specnet", limit=None)
    inj = hits[hits["spec_key"] == "0403-51871-0999"]
    assert len(inj) == 1 and abs(inj["wavelength"][0] - 4480.0) < 5 and inj["prob"][0] >= metrics["threshold"]
    mf, _ = register_matched_filter("t-mf2", session=session)
    fluxes, fwhms = (4.0, 15.0, 60.0), (200.0, 500.0)
    results, info = evaluate_detectors(
        [mf, mv], session=session, fluxes=fluxes, fwhms=fwhms, injections_per_cell=40, seed=1
    )
    assert info["n_injected"] == 240 and info["n_real_spectra"] == 6 and info["sample"] == "galaxies"
    for r in results:
        assert r.completeness.shape == (3, 2)
        # brighter lines are found more often; the brightest almost always
        assert r.completeness[2].mean() >= r.completeness[0].mean() and r.completeness[2].mean() > 0.7
        assert np.isfinite(r.false_hits_per_1000)
        assert not any(c["spectrum"] == "sdss:0295-51585-0596" for c in r.real_candidates)
    png = plot_completeness(results, fluxes, fwhms, tmp_path / "c.png")
    assert png.stat().st_size > 5000
    doc = json.dumps(results[0].as_dict(fluxes, fwhms))
    assert "false_hits_per_1000" in doc


def test_the_same_spectrum_in_two_files_of_one_batch_is_one_row(session, data_dir, tmp_path):
    from astropy.io import fits

    src = data_dir / "spectra" / "sdss" / "spec-0403-51871-0462.fits"
    shutil.copy(src, tmp_path / "a.fits")
    with fits.open(src) as h:  # a re-reduction: same key, other bytes
        h[0].header["RERUN"] = "test"
        h.writeto(tmp_path / "b.fits")
    s = ingest_spectra([tmp_path / "a.fits", tmp_path / "b.fits"], pack="t-dup", workers=1, progress=False)
    assert (s.spectra_inserted, s.spectra_updated, s.files_failed) == (1, 1, 0)
    path = session.execute(text("SELECT file_path FROM lenscat.spectra WHERE spec_key = '0403-51871-0462'")).scalar()
    assert path.endswith("b.fits")  # the later file wins


def _nan_copy(src, dest, rows=None):
    """A copy of a spectrum file with the flux of every spectrum (or of ``rows`` of an spPlate) NaN."""
    from astropy.io import fits

    with fits.open(src) as h:
        if "COADD" in h:
            h["COADD"].data["flux"][:] = np.nan
        else:
            data = h[0].data.copy()
            data[rows] = np.nan
            h[0].data = data
        h.writeto(dest)
    return dest


def test_spectra_with_no_finite_flux_are_rejected_not_ingested(session, data_dir, tmp_path):
    from lenscat.spectra.ingest import store_path

    sdss = data_dir / "spectra" / "sdss"
    good = tmp_path / "spec-0403-51871-0462.fits"
    shutil.copy(sdss / "spec-0403-51871-0462.fits", good)
    (tmp_path / "nan").mkdir()
    nan = _nan_copy(good, tmp_path / "nan" / "spec-0403-51871-0462.fits")
    plate = _nan_copy(sdss / "spPlate-4055-55359-0020.fits", tmp_path / "spPlate-4055-55359-0020.fits", rows=[2])

    s = ingest_spectra([good, nan, plate], pack="t-nan", workers=1, progress=False)

    # the all-NaN copy (same spectrum as the good file, later in the batch) does not replace it
    assert s.files_failed == 1 and s.spectra_inserted == 1 + 19 and s.spectra_rejected == 1
    ((failed, reason),) = s.failures
    assert failed == str(nan) and reason.startswith(str(nan)) and "flux all NaN" in reason
    ((rej_file, line),) = s.rejections
    assert rej_file == str(plate) and "(row 3)" in line and "flux all NaN" in line
    cov = session.execute(
        text("SELECT window_coverage FROM lenscat.spectra WHERE spec_key = '0403-51871-0462'")
    ).scalar()
    assert cov > 0.95
    assert session.execute(text("SELECT count(*) FROM lenscat.spectra WHERE survey = 'boss'")).scalar() == 19
    rejects = session.execute(
        text("SELECT r.row_number, r.value, r.reason FROM public.ingest_rejects r WHERE r.path = :p"), {"p": str(plate)}
    ).all()
    assert len(rejects) == 1 and rejects[0].row_number == 3 and "flux all NaN" in rejects[0].reason
    status = dict(session.execute(text("SELECT path, status FROM lenscat.ingests WHERE target = 't-nan'")).all())
    assert status == {str(good): "done", str(nan): "failed", str(plate): "done"}
    assert store_path("t-nan").exists()


def test_a_mixed_batch_loads_the_good_files_and_exits_2_naming_each_bad_one(
    monkeypatch, capsys, data_dir, tmp_path, session
):
    import sys

    from lenscat.cli import main

    good = tmp_path / "spec-good.fits"
    shutil.copy(data_dir / "spectra" / "sdss" / "spec-0403-51871-0462.fits", good)
    trunc = tmp_path / "spec-trunc.fits"
    trunc.write_bytes(good.read_bytes()[:20000])
    nan = _nan_copy(data_dir / "spectra" / "sdss" / "spec-0266-51602-0638.fits", tmp_path / "spec-nan.fits")
    monkeypatch.setattr(
        sys,
        "argv",
        ["lenscat", "spectra", "ingest", str(good), str(trunc), str(nan), "--pack", "t-mixed", "--workers", "1"],
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()

    assert exit_.value.code == 2
    errors = [x for x in err.splitlines() if x.startswith("lenscat: error: ")]
    assert len(errors) == 2
    assert errors[0].startswith(f"lenscat: error: {trunc}: truncated FITS file")
    assert errors[1].startswith(f"lenscat: error: {nan}: ") and "flux all NaN" in errors[1]
    assert "3 files: 1 spectra new" in out and "2 failed" in out
    keys = (
        session.execute(
            text(
                "SELECT spec_key FROM lenscat.spectra s JOIN lenscat.spectrum_packs p "
                "USING (pack_id) WHERE p.name = 't-mixed'"
            )
        )
        .scalars()
        .all()
    )
    assert keys == ["0403-51871-0462"]
