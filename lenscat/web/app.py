"""The grading web app: inspection grids graded from the keyboard, candidate pages, search, query, export.

Server-rendered (FastAPI + Jinja2) with one small script for the keyboard; no build step. This
module only assembles the app: the routes are module-level routers in :mod:`lenscat.web.routes`,
the request dependencies (database session, login, CSRF) in :mod:`lenscat.web.deps`, the error
answers in :mod:`lenscat.web.errors`. No SQL lives in ``lenscat/web``: the handlers call the
grading domain (:mod:`lenscat.grading`) and the other domains' services.

Every page needs a grader login (:mod:`lenscat.grading.auth`: revocable server-side sessions,
throttled logins; the JSON API and the export download also take ``Authorization: Bearer`` API
tokens); grades go through :func:`lenscat.grading.grades.record_grades` (append-only, one row per
grading action); the query page and SQL-defined grids run as the read-only role
(:func:`lenscat.db.usersql.run_readonly_sql`). All SQL binds its parameters. Each request opens one
session and commits once. Error pages never show the server's absolute file paths: messages are
reduced to base names, and an unexpected error is logged with its traceback and answered with a
short generic message.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from lenscat.web.errors import install_error_handlers
from lenscat.web.rendering import HERE, SECURITY_HEADERS, is_api
from lenscat.web.routes import ROUTERS


def _log_to_stderr() -> None:
    """Send lenscat's log records (failed logins, unexpected errors) to stderr, timestamped, unless
    logging is configured already."""
    logger = logging.getLogger("lenscat")
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


async def security_headers(request: Request, call_next: Any) -> Response:
    """Add the security headers to every answer; API answers and non-GET answers are not cached."""
    response: Response = await call_next(request)
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    if is_api(request) or request.method != "GET":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def create_app() -> FastAPI:
    """The FastAPI application (``lenscat serve`` runs it with uvicorn)."""
    _log_to_stderr()
    app = FastAPI(title="lenscat", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.middleware("http")(security_headers)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
