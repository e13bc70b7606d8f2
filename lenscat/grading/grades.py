"""Graders and human grades: accounts, append-only grades, consensus, conflicts, human labels.

Grades are A (sure lens, 3 points), B (probable, 2), C (possible, 1), N (not a lens, 0) and S
(skipped). They are never updated or deleted: the consensus of a source uses each grader's latest
grade (``public.grade_consensus``). Every recorded grade also refreshes the source's ``human``
label (``lenscat.labels``, provenance ``grades``), so classifiers and the active-learning loop
train on the graders' verdicts: consensus A or B (by default) is a lens, N is a non-lens, and a
C or a skip-only source has no human label.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from astropy.table import Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.db.session import durable
from lenscat.errors import LenscatError, NotFoundError

GRADES = ("A", "B", "C", "N", "S")
GRADE_POINTS = {"A": 3, "B": 2, "C": 1, "N": 0}
GRADE_NAMES = {"A": "sure lens", "B": "probable lens", "C": "possible lens", "N": "not a lens", "S": "skip"}
_ALIASES = {
    "a": "A",
    "3": "A",
    "sure": "A",
    "b": "B",
    "2": "B",
    "probable": "B",
    "c": "C",
    "1": "C",
    "possible": "C",
    "n": "N",
    "0": "N",
    "x": "N",
    "no": "N",
    "not": "N",
    "nonlens": "N",
    "non-lens": "N",
    "not a lens": "N",
    "s": "S",
    "skip": "S",
    "-": "S",
}
POSITIVE_GRADES = ("A", "B")
LABEL_PROVENANCE = "grades"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


@dataclass(frozen=True)
class Grader:
    """A grading account (never carries the password hash out of this module)."""

    grader_id: int
    name: str
    full_name: str | None
    is_active: bool


def parse_grade(value: str) -> str:
    """The grade letter for ``value`` (A/B/C/N/S, case-insensitive; 3/2/1/0, 'not a lens', 'skip'...).

    Raises
    ------
    LenscatError
        When ``value`` is not a grade.
    """
    key = str(value).strip()
    if key.upper() in GRADES:
        return key.upper()
    letter = _ALIASES.get(key.lower())
    if letter is None:
        raise LenscatError(
            f"unknown grade {value!r}; expected A, B, C (lens: sure, probable, possible), N (not a lens) or S (skip)"
        )
    return letter


# ------------------------------------------------------------------------------------ accounts
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
        raise LenscatError("a grader needs a password or a token (--token)")
    pw_hash = hash_password(password) if password is not None else None
    new_token = secrets.token_urlsafe(24) if token else None
    tok_hash = token_sha256(new_token) if new_token else None
    existing = session.execute(text("SELECT grader_id FROM lenscat.graders WHERE name = :n"), {"n": name}).first()
    if existing and not reset:
        raise LenscatError(f"grader {name!r} already exists (use --reset to set a new password or token)")
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
    import re

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
        raise NotFoundError(f"no grader named {name!r} (lenscat grader list shows them)")
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
        raise NotFoundError(f"no grader named {name!r}; add one with: lenscat grader add {name}")
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


# ------------------------------------------------------------------------------------ grades
@dataclass(frozen=True)
class GradeInput:
    """One grading action."""

    source_id: int
    grade: str
    comment: str | None = None
    request_id: str | None = None


def record_grades(
    grader: Grader,
    grades: Sequence[GradeInput],
    *,
    session: Session,
    sample: str | None = None,
    loop_id: int | None = None,
    positive_grades: Iterable[str] = POSITIVE_GRADES,
) -> int:
    """Append grades by ``grader``; returns how many rows were new.

    A grade whose ``request_id`` this grader has already used is not recorded again (a resubmitted
    form), so the call is safe to repeat. Unknown source ids, bad grades or bad request ids are
    refused before anything is written. The graded sources' human labels are refreshed.
    """
    if not grader.is_active:
        raise LenscatError(f"grader {grader.name!r} is disabled")
    if not grades:
        return 0
    rows = []
    for i, g in enumerate(grades):
        letter = parse_grade(g.grade)
        rid = g.request_id or str(uuid.uuid4())
        try:
            rid = str(uuid.UUID(rid))
        except ValueError as exc:
            raise LenscatError(f"grade {i + 1}: request id {g.request_id!r} is not a UUID") from exc
        comment = (g.comment or "").strip()[:2000] or None
        rows.append({"s": int(g.source_id), "g": letter, "c": comment, "r": rid})
    ids = sorted({int(g.source_id) for g in grades})
    durable(session)  # a person's verdict cannot be re-run: its commit waits for the disk
    known = set(
        session.execute(
            text("SELECT source_id FROM lenscat.sources WHERE source_id = ANY(:ids)"), {"ids": ids}
        ).scalars()
    )
    missing = [i for i in ids if i not in known]
    if missing:
        raise NotFoundError(
            f"no source with id {', '.join(map(str, missing[:5]))}"
            + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        )
    if (
        loop_id is not None
        and session.execute(text("SELECT 1 FROM lenscat.al_loops WHERE loop_id = :l"), {"l": loop_id}).first() is None
    ):
        raise NotFoundError(f"no active-learning loop {loop_id}")
    result = session.execute(
        text(
            """
            INSERT INTO lenscat.grades (source_id, grader_id, grade, comment, sample, loop_id, request_id)
            SELECT x.s, :gid, x.g, x.c, :sample, :loop, CAST(x.r AS uuid)
            FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x(s bigint, g text, c text, r text)
            ON CONFLICT ON CONSTRAINT uq_grades_grader_request DO NOTHING
            """
        ),
        {"gid": grader.grader_id, "sample": sample, "loop": loop_id, "rows": _json(rows)},
    )
    refresh_human_labels(ids, session=session, positive_grades=positive_grades)
    return int(getattr(result, "rowcount", 0) or 0)


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj)


def refresh_human_labels(
    source_ids: Sequence[int] | None, *, session: Session, positive_grades: Iterable[str] = POSITIVE_GRADES
) -> None:
    """Set the ``human`` labels of ``source_ids`` (all graded sources when None) from the consensus.

    Consensus in ``positive_grades`` gives label 1, N gives 0; anything else (C by default, or only
    skips) removes the human label.
    """
    pos = [parse_grade(g) for g in positive_grades]
    bad = [g for g in pos if g in ("N", "S")]
    if bad:
        raise LenscatError("positive grades must be among A, B, C")
    durable(session)
    scope = "WHERE c.source_id = ANY(:ids)" if source_ids is not None else ""
    params: dict[str, Any] = {"pos": pos, "prov": LABEL_PROVENANCE}
    if source_ids is not None:
        params["ids"] = [int(i) for i in source_ids]
    session.execute(
        text(
            f"""
            WITH c AS (SELECT c.source_id, c.consensus_grade, c.mean_grade, c.n_votes
                       FROM public.grade_consensus c {scope}),
            lab AS (SELECT source_id, CASE WHEN consensus_grade = ANY(:pos) THEN 1 ELSE 0 END AS label,
                           jsonb_build_object('consensus', consensus_grade, 'mean_grade', mean_grade,
                                              'votes', n_votes) AS detail
                    FROM c WHERE consensus_grade = ANY(:pos) OR consensus_grade = 'N')
            INSERT INTO lenscat.labels AS l (source_id, label, origin, provenance, detail)
            SELECT source_id, label, 'human', :prov, detail FROM lab
            ON CONFLICT ON CONSTRAINT uq_labels_source_origin_provenance DO UPDATE
            SET label = EXCLUDED.label, detail = EXCLUDED.detail, updated_at = now()
            WHERE (l.label, l.detail) IS DISTINCT FROM (EXCLUDED.label, EXCLUDED.detail)
            """
        ),
        params,
    )
    # sources whose consensus is no longer a lens or a non-lens lose their human label
    del_scope = "AND l.source_id = ANY(:ids)" if source_ids is not None else ""
    session.execute(
        text(
            f"""
            DELETE FROM lenscat.labels l
            WHERE l.origin = 'human' AND l.provenance = :prov {del_scope}
              AND NOT EXISTS (SELECT 1 FROM public.grade_consensus c WHERE c.source_id = l.source_id
                              AND (c.consensus_grade = ANY(:pos) OR c.consensus_grade = 'N'))
            """
        ),
        params,
    )


# ------------------------------------------------------------------------------------ reading
GRADE_COLUMNS = (
    "grade_id",
    "source_id",
    "grader",
    "grade",
    "grade_value",
    "comment",
    "sample",
    "loop_id",
    "created_at",
)
CONSENSUS_COLUMNS = (
    "source_id",
    "n_votes",
    "mean_grade",
    "consensus_grade",
    "disagreement",
    "grade_std",
    "grades",
    "last_graded_at",
)


def _table(rows: Sequence[Any], columns: Sequence[str]) -> Table:
    from lenscat.literature.crossmatch import rows_to_table

    out = rows_to_table(columns, [tuple(r) for r in rows])
    for name in ("created_at", "last_graded_at"):
        if name in out.colnames:
            out[name] = np.array([str(v) for v in out[name]], dtype=object) if len(out) else out[name]
    return out


def grades_table(
    *, session: Session, grader: str | None = None, source_id: int | None = None, limit: int | None = None
) -> Table:
    """Grades, newest first, optionally of one grader and/or one source."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if grader:
        where.append("grader = :grader")
        params["grader"] = grader
    if source_id is not None:
        where.append("source_id = :sid")
        params["sid"] = int(source_id)
    sql = (
        f"SELECT {', '.join(GRADE_COLUMNS)} FROM public.grades "
        f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY grade_id DESC"
    )
    if limit:
        sql += " LIMIT :limit"
        params["limit"] = int(limit)
    return _table(session.execute(text(sql), params).all(), GRADE_COLUMNS)


def _consensus_rows(where: list[str], params: dict[str, Any], order: str, limit: int | None, session: Session) -> Table:
    sql = (
        f"SELECT {', '.join(CONSENSUS_COLUMNS)} FROM public.grade_consensus "
        f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY {order}"
    )
    if limit:
        sql += " LIMIT :limit"
        params = {**params, "limit": int(limit)}
    return _table(session.execute(text(sql), params).all(), CONSENSUS_COLUMNS)


def consensus_table(
    *,
    session: Session,
    source_ids: Sequence[int] | None = None,
    grades: Sequence[str] | None = None,
    limit: int | None = None,
) -> Table:
    """``public.grade_consensus`` rows, best first, optionally for some sources or consensus grades."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if source_ids is not None:
        where.append("source_id = ANY(:ids)")
        params["ids"] = [int(i) for i in source_ids]
    if grades:
        where.append("consensus_grade = ANY(:grades)")
        params["grades"] = [parse_grade(g) for g in grades]
    return _consensus_rows(where, params, "mean_grade DESC, n_votes DESC, source_id", limit, session)


def conflicts_table(*, session: Session, min_spread: int = 2, limit: int | None = None) -> Table:
    """Sources whose graders' latest grades differ by at least ``min_spread`` grade points."""
    if not 1 <= min_spread <= 3:
        raise LenscatError("--min-spread must be 1, 2 or 3 grade points")
    return _consensus_rows(
        ["n_votes >= 2", "disagreement >= :m"],
        {"m": int(min_spread)},
        "disagreement DESC, grade_std DESC, source_id",
        limit,
        session,
    )


def graded_by(grader: Grader, source_ids: Sequence[int], *, session: Session) -> dict[int, str]:
    """The latest grade ``grader`` gave each of ``source_ids`` (skips included)."""
    rows = session.execute(
        text(
            """
            SELECT DISTINCT ON (source_id) source_id, grade FROM lenscat.grades
            WHERE grader_id = :g AND source_id = ANY(:ids) ORDER BY source_id, grade_id DESC
            """
        ),
        {"g": grader.grader_id, "ids": [int(i) for i in source_ids]},
    ).all()
    return {int(r.source_id): str(r.grade) for r in rows}
