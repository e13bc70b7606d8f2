"""The candidate catalogue download (also for scripts, with an API token)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lenscat.errors import LenscatError, NotFoundError
from lenscat.export.catalogue import add_ucds, candidate_table
from lenscat.export.formats import FILE_SUFFIXES, MEDIA_TYPES, export_bytes
from lenscat.web.deps import DB, ApiMe

router = APIRouter()


@router.get("/export")
def export(request: Request, *, grades: str = "A,B", format: str = "fits", me: ApiMe, session: DB) -> Response:
    """The sources whose consensus grade is among ``grades``, as a file in ``format``."""
    if format not in MEDIA_TYPES:
        raise LenscatError(f"unknown export format {format!r}; expected {', '.join(MEDIA_TYPES)}")
    table = candidate_table(session=session, grades=[g for g in grades.split(",") if g.strip()])
    if len(table) == 0:
        raise NotFoundError(f"no source has a consensus grade among {grades} yet: grade some first")
    add_ucds(table, session=session)
    name = f"lenscat_candidates{FILE_SUFFIXES[format]}"
    return Response(
        export_bytes(table, format),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
