"""Scheduled re-processing: queue whatever new sources, embeddings, spectra or model versions left missing.

For the latest version of every encoder that can run (not a set of precomputed vectors) it plans
the embeddings still missing, and for the latest version of every classifier the scores still
missing (a new classifier version has none, so it is scored in full; new embeddings make their
sources scorable), and for the latest version of every spectral detector the spectra it has not
scanned. Sources already in a queued or running chunk of the same model are left out,
so a tick that comes while work is under way queues nothing twice, and one advisory lock keeps
two planners (Celery beat and ``lenscat reprocess``) from racing. Planning is one transaction;
the chunks are sent to the workers after it commits.

Sources that failed under a model version (``lenscat.job_item_failures``: an unreadable cutout, NaN
pixels) are not planned again for it until their input changes, unless asked (``retry_failed``),
so one bad cutout is not re-queued every tick. Chunks whose worker died (stalled: no heartbeat for
``LENSCAT_JOB_STALL_S``) are queued again first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.classifiers.scoring import missing_scores_sql, plan_score_job
from lenscat.embeddings.embed import _missing_sql, plan_embed_job
from lenscat.embeddings.vectors import ensure_hnsw_index, has_hnsw_index
from lenscat.jobs.failures import without_failed_items
from lenscat.jobs.service import outside_open_chunks, pending_chunks
from lenscat.jobs.stalls import requeue_stalled, stalled_chunks
from lenscat.registry.versions import ModelVersion, get_model, latest_model_ids
from lenscat.tasks.names import TASK_OF_JOB_KIND

LOCK_KEY = "lenscat.reprocess"


@dataclass
class Planned:
    """One job queued (or, in a dry run, that would be)."""

    kind: str
    model: str
    job_id: int | None
    n_items: int
    n_chunks: int
    chunks: list[int]
    requeued: bool = False
    """The chunks are stalled chunks of an existing job, queued again (not a new job)."""

    @property
    def task(self) -> str:
        """Celery task that runs a chunk of this job."""
        return TASK_OF_JOB_KIND[self.kind]

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for output."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "model": self.model,
            "job_id": self.job_id,
            "items": self.n_items,
            "chunks": self.n_chunks,
        }
        if self.requeued:
            out["requeued_stalled"] = self.chunks
        return out


def _count(sql: str, session: Session) -> int:
    session.execute(text("SELECT set_config('enable_nestloop', 'off', true)"))  # see jobs.plan_chunks
    n = int(session.execute(text(f"SELECT count(*) FROM ({sql}) q")).scalar_one())
    session.execute(text("SELECT set_config('enable_nestloop', 'on', true)"))
    return n


def _requeue(session: Session, dry_run: bool) -> list[Planned]:
    """Stalled chunks (their worker died) queued again, one entry per job."""
    found = stalled_chunks(session=session) if dry_run else requeue_stalled(session=session)
    by_job: dict[int, list[Any]] = {}
    for c in found:
        by_job.setdefault(c.job_id, []).append(c)
    out = []
    for job_id, chunks in by_job.items():
        label = session.execute(
            text(
                "SELECT coalesce(m.name || '@' || m.version, '?') FROM lenscat.jobs j "
                "LEFT JOIN lenscat.model_versions m ON m.model_id = j.model_id "
                "WHERE j.job_id = :j"
            ),
            {"j": job_id},
        ).scalar_one()
        out.append(
            Planned(
                chunks[0].kind,
                str(label),
                job_id,
                sum(c.n_items for c in chunks),
                len(chunks),
                [c.chunk_no for c in chunks],
                requeued=True,
            )
        )
    return out


def plan_reprocess(
    *,
    session: Session,
    dry_run: bool = False,
    embed_chunk: int = 1024,
    score_chunk: int = 20_000,
    scan_chunk: int = 5000,
    retry_failed: bool = False,
) -> list[Planned]:
    """Plan the missing embeddings, scores and spectral scans of the latest model versions.

    Parameters
    ----------
    session
        Database session; the caller commits, then sends ``Planned.chunks`` with ``Planned.task``.
    dry_run
        Count what would be queued, create no job, re-queue no stalled chunk.
    embed_chunk, score_chunk, scan_chunk
        Sources (spectra) per task.
    retry_failed
        Plan again the sources whose embedding or score failed before under the same version
        (by default they wait until their input changes).
    """
    from lenscat.spectra.scan import plan_scan, unscanned_sql

    session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": LOCK_KEY})
    out: list[Planned] = _requeue(session, dry_run)

    def skip_failed(sql: str, m: ModelVersion) -> str:
        return sql if retry_failed else without_failed_items(sql, m.model_id)

    # (job kind, model kind, missing-items SQL, planner, chunk size); external encoders cannot run
    work: list[tuple[str, str, Callable[[ModelVersion], str], Callable[..., Any], int]] = [
        (
            "embed",
            "encoder",
            lambda m: skip_failed(_missing_sql(m.model_id, False), m),
            lambda m, **kw: plan_embed_job(m.label, retry_failed=retry_failed, **kw),
            embed_chunk,
        ),
        (
            "score",
            "classifier",
            lambda m: skip_failed(missing_scores_sql(m), m),
            lambda m, **kw: plan_score_job(m, reason="reprocess", retry_failed=retry_failed, **kw),
            score_chunk,
        ),
        (
            "spectral_scan",
            "detector",
            unscanned_sql,
            lambda m, **kw: plan_scan(m, reason="reprocess", **kw),
            scan_chunk,
        ),
    ]
    for job_kind, model_kind, missing, plan, chunk in work:
        for mid in latest_model_ids(model_kind, session=session):
            model = get_model(model_kind, mid, session=session)
            if model_kind == "encoder" and model.origin == "external":  # precomputed vectors
                continue
            n = _count(outside_open_chunks(missing(model), job_kind, model.model_id), session)
            if n == 0:
                continue
            if dry_run:
                out.append(Planned(job_kind, model.label, None, n, -(-n // chunk), []))
                continue
            job = plan(model, chunk_size=chunk, exclude_open=True, session=session)
            out.append(
                Planned(
                    job_kind,
                    model.label,
                    job.job_id,
                    job.n_items,
                    job.n_chunks,
                    pending_chunks(job.job_id, session=session),
                )
            )
    return out


def build_missing_indexes(*, session: Session) -> list[str]:
    """Build the HNSW index of every latest encoder that has vectors, no index and no open embed job."""
    built = []
    for mid in latest_model_ids("encoder", session=session):
        enc = get_model("encoder", mid, session=session)
        busy = session.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM lenscat.jobs WHERE kind = 'embed' "
                "AND model_id = :m AND status IN ('queued', 'running'))"
            ),
            {"m": mid},
        ).scalar()
        has_vectors = session.execute(
            text("SELECT EXISTS (SELECT 1 FROM lenscat.embeddings WHERE model_id = :m)"), {"m": mid}
        ).scalar()
        if has_vectors and not busy and not has_hnsw_index(enc, session=session):
            ensure_hnsw_index(enc, session=session)
            built.append(enc.label)
    return built


def send(planned: list[Planned]) -> int:
    """Send every planned chunk to the workers; returns the number of tasks sent."""
    from lenscat.tasks.app import get_app

    app = get_app()
    n = 0
    for p in planned:
        for c in p.chunks:
            app.send_task(p.task, args=[p.job_id, c])
            n += 1
    return n
