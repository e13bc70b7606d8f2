"""Tables of an active-learning campaign: its loops (:func:`loops_table`) and a loop's batch (:func:`batch_table`)."""

from __future__ import annotations

import numpy as np
from astropy.table import Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.learning.campaigns import campaign_loops, get_campaign
from lenscat.learning.types import Campaign, Loop
from lenscat.sky.units import rows_to_table

LOOP_COLUMNS = (
    "loop_no",
    "model",
    "strategy",
    "n_positive",
    "n_negative",
    "batch_size",
    "n_inspected",
    "n_graded",
    "n_found",
    "cumulative_found",
    "cumulative_inspected",
    "propose_s",
    "train_s",
    "created_at",
    "completed_at",
)


def loops_table(campaign: str | Campaign, *, session: Session) -> Table:
    """One row per loop: model version, labels used, batch size, inspection counts, lenses found
    (and cumulated), proposal and training seconds, when proposed and completed."""
    camp = get_campaign(campaign, session=session)
    rows = []
    found = inspected = 0
    for lp in campaign_loops(camp, session=session):
        found += lp.n_found
        inspected += lp.n_inspected
        sec = lp.detail.get("seconds") or {}
        rows.append(
            (
                lp.loop_no,
                lp.model or "(random)",
                camp.strategy if lp.model else "random",
                lp.n_positive,
                lp.n_negative,
                len(lp.batch),
                lp.n_inspected,
                lp.n_graded,
                lp.n_found,
                found,
                inspected,
                float(sec.get("total", np.nan)),
                float(sec.get("train", np.nan)),
                str(lp.created_at),
                str(lp.completed_at) if lp.completed_at else None,
            )
        )
    return rows_to_table(LOOP_COLUMNS, rows)


BATCH_COLUMNS = ("rank", "source_id", "survey", "objid", "ra", "dec", "score", "graded", "consensus_grade")


def batch_table(loop: Loop, *, session: Session) -> Table:
    """The sources of a loop's batch in proposal order: position, score, whether graded (any grade,
    skips included) and the consensus grade so far."""
    import astropy.units as u

    info = {
        int(r.source_id): r
        for r in session.execute(
            text(
                """
            SELECT s.source_id, s.survey, s.objid, s.ra, s.dec, c.consensus_grade,
                   EXISTS (SELECT 1 FROM lenscat.grades g WHERE g.source_id = s.source_id) AS graded
            FROM public.sources s LEFT JOIN public.grade_consensus c ON c.source_id = s.source_id
            WHERE s.source_id = ANY(:ids)
            """
            ),
            {"ids": loop.batch},
        ).all()
    }
    rows = []
    for i, sid in enumerate(loop.batch):
        r = info.get(sid)
        rows.append(
            (
                i + 1,
                sid,
                r.survey if r else None,
                r.objid if r else None,
                float(r.ra) if r else None,
                float(r.dec) if r else None,
                loop.scores[i] if loop.scores is not None else None,
                bool(r.graded) if r else False,
                r.consensus_grade if r else None,
            )
        )
    return rows_to_table(BATCH_COLUMNS, rows, {"ra": u.deg, "dec": u.deg})
