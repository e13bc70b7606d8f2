"""The TAP service's questions: run an ADQL query read-only, describe the published tables.

A query is translated (:func:`lenscat.tap.adql.translate`) and runs through the one read-only path
of the project, :func:`lenscat.db.usersql.readonly_query` (the ``lenscat_reader`` role, a read-only
transaction, one statement, a statement timeout), the same as ``lenscat sql`` and the web query
page. At most ``maxrec`` rows are fetched (the server-side cursor fetches ``maxrec + 1`` to know
whether there were more); MAXREC is capped by ``LENSCAT_TAP_MAX_REC``.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from lenscat.db.usersql import readonly_query
from lenscat.errors import InvalidParameter
from lenscat.settings import get_settings
from lenscat.tap import sql as q
from lenscat.tap.adql import translate
from lenscat.tap.types import ColumnMeta, TapResult


def row_limit(maxrec: int | str | None) -> int:
    """The rows a query may return: ``maxrec`` (default ``LENSCAT_TAP_DEFAULT_MAXREC``), at most the hard limit.

    Raises
    ------
    InvalidParameter
        (``maxrec``) not a non-negative integer.
    """
    settings = get_settings()
    if maxrec is None or (isinstance(maxrec, str) and not maxrec.strip()):
        return int(settings.tap_default_maxrec)
    try:
        n = int(maxrec)
    except ValueError as exc:
        raise InvalidParameter("maxrec", "{maxrec} must be a non-negative integer") from exc
    if n < 0:
        raise InvalidParameter("maxrec", "{maxrec} must be a non-negative integer")
    return min(n, int(settings.tap_max_rec))


def column_meta(tables: list[str] | None = None, *, session: Session) -> list[ColumnMeta]:
    """Published columns (TAP_SCHEMA.columns) of ``tables``, or of every published table.

    Parameters
    ----------
    tables
        Table names as TAP_SCHEMA writes them (``sources``, ``tap_schema.columns``); None: all.
    session
        Database session.
    """
    rows = session.execute(text(q.COLUMNS_SQL), {"all": tables is None, "tables": list(tables or [])}).all()
    return [ColumnMeta(r.table_name, r.column_name, r.description, r.unit, r.ucd, r.datatype) for r in rows]


def published_tables(*, session: Session) -> list[dict[str, str | None]]:
    """The published tables (TAP_SCHEMA.tables): schema_name, table_name, table_type, description."""
    return [dict(r._mapping) for r in session.execute(text(q.TABLES_SQL))]


def available(*, session: Session) -> bool:
    """True when the database answers and the TAP schema is there."""
    try:
        session.execute(text(q.ALIVE_SQL)).scalar_one()
    except SQLAlchemyError:
        return False
    return True


def run_query(adql: str, *, maxrec: int, timeout_s: float, session: Session) -> TapResult:
    """Run one ADQL query read-only; at most ``maxrec`` rows.

    Parameters
    ----------
    adql
        The ADQL query.
    maxrec
        Rows to return at most (:func:`row_limit`); 0 returns the columns and no rows.
    timeout_s
        Statement timeout [s].
    session
        Database session, for the column metadata only (the query runs on its own read-only
        connection).

    Returns
    -------
    TapResult
        Columns, rows, whether rows were left out, the metadata of the columns that are published
        columns of the tables read, and the SQL.

    Raises
    ------
    InvalidParameter
        (``query``) not valid ADQL or unsupported geometry.
    ReadOnlyError
        The query tried to write.
    LenscatError
        Any SQL error (unknown table or column, timeout), as one line.
    """
    tr = translate(adql)
    with readonly_query(tr.sql, timeout_s=timeout_s) as result:
        fetched = result.fetch(maxrec)
    overflow = fetched.truncated
    if overflow and tr.top is not None and tr.top <= maxrec:
        overflow = False  # the query stopped at its own TOP
    wanted = set(fetched.columns)
    meta: dict[str, ColumnMeta] = {}
    if tr.tables:
        for m in column_meta(tr.tables, session=session):
            if m.column_name in wanted and m.column_name not in meta:
                meta[m.column_name] = m
    return TapResult(list(fetched.columns), list(fetched.rows), overflow, meta, tr.sql)
