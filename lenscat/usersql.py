"""Read-only SQL for users (``lenscat sql``): one statement, read-only role and transaction."""

from __future__ import annotations

import re
from typing import Any

import psycopg

from lenscat.db.server import READER_ROLE, reader_url, resolve_database_url
from lenscat.errors import LenscatError, ReadOnlyError
from lenscat.settings import get_settings


def run_readonly_sql(sql: str, *, max_rows: int | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one SELECT-like statement with no write rights.

    Three guards: the ``lenscat_reader`` role (SELECT on the documented views only), a read-only
    transaction, and the extended query protocol (a second statement is refused).

    Returns
    -------
    columns, rows

    Raises
    ------
    ReadOnlyError
        The statement tried to write.
    LenscatError
        Any other SQL error, as PostgreSQL's one-line message.
    """
    if not sql.strip():
        raise LenscatError("empty SQL statement")
    settings = get_settings()
    url = reader_url(settings)
    as_reader = url is not None
    url = url or resolve_database_url(settings)
    timeout_ms = int(settings.statement_timeout_s * 1000)
    try:
        conn = psycopg.connect(url, options=f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms}")
    except psycopg.OperationalError as exc:
        raise LenscatError(f"cannot connect for read-only SQL: {str(exc).strip().splitlines()[0]}") from exc
    with conn:
        conn.read_only = True
        if not as_reader:
            # A user's server without LENSCAT_READONLY_DATABASE_URL: drop to the reader role
            # when we may; the read-only transaction guards either way.
            with conn.cursor() as cur:
                cur.execute("SELECT pg_has_role(current_user, %s, 'MEMBER') FROM pg_roles WHERE rolname = %s",
                            (READER_ROLE, READER_ROLE))
                row = cur.fetchone()
                if row and row[0]:
                    cur.execute(f"SET ROLE {READER_ROLE}")
        try:
            with conn.cursor() as cur:
                cur.execute(sql.strip().rstrip(";"), prepare=True)
                if cur.description is None:
                    return [], []
                columns = [d.name for d in cur.description]
                rows = cur.fetchmany(max_rows) if max_rows else cur.fetchall()
                return columns, rows
        except psycopg.errors.InsufficientPrivilege as exc:
            msg = exc.diag.message_primary or str(exc).splitlines()[0]
            if _WRITE_VERB.match(sql):
                raise ReadOnlyError(f"lenscat sql is read-only; refused: {msg}") from exc
            raise LenscatError(
                f"SQL error: {msg}; lenscat sql reads the documented views in schema public "
                f"(sources, surveys, literature_catalogs, literature_lenses, crossmatches, ingests, ingest_rejects, "
                f"embeddings, scores, spectra, spectral_hits, grades, grade_consensus, grade_conflicts, candidates)"
            ) from exc
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            raise ReadOnlyError(
                f"lenscat sql is read-only; refused: {exc.diag.message_primary or str(exc).splitlines()[0]}"
            ) from exc
        except psycopg.Error as exc:
            if _WRITE_VERB.match(sql):
                msg = exc.diag.message_primary or str(exc).splitlines()[0]
                raise ReadOnlyError(f"lenscat sql is read-only; refused: {msg}") from exc
            _raise_sql_error(exc)
        finally:
            conn.rollback()
    raise AssertionError("unreachable")


_WRITE_VERB = re.compile(
    r"^\s*(insert|update|delete|merge|create|drop|alter|truncate|grant|revoke|copy|comment|"
    r"vacuum|analyze|cluster|reindex|refresh|lock|call|do|set|reset)\b", re.IGNORECASE)


def _raise_sql_error(exc: psycopg.Error) -> None:
    """Re-raise a psycopg error as a one-line LenscatError."""
    msg = exc.diag.message_primary or str(exc).strip().splitlines()[0]
    if isinstance(exc, psycopg.errors.SyntaxError) and "multiple commands" in msg:
        raise LenscatError("lenscat sql runs one statement at a time") from exc
    raise LenscatError(f"SQL error: {msg}") from exc
