"""The one module that owns the engine and sessions.

Functions that touch the database take ``session`` as a keyword argument; the caller (a CLI
command, a web handler, a Celery task) opens it with :func:`session_scope` and commits once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from lenscat.db.server import resolve_database_url, sqlalchemy_url
from lenscat.settings import get_settings

_engine: Engine | None = None
_bound_connection: Connection | None = None


def get_engine() -> Engine:
    """The process-wide engine (created on first use; starts the embedded server if needed)."""
    global _engine
    if _engine is None:
        url = sqlalchemy_url(resolve_database_url(get_settings()))
        _engine = create_engine(url, pool_pre_ping=True, future=True)
    return _engine


def dispose_engine(close: bool = True) -> None:
    """Drop the engine and its pooled connections.

    ``close=False`` in a freshly forked child: forget the parent's connections without closing
    the sockets the parent still uses.
    """
    global _engine
    if _engine is not None:
        _engine.dispose(close=close)
        _engine = None


def bind_connection(connection: Connection | None) -> None:
    """Make every new session join ``connection`` through SAVEPOINTs (tests use this).

    With a bound connection, :func:`session_scope` commits only release savepoints, so a test can
    roll the whole outer transaction back.
    """
    global _bound_connection
    _bound_connection = connection


@contextmanager
def session_scope(**kwargs: Any) -> Iterator[Session]:
    """A session whose transaction commits once when the block ends, or rolls back on error."""
    if _bound_connection is not None:
        factory = sessionmaker(bind=_bound_connection, join_transaction_mode="create_savepoint")
    else:
        factory = sessionmaker(bind=get_engine(), expire_on_commit=False)
    session = factory(**kwargs)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def durable(session: Session) -> None:
    """Make the commit of ``session``'s transaction wait until it is safe on disk.

    The embedded server runs with ``synchronous_commit = off``: right for bulk loads, which are
    resumable, but a commit it has confirmed can still be lost to an OS crash or power failure.
    Human work (grades and comments, grader accounts and their sessions, human labels,
    active-learning batches) cannot be re-run, so the functions that write it call this first:
    ``SET LOCAL synchronous_commit = on`` for this transaction only, bulk paths keep their speed.
    """
    session.execute(text("SET LOCAL synchronous_commit = on"))


def raw_connection(session: Session) -> psycopg.Connection[Any]:
    """The psycopg 3 connection under ``session`` (for COPY), inside the session's transaction."""
    dbapi = session.connection().connection.dbapi_connection
    if not isinstance(dbapi, psycopg.Connection):  # pragma: no cover - driver is fixed
        raise TypeError(f"expected a psycopg connection, got {type(dbapi)!r}")
    return dbapi
