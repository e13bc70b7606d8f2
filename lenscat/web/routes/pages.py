"""The home page, candidate pages (with their grade form and images), the search box and the conflicts table."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from lenscat.evidence.service import evidence_of
from lenscat.grading.candidate import cutout_png_bytes, search_sources, source_context
from lenscat.grading.grades import GradeInput, conflicts_table, parse_grade, record_grades
from lenscat.grading.service import consensus_histogram, database_ok, grading_counts
from lenscat.learning.campaigns import list_campaigns
from lenscat.registry.versions import latest_only, list_models
from lenscat.spectra.plot import spectrum_png as plot_spectrum
from lenscat.web.deps import DB, Me, check_csrf
from lenscat.web.rendering import render

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def home(request: Request, me: Me, session: DB) -> Response:
    """Counts, the classifiers and encoders to build grids from, and the active-learning campaigns."""
    classifiers = latest_only(list_models("classifier", session=session))
    encoders = [m for m in latest_only(list_models("encoder", session=session)) if m["n_embeddings"]]
    return render(
        "home.html",
        request,
        me=me[0],
        csrf=me[1].csrf,
        classifiers=classifiers,
        encoders=encoders,
        counts=grading_counts(me[0], session=session),
        campaigns=list_campaigns(session=session),
        by_grade=consensus_histogram(session=session),
    )


@router.get("/source/{source_id}", response_class=HTMLResponse)
def source_page(source_id: int, request: Request, me: Me, session: DB) -> Response:
    """The candidate page of one source."""
    ctx = source_context(source_id, me[0], session=session)
    ctx["evidence"] = evidence_of(source_id, session=session)
    return render("source.html", request, me=me[0], csrf=me[1].csrf, request_id=str(uuid.uuid4()), **ctx)


@router.post("/source/{source_id}/grade")
def grade_form(
    source_id: int,
    request: Request,
    *,
    grade: Annotated[str, Form()] = "",
    comment: Annotated[str, Form()] = "",
    request_id: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    me: Me,
    session: DB,
) -> Response:
    """Grade a source from its candidate page (the request commits once, before the redirect)."""
    check_csrf(me[1], request, csrf_token)
    record_grades(
        me[0],
        [GradeInput(source_id, parse_grade(grade), comment or None, request_id or None)],
        sample="candidate-page",
        session=session,
    )
    return RedirectResponse(f"/source/{source_id}", status_code=303)


@router.get("/search", response_class=HTMLResponse)
def search(request: Request, *, q: str = "", me: Me, session: DB) -> Response:
    """Sources matching the search box; a single match goes straight to its candidate page."""
    results, note = search_sources(q, session=session) if q.strip() else ([], "")
    if len(results) == 1 and q.strip():
        return RedirectResponse(f"/source/{results[0]['source_id']}", status_code=303)
    return render("search.html", request, me=me[0], csrf=me[1].csrf, q=q, results=results, note=note)


@router.get("/conflicts", response_class=HTMLResponse)
def conflicts(request: Request, me: Me, session: DB) -> Response:
    """Sources whose graders disagree."""
    t = conflicts_table(session=session, limit=500)
    return render(
        "table.html",
        request,
        me=me[0],
        csrf=me[1].csrf,
        title="Conflicting grades",
        columns=t.colnames,
        rows=[list(r) for r in t],
        link_col="source_id",
    )


@router.get("/cutout/{source_id}.png")
def cutout_png(source_id: int, *, band: str = "rgb", me: Me, session: DB) -> Response:
    """A source's cutout as PNG (RGB, or one band in grey)."""
    return Response(
        cutout_png_bytes(source_id, band, session=session),
        media_type="image/png",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.get("/spectrum/{spectrum_id}.png")
def spectrum_png(spectrum_id: int, me: Me, session: DB) -> Response:
    """A spectrum's plot as PNG."""
    return Response(
        plot_spectrum(spectrum_id, session=session),
        media_type="image/png",
        headers={"Cache-Control": "private, max-age=600"},
    )


@router.get("/favicon.ico")
def favicon() -> Response:
    """No icon."""
    return Response(status_code=204)


@router.get("/healthz")
def healthz(session: DB) -> Response:
    """The server is up and its database answers."""
    database_ok(session=session)
    return JSONResponse({"ok": True})
