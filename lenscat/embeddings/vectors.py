"""pgvector storage of embeddings: binary COPY upserts, per-encoder HNSW indexes, ANN queries.

Vectors are stored L2-normalised as ``halfvec``; cosine similarity is ``1 - (a <=> b)``. Each encoder
version gets its own partial HNSW index on ``embedding::halfvec(dim)`` (see migration 0002), so a
query must carry the same cast and ``model_id = <literal>`` for the planner to use it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pgvector import HalfVector
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.db.pgbinary import SIGNATURE, TRAILER
from lenscat.db.session import raw_connection
from lenscat.errors import LenscatError, Step
from lenscat.registry.versions import ModelVersion

MAX_DIM = 4000  # halfvec HNSW limit


def embed_step(encoder: str) -> Step:
    """The step that gives an encoder embeddings (``lenscat embed --encoder NAME``), for errors that need it."""
    return Step(("embed",), (("encoder", encoder),), f"embed the sources with encoder {encoder}")


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero or non-finite rows raise."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise LenscatError(f"embeddings must be a 2-D array (n, dim), got shape {v.shape}")
    bad = ~np.isfinite(v).all(axis=1)
    if bad.any():
        raise LenscatError(f"{int(bad.sum())} embedding(s) contain NaN or inf (first at row {int(np.argmax(bad))})")
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    if (norm == 0).any():
        raise LenscatError(f"embedding at row {int(np.argmax(norm[:, 0] == 0))} is all zeros")
    return v / norm


def _row_dtype(dim: int) -> np.dtype[Any]:
    """One binary COPY row of (bigint, halfvec(dim)): field count, id, then pgvector's halfvec_send form."""
    return np.dtype(
        [
            ("nf", ">i2"),
            ("l1", ">i4"),
            ("id", ">i8"),
            ("l2", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("v", ">f2", (dim,)),
        ]
    )


# Why not pgvector-python here: its binary COPY (``copy.set_types(["bigint", "halfvec"])`` and one
# ``copy.write_row((id, HalfVector(v)))`` per row) writes the same bytes (tests/unit/test_vectors_binary.py),
# but bench/vectors.py (10^5 x 128-d, best of 3-5, 2026-12-07, AMD EPYC 2-core shared sandbox under
# load 6-9) measured the whole COPY 2.1-2.2x slower than this one-record-array encoder (its client-side
# encoding alone 5-7x slower), and the bulk read through its HalfVector loader 3.6-5.5x slower than
# parse_copy_binary_rows. Single vectors go through pgvector's HalfVector (get_embedding).
def copy_binary_rows(source_ids: np.ndarray, vectors: np.ndarray) -> bytes:
    """A PostgreSQL binary COPY stream of (bigint, halfvec) rows, built with numpy."""
    n, dim = vectors.shape
    rec = np.empty(n, dtype=_row_dtype(dim))
    rec["nf"] = 2
    rec["l1"] = 8
    rec["id"] = source_ids
    rec["l2"] = 4 + 2 * dim
    rec["dim"] = dim
    rec["unused"] = 0
    rec["v"] = vectors.astype(np.float16)
    return SIGNATURE + rec.tobytes() + TRAILER


def parse_copy_binary_rows(
    buf: bytes | bytearray, dim: int, what: str = "stored vectors"
) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64, (n, dim) float32) from a binary ``COPY (SELECT bigint, halfvec) TO STDOUT`` stream.

    Raises
    ------
    LenscatError
        A row whose vector does not have ``dim`` dimensions (the message starts with ``what``).
    """
    dt = _row_dtype(dim)
    body = bytes(buf[len(SIGNATURE) : len(buf) - len(TRAILER)]) if buf else b""
    if len(body) % dt.itemsize:
        raise LenscatError(f"{what} do not all have {dim} dimensions")
    rec = np.frombuffer(body, dtype=dt)
    return rec["id"].astype(np.int64), rec["v"].astype(np.float32)


def upsert_embeddings(
    model: ModelVersion,
    source_ids: np.ndarray,
    vectors: np.ndarray,
    *,
    job_id: int | None = None,
    session: Session,
) -> int:
    """Write one embedding per source for ``model``; an existing (model, source) row is replaced.

    Binary COPY into a temporary staging table, then one ``INSERT ... ON CONFLICT`` on
    ``pk_embeddings``: running the same write twice leaves exactly one row per source.

    Parameters
    ----------
    model
        Encoder version that made the vectors.
    source_ids
        ``lenscat.sources.source_id`` per row (unique).
    vectors
        (n, dim) array; normalised to unit length here.
    job_id
        Job that produced them (stored for provenance).
    session
        Database session (the caller commits).

    Returns
    -------
    int
        Rows written.
    """
    ids = np.asarray(source_ids, dtype=np.int64)
    vec = normalise(vectors)
    if len(ids) != len(vec):
        raise LenscatError(f"{len(ids)} source ids but {len(vec)} vectors")
    if len(ids) == 0:
        return 0
    if model.output_dim is not None and vec.shape[1] != model.output_dim:
        raise LenscatError(f"encoder {model.label} makes {model.output_dim}-d vectors, got {vec.shape[1]}-d")
    if vec.shape[1] > MAX_DIM:
        raise LenscatError(f"{vec.shape[1]}-d vectors exceed the halfvec index limit of {MAX_DIM}")
    if len(np.unique(ids)) != len(ids):
        raise LenscatError("duplicate source ids in one embedding batch")
    conn = raw_connection(session)
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS embeddings_stage (source_id bigint, embedding halfvec) "
            "ON COMMIT DELETE ROWS"
        )
        cur.execute("TRUNCATE embeddings_stage")
        with cur.copy("COPY embeddings_stage (source_id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.write(copy_binary_rows(ids, vec))
        cur.execute(
            f"""
            INSERT INTO lenscat.embeddings (model_id, source_id, embedding, job_id)
            SELECT {int(model.model_id)}, source_id, embedding, %s FROM embeddings_stage
            ON CONFLICT ON CONSTRAINT pk_embeddings DO UPDATE
            SET embedding = EXCLUDED.embedding, job_id = EXCLUDED.job_id, created_at = now()
            """,
            (job_id,),
        )
        n = cur.rowcount
        cur.execute("TRUNCATE embeddings_stage")
    return int(n)


def read_embeddings(
    model: ModelVersion,
    *,
    session: Session,
    source_ids: np.ndarray | None = None,
    id_range: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stored vectors of an encoder version in bulk: (source_ids int64, (n, dim) float32), by source id.

    One binary ``COPY ... TO STDOUT`` parsed with numpy (no per-row Python), for the sources in
    ``source_ids`` or in the inclusive ``id_range`` (all of the encoder's vectors when neither is given).
    """
    dim = _dim(model)
    where, params = "", ()
    conn = raw_connection(session)
    with conn.cursor() as cur:
        if source_ids is not None:
            ids = np.unique(np.asarray(source_ids, dtype=np.int64))
            cur.execute(
                "CREATE TEMP TABLE IF NOT EXISTS embedding_ids (source_id bigint PRIMARY KEY) ON COMMIT DELETE ROWS"
            )
            cur.execute("TRUNCATE embedding_ids")
            with cur.copy("COPY embedding_ids (source_id) FROM STDIN") as copy:
                copy.write("".join(f"{int(i)}\n" for i in ids))
            where = " AND e.source_id IN (SELECT source_id FROM embedding_ids)"
        elif id_range is not None:
            where = f" AND e.source_id BETWEEN {int(id_range[0])} AND {int(id_range[1])}"
        buf = bytearray()
        with cur.copy(
            f"COPY (SELECT e.source_id, e.embedding FROM lenscat.embeddings e WHERE e.model_id = {int(model.model_id)}"
            f"{where} ORDER BY e.source_id) TO STDOUT WITH (FORMAT BINARY)",
            params,
        ) as copy:
            for block in copy:
                buf += block
        if source_ids is not None:
            cur.execute("TRUNCATE embedding_ids")
    return parse_copy_binary_rows(buf, dim, f"stored vectors of {model.label}")


def hnsw_index_name(model: ModelVersion) -> str:
    """Name of the encoder version's HNSW index."""
    return f"ix_embeddings_hnsw_m{int(model.model_id)}"


def has_hnsw_index(model: ModelVersion, *, session: Session) -> bool:
    """True when the encoder version's HNSW index exists and is valid."""
    return bool(
        session.execute(
            text(
                """
            SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'lenscat' AND c.relname = :name
            """
            ),
            {"name": hnsw_index_name(model)},
        ).scalar()
    )


def ensure_hnsw_index(
    model: ModelVersion,
    *,
    session: Session,
    m: int = 16,
    ef_construction: int = 64,
    maintenance_work_mem: str = "1GB",
) -> float | None:
    """Build the encoder version's partial HNSW cosine index if it is missing.

    Returns the build time in seconds, or None when the index already existed. Build it after a
    bulk embedding run: inserting into an existing HNSW index is several times slower.
    """
    if has_hnsw_index(model, session=session):
        return None
    dim = _dim(model)
    name = hnsw_index_name(model)
    t0 = time.perf_counter()
    session.execute(text(f"DROP INDEX IF EXISTS lenscat.{name}"))  # an invalid leftover
    session.execute(text("SELECT set_config('maintenance_work_mem', :v, true)"), {"v": maintenance_work_mem})
    session.execute(
        text(
            f"CREATE INDEX {name} ON lenscat.embeddings USING hnsw "
            f"((embedding::halfvec({dim})) halfvec_cosine_ops) "
            f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)}) "
            f"WHERE model_id = {int(model.model_id)}"
        )
    )
    session.execute(text("ANALYZE lenscat.embeddings"))
    return time.perf_counter() - t0


def _dim(model: ModelVersion) -> int:
    if not model.output_dim:
        raise LenscatError(f"encoder {model.label} has no output dimension")
    return int(model.output_dim)


def vector_literal(v: np.ndarray) -> str:
    """pgvector text form ``[x1,x2,...]``."""
    return "[" + ",".join(f"{x:.6g}" for x in np.asarray(v, dtype=np.float64).ravel()) + "]"


def get_embedding(model: ModelVersion, source_id: int, *, session: Session) -> np.ndarray | None:
    """The stored vector of a source under an encoder version, or None."""
    val = session.execute(
        text("SELECT embedding::text FROM lenscat.embeddings WHERE model_id = :m AND source_id = :s"),
        {"m": model.model_id, "s": int(source_id)},
    ).scalar()
    if val is None:
        return None
    return HalfVector.from_text(str(val)).to_numpy().astype(np.float32)


def set_search_params(*, session: Session, k: int, max_scan_tuples: int | None = None) -> None:
    """Transaction-local HNSW settings for a top-k query with filters.

    ``hnsw.ef_search`` caps what one scan returns (default 40 < 100), so it is raised to cover k
    (pgvector allows at most 1,000); iterative scans (pgvector >= 0.8) keep scanning when filters
    reject candidates.
    """
    ef = int(min(1000, max(40, 2 * k)))
    scan = int(max_scan_tuples or max(20_000, 50 * k))
    session.execute(
        text(
            "SELECT set_config('hnsw.ef_search', :ef, true), set_config('hnsw.iterative_scan', 'relaxed_order', true), "
            "set_config('hnsw.max_scan_tuples', :scan, true)"
        ),
        {"ef": str(ef), "scan": str(scan)},
    )


def nearest_sql(model: ModelVersion, where: str = "", join: str = "") -> str:
    """SELECT (source_id, dist) of the ``:fetch`` nearest vectors to ``:q`` under ``model``.

    ``where``/``join`` add filters; with iterative scans the index scan continues until ``:fetch``
    rows pass them. The outer ORDER BY restores exact order (relaxed_order may permute slightly).
    """
    dim = _dim(model)
    mid = int(model.model_id)
    expr = f"e.embedding::halfvec({dim}) <=> CAST(:q AS halfvec({dim}))"
    return f"""
        WITH c AS MATERIALIZED (
            SELECT e.source_id, ({expr})::float8 AS dist
            FROM lenscat.embeddings e {join}
            WHERE e.model_id = {mid} {where}
            ORDER BY {expr}
            LIMIT :fetch
        )
        SELECT source_id, dist FROM c ORDER BY dist, source_id
    """


def nearest(model: ModelVersion, query: np.ndarray, k: int, *, session: Session) -> list[tuple[int, float]]:
    """The k nearest (source_id, cosine similarity) to a query vector, no filters."""
    q = normalise(np.asarray(query, dtype=np.float32)[None, :])[0]
    set_search_params(session=session, k=k)
    rows: Any = session.execute(text(nearest_sql(model)), {"q": vector_literal(q), "fetch": int(k)}).all()
    return [(int(r[0]), 1.0 - float(r[1])) for r in rows]
