"""The grading web app: inspection grids graded from the keyboard, candidate pages, search, query, export.

Server-rendered (FastAPI + Jinja2) with one small script for the keyboard; no build step. Every
page needs a grader login (:mod:`lenscat.web.auth`: revocable server-side sessions, throttled
logins; the JSON API and the export download also take ``Authorization: Bearer`` API tokens);
grades go through
:func:`lenscat.grading.grades.record_grades` (append-only, one row per grading action); the query page
and SQL-defined grids run as the read-only role (:func:`lenscat.db.usersql.run_readonly_sql`). All SQL
binds its parameters. Each request opens one session and commits once. Error pages never show
the server's absolute file paths: messages are reduced to base names, and an unexpected error is
logged with its traceback and answered with a short generic message.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError, NotFoundError, ReadOnlyError
from lenscat.grading.grades import (
    GRADE_NAMES,
    GradeInput,
    Grader,
    parse_grade,
    record_grades,
)
from lenscat.web.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    WebSession,
    bearer_login,
    csrf_ok,
    end_session,
    load_session,
    start_session,
    web_login,
)

HERE = Path(__file__).parent
log = logging.getLogger("lenscat.web")
# an absolute path's directories: "/home/me/data/x.h5" -> "x.h5" (not URLs, not "a/b", not "1/2")
_ABS_DIRS = re.compile(r"(?<![\w.~:/\\-])(?:~|[A-Za-z]:)?[/\\](?:[^\s/\\'\"<>|]+[/\\])+")
TEMPLATES = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class GradeBody(BaseModel):
    """One grading action from the grid's script."""

    source_id: int
    grade: str
    request_id: str | None = None
    sample: str | None = None
    loop_id: int | None = None
    comment: str | None = None


class LoginRequired(Exception):
    """Raised by page dependencies when nobody is logged in (``bearer``: a wrong API token was sent)."""

    def __init__(self, bearer: bool = False) -> None:
        super().__init__("log in first")
        self.bearer = bearer


class CsrfFailed(Exception):
    """A state-changing request without the session's CSRF token."""


def db_session() -> Iterator[Session]:
    """One session per request; commits once when the handler returns (rolls back on error).

    Bound with ``scope="function"``, so the commit happens before the response is sent: a client
    that follows the login redirect at once finds its session row committed."""
    from lenscat.db.session import session_scope

    with session_scope() as s:
        yield s


DB = Annotated[Session, Depends(db_session, scope="function")]


def current(request: Request, session: DB) -> tuple[Grader, WebSession]:
    """The grader of the request's session cookie, else redirect to the login page."""
    state = load_session(request.cookies.get(SESSION_COOKIE), session=session)
    if state is None:
        raise LoginRequired()
    return state


def current_or_bearer(request: Request, session: DB) -> tuple[Grader, WebSession]:
    """Like :func:`current`, but an ``Authorization: Bearer TOKEN`` header (an API token) is taken first.

    Only the header is read: a token in a cookie or the query string is not accepted. A wrong
    token, or one of a disabled grader, is answered 401 whatever cookie comes with it.
    """
    state = bearer_login(request.headers.get("authorization"), session=session)
    if state is False:
        raise LoginRequired(bearer=True)
    if state is None:
        return current(request, session)
    return state


Me = Annotated[tuple[Grader, WebSession], Depends(current)]
ApiMe = Annotated[tuple[Grader, WebSession], Depends(current_or_bearer)]


def public_message(message: str) -> str:
    """A user-facing error message with the server's absolute paths reduced to base names."""
    return _ABS_DIRS.sub("", message)


def render(name: str, request: Request, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    """A template rendered with the common context."""
    html = TEMPLATES.get_template(name).render(request=request, grade_names=GRADE_NAMES, **ctx)
    return HTMLResponse(html, status_code=status_code)


def _check_csrf(ws: WebSession, request: Request, form_value: str | None = None) -> None:
    if ws.bearer:  # an API token sent by a script: no cookie, so no cross-site request to guard against
        return
    if not csrf_ok(ws.csrf, form_value or request.headers.get("x-csrf-token")):
        raise CsrfFailed()


def _safe_next(target: str | None) -> str:
    """Only same-site relative paths are followed after login."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _log_to_stderr() -> None:
    """Send lenscat's log records (failed logins, unexpected errors) to stderr, timestamped, unless
    logging is configured already."""
    logger = logging.getLogger("lenscat")
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def create_app() -> FastAPI:
    """The FastAPI application (``lenscat serve`` runs it with uvicorn)."""
    _log_to_stderr()
    app = FastAPI(title="lenscat", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if request.url.path.startswith("/api/") or request.method != "GET":
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        if exc.bearer:
            return JSONResponse(
                {"error": "wrong or disabled API token"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "log in first"}, status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)

    @app.exception_handler(CsrfFailed)
    async def csrf_failed(request: Request, exc: CsrfFailed) -> Response:
        msg = "missing or wrong CSRF token: reload the page and try again"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": msg}, status_code=403)
        return render("error.html", request, status_code=403, message=msg, me=None)

    @app.exception_handler(LenscatError)
    async def lenscat_error(request: Request, exc: LenscatError) -> Response:
        code = 404 if isinstance(exc, NotFoundError) else 403 if isinstance(exc, ReadOnlyError) else 400
        message = public_message(str(exc))
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=code)
        return render("error.html", request, status_code=code, message=message, me=None)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        message = "internal error: the server log has the details"
        resp: Response
        if request.url.path.startswith("/api/"):
            resp = JSONResponse({"error": message}, status_code=500)
        else:
            resp = render("error.html", request, status_code=500, message=message, me=None)
        resp.headers.update({**SECURITY_HEADERS, "Cache-Control": "no-store"})  # outside the middleware
        return resp

    # ------------------------------------------------------------------ login
    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/", failed: int = 0, locked: int = 0) -> Response:
        token = uuid.uuid4().hex
        resp = render(
            "login.html",
            request,
            next=_safe_next(next),
            csrf=token,
            failed=bool(failed),
            locked=max(0, min(int(locked), 10**6)),
            me=None,
        )
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", max_age=3600, secure=_secure())
        return resp

    @app.post("/login")
    def login(
        request: Request,
        *,
        name: Annotated[str, Form()] = "",
        password: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/",
        csrf_token: Annotated[str, Form()] = "",
        session: DB,
    ) -> Response:
        target = _safe_next(next)
        if not csrf_ok(request.cookies.get(LOGIN_CSRF_COOKIE), csrf_token):
            raise CsrfFailed()
        client = request.client.host if request.client else "unknown"
        grader, wait = web_login(name, password, client, session=session) if name and password else (None, 0.0)
        if grader is None:
            query = {"next": target, "locked": math.ceil(wait / 60)} if wait > 0 else {"next": target, "failed": 1}
            return RedirectResponse("/login?" + urlencode(query), status_code=303)
        value, _ = start_session(grader, session=session, client=client)
        resp = RedirectResponse(target, status_code=303)
        resp.set_cookie(
            SESSION_COOKIE, value, httponly=True, samesite="lax", secure=_secure(), max_age=int(3600 * _hours())
        )
        resp.delete_cookie(LOGIN_CSRF_COOKIE)
        return resp

    @app.post("/logout")
    def logout(request: Request, *, csrf_token: Annotated[str, Form()] = "", me: Me, session: DB) -> Response:
        _check_csrf(me[1], request, csrf_token)
        end_session(me[1], session=session)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE)
        return resp

    # ------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse)
    def home(request: Request, me: Me, session: DB) -> Response:
        from lenscat.registry.versions import list_models

        classifiers = _latest(list_models("classifier", session=session))
        encoders = [m for m in _latest(list_models("encoder", session=session)) if m["n_embeddings"]]
        counts = (
            session.execute(
                text(
                    "SELECT (SELECT count(*) FROM lenscat.sources) AS sources, (SELECT count(*) FROM lenscat.grades) AS grades,"
                    " (SELECT count(*) FROM public.grade_consensus) AS graded,"
                    " (SELECT count(*) FROM public.grade_conflicts) AS conflicts,"
                    " (SELECT count(*) FROM lenscat.grades WHERE grader_id = :g) AS mine"
                ),
                {"g": me[0].grader_id},
            )
            .mappings()
            .one()
        )
        campaigns = _campaigns(session)
        by_grade = session.execute(
            text("SELECT consensus_grade, count(*) AS n FROM public.grade_consensus GROUP BY 1 ORDER BY 1")
        ).all()
        return render(
            "home.html",
            request,
            me=me[0],
            csrf=me[1].csrf,
            classifiers=classifiers,
            encoders=encoders,
            counts=counts,
            campaigns=campaigns,
            by_grade=by_grade,
        )

    @app.get("/grid", response_class=HTMLResponse)
    def grid(request: Request, me: Me, session: DB) -> Response:
        from lenscat.web.samples import cells, resolve_sample, sql_grid_ok

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

    @app.get("/source/{source_id}", response_class=HTMLResponse)
    def source_page(source_id: int, request: Request, me: Me, session: DB) -> Response:
        from lenscat.web.pages import source_context

        ctx = source_context(source_id, me[0], session=session)
        return render("source.html", request, me=me[0], csrf=me[1].csrf, request_id=str(uuid.uuid4()), **ctx)

    @app.post("/source/{source_id}/grade")
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
        _check_csrf(me[1], request, csrf_token)
        record_grades(
            me[0],
            [GradeInput(source_id, parse_grade(grade), comment or None, request_id or None)],
            sample="candidate-page",
            session=session,
        )
        session.commit()
        return RedirectResponse(f"/source/{source_id}", status_code=303)

    @app.get("/search", response_class=HTMLResponse)
    def search(request: Request, *, q: str = "", me: Me, session: DB) -> Response:
        from lenscat.web.pages import search_sources

        results, note = search_sources(q, session=session) if q.strip() else ([], "")
        if len(results) == 1 and q.strip():
            return RedirectResponse(f"/source/{results[0]['source_id']}", status_code=303)
        return render("search.html", request, me=me[0], csrf=me[1].csrf, q=q, results=results, note=note)

    @app.get("/query", response_class=HTMLResponse)
    def query_page(request: Request, *, sql: str = "", me: Me) -> Response:
        # a GET only fills the form: SQL runs from a POST with the CSRF token, so a link cannot run it
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
            max_rows=_query_max_rows(),
        )

    @app.post("/query", response_class=HTMLResponse)
    def query_run(
        request: Request, *, sql: Annotated[str, Form()] = "", csrf_token: Annotated[str, Form()] = "", me: Me
    ) -> Response:
        from lenscat.db.usersql import run_readonly_sql
        from lenscat.settings import get_settings
        from lenscat.web.samples import sql_grid_signature

        _check_csrf(me[1], request, csrf_token)
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

    @app.get("/conflicts", response_class=HTMLResponse)
    def conflicts(request: Request, me: Me, session: DB) -> Response:
        from lenscat.grading.grades import conflicts_table

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

    @app.get("/cutout/{source_id}.png")
    def cutout_png(source_id: int, *, band: str = "rgb", me: Me, session: DB) -> Response:
        from lenscat.web.pages import cutout_png_bytes

        return Response(
            cutout_png_bytes(source_id, band, session=session),
            media_type="image/png",
            headers={"Cache-Control": "private, max-age=3600"},
        )

    @app.get("/spectrum/{spectrum_id}.png")
    def spectrum_png(spectrum_id: int, me: Me, session: DB) -> Response:
        from lenscat.spectra.plot import spectrum_png as plot

        return Response(
            plot(spectrum_id, session=session),
            media_type="image/png",
            headers={"Cache-Control": "private, max-age=600"},
        )

    @app.get("/export")
    def export(request: Request, *, grades: str = "A,B", format: str = "fits", me: ApiMe, session: DB) -> Response:
        from lenscat.export.catalogue import (
            FILE_SUFFIXES,
            MEDIA_TYPES,
            candidate_table,
            export_bytes,
        )

        if format not in MEDIA_TYPES:
            raise LenscatError(f"unknown export format {format!r}; expected {', '.join(MEDIA_TYPES)}")
        table = candidate_table(session=session, grades=[g for g in grades.split(",") if g.strip()])
        if len(table) == 0:
            raise NotFoundError(f"no source has a consensus grade among {grades} yet: grade some first")
        name = f"lenscat_candidates{FILE_SUFFIXES[format]}"
        return Response(
            export_bytes(table, format),
            media_type=MEDIA_TYPES[format],
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    # ------------------------------------------------------------------ JSON API (the grid's script)
    @app.post("/api/grades")
    def api_grade(body: GradeBody, request: Request, me: ApiMe, session: DB) -> Response:
        _check_csrf(me[1], request)
        sid, loop_id = body.source_id, body.loop_id
        grade = parse_grade(body.grade)
        n = record_grades(
            me[0],
            [GradeInput(sid, grade, body.comment, body.request_id)],
            sample=(body.sample or "grid")[:200],
            loop_id=loop_id,
            session=session,
        )
        cons = (
            session.execute(
                text("SELECT consensus_grade, mean_grade, n_votes FROM public.grade_consensus WHERE source_id = :i"),
                {"i": sid},
            )
            .mappings()
            .first()
        )
        out: dict[str, Any] = {
            "recorded": bool(n),
            "source_id": sid,
            "grade": grade,
            "consensus": dict(cons) if cons else None,
        }
        if loop_id is not None:
            out["loop"] = _loop_progress(loop_id, session)
        session.commit()
        return JSONResponse(out)

    @app.post("/api/learn/{campaign}/advance")
    def api_advance(campaign: str, request: Request, me: ApiMe, session: DB) -> Response:
        from lenscat.learning.active import advance, current_loop, get_campaign

        _check_csrf(me[1], request)
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
        session.commit()
        return JSONResponse(
            {
                "advanced": True,
                "loop_no": loop.loop_no,
                "model": loop.model,
                "url": "/grid?" + urlencode({"kind": "loop", "campaign": campaign}),
            }
        )

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/healthz")
    def healthz(session: DB) -> Response:
        session.execute(text("SELECT 1"))
        return JSONResponse({"ok": True})

    return app


def _loop_progress(loop_id: int, session: Session) -> dict[str, Any]:
    from lenscat.learning.active import refresh_loop

    loop = refresh_loop(loop_id, session=session)
    return {
        "loop_no": loop.loop_no,
        "n_graded": loop.n_graded,
        "n_found": loop.n_found,
        "size": len(loop.batch),
        "complete": bool(loop.completed),
    }


def _campaigns(session: Session) -> list[dict[str, Any]]:
    from lenscat.learning.active import list_campaigns

    return list_campaigns(session=session)


def _latest(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for m in models:
        if m["name"] not in latest or m["version"] > latest[m["name"]]["version"]:
            latest[m["name"]] = m
    return [latest[k] for k in sorted(latest)]


def _query_max_rows() -> int:
    from lenscat.settings import get_settings

    return int(get_settings().web_query_max_rows)


def _secure() -> bool:
    from lenscat.settings import get_settings

    return bool(get_settings().web_secure_cookies)


def _hours() -> float:
    from lenscat.settings import get_settings

    return float(get_settings().web_session_hours)
