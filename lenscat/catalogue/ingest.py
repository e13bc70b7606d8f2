"""Ingest survey source catalogues: validate, COPY into staging, one upsert per batch, ANALYZE.

The work splits in two:

* :func:`~lenscat.catalogue.ingest_validate.prepare_sources` reads and validates the whole file
  without touching the database; every refused row gets a
  :class:`~lenscat.catalogue.ingest_log.Reject` naming its row, column and reason;
* :func:`~lenscat.catalogue.ingest_write.write_batch` writes one batch in the caller's transaction
  (COPY -> staging -> upsert on ``uq_sources_survey_objid`` -> batch marker), and
  :func:`run_source_ingest` (here) drives the batches, one transaction each (two at a time, on two
  connections), skipping those an earlier run committed.

A file with an ``images`` dataset is registered as a cutout store first
(:mod:`lenscat.catalogue.ingest_cutouts`); the dataclasses live in :mod:`lenscat.catalogue.types`.
:func:`ingest_sources` is the entry point the shells call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text

from lenscat.catalogue import ingest_log
from lenscat.catalogue.ingest_cutouts import register_cutout_file
from lenscat.catalogue.ingest_validate import prepare_sources
from lenscat.catalogue.ingest_write import write_batch
from lenscat.catalogue.surveys import ensure_survey
from lenscat.catalogue.types import IngestSummary, PreparedSources, SourceMapping
from lenscat.db import session as db_session
from lenscat.db.session import session_scope
from lenscat.errors import LenscatError
from lenscat.sky.coords import parse_angle_quantity

INGEST_WORKERS = 2
"""Batches written at the same time, each on its own connection and in its own transaction."""


def _ingest_workers(n_batches: int) -> int:
    """How many batches to write at once: 1 when sessions join a bound (test) connection."""
    if db_session._bound_connection is not None or n_batches < 2:
        return 1
    return max(1, min(INGEST_WORKERS, os.cpu_count() or 1, n_batches))


def _write_concurrently(
    todo: list[tuple[int, int, int]],
    write_one: Callable[[int, int, int], None],
    workers: int,
    on_done: Callable[[int], object],
) -> int:
    """Run ``write_one(batch_no, start, stop)`` for ``todo`` on ``workers`` threads.

    At most ``workers`` batches are in flight. On an error or an interrupt no new batch starts,
    the batches in flight finish (commit or roll back: each is one transaction), and the
    exception propagates. Returns the number of batches written.
    """
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    written = 0
    running: dict[Future[None], int] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lenscat-ingest")

    def collect(block_until: int) -> None:
        nonlocal written
        while len(running) > block_until:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                n = running.pop(fut)
                fut.result()
                written += 1
                on_done(n)

    try:
        for b, start, stop in todo:
            collect(workers - 1)
            running[pool.submit(write_one, b, start, stop)] = stop - start
        collect(0)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return written


def run_source_ingest(
    prep: PreparedSources,
    *,
    batch_rows: int,
    progress: bool | None = None,
    stop_after_batches: int | None = None,
) -> IngestSummary:
    """Write a prepared file in batches, one transaction each; resumable and idempotent.

    Outside tests (no bound connection) two batches are written at once, on two connections:
    while one batch's upsert runs in the database, the other's binary COPY stream is built and copied.

    Parameters
    ----------
    prep
        Output of :func:`prepare_sources`.
    batch_rows
        Rows per all-or-nothing batch.
    progress
        Show a progress bar (None: only on a terminal).
    stop_after_batches
        Stop after writing this many new batches (simulates an interruption; for tests).
    """
    from tqdm import tqdm

    starts = list(range(0, prep.n_rows, batch_rows))
    with session_scope() as session:
        survey = ensure_survey(prep.survey, prep.bands, session=session, pixel_scale_arcsec=prep.pixel_scale_arcsec)
        record = ingest_log.open_ingest(
            session=session,
            kind="sources",
            target=prep.survey,
            path=prep.path,
            sha256=prep.sha256,
            options=prep.options,
            n_rows=prep.n_rows,
            n_batches=len(starts),
        )
        file_id, moved_from, cutout_changes = register_cutout_file(prep, session=session)
    skipped = len(record.done_batches)
    bounds = [(b, start, min(start + batch_rows, prep.n_rows)) for b, start in enumerate(starts)]
    todo = [x for x in bounds if x[0] not in record.done_batches]
    if stop_after_batches is not None:
        todo = todo[: max(stop_after_batches, 0)]

    def write_one(b: int, start: int, stop: int) -> None:
        rows = np.arange(start, stop)
        good_rows = rows[prep.good[start:stop]]
        batch_rejects = [r for r in prep.rejects if start < r.row <= stop]
        with session_scope() as session:
            ins, upd, unch = write_batch(
                prep,
                good_rows,
                session=session,
                survey_id=survey.survey_id,
                ingest_id=record.ingest_id,
                cutout_file_id=file_id,
            )
            ingest_log.record_rejects(batch_rejects, session=session, ingest_id=record.ingest_id)
            ingest_log.record_batch(
                session=session,
                ingest_id=record.ingest_id,
                batch_no=b,
                row_start=start + 1,
                row_stop=stop,
                n_inserted=ins,
                n_updated=upd,
                n_unchanged=unch,
                n_rejected=int((~prep.good[start:stop]).sum()),
            )

    written = 0
    bar = tqdm(
        total=prep.n_rows,
        unit="rows",
        desc=f"ingest {prep.path.name}",
        disable=progress is False if progress is not None else None,
        leave=False,
    )
    bar.update(sum(stop - start for b, start, stop in bounds if b in record.done_batches))
    try:
        workers = _ingest_workers(len(todo))
        if workers > 1:
            written = _write_concurrently(todo, write_one, workers, bar.update)
        else:
            for b, start, stop in todo:
                write_one(b, start, stop)
                written += 1
                bar.update(stop - start)
    except Exception as exc:
        with session_scope() as session:
            ingest_log.fail_ingest(session=session, ingest_id=record.ingest_id, message=str(exc))
        raise
    finally:
        bar.close()
    complete = written + skipped == len(starts)
    with session_scope() as session:
        if complete:
            totals = ingest_log.close_ingest(session=session, ingest_id=record.ingest_id)
            if written:
                session.execute(text("ANALYZE lenscat.sources"))
        else:
            totals = ingest_log.batch_totals(session=session, ingest_id=record.ingest_id)
    return IngestSummary(
        path=prep.path,
        target=prep.survey,
        ingest_id=record.ingest_id,
        n_rows=prep.n_rows,
        inserted=totals["inserted"],
        updated=totals["updated"],
        unchanged=totals["unchanged"],
        rejected=totals["rejected"],
        batches_total=len(starts),
        batches_skipped=skipped,
        mapped_columns=prep.mapped_columns,
        ignored_columns=prep.ignored_columns,
        rejects=prep.rejects,
        cutouts_moved_from=moved_from,
        cutouts_changed=cutout_changes,
    )


def ingest_sources(
    path: str | Path,
    survey: str,
    mapping: SourceMapping | None = None,
    *,
    format: str | None = None,
    batch_rows: int = 100_000,
    progress: bool | None = None,
    strict: bool = False,
    stop_after_batches: int | None = None,
    pixel_scale: Any = None,
) -> IngestSummary:
    """Validate and load a source catalogue file (see :func:`prepare_sources`).

    With ``strict``, any rejected row stops the ingest before anything is written. ``pixel_scale``
    (an angle Quantity or a number in arcsec per pixel) records the pixel scale of the file's
    cutouts on the survey (a Stein-layout file does not say it; FITS cutouts carry a WCS); a
    survey that already has a different one is an error.
    """
    scale_arcsec: float | None = None
    if pixel_scale is not None:
        scale_arcsec = float(parse_angle_quantity(pixel_scale).to_value("arcsec"))
        if not scale_arcsec > 0:
            raise LenscatError(f"pixel scale must be positive, got {pixel_scale!r}")
    existing: list[str] | None = None
    with session_scope() as session:
        row = session.execute(text("SELECT bands FROM lenscat.surveys WHERE name = :n"), {"n": survey}).one_or_none()
        if row is not None and row[0]:
            existing = list(row[0])
    prep = prepare_sources(path, survey, mapping, format=format, existing_bands=existing)
    prep.pixel_scale_arcsec = scale_arcsec
    if strict and prep.rejects:
        first = prep.rejects[0]
        line = first.line(prep.path, lambda p: "{" + p + "}")  # the reject's own parameters stay placeholders
        raise LenscatError(
            f"{line} ({len(prep.rejects)} rejects; nothing written: {{strict}})", params=("strict", *first.params)
        )
    return run_source_ingest(prep, batch_rows=batch_rows, progress=progress, stop_after_batches=stop_after_batches)
