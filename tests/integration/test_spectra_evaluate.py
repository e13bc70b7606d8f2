"""The matched-S/N evaluation protocol (issue 31) and the per-survey continuum choice, on real SDSS spectra.

Small on purpose (a few dozen realisations of the two early-type SDSS test spectra): structure,
the exact matched-S/N scaling, bright red-tailed lines found by the matched filter, per-veto losses
that add up, the strong-emission galaxy never a candidate, and the continuum choose/show round trip.
"""

import json
import shutil

import numpy as np
import pytest
from sqlalchemy import text

from lenscat.spectra.ingest import ingest_spectra
from tests.integration.test_cli import run

AGN = "sdss:0295-51585-0596"


@pytest.fixture
def sdss_store(session, data_dir, tmp_path):
    """The four real SDSS spec files (two early types, an AGN, one with emission lines) ingested into a store of their
    own."""
    d = tmp_path / "sdss"
    shutil.copytree(data_dir / "spectra" / "sdss", d)
    for f in d.glob("spPlate-*"):
        f.unlink()
    ingest_spectra([d], pack="t-eval", workers=1, progress=False)
    return d


def test_realisations_are_renoised_hosts_with_lines_at_the_drawn_matched_snr(session, sdss_store):
    from lenscat.spectra.evaluate_hosts import load_hosts
    from lenscat.spectra.evaluate_realisations import make_realisations

    hosts = load_hosts(session=session)
    # early-type hosts: galaxies with a redshift, no emission subclass (not the AGN) and no strong own
    # line (spec-1722-53852-0175 has [OII] and Hbeta at S/N ~80 over the project's continuum fit)
    assert hosts.keys == ["sdss:0266-51602-0638", "sdss:0403-51871-0462"]
    rs = make_realisations(
        hosts,
        realisations=40,
        line_fraction=0.5,
        snr_range=(4.0, 15.0),
        fwhm_range=(120.0, 700.0),
        skew_range=(1.0, 6.0),
        wave_range=(3860.0, 4950.0),
        renoise=True,
        family="lya",
        seed=5,
    )
    assert rs.has_line.sum() == 20 and len(rs.host) == 40
    lines = np.flatnonzero(rs.has_line)
    # the matched-filter S/N of each injected line, with the re-noised ivar, is exactly the drawn one
    snr = np.sqrt(np.sum(rs.line_window[lines].astype(np.float64) ** 2 * rs.rows.ivar[lines], axis=1))
    assert np.allclose(snr, rs.matched_snr[lines], rtol=1e-4)
    assert np.all((rs.matched_snr[lines] >= 4) & (rs.matched_snr[lines] <= 15))
    assert np.all((rs.fwhm_kms[lines] >= 120) & (rs.fwhm_kms[lines] <= 700) & (rs.skew[lines] >= 1))
    assert np.all((rs.centre[lines] >= 3860) & (rs.centre[lines] <= 4950))
    assert np.isnan(rs.matched_snr[~rs.has_line]).all() and not rs.line_window[~rs.has_line].any()
    # re-noised: ivar halved where good, the flux differs from the host's by noise (and the line)
    host_ivar = hosts.rows.ivar[rs.host]
    assert np.allclose(rs.rows.ivar, 0.5 * host_ivar)
    good = host_ivar > 0
    pull = (rs.rows.flux - rs.line_window - hosts.rows.flux[rs.host])[good] * np.sqrt(host_ivar[good])
    assert 0.9 < pull.std() < 1.1 and abs(pull.mean()) < 0.05
    # the full-range (or veto-range) copy carries the same noise and line on the shared pixels
    if rs.full is not None:
        from lenscat.spectra.grid import FULL, WINDOW

        w0 = WINDOW.k0 - FULL.k0
        assert np.array_equal(rs.full.flux[:, w0 : w0 + WINDOW.n], rs.rows.flux)
    # the same seed gives the same realisations
    again = make_realisations(
        hosts,
        realisations=40,
        line_fraction=0.5,
        snr_range=(4.0, 15.0),
        fwhm_range=(120.0, 700.0),
        skew_range=(1.0, 6.0),
        wave_range=(3860.0, 4950.0),
        renoise=True,
        family="lya",
        seed=5,
    )
    assert np.array_equal(again.rows.flux, rs.rows.flux)


def test_matched_filter_finds_bright_red_tailed_lines_and_veto_losses_add_up(session, sdss_store, tmp_path):
    from lenscat.spectra.detector_mf import register_matched_filter
    from lenscat.spectra.evaluate import SNR_BINS, evaluate_protocol
    from lenscat.spectra.evaluate_report import plot_protocol, protocol_json, protocol_table

    mf, _ = register_matched_filter("t-eval-mf", session=session)
    results, info = evaluate_protocol([mf], session=session, realisations=40, snr_range=(20.0, 30.0), seed=2)
    assert info["n_lines"] == 20 and info["n_clean"] == 20 and info["n_hosts"] == 2
    (r,) = results
    assert r.detector == mf.label and r.continuum == "chosen" and r.matched_snr.size == 20
    h = r.headline()
    assert h["n_lines"] == 20
    # bright lines: the matched filter finds (nearly) all of them before the vetoes
    assert h["found_before"] >= 18
    # every line found but lost after the vetoes is attributed to exactly one cause
    assert h["found_before"] - h["found_after"] == sum(h["removed"].values())
    assert set(h["removed"]) <= set(h["vetoes_fired"])
    assert 0 <= r.false_after <= r.false_before <= r.n_clean == 20
    # the real spectra as observed: the strong-emission galaxy is reported and is never a candidate
    assert r.n_real == 4
    agn = [g for g in r.emission_galaxies if g["spectrum"] == AGN]
    assert len(agn) == 1 and agn[0]["candidates"] == 0 and agn[0]["subclass"] == "AGN"
    assert all(c["spectrum"] != AGN for c in r.real_candidates)
    # binned completeness: counts add up; the JSON, table and plot carry it
    by_snr = r.binned("snr", [0.0, 25.0, 31.0])
    assert sum(b["n"] for b in by_snr) == 20
    assert sum(b["n"] for b in r.binned("snr", SNR_BINS)) == 0  # all lines above the default bins
    doc = json.loads(protocol_json(results, info))
    assert doc["detectors"][0]["headline"]["found_before"] == h["found_before"]
    cols, rows = protocol_table(results)
    assert rows[0][2].startswith(f"{h['found_before']} / 20")
    assert plot_protocol(results, tmp_path / "c.png").stat().st_size > 5000


def test_continuum_choose_and_show_round_trip_and_evaluate_from_the_cli(monkeypatch, capsys, session, sdss_store):
    from lenscat.spectra.continuum_choice import current_choices, decide

    assert current_choices(session=session) == {"sdss": "pipeline", "boss": "pipeline", "desi": "pipeline"}
    code, out, err = run(
        monkeypatch,
        capsys,
        "spectra",
        "continuum",
        "choose",
        "--detector",
        "matched-filter",
        "--realisations",
        "20",
        "--format",
        "json",
    )
    assert code == 0, err
    (row,) = [json.loads(x) for x in out.splitlines()]
    assert row["survey"] == "sdss" and row["choice"] in ("pipeline", "fit") and row["n_spectra"] == 2
    assert row["n_realisations"] == 20 and 0 <= row["completeness_fit"] <= 1
    assert (
        row["choice"]
        == decide(
            row["completeness_pipeline"],
            row["completeness_fit"],
            row["false_rate_pipeline"],
            row["false_rate_fit"],
            has_model=True,
        )[0]
    )
    assert current_choices(session=session)["sdss"] == row["choice"]
    code, out, _ = run(monkeypatch, capsys, "spectra", "continuum", "show", "--format", "json")
    shown = {r["survey"]: r for r in map(json.loads, out.splitlines())}
    assert shown["sdss"]["choice"] == row["choice"] and shown["desi"]["choice"] == "pipeline"
    assert "not measured" in shown["desi"]["reason"]
    # re-measuring replaces the row (one per survey)
    run(monkeypatch, capsys, "spectra", "continuum", "choose", "--realisations", "20", "--seed", "1")
    assert session.execute(text("SELECT count(*) FROM lenscat.continuum_choices")).scalar() == 1
    # the evaluate command: the table, both continua
    code, out, err = run(
        monkeypatch,
        capsys,
        "spectra",
        "evaluate",
        "--detector",
        "matched-filter",
        "--realisations",
        "20",
        "--continuum",
        "both",
    )
    assert code == 0, err
    assert "lines with S/N >= 8 found, before vetoes" in out and "pipeline" in out and " fit " in out
    assert f"strong-emission galaxy {AGN} (AGN): NOT a candidate" in out
    # the flux grid stays available (and is chosen by its own options, as old scripts pass them)
    code, out, err = run(
        monkeypatch,
        capsys,
        "spectra",
        "evaluate",
        "--detector",
        "matched-filter",
        "--fluxes",
        "60",
        "--fwhms",
        "300",
        "--per-cell",
        "5",
        "--format",
        "json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["protocol"] == "flux" and doc["n_injected"] == 5


def test_the_rule_prefers_completeness_within_the_false_rate_margin():
    from lenscat.spectra.continuum_choice import decide

    assert decide(0.80, 0.90, 0.00, 0.005, has_model=True)[0] == "fit"
    assert decide(0.80, 0.90, 0.00, 0.05, has_model=True)[0] == "pipeline"  # too many false candidates
    assert decide(0.90, 0.80, 0.00, 0.00, has_model=True)[0] == "pipeline"
    assert decide(0.85, 0.85, 0.00, 0.00, has_model=True)[0] == "pipeline"  # tie: today's behaviour
    choice, reason = decide(None, 0.7, None, 0.0, has_model=False)
    assert choice == "fit" and "no pipeline model" in reason


def test_oii_family_runs_the_same_protocol_on_the_full_range(session, sdss_store):
    from lenscat.spectra.detector_oii import register_oii_filter
    from lenscat.spectra.evaluate import evaluate_protocol

    det, _ = register_oii_filter("t-eval-oii", session=session)
    (r,), info = evaluate_protocol(
        [det], session=session, realisations=30, family="oii", snr_range=(15.0, 25.0), seed=1
    )
    h = r.headline()
    assert info["family"] == "oii" and h["n_lines"] == 15 and h["found_before"] >= 13
    assert h["found_before"] - h["found_after"] == sum(h["removed"].values())
    assert all(c["spectrum"] != AGN for c in r.real_candidates)
