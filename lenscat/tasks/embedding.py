"""Embedding tasks: one Celery task per chunk of sources (ids in, vectors upserted in Postgres)."""

from __future__ import annotations

from typing import Any

from lenscat.embeddings.embed import embed_chunk
from lenscat.jobs.chunks import run_chunk
from lenscat.tasks.app import CHUNK_TASK_OPTIONS, get_app
from lenscat.tasks.names import EMBED_CHUNK

app = get_app()


@app.task(name=EMBED_CHUNK, **CHUNK_TASK_OPTIONS)
def embed_chunk_task(job_id: int, chunk_no: int) -> dict[str, Any]:
    """Embed chunk ``chunk_no`` of job ``job_id``; safe to run twice (a done chunk is skipped).

    Acknowledged only after it returns: a worker killed mid-chunk leaves the message to be
    redelivered, and the rerun writes only the vectors still missing.
    """
    return run_chunk(job_id, chunk_no, embed_chunk)
