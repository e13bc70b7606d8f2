"""Login form, login and logout."""

from __future__ import annotations

import math
import uuid
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from lenscat.grading.auth import csrf_ok, end_session, start_session, web_login
from lenscat.web.deps import (
    DB,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    CsrfFailed,
    Me,
    check_csrf,
    secure_cookies,
    session_hours,
)
from lenscat.web.rendering import render

router = APIRouter()


def safe_next(target: str | None) -> str:
    """Only same-site relative paths are followed after login."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/", failed: int = 0, locked: int = 0) -> Response:
    """The login form, with a fresh double-submit CSRF cookie."""
    token = uuid.uuid4().hex
    resp = render(
        "login.html",
        request,
        next=safe_next(next),
        csrf=token,
        failed=bool(failed),
        locked=max(0, min(int(locked), 10**6)),
        me=None,
    )
    resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", max_age=3600, secure=secure_cookies())
    return resp


@router.post("/login")
def login(
    request: Request,
    *,
    name: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
    csrf_token: Annotated[str, Form()] = "",
    session: DB,
) -> Response:
    """Check a login (throttled); on success start a session and set its cookie."""
    target = safe_next(next)
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
        SESSION_COOKIE,
        value,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(),
        max_age=int(3600 * session_hours()),
    )
    resp.delete_cookie(LOGIN_CSRF_COOKIE)
    return resp


@router.post("/logout")
def logout(request: Request, *, csrf_token: Annotated[str, Form()] = "", me: Me, session: DB) -> Response:
    """End this login's session."""
    check_csrf(me[1], request, csrf_token)
    end_session(me[1], session=session)
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE)
    return resp
