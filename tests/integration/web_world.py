"""A small committed world for the web-app tests, built through the CLI and library in one process.

Run in a subprocess whose environment points LENSCAT_DATABASE_URL at a fresh database (the
``own_database`` fixture): ``python -m tests.integration.web_world WORKDIR``. It writes a
Stein-layout survey whose first ``n_lens`` sources show an arc, a literature list holding one of
them, a real SDSS spectrum with an injected Lyman-alpha line at another source's position (scanned
by the matched filter), external embeddings where the arcs cluster,
a linear classifier with scores for every source, and two graders (alice, bob; password
``correct-horse``). Prints a JSON summary on its last line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data"
SPECTRUM = DATA / "spectra" / "sdss" / "spec-0403-51871-0462.fits"  # an early-type galaxy at z = 0.13
PASSWORD = "correct-horse"
DIM = 16


def write_survey(path: Path, n: int, n_lens: int, seed: int, spec_pos: tuple[float, float]) -> np.ndarray:
    """Galaxies (Gaussian blobs in noise); the first ``n_lens`` get an Einstein-ring arc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:152, :152] - 75.5
    rr = np.hypot(xx, yy)
    images = rng.normal(0, 0.004, size=(n, 3, 152, 152)).astype(np.float32)
    for i in range(n):
        w = rng.uniform(2.5, 6)
        images[i] += (
            np.array([0.3, 0.6, 1.0])[:, None, None] * rng.uniform(0.3, 1.0) * np.exp(-(rr**2) / (2 * w * w))
        ).astype(np.float32)
        if i < n_lens:
            theta = rng.uniform(0, 2 * np.pi)
            phi = np.arctan2(yy, xx)
            arc = np.exp(-((rr - rng.uniform(9, 14)) ** 2) / 4.0) * np.exp(
                -(((phi - theta + np.pi) % (2 * np.pi) - np.pi) ** 2) / 0.8
            )
            images[i] += (np.array([0.5, 0.25, 0.1])[:, None, None] * arc).astype(np.float32)
    ra, dec = rng.uniform(150, 151, n), rng.uniform(2, 3, n)
    ra[n_lens], dec[n_lens] = spec_pos  # the first non-lens sits on the SDSS fibre
    with h5py.File(path, "w") as fh:
        fh["images"] = images
        fh["ra"], fh["dec"] = ra, dec
        fh["objid"] = np.arange(1000, 1000 + n, dtype=np.int64)
        fh["mag_r"] = rng.uniform(18, 21, n).astype(np.float32)
        fh["ebv"] = rng.uniform(0.01, 0.05, n).astype(np.float32)
    return np.c_[ra, dec]


def build(workdir: Path, n: int = 120, n_lens: int = 12, seed: int = 0) -> dict[str, object]:
    """Build the world in the configured database; returns names and ids the tests use."""
    from astropy.io import fits
    from astropy.table import Table
    from sqlalchemy import text

    from lenscat.classifiers.scoring import plan_score_job, score_chunk
    from lenscat.classifiers.train_linear import train_linear_classifier
    from lenscat.cli import cli
    from lenscat.db.session import session_scope
    from lenscat.embeddings.vectors import upsert_embeddings
    from lenscat.grading.accounts import add_grader
    from lenscat.jobs.service import run_here
    from lenscat.learning.active import propose_next
    from lenscat.learning.campaigns import create_campaign
    from lenscat.registry.versions import register_model
    from lenscat.spectra.scan import plan_scan, scan_chunk

    workdir.mkdir(parents=True, exist_ok=True)
    hdr = fits.getheader(SPECTRUM, 0)
    spec_pos = (float(hdr["PLUG_RA"]), float(hdr["PLUG_DEC"]))
    pos = write_survey(workdir / "survey.h5", n, n_lens, seed, spec_pos)

    def run(*args: str) -> None:
        cli.main(args=list(args), standalone_mode=False)

    run("db", "upgrade")
    run("ingest", "sources", str(workdir / "survey.h5"), "--survey", "webtest")
    lit = workdir / "literature.csv"
    Table(
        {
            "name": ["SLACS J1000+0230", "Elsewhere J0000+0000"],
            "ra": [pos[1, 0], 10.0],
            "dec": [pos[1, 1], -5.0],
            "grade": ["A", "B"],
        }
    ).write(lit, overwrite=True)
    run(
        "ingest",
        "literature",
        str(lit),
        "--catalog",
        "weblit",
        "--layout",
        "generic",
        "--ra-col",
        "ra",
        "--dec-col",
        "dec",
        "--name-col",
        "name",
        "--grade-col",
        "grade",
    )
    run("crossmatch", "--catalog", "weblit", "--radius", "2arcsec")
    # a copy of the real spectrum with a Lyman-alpha-like line at 4480 A, found by the matched filter
    injected = workdir / "spectra" / "spec-0403-51871-0962.fits"
    injected.parent.mkdir(exist_ok=True)
    run("spectra", "inject", str(SPECTRUM), str(injected), "--wavelength", "4480", "--flux", "40", "--overwrite")
    run("spectra", "ingest", str(injected), "--workers", "1")
    run("spectra", "matched-filter", "--name", "webmf")
    with session_scope() as s:
        plan = plan_scan("webmf", chunk_size=10, session=s)
        run_here(plan.job_id, scan_chunk, session=s)
    rng = np.random.default_rng(seed + 1)
    with session_scope() as s:
        ids = np.array(
            s.execute(text("SELECT source_id FROM lenscat.sources ORDER BY objid::bigint")).scalars().all(),
            dtype=np.int64,
        )
        enc, _ = register_model(
            "encoder",
            "webenc",
            architecture="external",
            output_dim=DIM,
            checkpoint_path=None,
            checkpoint_sha256="e" * 64,
            origin="external",
            session=s,
        )
        vec = rng.normal(size=(n, DIM))
        vec[:n_lens, 0] += 4.0  # the arcs cluster along one direction
        upsert_embeddings(enc, ids, vec, session=s)
    truth = workdir / "truth.ecsv"
    Table({"objid": [str(1000 + i) for i in range(n)], "is_lens": (np.arange(n) < n_lens).astype(int)}).write(
        truth, overwrite=True
    )
    run("labels", "import", str(truth), "--survey", "webtest", "--label-col", "is_lens", "--origin", "simulation")
    with session_scope() as s:
        train_linear_classifier("webclf", "webenc", ratio=4, val_ratio=4, session=s, seed=0)
    with session_scope() as s:
        job = plan_score_job("webclf", chunk_size=1000, session=s)
        run_here(job.job_id, score_chunk, session=s)
    with session_scope() as s:
        for name in ("alice", "bob"):
            add_grader(name, password=PASSWORD, session=s)
        propose_next(create_campaign("webal", "webenc", batch_size=6, session=s), session=s)
    return {
        "source_ids": ids.tolist(),
        "lens_ids": ids[:n_lens].tolist(),
        "literature_source": int(ids[1]),
        "spectrum_source": int(ids[n_lens]),
        "classifier": "webclf",
        "encoder": "webenc",
    }


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1]))))
