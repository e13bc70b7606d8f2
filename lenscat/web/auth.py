"""Signed login cookies and CSRF tokens for the grading web app.

A login is an HMAC-SHA256-signed cookie (``lenscat_session``: grader id, name, CSRF token,
expiry); it is ``HttpOnly`` and ``SameSite=Lax``. Every state-changing request must carry the
session's CSRF token, as a form field ``csrf_token`` or an ``X-CSRF-Token`` header; the login form
itself uses a double-submit cookie. The grader is looked up again on every request, so disabling an
account ends its sessions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lenscat.settings import get_settings

SESSION_COOKIE = "lenscat_session"
LOGIN_CSRF_COOKIE = "lenscat_login_csrf"


@lru_cache(maxsize=1)
def secret_key() -> bytes:
    """The cookie-signing key: LENSCAT_WEB_SECRET_KEY, else a random key kept in LENSCAT_HOME."""
    settings = get_settings()
    if settings.web_secret_key:
        return settings.web_secret_key.encode()
    path = Path(settings.home).expanduser() / "web-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


@dataclass(frozen=True)
class WebSession:
    """What a valid login cookie says."""

    grader_id: int
    name: str
    csrf: str
    expires: float


def _sign(payload: bytes) -> str:
    return hmac.new(secret_key(), payload, hashlib.sha256).hexdigest()


def make_session_cookie(grader_id: int, name: str) -> tuple[str, WebSession]:
    """A new signed cookie value (with a fresh CSRF token) for a logged-in grader."""
    ws = WebSession(grader_id, name, secrets.token_urlsafe(24),
                    time.time() + 3600.0 * get_settings().web_session_hours)
    payload = json.dumps({"g": ws.grader_id, "n": ws.name, "c": ws.csrf, "e": ws.expires}).encode()
    return base64.urlsafe_b64encode(payload).decode() + "." + _sign(payload), ws


def read_session_cookie(value: str | None) -> WebSession | None:
    """The session in a cookie value, or None when missing, tampered with or expired."""
    if not value or "." not in value:
        return None
    body, sig = value.rsplit(".", 1)
    try:
        payload = base64.urlsafe_b64decode(body.encode())
    except (ValueError, TypeError):
        return None
    if not hmac.compare_digest(_sign(payload), sig):
        return None
    try:
        d = json.loads(payload)
        ws = WebSession(int(d["g"]), str(d["n"]), str(d["c"]), float(d["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    return ws if ws.expires > time.time() else None


def csrf_ok(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison of a CSRF token with the expected one."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
