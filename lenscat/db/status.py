"""What ``lenscat db status`` reads from a running server: version, pgvector, schema revision, row counts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.db import migrate

#: tables whose (estimated) row counts `lenscat db status` shows
STATUS_TABLES = ("surveys", "sources", "literature_catalogs", "literature_lenses", "crossmatches")


def table_rows(name: str, *, session: Session) -> int | None:
    """Row count of ``lenscat.<name>``: the planner's estimate, or an exact count before the first ANALYZE.

    Parameters
    ----------
    name
        One of :data:`STATUS_TABLES` (the name goes into the SQL text, so only those are accepted).
    session
        The session to read through.

    Returns
    -------
    int or None
        The row count (None when the server does not know the table).
    """
    if name not in STATUS_TABLES:
        raise ValueError(f"not a status table: {name!r}")
    n = session.execute(text(f"SELECT reltuples::bigint FROM pg_class WHERE oid = 'lenscat.{name}'::regclass")).scalar()
    if n is not None and n < 0:
        n = session.execute(text(f"SELECT count(*) FROM lenscat.{name}")).scalar()
    return None if n is None else int(n)


def server_status(*, session: Session) -> dict[str, Any]:
    """Server version, pgvector version, schema revision and head, and row counts of the main tables.

    Parameters
    ----------
    session
        A session on the running server (reads only).

    Returns
    -------
    dict
        Keys ``server_version``, ``pgvector``, ``schema_revision``, ``schema_head`` and, once the
        schema exists, ``rows_<table>`` for each of :data:`STATUS_TABLES`, in that order.
    """
    conn = session.connection()
    info: dict[str, Any] = {
        "server_version": conn.exec_driver_sql("SHOW server_version").scalar(),
        "pgvector": conn.exec_driver_sql("SELECT extversion FROM pg_extension WHERE extname = 'vector'").scalar(),
        "schema_revision": migrate.current_revision(connection=conn),
        "schema_head": migrate.head_revision(),
    }
    if info["schema_revision"]:
        for name in STATUS_TABLES:
            info[f"rows_{name}"] = table_rows(name, session=session)
    return info
