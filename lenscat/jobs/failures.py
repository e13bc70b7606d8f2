"""Items a chunk could not process: recorded with their reason, left out of later planning.

An item of a chunk that cannot be processed (a missing or unreadable cutout, a NaN image) is
recorded in ``lenscat.job_item_failures`` with its reason (:func:`record_item_failures`) and left
out; the rest of the chunk is written. Planning leaves such items out under the same model version
(:func:`without_failed_items`) until their input changes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session


def without_failed_items(id_sql: str, model_id: int) -> str:
    """Wrap a source-id query so sources that failed under the model version are left out.

    A failure counts until its input changes: the source row updated after the failure (a
    re-ingest that changed it) brings the source back; so does a change of its cutout pixels,
    which removes the failure (:func:`lenscat.catalogue.ingest_cutouts.mark_cutouts_stale`).
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
