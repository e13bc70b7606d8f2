"""Grader accounts: passwords, API tokens, enabling and disabling, ending every web session of a grader.

Passwords are stored as salted scrypt hashes and API tokens as their sha256; neither leaves this
module. The web logins themselves (sessions, throttling) are :mod:`lenscat.grading.auth`'s.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from functools import lru_cache
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.db.session import durable
from lenscat.errors import InvalidParameter, LenscatError, NotFoundError, Step
from lenscat.grading.grades import Grader

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    """Salted scrypt hash, ``scrypt$N$r$p$salt$hash`` (hex)."""
    if len(password) < 8:
        raise LenscatError("a password needs at least 8 characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, maxmem=64 * 2**20, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    """True when ``password`` matches the stored scrypt hash (constant-time comparison)."""
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(digest) // 2,
            maxmem=64 * 2**20,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


def token_sha256(token: str) -> str:
    """The stored form of an API token."""
    return hashlib.sha256(token.encode()).hexdigest()


def add_grader(
    name: str,
    *,
    session: Session,
    password: str | None = None,
    full_name: str | None = None,
    token: bool = False,
    reset: bool = False,
) -> tuple[Grader, str | None]:
    """Create a grading account (or, with ``reset``, set a new password/token for an existing one).

    A reset ends every web session of the account (:func:`end_sessions`) and leaves a disabled
    account disabled (:func:`set_active` enables it).

    Returns
    -------
    grader, token
        The account and, when ``token`` is set, the new API token (shown once; only its sha256 is stored).
    """
    if password is None and not token:
        raise InvalidParameter("token", "a grader needs a password or a token ({token})")
    pw_hash = hash_password(password) if password is not None else None
    new_token = secrets.token_urlsafe(24) if token else None
    tok_hash = token_sha256(new_token) if new_token else None
    existing = session.execute(text("SELECT grader_id FROM lenscat.graders WHERE name = :n"), {"n": name}).first()
    if existing and not reset:
        raise InvalidParameter(
            "reset", f"grader {name!r} already exists (use {{reset}} to set a new password or token)"
        )
    if not existing and not _valid_name(name):
        raise LenscatError(
            f"grader name {name!r} must be 1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit"
        )
    durable(session)
    row = session.execute(
        text(
            """
            INSERT INTO lenscat.graders AS g (name, full_name, password_hash, token_sha256)
            VALUES (:n, :f, :p, :t)
            ON CONFLICT ON CONSTRAINT uq_graders_name DO UPDATE
            SET password_hash = coalesce(EXCLUDED.password_hash, g.password_hash),
                token_sha256 = coalesce(EXCLUDED.token_sha256, g.token_sha256),
                full_name = coalesce(EXCLUDED.full_name, g.full_name)
            RETURNING grader_id, name, full_name, is_active
            """
        ),
        {"n": name, "f": full_name, "p": pw_hash, "t": tok_hash},
    ).one()
    if existing:
        end_sessions(int(row.grader_id), "password reset", session=session)
    return Grader(int(row.grader_id), row.name, row.full_name, bool(row.is_active)), new_token


def _valid_name(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}", name) is not None


def set_active(name: str, active: bool, *, session: Session) -> Grader:
    """Enable or disable an account (grades already given stay).

    Disabling ends every web session of the account and stops its API token; enabling it again
    revives neither (the grader logs in again).
    """
    durable(session)
    row = session.execute(
        text(
            "UPDATE lenscat.graders SET is_active = :a WHERE name = :n RETURNING grader_id, name, full_name, is_active"
        ),
        {"a": active, "n": name},
    ).first()
    if row is None:
        raise NotFoundError(
            f"no grader named {name!r} ({{step}} to see them)", step=Step(("grader", "list"), (), "list the graders")
        )
    if not active:
        end_sessions(int(row.grader_id), "disabled", session=session)
    return Grader(int(row.grader_id), row.name, row.full_name, bool(row.is_active))


def end_sessions(grader_id: int, reason: str, *, session: Session) -> int:
    """End every live web session of a grader at once; returns how many were live.

    Parameters
    ----------
    grader_id
        The grader.
    reason
        Stored with the sessions: 'password reset', 'disabled', 'grader logout' or 'logout'.
    """
    durable(session)  # a revocation lost to a crash would bring the sessions back
    return int(
        session.execute(
            text(
                "UPDATE lenscat.web_sessions SET revoked_at = clock_timestamp(), revoked_reason = :r "
                "WHERE grader_id = :g AND revoked_at IS NULL RETURNING expires_at > clock_timestamp() AS live"
            ),
            {"g": grader_id, "r": reason},
        )
        .scalars()
        .all()
        .count(True)
    )


def logout_grader(name: str, *, session: Session) -> int:
    """End every web session of the grader ``name`` (``lenscat grader logout``); returns how many were live.

    Raises
    ------
    NotFoundError
        No such account.
    """
    grader = get_grader(name, session=session, active_only=False)
    return end_sessions(grader.grader_id, "grader logout", session=session)


def get_grader(name: str, *, session: Session, active_only: bool = True) -> Grader:
    """The account ``name``.

    Raises
    ------
    NotFoundError
        No such account, or (with ``active_only``) it is disabled.
    """
    row = session.execute(
        text("SELECT grader_id, name, full_name, is_active FROM lenscat.graders WHERE name = :n"), {"n": name}
    ).first()
    if row is None:
        raise NotFoundError(
            f"no grader named {name!r}; {{step}}", step=Step(("grader", "add"), ((None, name),), "add the grader first")
        )
    if active_only and not row.is_active:
        raise LenscatError(f"grader {name!r} is disabled")
    return Grader(int(row.grader_id), row.name, row.full_name, bool(row.is_active))


def authenticate(name: str, password: str, *, session: Session) -> Grader | None:
    """The active account when ``password`` is right, else None."""
    row = session.execute(
        text("SELECT grader_id, name, full_name, is_active, password_hash FROM lenscat.graders WHERE name = :n"),
        {"n": name},
    ).first()
    if row is None:
        verify_password(password, _dummy_hash())  # the same cost as a known name
        return None
    if not verify_password(password, row.password_hash) or not row.is_active:
        return None
    return Grader(int(row.grader_id), row.name, row.full_name, True)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_password(secrets.token_hex(16))


def authenticate_token(token: str, *, session: Session) -> Grader | None:
    """The active account holding API token ``token``, else None."""
    row = session.execute(
        text("SELECT grader_id, name, full_name FROM lenscat.graders WHERE token_sha256 = :t AND is_active"),
        {"t": token_sha256(token)},
    ).first()
    return Grader(int(row.grader_id), row.name, row.full_name, True) if row else None


def list_graders(*, session: Session) -> list[dict[str, Any]]:
    """Accounts with their grade counts and live web sessions (no credentials)."""
    rows = (
        session.execute(
            text(
                """
            SELECT r.name, r.full_name, r.is_active, r.password_hash IS NOT NULL AS has_password,
                   r.token_sha256 IS NOT NULL AS has_token, count(g.grade_id) AS n_grades,
                   max(g.created_at) AS last_grade_at, r.created_at,
                   coalesce(ws.n_sessions, 0) AS n_sessions, ws.last_seen_at
            FROM lenscat.graders r LEFT JOIN lenscat.grades g USING (grader_id)
            LEFT JOIN LATERAL (
                SELECT count(*) AS n_sessions, max(w.last_seen_at) AS last_seen_at
                FROM lenscat.web_sessions w
                WHERE w.grader_id = r.grader_id AND w.revoked_at IS NULL AND w.expires_at > clock_timestamp()
            ) ws ON true
            GROUP BY r.grader_id, ws.n_sessions, ws.last_seen_at ORDER BY r.name
            """
            )
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows]
