"""Submitting a job's chunks to the workers and following the job to its end with a progress bar."""

from __future__ import annotations

import time

from tqdm import tqdm

from lenscat.db.session import session_scope
from lenscat.errors import LenscatError
from lenscat.jobs.local_workers import spawn_local_workers, workers_listening
from lenscat.jobs.service import job_state
from lenscat.jobs.stalls import requeue_stalled, send_chunks
from lenscat.jobs.types import JobState
from lenscat.settings import get_settings


def wait_for_job(
    job_id: int,
    *,
    progress: bool = True,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
    unit: str = "item",
    desc: str | None = None,
) -> JobState:
    """Block until the job finishes, drawing a progress bar from the jobs tables.

    Ctrl-C stops waiting but not the workers: the job keeps running and can be watched again
    with ``lenscat jobs show ID``.
    """
    t0 = time.monotonic()
    with session_scope() as s:
        state = job_state(job_id, session=s)
    bar = tqdm(total=state.n_items, unit=unit, desc=desc or f"job {job_id}", disable=not progress, dynamic_ncols=True)
    try:
        while True:
            with session_scope() as s:
                state = job_state(job_id, session=s)
            bar.update(state.n_done - bar.n)
            bar.set_postfix(chunks=f"{state.n_chunks_done}/{state.n_chunks}", retried=state.n_retried, refresh=False)
            if state.finished:
                return state
            if state.n_chunks_stalled:  # a worker died: send its chunk again now
                with session_scope() as s:
                    again = requeue_stalled(session=s, job_id=job_id)
                send_chunks(again)
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise LenscatError(
                    f"job {job_id} did not finish within {timeout_s:.0f} s "
                    f"({state.n_chunks_done}/{state.n_chunks} chunks done)"
                )
            time.sleep(poll_s)
    finally:
        bar.close()


def submit_and_wait(
    task_name: str,
    job_id: int,
    chunks: list[int],
    *,
    wait: bool = True,
    local_workers: int | None = None,
    unit: str = "item",
    desc: str | None = None,
    progress: bool = True,
) -> JobState | None:
    """Queue one task per chunk, then (optionally) follow the job to its end.

    ``local_workers=None`` starts one local worker when the broker is the embedded one and no
    worker answers a ping (a laptop user need not start one); with an external broker it only
    warns when nobody listens. Returns the final state, or None with ``wait=False``.
    """
    from lenscat.tasks.app import get_app

    app = get_app()
    for c in chunks:
        app.send_task(task_name, args=[job_id, c])
    if not wait:
        return None
    if not chunks:
        with session_scope() as s:
            return job_state(job_id, session=s)
    n_local = local_workers
    if n_local is None:
        listening = workers_listening(app)
        embedded = get_settings().broker_url is None
        n_local = 1 if embedded and not listening else 0
        if not embedded and not listening:
            import click

            click.echo(
                "lenscat: no worker answers on the broker yet; start one with `lenscat worker` "
                "(Ctrl-C stops waiting, not the job)",
                err=True,
            )
    if n_local:
        with spawn_local_workers(n_local):
            return wait_for_job(job_id, unit=unit, desc=desc, progress=progress)
    return wait_for_job(job_id, unit=unit, desc=desc, progress=progress)
