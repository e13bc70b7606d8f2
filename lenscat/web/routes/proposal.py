"""Follow-up packs from the web: the joint-evidence ranking and a form that returns a proposal pack as a zip."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import astropy.units as u
import numpy as np
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from lenscat.errors import InvalidParameter
from lenscat.evidence.service import joint_evidence
from lenscat.evidence.types import WEIGHTS
from lenscat.grading.grades import parse_consensus_grades
from lenscat.proposal.observability import night_dates, parse_date
from lenscat.proposal.service import build_pack, finding_chart_png, pack_zip
from lenscat.proposal.sites import resolve_site, site_names
from lenscat.web.deps import DB, Me, check_csrf
from lenscat.web.rendering import render

router = APIRouter()


def _ids(text: str) -> list[int] | None:
    items = [x.strip() for x in text.replace(" ", ",").split(",") if x.strip()]
    if not items:
        return None
    try:
        return [int(x) for x in items]
    except ValueError:
        raise InvalidParameter("ids", "{ids} must be source ids separated by commas") from None


def _plain(value: object) -> object:
    """A table cell for a template: masked -> None, numpy scalars -> Python."""
    if np.ma.is_masked(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


@router.get("/proposal", response_class=HTMLResponse)
def proposal_page(request: Request, *, grades: str = "A,B", ids: str = "", me: Me, session: DB) -> Response:
    """The ranked candidates (joint evidence) and the form for a follow-up pack."""
    chosen = _ids(ids)
    table = joint_evidence(session=session, grades=None if chosen else grades, source_ids=chosen, limit=200)
    today = dt.date.today()
    return render(
        "proposal.html",
        request,
        me=me[0],
        csrf=me[1].csrf,
        rows=[{c: _plain(table[c][k]) for c in table.colnames} for k in range(len(table))],
        grades=grades,
        ids=ids,
        sites=site_names(),
        start=(today + dt.timedelta(days=1)).isoformat(),
        end=(today + dt.timedelta(days=7)).isoformat(),
        weights=WEIGHTS,
    )


@router.post("/proposal")
def proposal_download(
    request: Request,
    *,
    grades: Annotated[str, Form()] = "A,B",
    ids: Annotated[str, Form()] = "",
    site: Annotated[str, Form()] = "",
    start: Annotated[str, Form()] = "",
    end: Annotated[str, Form()] = "",
    min_altitude: Annotated[float, Form()] = 30.0,
    pick: Annotated[list[int] | None, Form()] = None,
    csrf_token: Annotated[str, Form()] = "",
    me: Me,
    session: DB,
) -> Response:
    """The follow-up pack of the selection (ticked rows, else typed source ids, else consensus grades) as a zip."""
    check_csrf(me[1], request, csrf_token)
    where = resolve_site(site)
    d0, d1 = parse_date(start, "start"), parse_date(end, "end")
    night_dates(d0, d1, max_nights=62)
    chosen = sorted(set(pick)) if pick else _ids(ids)
    if chosen is None:
        parse_consensus_grades(grades)
    pack = build_pack(
        session=session,
        site=where,
        start=d0,
        end=d1,
        grades=None if chosen else grades,
        source_ids=chosen,
        min_altitude=min_altitude * u.deg,
        max_targets=200,
    )
    name = f"lenscat_proposal_{where.key}_{d0.isoformat()}.zip"
    return Response(
        pack_zip(pack),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/chart/{source_id}.png")
def chart_png(source_id: int, me: Me, session: DB) -> Response:
    """A source's finding chart (cutout North up East left, compass, scale bar, the model's critical curve)."""
    return Response(
        finding_chart_png(source_id, session=session),
        media_type="image/png",
        headers={"Cache-Control": "private, max-age=600"},
    )
