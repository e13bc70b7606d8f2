"""SQL of the joint evidence: reads of ``public.joint_evidence`` and ``lenscat.joint_evidence_all``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.evidence.types import COLUMN_NAMES

_SELECT = ", ".join(COLUMN_NAMES)
_ORDER = "ORDER BY evidence_score DESC, image_score DESC NULLS LAST, source_id"


def evidence_rows(
    *,
    session: Session,
    grades: Sequence[str] | None = None,
    extra_ids: Sequence[int] = (),
    only_ids: Sequence[int] | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of the joint evidence, best first.

    Parameters
    ----------
    grades
        Candidates (``public.joint_evidence``) with one of these consensus grades; None: every candidate.
    extra_ids
        Sources added whatever their grade (a classifier's top N), read from ``lenscat.joint_evidence_all``.
    only_ids
        Only these sources (any source, candidate or not); overrides ``grades`` and ``extra_ids``.
    limit
        At most this many rows.
    """
    params: dict[str, Any] = {}
    if only_ids is not None:
        where = "source_id = ANY(:ids)"
        params["ids"] = [int(i) for i in only_ids]
        sql = f"SELECT {_SELECT} FROM lenscat.joint_evidence_all WHERE {where}"
    else:
        parts = []
        if grades is None:
            parts.append(f"SELECT {_SELECT} FROM public.joint_evidence")
        elif grades:
            parts.append(f"SELECT {_SELECT} FROM public.joint_evidence WHERE consensus_grade = ANY(:grades)")
            params["grades"] = list(grades)
        if extra_ids:
            parts.append(f"SELECT {_SELECT} FROM lenscat.joint_evidence_all WHERE source_id = ANY(:extra)")
            params["extra"] = [int(i) for i in extra_ids]
        if not parts:
            return []
        sql = f"SELECT * FROM ({' UNION '.join(parts)}) u"
    sql += f" {_ORDER}" + (" LIMIT :lim" if limit else "")
    if limit:
        params["lim"] = int(limit)
    result = session.execute(text(sql), params)
    keys = list(result.keys())
    return [dict(zip(keys, r, strict=True)) for r in result.fetchall()]


def top_scored_ids(model_id: int, n: int, *, session: Session) -> list[int]:
    """The ``n`` sources a classifier version scored highest (ties by source id)."""
    return [
        int(i)
        for i in session.execute(
            text("SELECT source_id FROM lenscat.scores WHERE model_id = :m ORDER BY score DESC, source_id LIMIT :n"),
            {"m": int(model_id), "n": int(n)},
        ).scalars()
    ]
