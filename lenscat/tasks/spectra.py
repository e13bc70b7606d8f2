"""Spectral scan tasks: one Celery task per chunk of spectrum ids."""

from __future__ import annotations

from typing import Any

from lenscat.jobs.chunks import run_chunk
from lenscat.spectra.scan import scan_chunk
from lenscat.tasks.app import CHUNK_TASK_OPTIONS, get_app
from lenscat.tasks.names import SCAN_SPECTRA_CHUNK

app = get_app()


@app.task(name=SCAN_SPECTRA_CHUNK, **CHUNK_TASK_OPTIONS)
def scan_spectra_chunk_task(job_id: int, chunk_no: int) -> dict[str, Any]:
    """Scan chunk ``chunk_no`` of job ``job_id`` with the job's detector; safe to run twice.

    Hits, scan rows and the chunk's ``done`` mark commit together; a redelivered chunk only scans
    the spectra still missing.
    """
    return run_chunk(job_id, chunk_no, scan_chunk)
