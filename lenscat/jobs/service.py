"""Jobs run by Celery workers: the session-taking job API (create, plan, progress, run in process).

A job is split into chunks (id ranges, :func:`plan_chunks`) that workers run
(:mod:`lenscat.jobs.chunks`); items they cannot process are recorded
(:mod:`lenscat.jobs.failures`), chunks whose worker died are sent again (:mod:`lenscat.jobs.stalls`),
and :mod:`lenscat.jobs.submit` queues the chunks and follows a job to its end. Progress bars read
these tables, never the broker, so they survive restarts of the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session
from tqdm import tqdm

from lenscat.errors import LenscatError
from lenscat.jobs.chunks import start_chunk
from lenscat.jobs.sql import STALLED
from lenscat.jobs.stalls import stall_seconds
from lenscat.jobs.types import JobState


def create_job(kind: str, model_id: int | None, params: dict[str, Any], *, session: Session) -> int:
    """Insert a job row (status ``queued``) and return its id."""
    return int(
        session.execute(
            text(
                "INSERT INTO lenscat.jobs (kind, model_id, params) VALUES (:k, :m, CAST(:p AS jsonb)) RETURNING job_id"
            ),
            {"k": kind, "m": model_id, "p": json.dumps(params, sort_keys=True, default=str)},
        ).scalar_one()
    )


def plan_chunks(
    job_id: int, id_query: str, params: dict[str, Any], chunk_size: int, *, session: Session
) -> tuple[int, int]:
    """Split the ids returned by ``id_query`` (one column ``id``) into ranges of ``chunk_size``.

    Runs in SQL (a window over the ids), so planning 10^9 ids never moves them to Python.
    Returns (n_items, n_chunks) and stores them on the job.
    """
    if chunk_size < 1:
        raise LenscatError(f"chunk size must be >= 1, got {chunk_size}")
    # the id query is usually an anti-join (sources without results); on statistics taken before a
    # bulk write the planner can pick a nested loop over every existing result: hash/merge only
    session.execute(text("SELECT set_config('enable_nestloop', 'off', true)"))
    session.execute(
        text(
            f"""
            INSERT INTO lenscat.job_chunks (job_id, chunk_no, lo_id, hi_id, n_items)
            SELECT :job, (rn - 1) / :cs, min(id), max(id), count(*)
            FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM ({id_query}) q) t
            GROUP BY (rn - 1) / :cs
            """
        ),
        {"job": job_id, "cs": int(chunk_size), **params},
    )
    session.execute(text("SELECT set_config('enable_nestloop', 'on', true)"))
    n_items, n_chunks = session.execute(
        text("SELECT coalesce(sum(n_items), 0), count(*) FROM lenscat.job_chunks WHERE job_id = :j"),
        {"j": job_id},
    ).one()
    session.execute(
        text(
            "UPDATE lenscat.jobs SET n_items = :n, n_chunks = :c, "
            "status = CASE WHEN :c = 0 THEN 'done' ELSE status END, "
            "finished_at = CASE WHEN :c = 0 THEN now() END WHERE job_id = :j"
        ),
        {"n": int(n_items), "c": int(n_chunks), "j": job_id},
    )
    return int(n_items), int(n_chunks)


def outside_open_chunks(id_query: str, kind: str, model_id: int) -> str:
    """Wrap an id query so ids already inside a queued or running chunk of the same work are left out.

    Used when planning work that may already be under way (scheduled re-processing), so the same
    item is never queued twice; failed chunks count as not covered and are planned again.
    """
    return (
        f"SELECT q.id FROM ({id_query}) q WHERE NOT EXISTS ("
        "SELECT 1 FROM lenscat.job_chunks k JOIN lenscat.jobs j ON j.job_id = k.job_id "
        f"WHERE j.kind = '{kind}' AND j.model_id = {int(model_id)} AND j.status IN ('queued', 'running') "
        "AND k.status IN ('queued', 'running') AND q.id BETWEEN k.lo_id AND k.hi_id)"
    )


def job_state(job_id: int, *, session: Session) -> JobState:
    """Current progress of a job."""
    row = session.execute(
        text(
            """
            SELECT j.status, j.n_items, j.n_done, j.n_chunks, j.message,
                   count(c.chunk_no) FILTER (WHERE c.status = 'done') AS done,
                   count(c.chunk_no) FILTER (WHERE c.status = 'failed') AS failed,
                   count(c.chunk_no) FILTER (WHERE c.attempts > 1) AS retried,
                   coalesce(sum(c.n_failed) FILTER (WHERE c.status = 'done'), 0) AS items_failed,
                   count(c.chunk_no) FILTER (WHERE """
            + STALLED
            + """) AS stalled
            FROM lenscat.jobs j LEFT JOIN lenscat.job_chunks c USING (job_id)
            WHERE j.job_id = :j GROUP BY j.job_id
            """
        ),
        {"j": job_id, "stall": stall_seconds(None)},
    ).one_or_none()
    if row is None:
        raise LenscatError(f"no job {job_id}")
    return JobState(
        job_id,
        row.status,
        int(row.n_items),
        int(row.n_done),
        int(row.n_chunks),
        int(row.done),
        int(row.failed),
        int(row.retried),
        row.message,
        int(row.items_failed),
        int(row.stalled),
    )


def job_details(job_id: int, *, session: Session, max_items: int = 100) -> dict[str, Any]:
    """What ``lenscat jobs show`` prints: the progress, the chunks running now (stalled ones marked)
    and failed, and the items recorded as failed with their reasons.

    Parameters
    ----------
    job_id
        The job.
    session
        Open session (read only).
    max_items
        At most this many failed items are listed (``n_items_failed`` counts them all).
    """
    state = job_state(job_id, session=session)
    out: dict[str, Any] = dict(state.__dict__)
    stall = stall_seconds(None)
    chunks = session.execute(
        text(
            f"""
            SELECT c.chunk_no, c.status, c.worker, c.attempts, c.started_at, c.heartbeat_at, c.error,
                   extract(epoch FROM now() - coalesce(c.heartbeat_at, c.started_at))::float8 AS age,
                   ({STALLED}) AS stalled
            FROM lenscat.job_chunks c WHERE c.job_id = :j AND c.status IN ('running', 'failed')
            ORDER BY c.chunk_no
            """
        ),
        {"j": job_id, "stall": stall},
    ).all()
    out["stall_s"] = stall
    out["chunks"] = [
        {
            "chunk_no": int(r.chunk_no),
            "status": "stalled" if r.stalled else str(r.status),
            "worker": r.worker,
            "attempts": int(r.attempts),
            "started_at": None if r.started_at is None else r.started_at.isoformat(),
            "heartbeat_at": None if r.heartbeat_at is None else r.heartbeat_at.isoformat(),
            "heartbeat_age_s": None if r.age is None or r.status != "running" else round(float(r.age), 1),
            "error": r.error,
        }
        for r in chunks
    ]
    items = session.execute(
        text(
            "SELECT item_id, reason, attempts, failed_at FROM lenscat.job_item_failures WHERE job_id = :j "
            "ORDER BY item_id LIMIT :n"
        ),
        {"j": job_id, "n": int(max_items)},
    ).all()
    out["failed_items"] = [
        {
            "item_id": int(r.item_id),
            "reason": r.reason,
            "attempts": int(r.attempts),
            "failed_at": r.failed_at.isoformat(),
        }
        for r in items
    ]
    return out


def pending_chunks(job_id: int, *, session: Session) -> list[int]:
    """Chunk numbers not yet done (for (re)submission)."""
    return [
        int(c)
        for c in session.execute(
            text("SELECT chunk_no FROM lenscat.job_chunks WHERE job_id = :j AND status <> 'done' ORDER BY chunk_no"),
            {"j": job_id},
        ).scalars()
    ]


def run_here(
    job_id: int, work: Callable[..., int], *, session: Session, progress: bool = False, desc: str | None = None
) -> int:
    """Run a job's pending chunks in this process and transaction, without a broker or worker.

    For tests and benchmarks, which hold one transaction (a test's SAVEPOINT) or want no Celery
    round trip: each pending chunk is marked running and handed to ``work`` exactly as a worker
    would (``work(job_id, chunk_no, lo_id, hi_id, session=...)``, see :func:`lenscat.jobs.chunks.run_chunk`). The
    caller commits. Chunks already done are skipped, so a second call does nothing.

    Parameters
    ----------
    job_id
        The job.
    work
        The chunk function of the job's kind (``embed_chunk``, ``score_chunk``...).
    session
        The caller's session; everything is written in its transaction.
    progress
        Show a tqdm progress bar over the chunks on stderr.
    desc
        Label of the progress bar.

    Returns
    -------
    int
        Rows written over all chunks run.
    """
    written = 0
    for chunk_no in tqdm(
        pending_chunks(job_id, session=session), disable=not progress, unit="chunk", desc=desc or f"job {job_id}"
    ):
        started = start_chunk(job_id, chunk_no, session=session)
        if started is not None:
            written += int(work(job_id, chunk_no, started[0], started[1], session=session))
    return written


def recent_jobs(*, session: Session, limit: int = 20) -> tuple[list[str], list[list[Any]]]:
    """The newest jobs first, as the ``lenscat jobs list`` table.

    Parameters
    ----------
    session
        The session to read through.
    limit
        At most this many jobs.

    Returns
    -------
    tuple
        Column names and rows (job id, kind, model, status, item and chunk counts, retries, times).
    """
    res = session.execute(
        text(
            "SELECT job_id, kind, model, status, n_items, n_done, n_chunks, n_chunks_done, "
            "n_retried, created_at, finished_at FROM public.jobs ORDER BY job_id DESC LIMIT :n"
        ),
        {"n": limit},
    )
    return list(res.keys()), [list(r) for r in res.all()]
