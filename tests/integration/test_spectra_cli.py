"""The spectral search end to end from the CLI, with real Celery worker processes on a real broker.

Runs in a database of its own (workers are other processes, so this test commits): ingest real
spectra and one with an injected line, scan with the matched filter through a worker the CLI
starts, list hits, evaluate; new spectra are scanned by ``lenscat reprocess`` exactly once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import psycopg
import pytest

from tests.integration.pgrows import one
from tests.integration.test_embed_workers import _cli, _stop, _worker
from tests.integration.test_spectra import write_injected

pytestmark = pytest.mark.slow


def test_ingest_scan_hits_evaluate_reprocess_from_the_cli(own_database, data_dir, tmp_path):
    url, env = own_database
    d = tmp_path / "spectra"
    shutil.copytree(data_dir / "spectra", d)
    (d / "sdss" / "spec-9999-59999-0001.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 100)
    _cli(env, "db", "upgrade")
    res = subprocess.run(
        [sys.executable, "-m", "lenscat.cli", "spectra", "ingest", str(d), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = json.loads(res.stdout.strip().splitlines()[-1])  # the good files load; the bad one: exit 2
    assert res.returncode == 2 and out["spectra_inserted"] == 26 and out["files_failed"] == 1
    assert "spec-9999-59999-0001.fits" in out["failures"][0]["file"]
    assert "lenscat: error: " in res.stderr and "spec-9999-59999-0001.fits" in res.stderr
    (tmp_path / "notes.txt").write_text("not a spectrum")  # named on its own: read, reported, exit 2
    res = subprocess.run(
        [sys.executable, "-m", "lenscat.cli", "spectra", "ingest", str(tmp_path / "notes.txt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "notes.txt: not a FITS file" in res.stderr and "1 failed" in res.stdout
    scan = json.loads(
        _cli(
            env,
            "spectra",
            "scan",
            "--detector",
            "matched-filter",
            "--local-workers",
            "1",
            "--chunk-size",
            "3",
            "--json",
        )
        .strip()
        .splitlines()[-1]
    )
    # the science sample: galaxies with a pipeline redshift (4 SDSS, 1 DESI; not spPlate rows without spZbest)
    assert scan["status"] == "done" and scan["done"] == 5 and scan["chunks"] == 2
    # a new spectrum with a line: the scheduled re-processing scans it (and only it)
    write_injected(d / "sdss" / "spec-0403-51871-0462.fits", tmp_path / "spec-0403-51871-0999.fits")
    _cli(env, "spectra", "ingest", str(tmp_path / "spec-0403-51871-0999.fits"))
    worker = _worker(env, "spectra")
    try:
        planned = [json.loads(x) for x in _cli(env, "reprocess", "--wait", "--json").strip().splitlines()]
    finally:
        _stop(worker)
    assert [(p["kind"], p["items"]) for p in planned] == [("spectral_scan", 1)]
    assert "nothing to do" in _cli(env, "reprocess")
    hits = [json.loads(x) for x in _cli(env, "spectra", "hits", "--candidates", "--format", "json").splitlines()]
    inj = [h for h in hits if h["spec_key"] == "0403-51871-0999"]
    assert inj and abs(inj[0]["wavelength"] - 4480.0) < 3 and inj[0]["detector"] == "matched-filter"
    assert all(h["spec_key"] != "0295-51585-0596" for h in hits)
    table = _cli(env, "spectra", "hits", "--spectrum-id", str(inj[0]["spectrum_id"]))
    assert "wavelength [Angstrom]" in table and "fwhm_kms [km / s]" in table
    ev = json.loads(
        _cli(
            env,
            "spectra",
            "evaluate",
            "--detector",
            "matched-filter",
            "--fluxes",
            "5,40",
            "--fwhms",
            "300",
            "--per-cell",
            "30",
            "--plots",
            str(tmp_path / "ev"),
            "--format",
            "json",
        )
        .strip()
        .splitlines()[-1]
    )
    comp = {c["line_flux"]: c["completeness"] for c in ev["detectors"][0]["completeness"]}
    assert comp[40.0] > 0.8 and comp[40.0] >= comp[5.0]
    assert (tmp_path / "ev" / "completeness.png").stat().st_size > 5000
    with psycopg.connect(url) as conn:
        n_scans, n_spec = one(
            conn.execute("SELECT (SELECT count(*) FROM lenscat.spectral_scans), (SELECT count(*) FROM lenscat.spectra)")
        )
        assert (n_scans, n_spec) == (6, 27)
        jobs = conn.execute("SELECT count(*), sum(n_items) FROM lenscat.jobs WHERE kind = 'spectral_scan'").fetchone()
        assert jobs == (2, 6)
    listed = _cli(env, "spectra", "list", "--format", "csv")
    assert listed.splitlines()[0].startswith("spectrum_id,survey,spec_key") and len(listed.splitlines()) == 28
    dets = _cli(env, "spectra", "detectors")
    assert "matched-filter" in dets
