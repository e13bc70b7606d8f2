"""Surveys: names, band lists and pixel scales."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError, NotFoundError


@dataclass(frozen=True)
class Survey:
    """A survey row."""

    survey_id: int
    name: str
    bands: list[str]
    pixel_scale_arcsec: float | None


def get_survey(name: str, *, session: Session) -> Survey:
    """The survey called ``name``; raises NotFoundError naming the known surveys."""
    row = session.execute(
        text("SELECT survey_id, name, bands, pixel_scale_arcsec FROM lenscat.surveys WHERE name = :n"),
        {"n": name},
    ).one_or_none()
    if row is None:
        known = [r[0] for r in session.execute(text("SELECT name FROM lenscat.surveys ORDER BY name"))]
        raise NotFoundError(
            f"no survey named {name!r}; known surveys: {', '.join(known) if known else '(none yet)'}"
        )
    return Survey(row[0], row[1], list(row[2]), row[3])


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
            f"{','.join(bands)}; pass --bands {','.join(survey.bands)} with a column mapping, "
            f"or use another survey name"
        )
    if bands and not survey.bands:
        session.execute(
            text("UPDATE lenscat.surveys SET bands = :b WHERE survey_id = :i"),
            {"b": bands, "i": survey.survey_id},
        )
        survey = Survey(survey.survey_id, survey.name, bands, survey.pixel_scale_arcsec)
    if (pixel_scale_arcsec is not None and survey.pixel_scale_arcsec is not None
            and abs(survey.pixel_scale_arcsec - pixel_scale_arcsec) > 1e-6 * pixel_scale_arcsec):
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
