#!/usr/bin/env python
"""Benchmark: pgvector embedding storage and k-NN search (HNSW) against exact search baselines.

One run measures, per data set (default 10^6 x 128-d and 10^5 x 2048-d), lenscat's vector paths
(:mod:`lenscat.embeddings.vectors`, :mod:`lenscat.registry.versions`, :mod:`lenscat.embeddings.similarity`) against
exact search on the same vectors and queries, in the same process:

(a) load: ``upsert_embeddings`` (binary COPY into a staging table + one upsert) in batches of
    ``--batch`` rows, each batch its own transaction (rows/s);
(b) index: ``ensure_hnsw_index`` (partial HNSW index on ``embedding::halfvec(dim)``,
    ``halfvec_cosine_ops``, m=16, ef_construction=64 by default): build time and index size,
    against a faiss ``IndexHNSWFlat`` with the same m and ef_construction (when faiss imports);
(c) search, k=100: ``nearest(model, q, k=100, session=...)`` at the ``hnsw.ef_search`` that
    ``set_search_params`` chooses (latency includes the SQL round trip and lenscat's Python), and
    the raw SQL of ``nearest_sql`` (psycopg, prepared) at several ``hnsw.ef_search`` values for a
    recall/latency curve; recall@100 against exact float32 search; baselines: numpy brute force
    (normalised float32 matrix @ query + argpartition) and faiss ``IndexFlatIP`` (exact), plus
    faiss HNSW at the same ef_search values;
(d) a filtered search: ``lenscat.embeddings.similarity.similar`` with its +-0.5 mag window around the
    query's r magnitude (about 10 % of the sources pass), k=100, via pgvector's iterative scans as
    ``set_search_params`` configures them: latency, whether k rows came back, recall against
    exact search over the sources that pass the filter (numpy baseline on the same filter).

When the goal (recall@100 >= 0.95 at p50 <= 20 ms for 10^6 x 128-d) is not met by any ef_search of
the curve, the index is dropped and rebuilt with each of ``--tune`` (m:ef_construction) in turn,
until one meets it; every build is reported.

Vectors are a Gaussian mixture (a few thousand clusters of varying size and spread, most of the
within-cluster variance in a shared 32-d subspace, as embeddings of galaxy images lie near a
low-dimensional manifold), L2-normalised; queries are held-out draws from the same mixture. The
sources the vectors belong to are written to ``lenscat.sources`` first (id, survey, position and
g/r/z magnitudes correlated with the cluster, nothing else).

Usage::

    python bench/similarity.py [--n N --dim D] [--quick] [--out results.json|results.md]

The script runs its own embedded PostgreSQL under a fresh temporary ``LENSCAT_HOME`` (or
``$LENSCAT_BENCH_HOME`` / ``--home``), ignores ``LENSCAT_DATABASE_URL``, and stops and removes the
server at the end unless ``--keep`` is given. Everything is seeded (``--seed``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from benchutil import format_table, goal, loadavg, machine_info, own_embedded_home, pct, speedup

K = 100
SURVEY_BANDS = ["g", "r", "z"]
MAG_WINDOW = 0.5  # the +-0.5 mag window of lenscat.embeddings.similarity.similar (Stein et al. 2022)

# goal from the issue (10^6 x 128-d)
GOAL_RECALL = 0.95
GOAL_P50_MS = 20.0
GOAL_SHAPE = (1_000_000, 128)


# --------------------------------------------------------------------------------------------
# data


def make_vectors(
    n: int, dim: int, *, seed: int, latent_dim: int = 32, chunk: int = 100_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n`` L2-normalised vectors from a clustered Gaussian mixture.

    Parameters
    ----------
    n
        Number of vectors.
    dim
        Dimension.
    seed
        Random seed.
    latent_dim
        Dimension of the shared subspace holding most of the within-cluster variance.
    chunk
        Rows generated at a time (bounds the temporary memory).

    Returns
    -------
    vectors : numpy.ndarray
        (n, dim) float32, unit rows.
    labels : numpy.ndarray
        Cluster of each row.
    r_mag : numpy.ndarray
        An r-band magnitude per row: the cluster's mean (uniform in 16-23) plus 0.8 mag scatter,
        so that a magnitude window is correlated with, but not fixed by, the neighbourhood.

    Notes
    -----
    ``n // 300`` clusters (20 to 4,000) with log-normal weights, so cluster sizes vary by about
    an order of magnitude; a row is ``centre + spread * (0.9 * B z + 0.45 e)``, normalised, where
    ``B`` is a random orthonormal (dim, latent_dim) basis shared by all clusters,
    ``z ~ N(0, I/latent_dim)``, ``e ~ N(0, I/dim)`` and the spread is uniform in 0.25-0.6 per
    cluster (cosine to the centre about 0.85-0.97; random centres are nearly orthogonal).
    """
    rng = np.random.default_rng(seed)
    n_clusters = int(np.clip(n // 300, 20, 4000))
    w = rng.lognormal(0.0, 1.0, n_clusters)
    labels = rng.choice(n_clusters, size=n, p=w / w.sum())
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.25, 0.6, n_clusters).astype(np.float32)
    r = min(dim, latent_dim)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, r)))
    basis = basis.astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        lab = labels[lo:hi]
        z = rng.standard_normal((hi - lo, r), dtype=np.float32) / np.float32(np.sqrt(r))
        e = rng.standard_normal((hi - lo, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
        x = centres[lab] + spread[lab, None] * (0.9 * (z @ basis.T) + 0.45 * e)
        out[lo:hi] = x / np.linalg.norm(x, axis=1, keepdims=True)
    mean_mag = rng.uniform(16.0, 23.0, n_clusters)
    r_mag = (mean_mag[labels] + rng.normal(0.0, 0.8, n)).astype(np.float32)
    return out, labels, r_mag


# --------------------------------------------------------------------------------------------
# helpers


def psycopg_connect(autocommit: bool = False) -> Any:
    """A plain psycopg connection to the benchmark's database."""
    import psycopg

    from lenscat.db.server import resolve_database_url

    return psycopg.connect(resolve_database_url(), autocommit=autocommit)


def recall_at(found: Sequence[int] | np.ndarray, truth: np.ndarray) -> float:
    """Fraction of ``truth`` (the exact k nearest ids) present in ``found``."""
    return len(set(int(x) for x in found) & set(int(x) for x in truth)) / len(truth)


def log(msg: str) -> None:
    """Print with a timestamp and flush (the full run takes a while)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# (0) sources and vectors in the database


def write_sources(survey: str, first_id: int, r_mag: np.ndarray, *, seed: int) -> dict[str, float]:
    """Insert ``len(r_mag)`` minimal rows into ``lenscat.sources`` with ids ``first_id ...``.

    One text COPY (source_id, survey_id, objid, ra, dec, mag[g, r, z]); positions are uniform on
    the sky. Returns the time taken.
    """
    from lenscat.catalogue.surveys import ensure_survey
    from lenscat.db.session import session_scope

    with session_scope() as s:
        sid = ensure_survey(survey, SURVEY_BANDS, session=s).survey_id
    n = len(r_mag)
    rng = np.random.default_rng(seed + 7)
    ra = rng.uniform(0.0, 360.0, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    g = r_mag + 0.8 + rng.normal(0, 0.3, n)
    z = r_mag - 0.5 + rng.normal(0, 0.3, n)
    t0 = time.perf_counter()
    with psycopg_connect() as conn, conn.cursor() as cur:
        with cur.copy("COPY lenscat.sources (source_id, survey_id, objid, ra, dec, mag) FROM STDIN") as cp:
            step = 200_000
            for lo in range(0, n, step):
                hi = min(n, lo + step)
                cp.write(
                    "".join(
                        f"{first_id + i}\t{sid}\tb{i}\t{ra[i]:.7f}\t{dec[i]:.7f}\t"
                        f"{{{g[i]:.4f},{r_mag[i]:.4f},{z[i]:.4f}}}\n"
                        for i in range(lo, hi)
                    )
                )
        cur.execute(
            "SELECT setval(pg_get_serial_sequence('lenscat.sources', 'source_id'), "
            "(SELECT max(source_id) FROM lenscat.sources))"
        )
        conn.commit()
        conn.autocommit = True
        cur.execute("VACUUM ANALYZE lenscat.sources")
    return {"seconds": time.perf_counter() - t0, "survey_id": sid}


def next_source_id() -> int:
    """First free ``source_id``."""
    with psycopg_connect() as conn:
        return int(conn.execute("SELECT coalesce(max(source_id), 0) + 1 FROM lenscat.sources").fetchone()[0])


def register(name: str, dim: int) -> Any:
    """Register an external encoder version for ``dim``-d vectors (unique per run)."""
    from lenscat.db.session import session_scope
    from lenscat.registry.versions import register_model

    sha = hashlib.sha256(f"{name}/{time.time_ns()}".encode()).hexdigest()
    with session_scope() as s:
        model, _ = register_model(
            "encoder",
            name,
            architecture="synthetic-mixture",
            output_dim=dim,
            checkpoint_path=None,
            checkpoint_sha256=sha,
            origin="external",
            description="bench/similarity.py synthetic vectors",
            session=s,
        )
    return model


def load_embeddings(model: Any, ids: np.ndarray, vectors: np.ndarray, batch: int) -> dict[str, Any]:
    """``upsert_embeddings`` in batches of ``batch`` rows, one transaction each (timed)."""
    from lenscat.db.session import session_scope
    from lenscat.embeddings.vectors import upsert_embeddings

    per_batch = []
    t0 = time.perf_counter()
    written = 0
    for lo in range(0, len(ids), batch):
        tb = time.perf_counter()
        with session_scope() as s:
            written += upsert_embeddings(model, ids[lo : lo + batch], vectors[lo : lo + batch], session=s)
        per_batch.append(time.perf_counter() - tb)
    secs = time.perf_counter() - t0
    if written != len(ids):
        raise SystemExit(f"upsert_embeddings wrote {written} rows, expected {len(ids)}")
    return {"rows": written, "seconds": secs, "rows_per_s": written / secs, "batch": batch, "batch_seconds": per_batch}


def build_index(model: Any, m: int, ef_construction: int) -> dict[str, Any]:
    """Drop the encoder's HNSW index if present, then ``ensure_hnsw_index`` (timed) and its size."""
    from sqlalchemy import text

    from lenscat.db.session import session_scope
    from lenscat.embeddings.vectors import ensure_hnsw_index, hnsw_index_name

    name = hnsw_index_name(model)
    with psycopg_connect(autocommit=True) as conn:
        conn.execute(f"DROP INDEX IF EXISTS lenscat.{name}")
        conn.execute("CHECKPOINT")
    t0 = time.perf_counter()
    with session_scope() as s:
        workers = s.execute(text("SHOW max_parallel_maintenance_workers")).scalar()
        inner = ensure_hnsw_index(model, session=s, m=m, ef_construction=ef_construction)
    secs = time.perf_counter() - t0
    with psycopg_connect() as conn:
        size = int(conn.execute("SELECT pg_relation_size(%s::regclass)", (f"lenscat.{name}",)).fetchone()[0])
        table = int(conn.execute("SELECT pg_total_relation_size('lenscat.embeddings')").fetchone()[0])
    return {
        "m": m,
        "ef_construction": ef_construction,
        "seconds": secs,
        "ensure_hnsw_index_s": inner,
        "index_bytes": size,
        "table_total_bytes": table,
        "parallel_workers": workers,
        "loadavg_after": loadavg(),
    }


# --------------------------------------------------------------------------------------------
# (c) exact baselines


def numpy_exact(
    matrix: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, list[float]]:
    """Exact top-k rows by inner product, one query at a time (timed per query).

    Parameters
    ----------
    matrix
        (n, dim) float32, unit rows.
    queries
        (q, dim) float32, unit rows.
    k
        Neighbours per query.
    mask
        Optional (n,) or (q, n) booleans: only rows where it is True are candidates. The filter
        is applied inside the timed call, to the scores of all rows (cheaper than gathering
        ``matrix[mask]`` first).

    Returns
    -------
    rows : numpy.ndarray
        (q, k) row numbers, best first.
    times : list of float
        Seconds per query.
    """
    out = np.empty((len(queries), k), dtype=np.int64)
    times = []
    for j, q in enumerate(queries):
        t0 = time.perf_counter()
        s = matrix @ q
        if mask is not None:
            s = np.where(mask[j] if mask.ndim == 2 else mask, s, -np.inf)
        idx = np.argpartition(-s, k)[:k]
        idx = idx[np.argsort(-s[idx], kind="stable")]
        times.append(time.perf_counter() - t0)
        out[j] = idx
    return out, times


def faiss_baselines(
    matrix: np.ndarray,
    queries: np.ndarray,
    truth_rows: np.ndarray,
    k: int,
    m: int,
    ef_construction: int,
    ef_values: Sequence[int],
    hnsw: bool,
) -> dict[str, Any] | None:
    """faiss IndexFlatIP (exact) and IndexHNSWFlat (same m/ef_construction) on the same queries."""
    try:
        import faiss
    except ImportError as exc:
        log(f"  faiss not importable ({exc}); faiss baselines skipped")
        return None
    out: dict[str, Any] = {"version": getattr(faiss, "__version__", "?"), "threads": faiss.omp_get_max_threads()}
    dim = matrix.shape[1]
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(matrix)
    out["flat_add_s"] = time.perf_counter() - t0
    times, rec = [], []
    for q in queries[:20]:
        flat.search(q[None, :], k)
    for q, tr in zip(queries, truth_rows, strict=True):
        t0 = time.perf_counter()
        _, idx = flat.search(q[None, :], k)
        times.append(time.perf_counter() - t0)
        rec.append(recall_at(idx[0], tr))
    out["flat"] = {"p50_ms": 1e3 * pct(times, 50), "p95_ms": 1e3 * pct(times, 95), "recall": float(np.mean(rec))}
    del flat
    log(
        f"  faiss IndexFlatIP: p50 {out['flat']['p50_ms']:.2f} ms, p95 {out['flat']['p95_ms']:.2f} ms, "
        f"recall {out['flat']['recall']:.4f}"
    )
    if not hnsw:
        return out
    t0 = time.perf_counter()
    index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(matrix)
    out["hnsw_build_s"] = time.perf_counter() - t0
    out["hnsw_bytes"] = int(faiss.serialize_index(index).nbytes)
    out["hnsw_graph_bytes"] = out["hnsw_bytes"] - matrix.nbytes
    log(
        f"  faiss IndexHNSWFlat(m={m}, efConstruction={ef_construction}) build {out['hnsw_build_s']:.1f} s, "
        f"{out['hnsw_bytes'] / 2**20:.0f} MiB"
    )
    out["hnsw"] = {}
    for ef in ef_values:
        index.hnsw.efSearch = max(ef, k)
        times, rec = [], []
        for q in queries[:20]:
            index.search(q[None, :], k)
        for q, tr in zip(queries, truth_rows, strict=True):
            t0 = time.perf_counter()
            _, idx = index.search(q[None, :], k)
            times.append(time.perf_counter() - t0)
            rec.append(recall_at(idx[0], tr))
        out["hnsw"][ef] = {
            "p50_ms": 1e3 * pct(times, 50),
            "p95_ms": 1e3 * pct(times, 95),
            "recall": float(np.mean(rec)),
            "ef_search": max(ef, k),
        }
        log(f"  faiss HNSW efSearch={max(ef, k)}: recall {np.mean(rec):.4f}, p50 {1e3 * pct(times, 50):.2f} ms")
    return out


# --------------------------------------------------------------------------------------------
# (c) lenscat search


def lenscat_nearest(model: Any, queries: np.ndarray, truth_ids: np.ndarray, warmup: int = 20) -> dict[str, Any]:
    """``nearest(model, q, k=100)`` per query in one session, at the ef_search it chooses."""
    from sqlalchemy import text

    from lenscat.db.session import session_scope
    from lenscat.embeddings.vectors import nearest

    times, rec, short = [], [], 0
    with session_scope() as s:
        for q in queries[:warmup]:
            nearest(model, q, K, session=s)
        for q, tr in zip(queries, truth_ids, strict=True):
            t0 = time.perf_counter()
            rows = nearest(model, q, K, session=s)
            times.append(time.perf_counter() - t0)
            rec.append(recall_at([r[0] for r in rows], tr))
            short += len(rows) < K
        ef = s.execute(text("SHOW hnsw.ef_search")).scalar_one()
        plan = "\n".join(r[0] for r in s.execute(text("EXPLAIN " + _nearest_sql_literal(model, queries[0]))).all())
    uses_index = "ix_embeddings_hnsw" in plan
    return {
        "ef_search": int(ef),
        "p50_ms": 1e3 * pct(times, 50),
        "p95_ms": 1e3 * pct(times, 95),
        "recall": float(np.mean(rec)),
        "recall_min": float(np.min(rec)),
        "queries_recall_lt_half": int(np.sum(np.asarray(rec) < 0.5)),
        "short_results": short,
        "uses_hnsw_index": uses_index,
        "plan": plan,
        "loadavg": loadavg(),
    }


def _nearest_sql_literal(model: Any, q: np.ndarray) -> str:
    from lenscat.embeddings.vectors import nearest_sql, normalise, vector_literal

    v = vector_literal(normalise(q[None, :])[0])
    return nearest_sql(model).replace(":q", f"'{v}'").replace(":fetch", str(K))


def raw_sql_curve(
    model: Any, queries: np.ndarray, truth_ids: np.ndarray, ef_values: Sequence[int], warmup: int = 20
) -> dict[int, dict[str, Any]]:
    """The SQL of ``nearest_sql`` sent with psycopg (prepared), per ``hnsw.ef_search`` value.

    Iterative scans and ``max_scan_tuples`` as ``set_search_params`` sets them; ef_search set per
    session before the timed loop (so the timing is the query round trip alone).
    """
    from lenscat.embeddings.vectors import nearest_sql, normalise, vector_literal

    sql = re.sub(r"(?<!:):(q|fetch)\b", r"%(\1)s", nearest_sql(model))
    lits = [vector_literal(normalise(q[None, :])[0]) for q in queries]
    out: dict[int, dict[str, Any]] = {}
    with psycopg_connect(autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SET hnsw.iterative_scan = relaxed_order")
        cur.execute(f"SET hnsw.max_scan_tuples = {max(20_000, 50 * K)}")
        for ef in ef_values:
            cur.execute(f"SET hnsw.ef_search = {int(ef)}")
            for v in lits[:warmup]:
                cur.execute(sql, {"q": v, "fetch": K}, prepare=True)
                cur.fetchall()
            times, rec, short = [], [], 0
            for v, tr in zip(lits, truth_ids, strict=True):
                t0 = time.perf_counter()
                cur.execute(sql, {"q": v, "fetch": K}, prepare=True)
                rows = cur.fetchall()
                times.append(time.perf_counter() - t0)
                rec.append(recall_at([r[0] for r in rows], tr))
                short += len(rows) < K
            out[int(ef)] = {
                "p50_ms": 1e3 * pct(times, 50),
                "p95_ms": 1e3 * pct(times, 95),
                "recall": float(np.mean(rec)),
                "recall_min": float(np.min(rec)),
                "queries_recall_lt_half": int(np.sum(np.asarray(rec) < 0.5)),
                "short_results": short,
                "loadavg": loadavg(),
            }
            log(
                f"  raw SQL ef_search={ef}: recall@{K} {np.mean(rec):.4f}, p50 {1e3 * pct(times, 50):.2f} ms, "
                f"p95 {1e3 * pct(times, 95):.2f} ms"
            )
    return out


def filtered_search(
    model: Any,
    matrix: np.ndarray,
    ids: np.ndarray,
    r_all: np.ndarray,
    queries: np.ndarray,
    q_mag: np.ndarray,
    warmup: int = 10,
) -> dict[str, Any]:
    """``similar`` with the +-0.5 mag window (no position exclusion), vs exact numpy on the filter."""
    import astropy.units as u

    from lenscat.db.session import session_scope
    from lenscat.embeddings.similarity import Query, similar

    # the database stores r as real and compares it with float8 bounds; mirror that here
    r32 = r_all.astype(np.float32).astype(np.float64)
    masks = np.stack([(r32 >= float(m) - MAG_WINDOW) & (r32 <= float(m) + MAG_WINDOW) for m in q_mag])
    frac = masks.mean(axis=1)
    truth_rows, np_times = numpy_exact(matrix, queries, K, masks)
    times, rec, n_rows = [], [], []
    with session_scope() as s:
        for q, m in zip(queries[:warmup], q_mag[:warmup], strict=True):
            similar(
                Query(q, mag=float(m)),
                encoder=model,
                k=K,
                session=s,
                mag_window=MAG_WINDOW * u.mag,
                exclude_radius=None,
            )
        for q, m, tr in zip(queries, q_mag, truth_rows, strict=True):
            t0 = time.perf_counter()
            tab = similar(
                Query(q, mag=float(m)),
                encoder=model,
                k=K,
                session=s,
                mag_window=MAG_WINDOW * u.mag,
                exclude_radius=None,
            )
            times.append(time.perf_counter() - t0)
            n_rows.append(len(tab))
            rec.append(recall_at(np.asarray(tab["source_id"]), ids[tr]))
    n_rows_a = np.asarray(n_rows)
    out = {
        "queries": len(queries),
        "mean_fraction_kept": float(frac.mean()),
        "min_fraction_kept": float(frac.min()),
        "max_fraction_kept": float(frac.max()),
        "p50_ms": 1e3 * pct(times, 50),
        "p95_ms": 1e3 * pct(times, 95),
        "k_rows_returned": int((n_rows_a >= K).sum()),
        "min_rows": int(n_rows_a.min()),
        "recall": float(np.mean(rec)),
        "recall_min": float(np.min(rec)),
        "queries_recall_lt_half": int(np.sum(np.asarray(rec) < 0.5)),
        "numpy_p50_ms": 1e3 * pct(np_times, 50),
        "numpy_p95_ms": 1e3 * pct(np_times, 95),
        "loadavg": loadavg(),
    }
    log(
        f"  filtered similar(): {out['mean_fraction_kept']:.1%} of sources pass; p50 {out['p50_ms']:.1f} ms, "
        f"p95 {out['p95_ms']:.1f} ms; {out['k_rows_returned']}/{len(queries)} queries got {K} rows; "
        f"recall {out['recall']:.4f}; numpy p50 {out['numpy_p50_ms']:.1f} ms"
    )
    return out


def meets_goal(curve: dict[int, dict[str, Any]]) -> int | None:
    """Smallest ef_search of the curve meeting the goal, or None."""
    ok = [ef for ef, r in sorted(curve.items()) if r["recall"] >= GOAL_RECALL and r["p50_ms"] <= GOAL_P50_MS]
    return ok[0] if ok else None


# --------------------------------------------------------------------------------------------
# one data set


def bench_dataset(n: int, dim: int, args: argparse.Namespace) -> dict[str, Any]:
    """Everything for one (n, dim) data set; returns its results."""
    log(f"== data set {n:,} x {dim}-d")
    res: dict[str, Any] = {"n": n, "dim": dim, "queries": args.queries, "k": K}
    t0 = time.perf_counter()
    allv, labels, r_all = make_vectors(n + args.queries, dim, seed=args.seed + dim)
    vectors, queries = allv[:n], allv[n:]
    r_mag, q_mag = r_all[:n], r_all[n:]
    res["clusters"] = int(labels.max()) + 1
    log(
        f"  vectors: {n:,} + {args.queries} held-out queries, {res['clusters']} clusters, "
        f"{time.perf_counter() - t0:.1f} s"
    )

    first = next_source_id()
    ids = np.arange(first, first + n, dtype=np.int64)
    src = write_sources(f"bench-sim-{n}x{dim}", first, r_mag, seed=args.seed)
    res["sources_copy_s"] = src["seconds"]
    log(f"  {n:,} sources written in {src['seconds']:.1f} s")

    model = register(f"bench-sim-{n}x{dim}", dim)
    res["load"] = load_embeddings(model, ids, vectors, args.batch)
    log(
        f"  upsert_embeddings: {n:,} rows in {res['load']['seconds']:.1f} s = "
        f"{res['load']['rows_per_s']:,.0f} rows/s (batches of {args.batch:,})"
    )

    # exact ground truth (float32) = the numpy baseline's answers
    truth_rows, np_times = numpy_exact(vectors, queries, K)
    truth_ids = ids[truth_rows]
    res["numpy"] = {"p50_ms": 1e3 * pct(np_times, 50), "p95_ms": 1e3 * pct(np_times, 95)}
    # how much of the top 100 is in the query's own cluster, and the recall ceiling of halfvec
    same = labels[:n][truth_rows] == labels[n:][:, None]
    res["truth_same_cluster"] = float(same.mean())
    half = vectors.astype(np.float16).astype(np.float32)
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    half_rows, _ = numpy_exact(half, queries.astype(np.float16).astype(np.float32), K)
    del half
    res["halfvec_exact_recall"] = float(np.mean([recall_at(a, b) for a, b in zip(half_rows, truth_rows, strict=True)]))
    log(
        f"  numpy exact: p50 {res['numpy']['p50_ms']:.2f} ms, p95 {res['numpy']['p95_ms']:.2f} ms; "
        f"{res['truth_same_cluster']:.1%} of true neighbours in the query's cluster; exact search on "
        f"halfvec-rounded vectors has recall {res['halfvec_exact_recall']:.4f}"
    )

    res["faiss"] = faiss_baselines(
        vectors, queries, truth_rows, K, args.m, args.ef_construction, args.ef_search, hnsw=not args.no_faiss_hnsw
    )

    builds = []
    configs = [(args.m, args.ef_construction)] + (
        [] if (n, dim) != GOAL_SHAPE and not args.tune_always else list(args.tune)
    )
    for i, (m, efc) in enumerate(configs):
        b = build_index(model, m, efc)
        log(
            f"  ensure_hnsw_index(m={m}, ef_construction={efc}): {b['seconds']:.1f} s, index "
            f"{b['index_bytes'] / 2**20:.0f} MiB (max_parallel_maintenance_workers={b['parallel_workers']}, "
            f"load {b['loadavg_after']})"
        )
        b["nearest"] = lenscat_nearest(model, queries, truth_ids)
        nr = b["nearest"]
        log(
            f"  nearest(k={K}) at default ef_search={nr['ef_search']}: recall {nr['recall']:.4f} "
            f"(min {nr['recall_min']:.2f}), p50 {nr['p50_ms']:.2f} ms, p95 {nr['p95_ms']:.2f} ms, "
            f"index used: {nr['uses_hnsw_index']}, short results: {nr['short_results']}"
        )
        b["curve"] = raw_sql_curve(model, queries, truth_ids, args.ef_search)
        if i == 0:
            b["filtered"] = filtered_search(
                model, vectors, ids, r_mag, queries[: args.filter_queries], q_mag[: args.filter_queries]
            )
        b["goal_ef"] = meets_goal(b["curve"])
        builds.append(b)
        if b["goal_ef"] is not None and not args.tune_always:
            break
        if i + 1 < len(configs):
            log("  goal not met with these settings: rebuilding with the next --tune setting")
    res["builds"] = builds
    with psycopg_connect(autocommit=True) as conn:  # free the space for the next data set
        conn.execute("DELETE FROM lenscat.embeddings WHERE model_id = %s", (model.model_id,))
        conn.execute(f"DROP INDEX IF EXISTS lenscat.ix_embeddings_hnsw_m{int(model.model_id)}")
        conn.execute("VACUUM lenscat.embeddings")
    return res


# --------------------------------------------------------------------------------------------
# report


def results_table(res: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(measure, lenscat, baseline, speed-up, goal) rows; speed-up = baseline time / lenscat time."""
    n, dim = res["n"], res["dim"]
    goal_set = (n, dim) == GOAL_SHAPE
    tag = f"{n:,} x {dim}"
    fa = res.get("faiss")
    npx = res["numpy"]
    np_txt = f"{npx['p50_ms']:.2f} / {npx['p95_ms']:.2f} (numpy exact)"
    goal_txt = f"recall >= {GOAL_RECALL} at p50 <= {GOAL_P50_MS:g} ms"
    rows: list[tuple[str, str, str, str, str]] = [
        (
            f"{tag}: load, upsert_embeddings rows/s (batches of {res['load']['batch']:,})",
            f"{res['load']['rows_per_s']:,.0f}",
            "",
            "",
            "",
        ),
    ]
    for b in res["builds"]:
        cfg = f"m={b['m']}, ef_construction={b['ef_construction']}"
        fb = fa.get("hnsw_build_s") if fa else None
        same_cfg = b["m"] == res["builds"][0]["m"] and b["ef_construction"] == res["builds"][0]["ef_construction"]
        rows.append(
            (
                f"{tag}: HNSW build, ensure_hnsw_index {cfg} (s)",
                f"{b['seconds']:.0f}",
                f"{fb:.0f} (faiss IndexHNSWFlat, same m/efC, float32)" if fb and same_cfg else "",
                speedup(fb, b["seconds"]) if fb and same_cfg else "",
                "",
            )
        )
        rows.append(
            (
                f"{tag}: HNSW index size ({cfg}, MiB)",
                f"{b['index_bytes'] / 2**20:,.0f}",
                f"{fa['hnsw_bytes'] / 2**20:,.0f} (faiss HNSW incl. float32 vectors)"
                if fa and "hnsw_bytes" in fa and same_cfg
                else "",
                "",
                "",
            )
        )
        nr = b["nearest"]
        ok = nr["recall"] >= GOAL_RECALL and nr["p50_ms"] <= GOAL_P50_MS
        rows.append(
            (
                f"{tag}: nearest(k=100), default ef_search={nr['ef_search']} ({cfg}): recall@100; p50 / p95 (ms)",
                f"{nr['recall']:.3f}; {nr['p50_ms']:.2f} / {nr['p95_ms']:.2f}",
                np_txt,
                speedup(npx["p50_ms"], nr["p50_ms"]),
                goal(ok, goal_txt) if goal_set else "",
            )
        )
        if fa:
            rows.append(
                (
                    f"{tag}: same, vs faiss exact",
                    f"{nr['recall']:.3f}; {nr['p50_ms']:.2f} / {nr['p95_ms']:.2f}",
                    f"{fa['flat']['p50_ms']:.2f} / {fa['flat']['p95_ms']:.2f} (faiss IndexFlatIP)",
                    speedup(fa["flat"]["p50_ms"], nr["p50_ms"]),
                    "",
                )
            )
        for ef, c in sorted(b["curve"].items()):
            fh = fa.get("hnsw", {}).get(ef) if fa and same_cfg else None
            base = (
                f"{fh['recall']:.3f}; {fh['p50_ms']:.2f} / {fh['p95_ms']:.2f} (faiss HNSW efSearch={fh['ef_search']})"
                if fh
                else np_txt
            )
            ok = c["recall"] >= GOAL_RECALL and c["p50_ms"] <= GOAL_P50_MS
            rows.append(
                (
                    f"{tag}: raw SQL k=100, ef_search={ef} ({cfg}): recall@100; p50 / p95 (ms)",
                    f"{c['recall']:.3f}; {c['p50_ms']:.2f} / {c['p95_ms']:.2f}",
                    base,
                    speedup(fh["p50_ms"] if fh else npx["p50_ms"], c["p50_ms"]),
                    goal(ok, goal_txt) if goal_set else "",
                )
            )
        if "filtered" in b:
            f = b["filtered"]
            rows.append(
                (
                    f"{tag}: filtered similar() k=100, r +-0.5 mag ({f['mean_fraction_kept']:.0%} pass): "
                    f"recall@100; p50 / p95 (ms); queries with 100 rows",
                    f"{f['recall']:.3f}; {f['p50_ms']:.1f} / {f['p95_ms']:.1f}; {f['k_rows_returned']}/{f['queries']}",
                    f"{f['numpy_p50_ms']:.2f} / {f['numpy_p95_ms']:.2f} (numpy exact on the filter)",
                    speedup(f["numpy_p50_ms"], f["p50_ms"]),
                    "",
                )
            )
    return rows


HEADER = ("measure", "lenscat", "baseline", "lenscat speed-up (baseline time / lenscat time)", "goal")


def _pair(text: str) -> tuple[int, int]:
    m, _, efc = text.partition(":")
    return int(m), int(efc)


def _write(
    out: Path | None,
    results: dict[str, Any],
    rows: list[tuple[str, str, str, str, str]],
    writer: Callable[[str], None] | None = None,
) -> None:
    if not out:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    else:
        out.write_text(format_table(rows, HEADER, markdown=True) + "\n")
    (writer or print)(f"results written to {out}")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start the scratch server, run every data set and report."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=None, help="vectors (with --dim: one data set instead of the two)")
    ap.add_argument("--dim", type=int, default=None, help="dimension (default 128 with --n)")
    ap.add_argument("--quick", action="store_true", help="one small data set (2x10^4 x 128-d, 200 queries)")
    ap.add_argument("--queries", type=int, default=300, help="held-out query vectors (default 300)")
    ap.add_argument("--filter-queries", type=int, default=200, help="queries for the filtered search")
    ap.add_argument("--batch", type=int, default=100_000, help="rows per upsert_embeddings call")
    ap.add_argument("--m", type=int, default=16, help="HNSW m of the first build (lenscat default 16)")
    ap.add_argument("--ef-construction", type=int, default=64, help="HNSW ef_construction (default 64)")
    ap.add_argument(
        "--ef-search",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[100, 200, 400, 800],
        help="hnsw.ef_search values of the recall/latency curve (default 100,200,400,800)",
    )
    ap.add_argument(
        "--tune",
        type=lambda s: [_pair(x) for x in s.split(",") if x],
        default=[(24, 128)],
        help="m:ef_construction rebuilds tried in turn while the 10^6 x 128 goal is not met",
    )
    ap.add_argument("--tune-always", action="store_true", help="run every --tune build on every data set")
    ap.add_argument("--no-faiss-hnsw", action="store_true", help="skip the faiss HNSW baseline")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--home", default=None, help="LENSCAT_HOME for the scratch server (default $LENSCAT_BENCH_HOME or a temp dir)"
    )
    ap.add_argument("--keep", action="store_true", help="leave the server running and its data in place")
    ap.add_argument("--out", type=Path, default=None, help="write results as .json or .md")
    args = ap.parse_args(argv)
    if args.quick:
        datasets = [(args.n or 20_000, args.dim or 128)]
        args.queries = min(args.queries, 200)
        args.filter_queries = min(args.filter_queries, 100)
    elif args.n or args.dim:
        datasets = [(args.n or 1_000_000, args.dim or 128)]
    else:
        datasets = [(1_000_000, 128), (100_000, 2048)]
    args.filter_queries = min(args.filter_queries, args.queries)

    home = args.home or os.environ.get("LENSCAT_BENCH_HOME")
    made_home = home is None
    if home is None:
        home = tempfile.mkdtemp(prefix="lenscat-bench-")
        os.chmod(home, 0o755)  # the embedded server may run as another user
    own_embedded_home(home)

    from lenscat.db.migrate import ensure_schema
    from lenscat.db.server import stop_embedded
    from lenscat.db.session import dispose_engine

    info = machine_info()
    info["numpy_blas_threads"] = os.environ.get("OMP_NUM_THREADS", f"default ({os.cpu_count()} cores)")
    print(
        f"lenscat similarity benchmark, {info['date_utc']}: {info['cpu_count']} CPUs ({info['cpu']}), "
        f"{info['ram_gb']} GB RAM, Python {info['python']}, {info['os']}; load {info['loadavg_start']}"
    )
    print(f"LENSCAT_HOME={home}; data sets {datasets}; seed={args.seed}", flush=True)
    results: dict[str, Any] = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "datasets": []}
    rows: list[tuple[str, str, str, str, str]] = []
    try:
        ensure_schema()
        with psycopg_connect() as conn:
            info["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
            info["pgvector"] = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[
                0
            ]
            if conn.execute("SELECT EXISTS (SELECT 1 FROM lenscat.embeddings)").fetchone()[0]:
                raise SystemExit(f"{home} holds embeddings already; give the benchmark an empty LENSCAT_HOME")
        print(f"PostgreSQL {info['postgres']}, pgvector {info['pgvector']}", flush=True)
        for n, dim in datasets:
            res = bench_dataset(n, dim, args)
            results["datasets"].append(res)
            rows += results_table(res)
            info["loadavg_end"] = loadavg()
            _write(args.out, results, rows)
        print()
        print(format_table(rows, HEADER, markdown=False))
        print(f"\nload average at start {info['loadavg_start']}, at end {info['loadavg_end']}")
    finally:
        if not args.keep:
            dispose_engine()
            stop_embedded()
            if made_home:
                shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
