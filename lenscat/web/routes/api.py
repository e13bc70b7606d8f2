"""The JSON API used by the grid's script (and by scripts holding an API token)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from lenscat.grading.grades import GradeInput, parse_grade, record_grades
from lenscat.grading.service import source_consensus
from lenscat.learning.active import advance
from lenscat.learning.campaigns import current_loop, get_campaign, refresh_loop
from lenscat.web.deps import DB, ApiMe, check_csrf

router = APIRouter(prefix="/api")


class GradeBody(BaseModel):
    """One grading action from the grid's script."""

    source_id: int
    grade: str
    request_id: str | None = None
    sample: str | None = None
    loop_id: int | None = None
    comment: str | None = None


def _loop_progress(loop_id: int, session: Session) -> dict[str, Any]:
    loop = refresh_loop(loop_id, session=session)
    return {
        "loop_no": loop.loop_no,
        "n_graded": loop.n_graded,
        "n_found": loop.n_found,
        "size": len(loop.batch),
        "complete": bool(loop.completed),
    }


@router.post("/grades")
def api_grade(body: GradeBody, request: Request, me: ApiMe, session: DB) -> Response:
    """Record one grade; answers the source's consensus (and the batch's progress for a loop grid)."""
    check_csrf(me[1], request)
    sid, loop_id = body.source_id, body.loop_id
    grade = parse_grade(body.grade)
    n = record_grades(
        me[0],
        [GradeInput(sid, grade, body.comment, body.request_id)],
        sample=(body.sample or "grid")[:200],
        loop_id=loop_id,
        session=session,
    )
    out: dict[str, Any] = {
        "recorded": bool(n),
        "source_id": sid,
        "grade": grade,
        "consensus": source_consensus(sid, session=session),
    }
    if loop_id is not None:
        out["loop"] = _loop_progress(loop_id, session)
    return JSONResponse(out)


@router.post("/learn/{campaign}/advance")
def api_advance(campaign: str, request: Request, me: ApiMe, session: DB) -> Response:
    """Propose the campaign's next batch once the current one is graded (409 while it is not)."""
    check_csrf(me[1], request)
    camp = get_campaign(campaign, session=session)
    before = current_loop(camp, session=session)
    loop = advance(camp, session=session)
    if loop is None or (before is not None and loop.loop_id == before.loop_id):
        if before is not None and before.completed:
            msg = "every embedded source has been inspected: nothing is left to propose"
        else:
            left = len(before.batch) - before.n_inspected if before is not None else 0
            msg = f"grade the {left} remaining image(s) of this batch first"
        return JSONResponse({"advanced": False, "error": msg}, status_code=409)
    return JSONResponse(
        {
            "advanced": True,
            "loop_no": loop.loop_no,
            "model": loop.model,
            "url": "/grid?" + urlencode({"kind": "loop", "campaign": campaign}),
        }
    )
