"""Request dependencies of the web app: the database session, the logged-in grader, CSRF checks.

Every request that needs the database gets one session from :func:`db_session`; it commits once,
after the handler returns and before the response is sent (handlers never commit themselves).
Logins, sessions and tokens are the grading domain's (:mod:`lenscat.grading.auth`); this module
only reads the cookie and header they travel in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from lenscat.db.session import session_scope
from lenscat.grading.auth import WebSession, bearer_login, csrf_ok, load_session
from lenscat.grading.grades import Grader
from lenscat.settings import get_settings

SESSION_COOKIE = "lenscat_session"
LOGIN_CSRF_COOKIE = "lenscat_login_csrf"


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


def check_csrf(ws: WebSession, request: Request, form_value: str | None = None) -> None:
    """Raise :class:`CsrfFailed` unless the request carries the session's CSRF token (form field or header)."""
    if ws.bearer:  # an API token sent by a script: no cookie, so no cross-site request to guard against
        return
    if not csrf_ok(ws.csrf, form_value or request.headers.get("x-csrf-token")):
        raise CsrfFailed()


def secure_cookies() -> bool:
    """Whether cookies are marked ``Secure`` (the app is served over HTTPS)."""
    return bool(get_settings().web_secure_cookies)


def session_hours() -> float:
    """How long a login lasts [h]."""
    return float(get_settings().web_session_hours)
