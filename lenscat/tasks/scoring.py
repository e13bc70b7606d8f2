"""Scoring and re-processing tasks: one Celery task per chunk of sources; a periodic planner (beat)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import OperationalError

from lenscat.classifiers.scoring import score_chunk
from lenscat.db.session import session_scope
from lenscat.jobs.chunks import run_chunk
from lenscat.tasks.app import CHUNK_TASK_OPTIONS, get_app
from lenscat.tasks.names import REPROCESS, SCORE_CHUNK

app = get_app()


@app.task(name=SCORE_CHUNK, **CHUNK_TASK_OPTIONS)
def score_chunk_task(job_id: int, chunk_no: int) -> dict[str, Any]:
    """Score chunk ``chunk_no`` of job ``job_id``; safe to run twice (a done chunk is skipped).

    Scores and the chunk's ``done`` mark commit together; a redelivered chunk writes only the
    scores still missing.
    """
    return run_chunk(job_id, chunk_no, score_chunk)


@app.task(
    name=REPROCESS,
    acks_late=True,
    ignore_result=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
)
def reprocess_task() -> dict[str, Any]:
    """Plan and queue the missing embeddings, scores and spectral scans of the latest model versions,
    and refresh the survey-wide veto of idle detectors (Celery beat)."""
    from lenscat.jobs.reprocess import build_missing_indexes, plan_reprocess, send

    with session_scope() as session:
        planned = plan_reprocess(session=session)
    with session_scope() as session:
        built = build_missing_indexes(session=session)
    from lenscat.spectra.scan import refresh_idle_detectors

    with session_scope() as session:
        vetoes = refresh_idle_detectors(session=session)
    return {
        "jobs": [p.as_dict() for p in planned],
        "tasks_sent": send(planned),
        "indexes_built": built,
        "overdensity_flagged": vetoes,
    }
