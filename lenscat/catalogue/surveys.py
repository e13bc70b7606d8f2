"""Surveys: names, band lists and pixel scales; real surveys and injection sets.

A survey of kind ``'injection'`` holds cutouts of another survey's galaxies with simulated lensed
sources painted on (``lenscat simulate inject``). Its sources keep their hosts' positions, so the
queries that enumerate the sky or a survey's own candidates keep to :data:`REAL_SURVEYS_SQL` (the
one definition of "sources of real surveys") unless the injection set is named.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError, NotFoundError

REAL_SURVEYS_SQL = "SELECT survey_id FROM lenscat.surveys WHERE kind = 'survey'"
"""SQL: the ids of the real surveys (not injection sets)."""


def real_source_sql(survey_id_expr: str = "s.survey_id") -> str:
    """SQL condition: a source's survey (the column ``survey_id_expr``) is a real survey, not an injection set."""
    return f"{survey_id_expr} IN ({REAL_SURVEYS_SQL})"


def has_injection_sets(*, session: Session) -> bool:
    """Whether any injection set exists (queries skip the real-survey filter when none does)."""
    return bool(
        session.execute(text("SELECT EXISTS (SELECT 1 FROM lenscat.surveys WHERE kind = 'injection')")).scalar()
    )


def real_survey_ids(*, session: Session) -> list[int]:
    """Ids of the real surveys (kind ``'survey'``), i.e. every survey but the injection sets."""
    return [int(x) for x in session.execute(text(REAL_SURVEYS_SQL + " ORDER BY survey_id")).scalars()]


@dataclass(frozen=True)
class Survey:
    """A survey row."""

    survey_id: int
    name: str
    bands: list[str]
    pixel_scale_arcsec: float | None
    kind: str = "survey"
    parent_survey_id: int | None = None


def get_survey(name: str, *, session: Session) -> Survey:
    """The survey called ``name``; raises NotFoundError naming the known surveys."""
    row = session.execute(
        text(
            "SELECT survey_id, name, bands, pixel_scale_arcsec, kind, parent_survey_id FROM lenscat.surveys "
            "WHERE name = :n"
        ),
        {"n": name},
    ).one_or_none()
    if row is None:
        known = [r[0] for r in session.execute(text("SELECT name FROM lenscat.surveys ORDER BY name"))]
        raise NotFoundError(f"no survey named {name!r}; known surveys: {', '.join(known) if known else '(none yet)'}")
    return Survey(row[0], row[1], list(row[2]), row[3], row[4], row[5])


def ensure_survey(
    name: str,
    bands: list[str],
    *,
    session: Session,
    pixel_scale_arcsec: float | None = None,
) -> Survey:
    """Create the survey if needed; an existing one must have the same bands (or none yet)."""
    if not name or not name.strip():
        raise LenscatError("survey name must not be empty")
    session.execute(
        text(
            """
            INSERT INTO lenscat.surveys (name, bands, pixel_scale_arcsec)
            VALUES (:n, :b, :p)
            ON CONFLICT ON CONSTRAINT uq_surveys_name DO NOTHING
            """
        ),
        {"n": name, "b": bands, "p": pixel_scale_arcsec},
    )
    survey = get_survey(name, session=session)
    if bands and survey.bands and survey.bands != bands:
        raise LenscatError(
            f"survey {name!r} has bands {','.join(survey.bands)} but this input has "
            f"{','.join(bands)}; pass {{bands}} {','.join(survey.bands)} with a column mapping, "
            f"or use another survey name",
            params="bands",
        )
    if bands and not survey.bands:
        session.execute(
            text("UPDATE lenscat.surveys SET bands = :b WHERE survey_id = :i"),
            {"b": bands, "i": survey.survey_id},
        )
        survey = Survey(
            survey.survey_id, survey.name, bands, survey.pixel_scale_arcsec, survey.kind, survey.parent_survey_id
        )
    if (
        pixel_scale_arcsec is not None
        and survey.pixel_scale_arcsec is not None
        and abs(survey.pixel_scale_arcsec - pixel_scale_arcsec) > 1e-6 * pixel_scale_arcsec
    ):
        raise LenscatError(
            f"survey {name!r} has a pixel scale of {survey.pixel_scale_arcsec:g} arcsec/pixel but this input "
            f"says {pixel_scale_arcsec:g}; use another survey name for cutouts of another pixel scale"
        )
    if pixel_scale_arcsec is not None and survey.pixel_scale_arcsec is None:
        session.execute(
            text("UPDATE lenscat.surveys SET pixel_scale_arcsec = :p WHERE survey_id = :i"),
            {"p": pixel_scale_arcsec, "i": survey.survey_id},
        )
    return survey
