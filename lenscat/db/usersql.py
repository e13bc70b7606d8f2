"""Read-only SQL for users (``lenscat sql``, the web query page, SQL-defined grids).

One statement, run as the read-only role in a read-only transaction. Results stream: a row
query (``SELECT``, ``WITH``, ``VALUES``, ``TABLE``) runs through a server-side cursor and is
fetched a batch at a time, so memory stays flat whatever the row count; other statements
(``EXPLAIN``, ``SHOW``) return their few rows at once.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg

from lenscat.db.server import READER_ROLE, reader_url, resolve_database_url
from lenscat.errors import LenscatError, ReadOnlyError
from lenscat.settings import get_settings

#: Rows fetched from the server per round trip while streaming.
FETCH_ROWS = 2000

_VIEWS_HINT = (
    "lenscat sql reads the documented views in schema public (sources, surveys, literature_catalogs, "
    "literature_lenses, crossmatches, ingests, ingest_rejects, embeddings, scores, spectra, "
    "spectral_hits, grades, grade_consensus, grade_conflicts, candidates)"
)
_WRITE_VERB = re.compile(
    r"^\s*(insert|update|delete|merge|create|drop|alter|truncate|grant|revoke|copy|comment|"
    r"vacuum|analyze|cluster|reindex|refresh|lock|call|do|set|reset)\b",
    re.IGNORECASE,
)
_ROW_QUERY = re.compile(r"^[\s(]*(select|with|values|table)\b", re.IGNORECASE)


class SqlRows(NamedTuple):
    """At most ``max_rows`` rows of a read-only query.

    Attributes
    ----------
    columns
        Column names.
    rows
        The rows fetched.
    truncated
        True when the query had more rows than were fetched.
    """

    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool


@dataclass
class SqlStream:
    """A running read-only query: its columns, and its rows fetched a batch at a time."""

    columns: list[str]
    _cursor: Any
    _sql: str

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        if self._cursor is None:
            return
        while True:
            with _sql_errors(self._sql):
                batch = self._cursor.fetchmany(FETCH_ROWS)
            if not batch:
                return
            yield from batch

    def fetch(self, n: int) -> SqlRows:
        """The first ``n`` rows, and whether there were more (fetches at most ``n + 1``)."""
        if self._cursor is None:
            return SqlRows(self.columns, [], False)
        with _sql_errors(self._sql):
            rows = self._cursor.fetchmany(n + 1)
        return SqlRows(self.columns, rows[:n], len(rows) > n)


@contextmanager
def readonly_query(sql: str, *, timeout_s: float | None = None) -> Iterator[SqlStream]:
    """Run one SELECT-like statement with no write rights; iterate the result inside the block.

    Three guards: the ``lenscat_reader`` role (SELECT on the documented views only), a read-only
    transaction, and the extended query protocol (a second statement is refused). A statement
    timeout (``timeout_s``, default ``LENSCAT_STATEMENT_TIMEOUT_S``) bounds every round trip.

    Parameters
    ----------
    sql
        The statement (a trailing ``;`` is allowed).
    timeout_s
        Statement timeout in seconds.

    Yields
    ------
    SqlStream
        Columns, and the rows as an iterator that fetches :data:`FETCH_ROWS` at a time.

    Raises
    ------
    ReadOnlyError
        The statement tried to write.
    LenscatError
        Any other SQL error, as PostgreSQL's one-line message.
    """
    statement = sql.strip().rstrip(";").strip()
    if not statement:
        raise LenscatError("empty SQL statement")
    settings = get_settings()
    url = reader_url(settings)
    as_reader = url is not None
    url = url or resolve_database_url(settings)
    timeout_ms = max(1, int((timeout_s if timeout_s is not None else settings.statement_timeout_s) * 1000))
    try:
        conn = psycopg.connect(url, options=f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms}")
    except psycopg.OperationalError as exc:
        raise LenscatError(f"cannot connect for read-only SQL: {str(exc).strip().splitlines()[0]}") from exc
    try:
        conn.read_only = True
        if not as_reader:
            # A user's server without LENSCAT_READONLY_DATABASE_URL: drop to the reader role
            # when we may; the read-only transaction guards either way.
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT pg_has_role(current_user, %s, 'MEMBER') FROM pg_roles WHERE rolname = %s",
                    (READER_ROLE, READER_ROLE),
                )
                row = cur.fetchone()
                if row and row[0]:
                    cur.execute(f"SET ROLE {READER_ROLE}")
        if _ROW_QUERY.match(statement):
            # a server-side cursor: DECLARE goes through the extended protocol (one statement only)
            cursor: Any = conn.cursor(name=f"lenscat_sql_{uuid.uuid4().hex[:12]}")
            with _sql_errors(statement):
                cursor.execute(statement)  # psycopg describes the declared portal: columns known now
            columns = [d.name for d in cursor.description] if cursor.description else []
            yield SqlStream(columns, cursor if cursor.description else None, statement)
        else:
            cur = conn.cursor()
            with _sql_errors(statement):
                cur.execute(statement, prepare=True)
            if cur.description is None:
                yield SqlStream([], None, statement)
            else:
                yield SqlStream([d.name for d in cur.description], cur, statement)
    finally:
        with suppress(psycopg.Error):
            conn.rollback()
        conn.close()


def run_readonly_sql(sql: str, *, max_rows: int, timeout_s: float | None = None) -> SqlRows:
    """The first ``max_rows`` rows of a read-only statement (see :func:`readonly_query`).

    Parameters
    ----------
    sql
        One SELECT-like statement.
    max_rows
        How many rows to return at most; memory is bounded by it, not by the query.
    timeout_s
        Statement timeout in seconds (default ``LENSCAT_STATEMENT_TIMEOUT_S``).

    Returns
    -------
    SqlRows
        Columns, rows, and whether the query had more rows.
    """
    with readonly_query(sql, timeout_s=timeout_s) as result:
        return result.fetch(max_rows)


@contextmanager
def _sql_errors(sql: str) -> Iterator[None]:
    """Turn a psycopg error into a one-line :class:`LenscatError` (:class:`ReadOnlyError` for writes)."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        msg = _message(exc)
        if _WRITE_VERB.match(sql):
            raise ReadOnlyError(f"lenscat sql is read-only; refused: {msg}") from exc
        raise LenscatError(f"SQL error: {msg}; {_VIEWS_HINT}") from exc
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        raise ReadOnlyError(f"lenscat sql is read-only; refused: {_message(exc)}") from exc
    except psycopg.errors.QueryCanceled as exc:
        raise LenscatError(
            f"SQL error: {_message(exc)} (LENSCAT_STATEMENT_TIMEOUT_S sets the CLI's limit, "
            f"LENSCAT_WEB_STATEMENT_TIMEOUT_S the web's; narrow the query or add LIMIT)"
        ) from exc
    except psycopg.Error as exc:
        msg = _message(exc)
        if _WRITE_VERB.match(sql) or "data-modifying" in msg:
            raise ReadOnlyError(f"lenscat sql is read-only; refused: {msg}") from exc
        if isinstance(exc, psycopg.errors.SyntaxError) and "multiple commands" in msg:
            raise LenscatError("lenscat sql runs one statement at a time") from exc
        raise LenscatError(f"SQL error: {msg}") from exc


def _message(exc: psycopg.Error) -> str:
    return exc.diag.message_primary or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
