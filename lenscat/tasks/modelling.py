"""Lens modelling tasks: one Celery task per chunk of a ``lensmodel`` job."""

from __future__ import annotations

from typing import Any

from lenscat.jobs.chunks import run_chunk
from lenscat.modelling.running import model_chunk
from lenscat.tasks.app import CHUNK_TASK_OPTIONS, get_app
from lenscat.tasks.names import LENSMODEL_CHUNK

app = get_app()


@app.task(name=LENSMODEL_CHUNK, **CHUNK_TASK_OPTIONS)
def lensmodel_chunk_task(job_id: int, chunk_no: int) -> dict[str, Any]:
    """Model chunk ``chunk_no`` of job ``job_id``; safe to run twice (a done chunk is skipped).

    The lens models and the chunk's ``done`` mark commit together; a redelivered chunk rewrites
    the same values (upserts on ``(model_id, source_id)``).
    """
    return run_chunk(job_id, chunk_no, model_chunk)
