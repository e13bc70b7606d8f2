"""Scoring with a classifier version: the scorable sources, ``score`` jobs, chunks and the score upsert."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.classifiers.inputs import catalogue_images, survey_ids
from lenscat.classifiers.loaders import derived_module, score_function
from lenscat.classifiers.types import PlannedScoreJob
from lenscat.classifiers.versions import DERIVED_ARCHITECTURES
from lenscat.db.session import raw_connection
from lenscat.embeddings.vectors import read_embeddings
from lenscat.errors import LenscatError
from lenscat.jobs.chunks import finish_chunk
from lenscat.jobs.failures import clear_item_failures, record_item_failures, without_failed_items
from lenscat.jobs.service import create_job, outside_open_chunks, plan_chunks
from lenscat.registry.versions import ModelVersion, get_model

DEFAULT_CHUNK = 20_000


def candidates_sql(model: ModelVersion, with_surveys: bool = False) -> str:
    """SQL (one column ``id``) of the sources the classifier version can score: embedded by its
    encoder (linear), or with a cutout (image classifiers); see the ensemble and anomaly modules for theirs."""
    if model.architecture in DERIVED_ARCHITECTURES:
        return str(derived_module(model).candidates_sql(model, with_surveys))
    if model.architecture == "linear":
        base = (
            "SELECT e.source_id AS id FROM lenscat.embeddings e "
            + ("JOIN lenscat.sources s USING (source_id) " if with_surveys else "")
            + f"WHERE e.model_id = {int(model.parent_model_id or 0)}"
        )
    else:
        base = "SELECT s.source_id AS id FROM lenscat.sources s WHERE s.cutout_file_id IS NOT NULL"
    return base + (" AND s.survey_id = ANY(:sids)" if with_surveys else "")


def missing_scores_sql(model: ModelVersion, with_surveys: bool = False) -> str:
    """SQL (one column ``id``) of the sources the classifier version can score but has not."""
    return (
        f"SELECT q.id FROM ({candidates_sql(model, with_surveys)}) q WHERE NOT EXISTS "
        f"(SELECT 1 FROM lenscat.scores c WHERE c.model_id = {int(model.model_id)} AND c.source_id = q.id)"
    )


def _ids_in_range(id_sql: str, lo: int, hi: int, sids: list[int] | None, session: Session) -> np.ndarray:
    """Sorted ids of ``id_sql`` within [lo, hi] (a range index scan)."""
    return np.asarray(
        session.execute(
            text(f"SELECT id FROM ({id_sql}) q WHERE id BETWEEN :lo AND :hi ORDER BY id"),
            {"lo": lo, "hi": hi, **({"sids": sids} if sids else {})},
        )
        .scalars()
        .all(),
        dtype=np.int64,
    )


def plan_score_job(
    classifier: str | ModelVersion,
    *,
    session: Session,
    surveys: list[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    reason: str = "requested",
    exclude_open: bool = False,
    retry_failed: bool = True,
) -> PlannedScoreJob:
    """Create a ``score`` job over the sources lacking a score from the classifier version.

    ``exclude_open`` leaves out sources already in a queued or running chunk of the same version;
    ``retry_failed=False`` leaves out sources whose scoring failed before under this version until
    their input changes (:func:`lenscat.jobs.failures.without_failed_items`).
    """
    model = classifier if isinstance(classifier, ModelVersion) else get_model("classifier", classifier, session=session)
    sids = survey_ids(surveys, session)
    if model.architecture == "ensemble" and reason == "requested":  # members must have scored first
        from lenscat.classifiers.ensemble import check_members_scored, load_ensemble

        check_members_scored(
            [get_model("classifier", i, session=session) for i in load_ensemble(model).member_ids],
            session=session,
            surveys=surveys,
        )
    job_id = create_job(
        "score",
        model.model_id,
        {"classifier": model.label, "surveys": surveys or [], "chunk_size": int(chunk_size), "reason": reason},
        session=session,
    )
    id_sql = missing_scores_sql(model, bool(sids))
    if not retry_failed:
        id_sql = without_failed_items(id_sql, model.model_id)
    if exclude_open:
        id_sql = outside_open_chunks(id_sql, "score", model.model_id)
    n_items, n_chunks = plan_chunks(job_id, id_sql, {"sids": sids} if sids else {}, chunk_size, session=session)
    return PlannedScoreJob(job_id, model, n_items, n_chunks)


def upsert_scores(
    model: ModelVersion, source_ids: np.ndarray, scores: np.ndarray, *, job_id: int | None, session: Session
) -> int:
    """COPY (source, score) into staging, then one upsert on ``pk_scores``; returns rows written."""
    ids = np.asarray(source_ids, dtype=np.int64)
    sc = np.asarray(scores, dtype=np.float64)
    if len(ids) != len(sc):
        raise LenscatError(f"{len(ids)} source ids but {len(sc)} scores")
    if len(ids) == 0:
        return 0
    if not np.isfinite(sc).all() or (sc < 0).any() or (sc > 1).any():
        raise LenscatError(f"classifier {model.label} produced scores outside [0, 1]")
    conn = raw_connection(session)
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS scores_stage (source_id bigint, score real) ON COMMIT DELETE ROWS")
        cur.execute("TRUNCATE scores_stage")
        with cur.copy("COPY scores_stage (source_id, score) FROM STDIN") as copy:
            copy.write("".join(f"{i}\t{s:.9g}\n" for i, s in zip(ids.tolist(), sc.tolist(), strict=True)))
        cur.execute(
            f"""
            INSERT INTO lenscat.scores AS c (model_id, source_id, score, job_id)
            SELECT {int(model.model_id)}, source_id, score, %s FROM scores_stage
            ON CONFLICT ON CONSTRAINT pk_scores DO UPDATE
            SET score = EXCLUDED.score, job_id = EXCLUDED.job_id, created_at = now()
            WHERE c.score IS DISTINCT FROM EXCLUDED.score
            """,
            (job_id,),
        )
        n = cur.rowcount
        cur.execute("TRUNCATE scores_stage")
    return int(n)


_ITEM_ERRORS = (LenscatError, OSError, ValueError, KeyError, IndexError)
"""What reading or scoring one source's cutout can raise for a reason of that source."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _score_images(
    fn: Any, imgs: Any, positions: np.ndarray, ids: np.ndarray, failures: list[tuple[int, str]]
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the cutouts at ``positions`` of ``imgs``; a batch that fails is retried one by one,
    and the sources that fail alone (unreadable cutout, NaN pixels, wrong shape) go to ``failures``."""
    try:
        x = imgs.get(positions)
        finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if finite.all():
            return ids, np.asarray(fn(x), dtype=np.float64).reshape(-1)
    except _ITEM_ERRORS:
        pass
    keep: list[int] = []
    scores: list[float] = []
    for pos, sid in zip(positions.tolist(), ids.tolist(), strict=True):
        try:
            x = imgs.get(np.array([pos], dtype=np.int64))
            if not np.isfinite(x).all():
                failures.append((int(sid), "cutout has NaN or infinite pixels"))
                continue
            scores.append(float(np.asarray(fn(x), dtype=np.float64).reshape(-1)[0]))
            keep.append(int(sid))
        except _ITEM_ERRORS as exc:
            failures.append((int(sid), _one_line(exc)))
    return np.array(keep, dtype=np.int64), np.array(scores, dtype=np.float64)


def score_chunk(
    job_id: int,
    chunk_no: int,
    lo_id: int,
    hi_id: int,
    *,
    session: Session,
    device: str | None = None,
    batch_size: int = 256,
) -> int:
    """Score the sources of one chunk that still lack a score, and mark the chunk done (one transaction).

    What is missing is the set difference of two range scans (scorable ids, scored ids), done in
    numpy: an anti-join planned on statistics taken before this job wrote its first scores can
    degrade into a nested loop over every score of the version (quadratic in the job's size).
    A source that cannot be scored (its cutout unreadable or with NaN pixels, a non-finite score)
    is recorded in ``lenscat.job_item_failures`` with the reason; the others are written.
    """
    t0 = time.perf_counter()
    row = session.execute(text("SELECT model_id, params FROM lenscat.jobs WHERE job_id = :j"), {"j": job_id}).one()
    model = get_model("classifier", int(row.model_id), session=session)
    sids = survey_ids(list(row.params.get("surveys") or []) or None, session)
    todo = np.setdiff1d(
        _ids_in_range(candidates_sql(model, bool(sids)), lo_id, hi_id, sids, session),
        _ids_in_range(
            f"SELECT c.source_id AS id FROM lenscat.scores c WHERE c.model_id = {int(model.model_id)}",
            lo_id,
            hi_id,
            None,
            session,
        ),
    )
    n = 0
    failures: list[tuple[int, str]] = []
    if len(todo):
        fn: Any = None if model.architecture in DERIVED_ARCHITECTURES else score_function(model, device)
        if model.architecture in DERIVED_ARCHITECTURES:
            ids, scores = derived_module(model).score_sources(model, todo, session=session)
        elif model.architecture == "linear":
            enc = get_model("encoder", int(model.parent_model_id or 0), session=session)
            ids, vec = read_embeddings(enc, source_ids=todo, session=session)
            scores = np.asarray(fn(vec), dtype=np.float64).reshape(-1)
        else:
            imgs = catalogue_images(todo, session=session)
            parts = [
                _score_images(
                    fn, imgs, np.arange(i, min(i + batch_size, len(todo))), todo[i : i + batch_size], failures
                )
                for i in range(0, len(todo), batch_size)
            ]
            ids = np.concatenate([p[0] for p in parts])
            scores = np.concatenate([p[1] for p in parts])
        ok = np.isfinite(scores)
        failures += [(int(i), f"classifier {model.label} gave a non-finite score") for i in np.asarray(ids)[~ok]]
        ids, scores = np.asarray(ids)[ok], scores[ok]
        n = upsert_scores(model, ids, scores, job_id=job_id, session=session)
        clear_item_failures(model.model_id, ids, lo_id, hi_id, session=session)
    n_failed = record_item_failures(job_id, model.model_id, "score", failures, session=session)
    finish_chunk(job_id, chunk_no, n, time.perf_counter() - t0, session=session, n_failed=n_failed)
    return n
