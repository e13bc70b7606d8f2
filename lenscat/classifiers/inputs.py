"""What a classifier reads: survey ids of survey names, the cutouts of sources."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.surveys import get_survey
from lenscat.embeddings.encoders import CatalogueImages
from lenscat.errors import LenscatError


def survey_ids(surveys: list[str] | None, session: Session) -> list[int] | None:
    """The survey ids of the named ``surveys`` (None without any)."""
    return [get_survey(s, session=session).survey_id for s in surveys] if surveys else None


def catalogue_images(source_ids: np.ndarray, *, session: Session) -> Any:
    """A :class:`lenscat.embeddings.encoders.CatalogueImages` over the cutouts of ``source_ids``, in that order."""
    rows = session.execute(
        text(
            """
            SELECT s.source_id, f.path, f.format, s.cutout_row, s.ebv
            FROM lenscat.sources s JOIN lenscat.cutout_files f ON f.file_id = s.cutout_file_id
            WHERE s.source_id = ANY(:ids)
            """
        ),
        {"ids": np.asarray(source_ids, dtype=np.int64).tolist()},
    ).all()
    by_id = {int(r.source_id): r for r in rows}
    missing = [int(i) for i in source_ids if int(i) not in by_id]
    if missing:
        raise LenscatError(f"{len(missing)} source(s) have no cutout (first: source_id {missing[0]})")
    files = sorted({(r.path, r.format) for r in rows})
    index = {f: i for i, f in enumerate(files)}
    ordered = [by_id[int(i)] for i in source_ids]
    arr = np.array([(index[(r.path, r.format)], int(r.cutout_row)) for r in ordered], dtype=np.int64).reshape(-1, 2)
    ebv = np.array([np.nan if r.ebv is None else float(r.ebv) for r in ordered], dtype=np.float32)
    return CatalogueImages([f[0] for f in files], [f[1] for f in files], arr, ebv)
