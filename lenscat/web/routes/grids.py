"""Inspection grids: pages of cutouts graded from the keyboard."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from lenscat.grading.inspection import cells, resolve_sample, sql_grid_ok
from lenscat.web.deps import DB, CsrfFailed, Me
from lenscat.web.rendering import render

router = APIRouter()


@router.get("/grid", response_class=HTMLResponse)
def grid(request: Request, me: Me, session: DB) -> Response:
    """The grid for the query parameters (:func:`lenscat.grading.inspection.resolve_sample`)."""
    params = dict(request.query_params)
    if params.get("kind") == "sql" and not sql_grid_ok(params.get("sql") or "", params.get("sig"), me[1].csrf):
        raise CsrfFailed()  # an SQL grid runs only from a link the query page signed for this login
    sample = resolve_sample(params, session=session)
    grid_cells = cells(sample, me[0], session=session)
    if params.get("hide_graded") == "1":
        grid_cells = [c for c in grid_cells if not c["my_grade"]]
    return render(
        "grid.html",
        request,
        me=me[0],
        csrf=me[1].csrf,
        sample=sample,
        cells=grid_cells,
        params=params,
        query=urlencode(params),
    )
