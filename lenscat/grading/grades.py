"""Human grades: append-only grades, consensus, conflicts, human labels (accounts: :mod:`lenscat.grading.accounts`).

Grades are A (sure lens, 3 points), B (probable, 2), C (possible, 1), N (not a lens, 0) and S
(skipped). They are never updated or deleted: the consensus of a source uses each grader's latest
grade (``public.grade_consensus``). Every recorded grade also refreshes the source's ``human``
label (``lenscat.labels``, provenance ``grades``), so classifiers and the active-learning loop
train on the graders' verdicts: consensus A or B (by default) is a lens, N is a non-lens, and a
C or a skip-only source has no human label.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.table import Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.classifiers.labels import LABEL_PROVENANCE
from lenscat.db.session import durable
from lenscat.errors import InvalidParameter, LenscatError, NotFoundError
from lenscat.sky.units import rows_to_table

GRADES = ("A", "B", "C", "N", "S")
GRADE_POINTS = {"A": 3, "B": 2, "C": 1, "N": 0}
GRADE_NAMES = {"A": "sure lens", "B": "probable lens", "C": "possible lens", "N": "not a lens", "S": "skip"}
_ALIASES = {
    "a": "A",
    "3": "A",
    "sure": "A",
    "b": "B",
    "2": "B",
    "probable": "B",
    "c": "C",
    "1": "C",
    "possible": "C",
    "n": "N",
    "0": "N",
    "x": "N",
    "no": "N",
    "not": "N",
    "nonlens": "N",
    "non-lens": "N",
    "not a lens": "N",
    "s": "S",
    "skip": "S",
    "-": "S",
}
POSITIVE_GRADES = ("A", "B")


@dataclass(frozen=True)
class Grader:
    """A grading account (never carries the password hash out of this module)."""

    grader_id: int
    name: str
    full_name: str | None
    is_active: bool


def parse_grade(value: str) -> str:
    """The grade letter for ``value`` (A/B/C/N/S, case-insensitive; 3/2/1/0, 'not a lens', 'skip'...).

    Raises
    ------
    InvalidParameter
        When ``value`` is not a grade (``param`` "grade").
    """
    key = str(value).strip()
    if key.upper() in GRADES:
        return key.upper()
    letter = _ALIASES.get(key.lower())
    if letter is None:
        raise InvalidParameter(
            "grade",
            f"unknown grade {value!r}; expected A, B, C (lens: sure, probable, possible), N (not a lens) or S (skip)",
        )
    return letter


def parse_consensus_grades(grades: str | Iterable[str]) -> tuple[str, ...]:
    """Consensus grades to select, best first, from ``'A,B'`` or a sequence of letters or aliases.

    The one parser of a grade selection (export, joint evidence, proposals, lens modelling).

    Raises
    ------
    InvalidParameter
        For an empty selection, an unknown grade or a skip (S is never a consensus grade);
        ``param`` "grades".
    """
    items = [g.strip() for g in grades.split(",")] if isinstance(grades, str) else [str(g).strip() for g in grades]
    items = [g for g in items if g]
    if not items:
        raise InvalidParameter("grades", "no grades given; expected some of A, B, C, N (e.g. {grades} A,B)")
    chosen = set()
    for g in items:
        try:
            letter = parse_grade(g)
        except LenscatError:
            raise InvalidParameter(
                "grades",
                f"unknown grade {g!r}; expected A (sure lens), B (probable), C (possible) "
                "or N (not a lens), e.g. {grades} A,B",
            ) from None
        if letter == "S":
            raise InvalidParameter(
                "grades", f"grade {g!r} (skip) is never a consensus grade; expected A, B, C or N in {{grades}}"
            )
        chosen.add(letter)
    return tuple(g for g in GRADE_POINTS if g in chosen)


# ------------------------------------------------------------------------------------ grades
@dataclass(frozen=True)
class GradeInput:
    """One grading action."""

    source_id: int
    grade: str
    comment: str | None = None
    request_id: str | None = None


def record_grades(
    grader: Grader,
    grades: Sequence[GradeInput],
    *,
    session: Session,
    sample: str | None = None,
    loop_id: int | None = None,
    positive_grades: Iterable[str] = POSITIVE_GRADES,
) -> int:
    """Append grades by ``grader``; returns how many rows were new.

    A grade whose ``request_id`` this grader has already used is not recorded again (a resubmitted
    form), so the call is safe to repeat. Unknown source ids, bad grades or bad request ids are
    refused before anything is written. The graded sources' human labels are refreshed.
    """
    if not grader.is_active:
        raise LenscatError(f"grader {grader.name!r} is disabled")
    if not grades:
        return 0
    rows = []
    for i, g in enumerate(grades):
        letter = parse_grade(g.grade)
        rid = g.request_id or str(uuid.uuid4())
        try:
            rid = str(uuid.UUID(rid))
        except ValueError as exc:
            raise LenscatError(f"grade {i + 1}: request id {g.request_id!r} is not a UUID") from exc
        comment = (g.comment or "").strip()[:2000] or None
        rows.append({"s": int(g.source_id), "g": letter, "c": comment, "r": rid})
    ids = sorted({int(g.source_id) for g in grades})
    durable(session)  # a person's verdict cannot be re-run: its commit waits for the disk
    known = set(
        session.execute(
            text("SELECT source_id FROM lenscat.sources WHERE source_id = ANY(:ids)"), {"ids": ids}
        ).scalars()
    )
    missing = [i for i in ids if i not in known]
    if missing:
        raise NotFoundError(
            f"no source with id {', '.join(map(str, missing[:5]))}"
            + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        )
    if (
        loop_id is not None
        and session.execute(text("SELECT 1 FROM lenscat.al_loops WHERE loop_id = :l"), {"l": loop_id}).first() is None
    ):
        raise NotFoundError(f"no active-learning loop {loop_id}")
    result = session.execute(
        text(
            """
            INSERT INTO lenscat.grades (source_id, grader_id, grade, comment, sample, loop_id, request_id)
            SELECT x.s, :gid, x.g, x.c, :sample, :loop, CAST(x.r AS uuid)
            FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x(s bigint, g text, c text, r text)
            ON CONFLICT ON CONSTRAINT uq_grades_grader_request DO NOTHING
            """
        ),
        {"gid": grader.grader_id, "sample": sample, "loop": loop_id, "rows": _json(rows)},
    )
    refresh_human_labels(ids, session=session, positive_grades=positive_grades)
    return int(getattr(result, "rowcount", 0) or 0)


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj)


def refresh_human_labels(
    source_ids: Sequence[int] | None, *, session: Session, positive_grades: Iterable[str] = POSITIVE_GRADES
) -> None:
    """Set the ``human`` labels of ``source_ids`` (all graded sources when None) from the consensus.

    Consensus in ``positive_grades`` gives label 1, N gives 0; anything else (C by default, or only
    skips) removes the human label.
    """
    pos = [parse_grade(g) for g in positive_grades]
    bad = [g for g in pos if g in ("N", "S")]
    if bad:
        raise LenscatError("positive grades must be among A, B, C")
    durable(session)
    scope = "WHERE c.source_id = ANY(:ids)" if source_ids is not None else ""
    params: dict[str, Any] = {"pos": pos, "prov": LABEL_PROVENANCE}
    if source_ids is not None:
        params["ids"] = [int(i) for i in source_ids]
    session.execute(
        text(
            f"""
            WITH c AS (SELECT c.source_id, c.consensus_grade, c.mean_grade, c.n_votes
                       FROM public.grade_consensus c {scope}),
            lab AS (SELECT source_id, CASE WHEN consensus_grade = ANY(:pos) THEN 1 ELSE 0 END AS label,
                           jsonb_build_object('consensus', consensus_grade, 'mean_grade', mean_grade,
                                              'votes', n_votes) AS detail
                    FROM c WHERE consensus_grade = ANY(:pos) OR consensus_grade = 'N')
            INSERT INTO lenscat.labels AS l (source_id, label, origin, provenance, detail)
            SELECT source_id, label, 'human', :prov, detail FROM lab
            ON CONFLICT ON CONSTRAINT uq_labels_source_origin_provenance DO UPDATE
            SET label = EXCLUDED.label, detail = EXCLUDED.detail, updated_at = now()
            WHERE (l.label, l.detail) IS DISTINCT FROM (EXCLUDED.label, EXCLUDED.detail)
            """
        ),
        params,
    )
    # sources whose consensus is no longer a lens or a non-lens lose their human label
    del_scope = "AND l.source_id = ANY(:ids)" if source_ids is not None else ""
    session.execute(
        text(
            f"""
            DELETE FROM lenscat.labels l
            WHERE l.origin = 'human' AND l.provenance = :prov {del_scope}
              AND NOT EXISTS (SELECT 1 FROM public.grade_consensus c WHERE c.source_id = l.source_id
                              AND (c.consensus_grade = ANY(:pos) OR c.consensus_grade = 'N'))
            """
        ),
        params,
    )


# ------------------------------------------------------------------------------------ reading
GRADE_COLUMNS = (
    "grade_id",
    "source_id",
    "grader",
    "grade",
    "grade_value",
    "comment",
    "sample",
    "loop_id",
    "created_at",
)
CONSENSUS_COLUMNS = (
    "source_id",
    "n_votes",
    "mean_grade",
    "consensus_grade",
    "disagreement",
    "grade_std",
    "grades",
    "last_graded_at",
)


def _table(rows: Sequence[Any], columns: Sequence[str]) -> Table:
    out = rows_to_table(columns, [tuple(r) for r in rows])
    for name in ("created_at", "last_graded_at"):
        if name in out.colnames:
            out[name] = np.array([str(v) for v in out[name]], dtype=object) if len(out) else out[name]
    return out


def grades_table(
    *, session: Session, grader: str | None = None, source_id: int | None = None, limit: int | None = None
) -> Table:
    """Grades, newest first, optionally of one grader and/or one source."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if grader:
        where.append("grader = :grader")
        params["grader"] = grader
    if source_id is not None:
        where.append("source_id = :sid")
        params["sid"] = int(source_id)
    sql = (
        f"SELECT {', '.join(GRADE_COLUMNS)} FROM public.grades "
        f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY grade_id DESC"
    )
    if limit:
        sql += " LIMIT :limit"
        params["limit"] = int(limit)
    return _table(session.execute(text(sql), params).all(), GRADE_COLUMNS)


def _consensus_rows(where: list[str], params: dict[str, Any], order: str, limit: int | None, session: Session) -> Table:
    sql = (
        f"SELECT {', '.join(CONSENSUS_COLUMNS)} FROM public.grade_consensus "
        f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY {order}"
    )
    if limit:
        sql += " LIMIT :limit"
        params = {**params, "limit": int(limit)}
    return _table(session.execute(text(sql), params).all(), CONSENSUS_COLUMNS)


def consensus_table(
    *,
    session: Session,
    source_ids: Sequence[int] | None = None,
    grades: Sequence[str] | None = None,
    limit: int | None = None,
) -> Table:
    """``public.grade_consensus`` rows, best first, optionally for some sources or consensus grades."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if source_ids is not None:
        where.append("source_id = ANY(:ids)")
        params["ids"] = [int(i) for i in source_ids]
    if grades:
        where.append("consensus_grade = ANY(:grades)")
        params["grades"] = [parse_grade(g) for g in grades]
    return _consensus_rows(where, params, "mean_grade DESC, n_votes DESC, source_id", limit, session)


def conflicts_table(*, session: Session, min_spread: int = 2, limit: int | None = None) -> Table:
    """Sources whose graders' latest grades differ by at least ``min_spread`` grade points."""
    if not 1 <= min_spread <= 3:
        raise InvalidParameter("min_spread", "{min_spread} must be 1, 2 or 3 grade points")
    return _consensus_rows(
        ["n_votes >= 2", "disagreement >= :m"],
        {"m": int(min_spread)},
        "disagreement DESC, grade_std DESC, source_id",
        limit,
        session,
    )


def graded_by(grader: Grader, source_ids: Sequence[int], *, session: Session) -> dict[int, str]:
    """The latest grade ``grader`` gave each of ``source_ids`` (skips included)."""
    rows = session.execute(
        text(
            """
            SELECT DISTINCT ON (source_id) source_id, grade FROM lenscat.grades
            WHERE grader_id = :g AND source_id = ANY(:ids) ORDER BY source_id, grade_id DESC
            """
        ),
        {"g": grader.grader_id, "ids": [int(i) for i in source_ids]},
    ).all()
    return {int(r.source_id): str(r.grade) for r in rows}
