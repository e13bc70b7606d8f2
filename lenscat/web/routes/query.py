"""The read-only query page: SQL typed by a grader runs as the reader role, never in the request's session."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from lenscat.db.usersql import run_readonly_sql
from lenscat.errors import LenscatError
from lenscat.grading.inspection import sql_grid_signature
from lenscat.settings import get_settings
from lenscat.web.deps import Me, check_csrf
from lenscat.web.rendering import render

router = APIRouter()


@router.get("/query", response_class=HTMLResponse)
def query_page(request: Request, *, sql: str = "", me: Me) -> Response:
    """The query form (a GET only fills it: SQL runs from a POST with the CSRF token, so a link cannot run it)."""
    return render(
        "query.html",
        request,
        me=me[0],
        csrf=me[1].csrf,
        sql=sql,
        columns=[],
        rows=[],
        error=None,
        grid_link=None,
        truncated=False,
        max_rows=int(get_settings().web_query_max_rows),
    )


@router.post("/query", response_class=HTMLResponse)
def query_run(
    request: Request, *, sql: Annotated[str, Form()] = "", csrf_token: Annotated[str, Form()] = "", me: Me
) -> Response:
    """Run the SQL read-only; when it returns ``source_id``, offer a grid of its sources (a signed link)."""
    check_csrf(me[1], request, csrf_token)
    settings = get_settings()
    columns: list[str] = []
    rows: list[Any] = []
    truncated, error = False, None
    if sql.strip():
        try:
            columns, rows, truncated = run_readonly_sql(
                sql, max_rows=settings.web_query_max_rows, timeout_s=settings.web_statement_timeout_s
            )
        except LenscatError as exc:
            error = str(exc)
    grid_link = (
        "/grid?" + urlencode({"kind": "sql", "sql": sql, "n": 100, "sig": sql_grid_signature(sql, me[1].csrf)})
        if "source_id" in columns
        else None
    )
    return render(
        "query.html",
        request,
        me=me[0],
        csrf=me[1].csrf,
        sql=sql,
        columns=columns,
        rows=rows,
        error=error,
        grid_link=grid_link,
        truncated=truncated,
        max_rows=settings.web_query_max_rows,
    )
