"""How the web app answers errors: login redirects, CSRF refusals, domain errors and unexpected ones.

Domain code raises the typed errors of :mod:`lenscat.errors`; they become HTTP answers here, in one
place: :class:`~lenscat.errors.NotFoundError` 404, :class:`~lenscat.errors.ReadOnlyError` 403, any
other :class:`~lenscat.errors.LenscatError` 400, with the error's message (the server's absolute
paths reduced to base names). An error carrying a ``param`` attribute (the parameter it is about)
names that form field in the JSON answer (``"param"``). API paths (``/api/...``) are answered in
JSON, pages with the error page. An unexpected error is logged with its traceback and answered
with a short generic message.
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from lenscat.errors import LenscatError, NotFoundError, ReadOnlyError
from lenscat.web.deps import CsrfFailed, LoginRequired
from lenscat.web.rendering import SECURITY_HEADERS, is_api, public_message, render

log = logging.getLogger("lenscat.web")
CSRF_MESSAGE = "missing or wrong CSRF token: reload the page and try again"
INTERNAL_MESSAGE = "internal error: the server log has the details"


def status_of(exc: LenscatError) -> int:
    """The HTTP status answering a domain error."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ReadOnlyError):
        return 403
    return 400


async def login_required(request: Request, exc: Exception) -> Response:
    """Nobody logged in: pages redirect to the login form, the API answers 401."""
    if isinstance(exc, LoginRequired) and exc.bearer:
        return JSONResponse(
            {"error": "wrong or disabled API token"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if is_api(request):
        return JSONResponse({"error": "log in first"}, status_code=401)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)


async def csrf_failed(request: Request, exc: Exception) -> Response:
    """A state-changing request without its CSRF token: 403."""
    if is_api(request):
        return JSONResponse({"error": CSRF_MESSAGE}, status_code=403)
    return render("error.html", request, status_code=403, message=CSRF_MESSAGE, me=None)


async def lenscat_error(request: Request, exc: Exception) -> Response:
    """A domain error: 404, 403 or 400 with its message."""
    assert isinstance(exc, LenscatError)
    code = status_of(exc)
    message = public_message(str(exc))
    if is_api(request):
        body: dict[str, str] = {"error": message}
        param = getattr(exc, "param", None)
        if param:
            body["param"] = str(param)
        return JSONResponse(body, status_code=code)
    return render("error.html", request, status_code=code, message=message, me=None)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """Anything else: logged with its traceback, answered 500 without details."""
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    resp: Response
    if is_api(request):
        resp = JSONResponse({"error": INTERNAL_MESSAGE}, status_code=500)
    else:
        resp = render("error.html", request, status_code=500, message=INTERNAL_MESSAGE, me=None)
    resp.headers.update({**SECURITY_HEADERS, "Cache-Control": "no-store"})  # outside the middleware
    return resp


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``."""
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(CsrfFailed, csrf_failed)
    app.add_exception_handler(LenscatError, lenscat_error)
    app.add_exception_handler(Exception, unexpected_error)
