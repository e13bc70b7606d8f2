"""The worker side of a chunk: mark it running, beat while working, mark it done or failed.

A worker marks a chunk ``running`` (counting attempts) in one short transaction, then does the work
and marks it ``done`` in the same transaction as the results, so a chunk is either finished with
its results or not at all. While it works, a worker's heartbeat thread touches the chunk's
``heartbeat_at`` every ``LENSCAT_JOB_HEARTBEAT_S`` (:func:`heartbeat`), so a chunk whose worker
died is seen as stalled (:mod:`lenscat.jobs.stalls`).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.db import session as db_session
from lenscat.db.session import session_scope
from lenscat.errors import LenscatError
from lenscat.settings import get_settings


def worker_name() -> str:
    """``hostname:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def start_chunk(job_id: int, chunk_no: int, *, session: Session) -> tuple[int, int, str] | None:
    """Mark a chunk running (attempts + 1); returns (lo_id, hi_id, status before) or None if done.

    A chunk already ``done`` is not run again (a redelivered message after success is a no-op).
    """
    row = session.execute(
        text("SELECT lo_id, hi_id, status FROM lenscat.job_chunks WHERE job_id = :j AND chunk_no = :c FOR UPDATE"),
        {"j": job_id, "c": chunk_no},
    ).one_or_none()
    if row is None:
        raise LenscatError(f"job {job_id} has no chunk {chunk_no}")
    if row.status == "done":
        return None
    session.execute(
        text(
            "UPDATE lenscat.job_chunks SET status = 'running', attempts = attempts + 1, worker = :w, "
            "started_at = now(), heartbeat_at = now(), error = NULL WHERE job_id = :j AND chunk_no = :c"
        ),
        {"w": worker_name(), "j": job_id, "c": chunk_no},
    )
    session.execute(
        text("UPDATE lenscat.jobs SET status = 'running' WHERE job_id = :j AND status = 'queued'"),
        {"j": job_id},
    )
    return int(row.lo_id), int(row.hi_id), str(row.status)


def finish_chunk(
    job_id: int, chunk_no: int, n_written: int, seconds: float, *, session: Session, n_failed: int = 0
) -> None:
    """Mark a chunk done (in the transaction that wrote its results) and update the job.

    ``n_failed`` items of the chunk were recorded as failed (:func:`lenscat.jobs.failures.record_item_failures`).
    """
    updated = session.execute(
        text(
            "UPDATE lenscat.job_chunks SET status = 'done', n_written = :n, n_failed = :nf, finished_at = now(), "
            "seconds = :s WHERE job_id = :j AND chunk_no = :c AND status <> 'done' RETURNING n_items"
        ),
        {"n": n_written, "nf": int(n_failed), "s": seconds, "j": job_id, "c": chunk_no},
    ).scalar()
    if updated is None:
        return  # a concurrent duplicate finished it first
    session.execute(
        text(
            """
            UPDATE lenscat.jobs j SET n_done = j.n_done + :n,
                status = CASE WHEN NOT EXISTS (SELECT 1 FROM lenscat.job_chunks c
                                               WHERE c.job_id = j.job_id AND c.status <> 'done')
                              THEN 'done' ELSE j.status END,
                finished_at = CASE WHEN NOT EXISTS (SELECT 1 FROM lenscat.job_chunks c
                                                    WHERE c.job_id = j.job_id AND c.status <> 'done')
                                   THEN now() END
            WHERE j.job_id = :j
            """
        ),
        {"n": int(updated), "j": job_id},
    )


def fail_chunk(job_id: int, chunk_no: int, error: str, *, session: Session) -> None:
    """Record a permanent failure of a chunk; the job becomes ``failed``."""
    session.execute(
        text(
            "UPDATE lenscat.job_chunks SET status = 'failed', error = :e, finished_at = now() "
            "WHERE job_id = :j AND chunk_no = :c AND status <> 'done'"
        ),
        {"e": error[:2000], "j": job_id, "c": chunk_no},
    )
    session.execute(
        text("UPDATE lenscat.jobs SET status = 'failed', message = :e, finished_at = now() WHERE job_id = :j"),
        {"e": f"chunk {chunk_no}: {error}"[:2000], "j": job_id},
    )


def run_chunk(job_id: int, chunk_no: int, work: Callable[..., int]) -> dict[str, Any]:
    """The body of a chunk task: mark it running, do ``work`` with its results in one transaction.

    ``work(job_id, chunk_no, lo_id, hi_id, session=...)`` writes the chunk's results and marks it
    done (``finish_chunk``) and returns the number written. A chunk already done is skipped (a
    redelivered message is a no-op); a :class:`LenscatError` (permanent: a missing checkpoint, an
    unreadable file) marks the chunk failed and is re-raised, other errors leave it to be retried.
    """
    with session_scope() as session:
        started = start_chunk(job_id, chunk_no, session=session)
    if started is None:
        return {"job_id": job_id, "chunk_no": chunk_no, "skipped": True}
    lo, hi, _ = started
    try:
        with heartbeat(job_id, chunk_no), session_scope() as session:
            n = work(job_id, chunk_no, lo, hi, session=session)
    except LenscatError as exc:
        with session_scope() as session:
            fail_chunk(job_id, chunk_no, str(exc), session=session)
        raise
    return {"job_id": job_id, "chunk_no": chunk_no, "written": n}


@contextmanager
def heartbeat(job_id: int, chunk_no: int, interval_s: float | None = None) -> Iterator[None]:
    """Touch the chunk's ``heartbeat_at`` every ``interval_s`` (``LENSCAT_JOB_HEARTBEAT_S``) while the block runs.

    A thread does it, each beat in its own short transaction, so a worker busy in one long
    forward pass still shows it is alive; a killed worker stops beating and its chunk is seen as
    stalled. Nothing runs when sessions join a bound (test) connection, which a thread must not share.
    """
    if db_session._bound_connection is not None:
        yield
        return
    every = float(interval_s if interval_s is not None else get_settings().job_heartbeat_s)
    me = worker_name()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                with session_scope() as s:
                    s.execute(
                        text(
                            "UPDATE lenscat.job_chunks SET heartbeat_at = now() WHERE job_id = :j "
                            "AND chunk_no = :c AND status = 'running' AND worker = :w"
                        ),
                        {"j": job_id, "c": chunk_no, "w": me},
                    )
            except Exception:  # a missed beat is harmless; the next one may get through
                continue

    thread = threading.Thread(target=beat, name=f"lenscat-heartbeat-{job_id}-{chunk_no}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
