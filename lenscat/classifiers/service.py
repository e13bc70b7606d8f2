"""Classifier reads and maintenance the shells call: human-label count, score-table statistics."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session


def count_human_labels(*, session: Session) -> int:
    """Number of labels whose origin is ``human`` (the ones rebuilt from the grade consensus).

    Parameters
    ----------
    session
        The session to read through.

    Returns
    -------
    int
        The count of human labels.
    """
    return int(session.execute(text("SELECT count(*) FROM lenscat.labels WHERE origin = 'human'")).scalar_one())


def analyze_scores(*, session: Session) -> None:
    """Fresh planner statistics after a bulk write, so top-N queries keep using the score index.

    Parameters
    ----------
    session
        The session to run ``ANALYZE`` in (the caller commits).
    """
    session.execute(text("ANALYZE lenscat.scores"))
