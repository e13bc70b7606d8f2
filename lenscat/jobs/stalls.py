"""Stalled chunks: running chunks whose worker stopped beating, and sending them again.

A running chunk whose heartbeat is older than ``LENSCAT_JOB_STALL_S`` is stalled
(:func:`stalled_chunks`): its worker died, and :func:`requeue_stalled` (``lenscat reprocess``,
Celery beat, a CLI waiting for the job) puts it back to ``queued``; :func:`send_chunks` sends it
again without waiting for the broker's visibility timeout.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.jobs.sql import STALLED
from lenscat.jobs.types import StalledChunk
from lenscat.settings import get_settings
from lenscat.tasks.names import TASK_OF_JOB_KIND


def stall_seconds(stall_s: float | None) -> float:
    """``stall_s``, or ``LENSCAT_JOB_STALL_S`` when None."""
    return float(stall_s if stall_s is not None else get_settings().job_stall_s)


TASKS = TASK_OF_JOB_KIND
"""Celery task that runs one chunk, per job kind."""


def stalled_chunks(*, session: Session, job_id: int | None = None, stall_s: float | None = None) -> list[StalledChunk]:
    """Running chunks (of open jobs, or of ``job_id``) whose last heartbeat is older than ``stall_s``.

    ``stall_s`` defaults to ``LENSCAT_JOB_STALL_S``; a chunk started by a worker that never beat
    counts from its ``started_at``.
    """
    rows = session.execute(
        text(
            f"""
            SELECT c.job_id, j.kind, c.chunk_no, c.worker, c.started_at, c.heartbeat_at, c.n_items,
                   extract(epoch FROM now() - coalesce(c.heartbeat_at, c.started_at))::float8 AS age
            FROM lenscat.job_chunks c JOIN lenscat.jobs j ON j.job_id = c.job_id
            WHERE {STALLED} AND j.status IN ('queued', 'running')
            """
            + ("AND c.job_id = :j " if job_id is not None else "")
            + "ORDER BY c.job_id, c.chunk_no"
        ),
        {"stall": stall_seconds(stall_s), **({"j": job_id} if job_id is not None else {})},
    ).all()
    return [
        StalledChunk(
            int(r.job_id),
            str(r.kind),
            int(r.chunk_no),
            r.worker,
            r.started_at,
            r.heartbeat_at,
            float(r.age),
            int(r.n_items),
        )
        for r in rows
    ]


def requeue_stalled(*, session: Session, job_id: int | None = None, stall_s: float | None = None) -> list[StalledChunk]:
    """Put stalled chunks back to ``queued`` and return them; the caller commits, then sends each
    (task :data:`TASKS` of its kind) to the workers.

    A worker that was only slow, not dead, and finishes the chunk after all does no harm: its
    writes are upserts and the second run of a ``done`` chunk is a no-op.
    """
    found = stalled_chunks(session=session, job_id=job_id, stall_s=stall_s)
    for c in found:
        session.execute(
            text(
                f"UPDATE lenscat.job_chunks c SET status = 'queued', "
                "error = 'stalled: no heartbeat from ' || coalesce(c.worker, '?') || ' since ' || "
                f"coalesce(c.heartbeat_at, c.started_at)::text WHERE c.job_id = :j AND c.chunk_no = :n AND {STALLED}"
            ),
            {"j": c.job_id, "n": c.chunk_no, "stall": stall_seconds(stall_s)},
        )
    return found


def send_chunks(chunks: list[StalledChunk]) -> int:
    """Send a task for each chunk (after the transaction that re-queued them committed)."""
    if not chunks:
        return 0
    from lenscat.tasks.app import get_app

    app = get_app()
    for c in chunks:
        app.send_task(TASKS[c.kind], args=[c.job_id, c.chunk_no])
    return len(chunks)
