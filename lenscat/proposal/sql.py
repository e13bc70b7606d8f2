"""SQL of the proposal packs: the catalogue details a pack needs per source (magnitudes, pixel scale)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session


def source_details(source_ids: Sequence[int], *, session: Session) -> dict[int, dict[str, Any]]:
    """Per source: ``ra``, ``dec`` [deg], ``mag_g`` ... ``mag_z`` [AB mag], ``has_cutout``, ``pixel_scale``.

    ``pixel_scale`` [arcsec] is the cutout file's, else the survey's (None when neither records one).
    """
    rows = session.execute(
        text(
            """
            SELECT s.source_id, s.ra, s.dec, v.mag_g, v.mag_r, v.mag_i, v.mag_z,
                   s.cutout_file_id IS NOT NULL AS has_cutout,
                   coalesce(f.pixel_scale_arcsec, sv.pixel_scale_arcsec) AS pixel_scale
            FROM lenscat.sources s
            JOIN public.sources v ON v.source_id = s.source_id
            JOIN lenscat.surveys sv ON sv.survey_id = s.survey_id
            LEFT JOIN lenscat.cutout_files f ON f.file_id = s.cutout_file_id
            WHERE s.source_id = ANY(:ids)
            """
        ),
        {"ids": [int(i) for i in source_ids]},
    ).mappings()
    return {int(r["source_id"]): dict(r) for r in rows}
