"""[OII] background emitters end to end on the embedded PostgreSQL: ingest, register, scan, hits."""

import json
import shutil

import numpy as np
from sqlalchemy import text

from lenscat.spectra.ingest import ingest_spectra


def test_oii_filter_finds_an_injected_background_doublet_and_not_the_emission_line_galaxy(
    session, data_dir, tmp_path, monkeypatch, capsys
):
    from lenscat.jobs.service import run_here
    from lenscat.spectra.detector_oii import register_oii_filter
    from lenscat.spectra.hits import hits_table
    from lenscat.spectra.scan import plan_scan, refresh_overdensity, scan_chunk
    from tests.integration.test_cli import run

    d = tmp_path / "oii"
    shutil.copytree(data_dir / "spectra" / "sdss", d)
    zs = 0.6123  # [OII] at 6011 A, [OIII] 5007 at 8075 A, behind the z = 0.137 galaxy
    code, out, err = run(
        monkeypatch,
        capsys,
        "spectra",
        "inject",
        str(d / "spec-0403-51871-0462.fits"),
        str(d / "spec-0403-51871-0998.fits"),
        "--line",
        "oii",
        "--z-source",
        str(zs),
        "--flux",
        "45",
        "--fwhm",
        "170",
        "--ratio",
        "1.2",
        "--oiii",
        "0.8",
        "--fiber",
        "998",
    )
    assert code == 0 and "[OII] doublet at z = 0.6123" in out, err
    ingest_spectra([d], pack="t-oii", workers=1, progress=False)
    det, created = register_oii_filter("t-oii", session=session)
    assert created and register_oii_filter("t-oii", session=session) == (det, False)
    assert det.architecture == "oii-filter" and det.hparams["sample"] == "galaxies"
    plan = plan_scan(det, session=session, chunk_size=7)
    assert plan.n_items == 5  # the galaxies with a redshift
    run_here(plan.job_id, scan_chunk, session=session)
    refresh_overdensity(det, session=session)
    hits = hits_table(session=session, detector="t-oii", limit=None)
    assert set(hits["line"]) <= {"oii"}
    inj = hits[(hits["spec_key"] == "0403-51871-0998") & hits["is_candidate"]]
    assert len(inj) == 1
    h = inj[0]
    row = session.execute(
        text(
            "SELECT z_source, z_source_err, doublet_ratio, companion_snr, line_flux, "
            "veto_detail FROM lenscat.spectral_hits WHERE hit_id = :h"
        ),
        {"h": int(h["hit_id"])},
    ).one()
    assert abs(row.z_source - zs) < max(3 * row.z_source_err, 1e-4)
    assert abs(h["wavelength"] - 3728.48 * (1 + row.z_source)) < 0.1
    assert 25 < row.line_flux < 70 and row.companion_snr > 3  # its [OIII] is seen too
    assert "oii" in row.veto_detail and "companions" in row.veto_detail
    # no candidate in the original, the other clean galaxies, or the strong-emission (AGN) galaxy
    cands = hits_table(session=session, detector="t-oii", candidates_only=True, limit=None)
    assert set(cands["spec_key"]) == {"0403-51871-0998"}
    # best doublet S/N of every scanned spectrum is kept; a rescan has nothing to do
    best = session.execute(
        text("SELECT count(*) FROM lenscat.spectral_scans WHERE model_id = :m AND best_stat IS NOT NULL"),
        {"m": det.model_id},
    ).scalar()
    assert best == 5
    assert plan_scan(det, session=session).n_items == 0
    # the public view shows the family and the new vetoes
    view = session.execute(
        text(
            "SELECT line, veto_doublet, veto_foreground, veto_interloper, is_candidate "
            "FROM public.spectral_hits WHERE detector = 't-oii' AND spec_key = "
            "'0403-51871-0998' AND is_candidate"
        )
    ).all()
    assert [tuple(v) for v in view] == [("oii", False, False, False, True)]
    assert json.loads(json.dumps(det.hparams))["min_dv_kms"] == 6000.0
    assert np.isfinite(float(h["snr"])) and float(h["snr"]) >= 6.0
