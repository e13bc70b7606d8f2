"""Reads of the grading state that the web app shows: counts, the consensus of a source, the grade histogram.

Functions take ``session=`` and never commit (the request commits once).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.grading.grades import Grader


def grading_counts(grader: Grader, *, session: Session) -> dict[str, int]:
    """How many sources, grades, graded sources, conflicts and grades by ``grader`` there are.

    Returns
    -------
    dict
        ``sources``, ``grades``, ``graded`` (sources with a consensus), ``conflicts`` and ``mine``.
    """
    row = (
        session.execute(
            text(
                "SELECT (SELECT count(*) FROM lenscat.sources) AS sources,"
                " (SELECT count(*) FROM lenscat.grades) AS grades,"
                " (SELECT count(*) FROM public.grade_consensus) AS graded,"
                " (SELECT count(*) FROM public.grade_conflicts) AS conflicts,"
                " (SELECT count(*) FROM lenscat.grades WHERE grader_id = :g) AS mine"
            ),
            {"g": grader.grader_id},
        )
        .mappings()
        .one()
    )
    return {k: int(v) for k, v in row.items()}


def consensus_histogram(*, session: Session) -> list[tuple[str | None, int]]:
    """(consensus grade, number of sources) for every consensus grade given so far, by grade."""
    rows = session.execute(
        text("SELECT consensus_grade, count(*) AS n FROM public.grade_consensus GROUP BY 1 ORDER BY 1")
    ).all()
    return [(None if r[0] is None else str(r[0]), int(r[1])) for r in rows]


def source_consensus(source_id: int, *, session: Session) -> dict[str, Any] | None:
    """The consensus grade, mean grade and number of votes of one source; None when nobody graded it."""
    row = (
        session.execute(
            text("SELECT consensus_grade, mean_grade, n_votes FROM public.grade_consensus WHERE source_id = :i"),
            {"i": int(source_id)},
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def database_ok(*, session: Session) -> bool:
    """True when the database answers a trivial query (the web app's health check)."""
    return session.execute(text("SELECT 1")).scalar() == 1
