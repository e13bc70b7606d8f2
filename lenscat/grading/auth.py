"""Logins of graders: revocable server-side sessions, login throttling, API tokens and CSRF tokens.

A login creates a row of ``lenscat.web_sessions``; the web app (:mod:`lenscat.web.deps`) sets a
cookie (``lenscat_session``, ``HttpOnly``, ``SameSite=Lax``) holding a random session secret signed
with the app's key; the database keeps only the secret's sha256. Every request looks the session up
again: it is valid while it is not revoked, not expired and its grader is active. Logging out revokes the session; a
password reset, ``lenscat grader disable`` and ``lenscat grader logout`` revoke every session of
the grader (:func:`lenscat.grading.accounts.end_sessions`).

Every state-changing request made with a session cookie must carry the session's CSRF token (an
HMAC of the session secret), as a form field ``csrf_token`` or an ``X-CSRF-Token`` header; the
login form itself uses a double-submit cookie. Scripts authenticate the JSON API and the export
download with ``Authorization: Bearer TOKEN`` (a token from ``lenscat grader add --token``); such
requests carry no cookie, so they need no CSRF token.

Failed logins are recorded in ``lenscat.login_attempts`` (so the limit holds across restarts and
server processes) and logged. After ``web_login_max_failures`` failures for one name, or
``web_login_max_failures_per_client`` from one client address, within ``web_login_lockout_s``
seconds, logins for that name (or from that address) are refused unchecked, the right password
included, until the window has passed. Unknown names are treated exactly like accounts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.db.session import durable
from lenscat.grading.accounts import authenticate, authenticate_token
from lenscat.grading.grades import Grader
from lenscat.settings import get_settings

NAME_KEY_CHARS = 100
log = logging.getLogger(__name__)


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
    """How a request is authenticated.

    Attributes
    ----------
    grader_id, name
        The grader.
    csrf
        The CSRF token state-changing requests must carry ("" for bearer requests, which need none).
    expires
        When the session ends [Unix time, s]; infinity for bearer requests.
    session_id
        ``lenscat.web_sessions.session_id``; None for bearer requests.
    bearer
        True when the request was authenticated by an ``Authorization: Bearer`` API token.
    """

    grader_id: int
    name: str
    csrf: str
    expires: float
    session_id: int | None = None
    bearer: bool = False


def _sign(payload: bytes) -> str:
    return hmac.new(secret_key(), payload, hashlib.sha256).hexdigest()


def session_sha256(secret: str) -> str:
    """The stored form of a session secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def csrf_token_for(secret: str) -> str:
    """The CSRF token of the session whose secret is ``secret`` (an HMAC, never stored)."""
    return _sign(b"csrf\x00" + secret.encode())[:48]


def make_session_cookie() -> tuple[str, str]:
    """A new cookie value and the random session secret it carries (signed with the app's key)."""
    secret = secrets.token_urlsafe(32)
    return f"{secret}.{_sign(secret.encode())}", secret


def read_session_cookie(value: str | None) -> str | None:
    """The session secret in a cookie value, or None when missing, malformed or not signed by us."""
    if not value or "." not in value or len(value) > 512:
        return None
    secret, sig = value.rsplit(".", 1)
    if not secret or not hmac.compare_digest(_sign(secret.encode()), sig):
        return None
    return secret


def start_session(grader: Grader, *, session: Session, client: str | None = None) -> tuple[str, WebSession]:
    """Record a new web session for ``grader``; returns the cookie value and the session.

    Sessions that ended more than 30 days ago are deleted on the way.
    """
    value, secret = make_session_cookie()
    hours = float(get_settings().web_session_hours)
    durable(session)
    row = session.execute(
        text(
            "INSERT INTO lenscat.web_sessions (grader_id, token_sha256, client, expires_at) "
            "VALUES (:g, :h, :c, clock_timestamp() + make_interval(secs => :s)) "
            "RETURNING session_id, extract(epoch FROM expires_at) AS expires"
        ),
        {"g": grader.grader_id, "h": session_sha256(secret), "c": (client or "")[:200] or None, "s": 3600.0 * hours},
    ).one()
    session.execute(
        text(
            "DELETE FROM lenscat.web_sessions WHERE least(expires_at, coalesce(revoked_at, expires_at)) "
            "< clock_timestamp() - interval '30 days'"
        )
    )
    return value, WebSession(
        grader.grader_id, grader.name, csrf_token_for(secret), float(row.expires), int(row.session_id)
    )


def load_session(cookie_value: str | None, *, session: Session) -> tuple[Grader, WebSession] | None:
    """The grader and session of a cookie, or None when it is not a live session of an active grader.

    The session's ``last_seen_at`` is updated at most once a minute.
    """
    secret = read_session_cookie(cookie_value)
    if secret is None:
        return None
    row = session.execute(
        text(
            "SELECT s.session_id, s.grader_id, g.name, g.full_name, extract(epoch FROM s.expires_at) AS expires, "
            "s.last_seen_at < clock_timestamp() - interval '1 minute' AS stale "
            "FROM lenscat.web_sessions s JOIN lenscat.graders g USING (grader_id) "
            "WHERE s.token_sha256 = :h AND s.revoked_at IS NULL AND s.expires_at > clock_timestamp() "
            "AND g.is_active"
        ),
        {"h": session_sha256(secret)},
    ).first()
    if row is None:
        return None
    if row.stale:
        session.execute(
            text("UPDATE lenscat.web_sessions SET last_seen_at = clock_timestamp() WHERE session_id = :i"),
            {"i": row.session_id},
        )
    return (
        Grader(int(row.grader_id), row.name, row.full_name, True),
        WebSession(int(row.grader_id), row.name, csrf_token_for(secret), float(row.expires), int(row.session_id)),
    )


def end_session(ws: WebSession, *, session: Session, reason: str = "logout") -> None:
    """Revoke one session (logout); a no-op for bearer requests and sessions already ended."""
    if ws.session_id is None:
        return
    durable(session)  # a logout lost to a crash would bring the session back
    session.execute(
        text(
            "UPDATE lenscat.web_sessions SET revoked_at = clock_timestamp(), revoked_reason = :r "
            "WHERE session_id = :i AND revoked_at IS NULL"
        ),
        {"i": ws.session_id, "r": reason},
    )


def bearer_login(header: str | None, *, session: Session) -> tuple[Grader, WebSession] | None | Literal[False]:
    """Authenticate an ``Authorization`` header.

    Returns
    -------
    (grader, session) | None | False
        The token's active grader; None when there is no bearer header (other schemes, e.g. a
        proxy's Basic credentials, are ignored); False when the bearer token is wrong, or its
        grader is disabled.
    """
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    grader = authenticate_token(token, session=session) if token and len(token) <= 256 else None
    if grader is None:
        log.warning("API request with a wrong or disabled bearer token")
        return False
    return grader, WebSession(grader.grader_id, grader.name, "", math.inf, None, True)


# ------------------------------------------------------------------------------------ throttling
def _name_key(name: str) -> str:
    return name.strip().lower()[:NAME_KEY_CHARS]


def lockout_seconds(name: str, client: str, *, session: Session) -> float:
    """Seconds until ``name`` may try to log in from ``client`` again (0 when it may now)."""
    settings = get_settings()
    window = float(settings.web_login_lockout_s)
    by_name = session.execute(
        text(
            "SELECT extract(epoch FROM a.attempted_at + make_interval(secs => :w) - clock_timestamp()) "
            "FROM lenscat.login_attempts a WHERE a.name = :n AND a.outcome = 'failed' "
            "AND a.attempted_at > clock_timestamp() - make_interval(secs => :w) "
            "AND a.attempted_at > coalesce((SELECT max(o.attempted_at) FROM lenscat.login_attempts o "
            "                               WHERE o.name = :n AND o.outcome = 'ok'), '-infinity') "
            "ORDER BY a.attempted_at DESC OFFSET :k LIMIT 1"
        ),
        {"n": _name_key(name), "w": window, "k": int(settings.web_login_max_failures) - 1},
    ).scalar()
    by_client = session.execute(
        text(
            "SELECT extract(epoch FROM a.attempted_at + make_interval(secs => :w) - clock_timestamp()) "
            "FROM lenscat.login_attempts a WHERE a.client = :c AND a.outcome = 'failed' "
            "AND a.attempted_at > clock_timestamp() - make_interval(secs => :w) "
            "ORDER BY a.attempted_at DESC OFFSET :k LIMIT 1"
        ),
        {"c": client, "w": window, "k": int(settings.web_login_max_failures_per_client) - 1},
    ).scalar()
    return max(0.0, float(by_name or 0.0), float(by_client or 0.0))


def record_login_attempt(name: str, client: str, outcome: str, *, session: Session) -> None:
    """Store one login attempt ('ok', 'failed' or 'locked'); attempts older than 30 days are dropped."""
    session.execute(
        text("INSERT INTO lenscat.login_attempts (name, client, outcome) VALUES (:n, :c, :o)"),
        {"n": _name_key(name), "c": client[:200], "o": outcome},
    )
    session.execute(
        text(
            "DELETE FROM lenscat.login_attempts WHERE attempted_at < clock_timestamp() - "
            "greatest(interval '30 days', make_interval(secs => :w))"
        ),
        {"w": float(get_settings().web_login_lockout_s)},
    )


def web_login(name: str, password: str, client: str, *, session: Session) -> tuple[Grader | None, float]:
    """Check a login from the web form, throttled per name and per client address.

    Returns
    -------
    grader, retry_after_s
        The grader when the login succeeded (then ``retry_after_s`` is 0); else None and the
        seconds until the name or client may try again (0 when not locked out). The answer does
        not depend on whether ``name`` is an account.
    """
    # serialise attempts on the same name and on the same client across server processes
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended('lenscat-login-name:' || :n, 0))"), {"n": _name_key(name)}
    )
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended('lenscat-login-client:' || :c, 0))"), {"c": client}
    )
    wait = lockout_seconds(name, client, session=session)
    if wait > 0:
        record_login_attempt(name, client, "locked", session=session)
        log.warning(
            "web login for %r from %s refused: locked out for %.0f s after repeated failures",
            name[:NAME_KEY_CHARS],
            client,
            wait,
        )
        return None, wait
    grader = authenticate(name, password, session=session)
    record_login_attempt(name, client, "ok" if grader else "failed", session=session)
    if grader is not None:
        return grader, 0.0
    log.warning("failed web login for %r from %s", name[:NAME_KEY_CHARS], client)
    return None, lockout_seconds(name, client, session=session)


def csrf_ok(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison of a CSRF token with the expected one."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
