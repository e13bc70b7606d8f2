"""Jobs run by Celery workers: chunk bookkeeping in Postgres, submission, progress, local workers.

A job is split into chunks (id ranges). A worker marks a chunk ``running`` (counting attempts) in
one short transaction, then does the work and marks it ``done`` in the same transaction as the
results, so a chunk is either finished with its results or not at all. Progress bars read these
tables, never the broker, so they survive restarts of the CLI.

An item of a chunk that cannot be processed (a missing or unreadable cutout, a NaN image) is
recorded in ``lenscat.job_item_failures`` with its reason (:func:`record_item_failures`) and left
out; the rest of the chunk is written. While it works, a worker's heartbeat thread touches the
chunk's ``heartbeat_at`` every ``LENSCAT_JOB_HEARTBEAT_S``; a running chunk whose heartbeat is
older than ``LENSCAT_JOB_STALL_S`` is stalled (:func:`stalled_chunks`): its worker died, and
:func:`requeue_stalled` (``lenscat reprocess``, Celery beat, a CLI waiting for the job) sends it
again without waiting for the broker's visibility timeout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session
from tqdm import tqdm

from lenscat.db.session import session_scope
from lenscat.errors import LenscatError
from lenscat.tasks.names import TASK_OF_JOB_KIND


@dataclass
class JobState:
    """Progress of one job."""

    job_id: int
    status: str
    n_items: int
    n_done: int
    n_chunks: int
    n_chunks_done: int
    n_chunks_failed: int
    n_retried: int
    message: str | None
    n_items_failed: int = 0
    n_chunks_stalled: int = 0

    @property
    def finished(self) -> bool:
        """True when no chunk is left to run."""
        return self.status in ("done", "failed", "cancelled")


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


TASKS = TASK_OF_JOB_KIND
"""Celery task that runs one chunk, per job kind."""


def without_failed_items(id_sql: str, model_id: int) -> str:
    """Wrap a source-id query so sources that failed under the model version are left out.

    A failure counts until its input changes: the source row updated after the failure (a
    re-ingest that changed it) brings the source back; so does a change of its cutout pixels,
    which removes the failure (:func:`lenscat.catalogue.ingest.mark_cutouts_stale`).
    """
    return (
        f"SELECT q.id FROM ({id_sql}) q WHERE NOT EXISTS ("
        "SELECT 1 FROM lenscat.job_item_failures f JOIN lenscat.sources s ON s.source_id = f.item_id "
        f"WHERE f.model_id = {int(model_id)} AND f.item_id = q.id AND s.updated_at <= f.failed_at)"
    )


def record_item_failures(
    job_id: int, model_id: int, kind: str, failures: list[tuple[int, str]], *, session: Session
) -> int:
    """Record items a chunk could not process (upsert on (model version, item): a re-run counts attempts).

    Parameters
    ----------
    job_id, model_id, kind
        The job, its model version and kind (``'embed'``, ``'score'``).
    failures
        (item id, one-line reason) pairs.
    session
        The chunk's transaction: failures commit with its results.

    Returns
    -------
    int
        Items recorded.
    """
    if not failures:
        return 0
    latest = {int(i): " ".join(str(r).split())[:2000] for i, r in failures}
    session.execute(
        text(
            """
            INSERT INTO lenscat.job_item_failures AS f (model_id, item_id, job_id, kind, reason)
            SELECT :m, t.item_id, :j, :k, t.reason
            FROM unnest(CAST(:ids AS bigint[]), CAST(:reasons AS text[])) AS t (item_id, reason)
            ON CONFLICT ON CONSTRAINT pk_job_item_failures DO UPDATE
            SET job_id = EXCLUDED.job_id, reason = EXCLUDED.reason, attempts = f.attempts + 1, failed_at = now()
            """
        ),
        {"m": model_id, "j": job_id, "k": kind, "ids": list(latest), "reasons": list(latest.values())},
    )
    return len(latest)


def clear_item_failures(model_id: int, item_ids: Any, lo_id: int, hi_id: int, *, session: Session) -> None:
    """Forget earlier failures of items now processed under the model version (range-bounded)."""
    ids = [int(i) for i in item_ids]
    if ids:
        session.execute(
            text(
                "DELETE FROM lenscat.job_item_failures WHERE model_id = :m AND item_id BETWEEN :lo AND :hi "
                "AND item_id = ANY(:ids)"
            ),
            {"m": model_id, "lo": lo_id, "hi": hi_id, "ids": ids},
        )


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

    ``n_failed`` items of the chunk were recorded as failed (:func:`record_item_failures`).
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
    from lenscat.db import session as db_session
    from lenscat.settings import get_settings

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


def _stall_s(stall_s: float | None) -> float:
    from lenscat.settings import get_settings

    return float(stall_s if stall_s is not None else get_settings().job_stall_s)


_STALLED = "c.status = 'running' AND coalesce(c.heartbeat_at, c.started_at) < now() - make_interval(secs => :stall)"


@dataclass
class StalledChunk:
    """A running chunk whose worker stopped beating."""

    job_id: int
    kind: str
    chunk_no: int
    worker: str | None
    started_at: Any
    heartbeat_at: Any
    heartbeat_age_s: float
    n_items: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "job_id": self.job_id,
            "kind": self.kind,
            "chunk_no": self.chunk_no,
            "worker": self.worker,
            "started_at": None if self.started_at is None else self.started_at.isoformat(),
            "heartbeat_at": None if self.heartbeat_at is None else self.heartbeat_at.isoformat(),
            "heartbeat_age_s": round(self.heartbeat_age_s, 1),
            "n_items": self.n_items,
        }


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
            WHERE {_STALLED} AND j.status IN ('queued', 'running')
            """
            + ("AND c.job_id = :j " if job_id is not None else "")
            + "ORDER BY c.job_id, c.chunk_no"
        ),
        {"stall": _stall_s(stall_s), **({"j": job_id} if job_id is not None else {})},
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
                f"coalesce(c.heartbeat_at, c.started_at)::text WHERE c.job_id = :j AND c.chunk_no = :n AND {_STALLED}"
            ),
            {"j": c.job_id, "n": c.chunk_no, "stall": _stall_s(stall_s)},
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
            + _STALLED
            + """) AS stalled
            FROM lenscat.jobs j LEFT JOIN lenscat.job_chunks c USING (job_id)
            WHERE j.job_id = :j GROUP BY j.job_id
            """
        ),
        {"j": job_id, "stall": _stall_s(None)},
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
    stall = _stall_s(None)
    chunks = session.execute(
        text(
            f"""
            SELECT c.chunk_no, c.status, c.worker, c.attempts, c.started_at, c.heartbeat_at, c.error,
                   extract(epoch FROM now() - coalesce(c.heartbeat_at, c.started_at))::float8 AS age,
                   ({_STALLED}) AS stalled
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
    would (``work(job_id, chunk_no, lo_id, hi_id, session=...)``, see :func:`run_chunk`). The
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


def workers_listening(app: Any, timeout_s: float = 1.0) -> list[str]:
    """Names of Celery workers answering a ping on the app's broker."""
    try:
        replies = app.control.ping(timeout=timeout_s) or []
    except Exception:  # broker unreachable: no worker can be listening either
        return []
    return [name for reply in replies for name in reply]


@contextmanager
def spawn_local_workers(
    n: int, *, concurrency: int = 1, wait_s: float = 60.0
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``n`` ``lenscat worker`` processes for the duration of the block, then stop them.

    Used when nobody runs a worker on the embedded broker. Each process gets its own process
    group so that stopping it also stops its pool children. The children inherit this process's
    environment, so they read the same settings and reach the same (embedded) broker and database.
    """
    from lenscat.settings import get_settings
    from lenscat.tasks.app import get_app

    logs = get_settings().home.expanduser().resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(n):
            log = logs / f"worker-local-{i}.log"
            with open(log, "ab") as fh:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "lenscat.cli",
                            "worker",
                            "--concurrency",
                            str(concurrency),
                            "--hostname",
                            f"lenscat-local-{os.getpid()}-{i}@%h",
                            "--loglevel",
                            "INFO",
                        ],
                        start_new_session=True,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + wait_s
        app = get_app()
        while len(workers_listening(app, 0.5)) < n:
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                raise LenscatError(
                    f"a local worker exited with status {dead[0].returncode} at start-up; see {logs}/worker-local-*.log"
                )
            if time.monotonic() > deadline:
                raise LenscatError(f"local workers did not answer within {wait_s:.0f} s")
            time.sleep(0.5)
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


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
    from lenscat.settings import get_settings
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
