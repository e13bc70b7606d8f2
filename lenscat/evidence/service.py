"""Joint evidence as astropy Tables: the candidates ranked by one documented score, each piece in a column.

The score and the category come from the views of migration 0017 (:mod:`lenscat.evidence.types`
lists the weights); this module selects candidates (consensus grades and/or a classifier's top N)
and returns them with units. Functions take ``session=`` and never commit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from astropy.table import Column, MaskedColumn, Table
from sqlalchemy.orm import Session

from lenscat.errors import InvalidParameter
from lenscat.evidence.sql import evidence_rows, top_scored_ids
from lenscat.evidence.types import CATEGORIES, COLUMNS, WEIGHTS
from lenscat.grading.grades import parse_consensus_grades
from lenscat.registry.versions import get_model

_INTS = {"source_id", "n_votes", "score_rank", "n_scored", "n_supporting_hits"}
_STRINGS = {
    "survey",
    "objid",
    "consensus_grade",
    "image_classifier",
    "best_hit_line",
    "lens_model",
    "arc_band",
    "passed_vetting",
    "vet_flags",
    "literature_status",
    "literature_names",
    "category",
}


def _text(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name == "vet_flags":
        return " ".join(str(v) for v in value)
    if name == "passed_vetting":
        return "yes" if value else "no"
    return str(value)


def _column(name: str, unit: Any, description: str, values: list[Any]) -> Column:
    if name in _STRINGS:
        strings = [_text(name, v) for v in values]
        width = max([1] + [len(s) for s in strings])
        return Column(np.array(strings, dtype=f"U{width}"), name=name, description=description)
    missing = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in values], dtype=bool)
    if name in _INTS:
        data = np.array([0 if m else int(v) for v, m in zip(values, missing, strict=True)], dtype=np.int64)
    else:
        data = np.array([np.nan if m else float(v) for v, m in zip(values, missing, strict=True)], dtype=float)
    if not missing.any() and name not in ("image_score", "theta_e", "theta_e_err", "arc_mag"):
        return Column(data, name=name, unit=unit, description=description)
    return MaskedColumn(data, mask=missing, name=name, unit=unit, description=description)


def evidence_table(rows: Sequence[dict[str, Any]]) -> Table:
    """Rows of the joint-evidence views as a Table with units and descriptions (:data:`COLUMNS`)."""
    table = Table()
    for name, unit, description in COLUMNS:
        table.add_column(_column(name, unit, description, [r[name] for r in rows]))
    table.meta["description"] = (
        "lenscat joint evidence: evidence_score = grade_llr + image_llr + spectral_llr + model_llr + "
        "literature_llr (dex of odds), best first"
    )
    for k, v in WEIGHTS.items():
        table.meta[k.upper()] = v
    table.meta["CATEGORY"] = " > ".join(CATEGORIES)
    return table


def joint_evidence(
    *,
    session: Session,
    grades: str | Iterable[str] | None = None,
    classifier: str | int | None = None,
    top: int | None = None,
    source_ids: Sequence[int] | None = None,
    limit: int | None = None,
) -> Table:
    """The joint evidence of the candidates, ranked by ``evidence_score`` (highest first).

    Parameters
    ----------
    session
        Database session (read only).
    grades
        Candidates with one of these consensus grades (``'A,B'`` or letters); None with no
        ``classifier``: every candidate (graded, with a vetted spectral hit, or modelled).
    classifier, top
        Also the ``top`` sources of this classifier (``NAME``, ``NAME@VERSION`` or an id), graded or not.
    source_ids
        Only these sources (any source); the other selections are ignored.
    limit
        At most this many rows.

    Returns
    -------
    astropy.table.Table
        Columns of :data:`lenscat.evidence.types.COLUMNS`: positions [deg], ``theta_e`` [arcsec],
        ``arc_mag`` [mag], the five contributions and ``evidence_score`` (dex of odds), ``category``.

    Raises
    ------
    InvalidParameter
        ``top`` without ``classifier`` (or the reverse), ``top`` or ``limit`` below 1, an unknown grade.
    """
    if (classifier is None) != (top is None):
        raise InvalidParameter("top", "{top} and a classifier go together: the top N of which classifier?")
    if top is not None and int(top) < 1:
        raise InvalidParameter("top", f"{{top}} must be at least 1, not {top}")
    if limit is not None and int(limit) < 1:
        raise InvalidParameter("limit", f"{{limit}} must be at least 1, not {limit}")
    if source_ids is not None:
        rows = evidence_rows(session=session, only_ids=source_ids, limit=limit)
        return evidence_table(rows)
    letters: list[str] | None = None
    if grades is not None:
        letters = list(parse_consensus_grades(grades))
    extra: list[int] = []
    if classifier is not None and top is not None:
        model = get_model("classifier", classifier, session=session)
        extra = top_scored_ids(model.model_id, int(top), session=session)
        if letters is None:
            letters = []
    rows = evidence_rows(session=session, grades=letters, extra_ids=extra, limit=limit)
    return evidence_table(rows)


def evidence_of(source_id: int, *, session: Session) -> dict[str, Any] | None:
    """The joint evidence of one source as a dict (None when the source does not exist)."""
    rows = evidence_rows(session=session, only_ids=[int(source_id)])
    return rows[0] if rows else None
