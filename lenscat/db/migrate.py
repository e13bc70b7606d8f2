"""Run alembic migrations from Python (``lenscat db upgrade`` and the test session use this)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

import lenscat.migrations
from lenscat.db.session import get_engine
from lenscat.errors import SchemaOutOfDate
from lenscat.settings import get_settings


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An alembic Config pointing at lenscat's migrations (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(lenscat.migrations.__file__).parent))
    if connection is not None:
        cfg.attributes["connection"] = connection
    if url is not None:
        cfg.attributes["url"] = url
    return cfg


def upgrade(revision: str = "head", *, connection: Connection | None = None) -> None:
    """Apply migrations up to ``revision``."""
    command.upgrade(alembic_config(connection), revision)


def downgrade(revision: str, *, connection: Connection | None = None) -> None:
    """Revert migrations down to ``revision``."""
    command.downgrade(alembic_config(connection), revision)


def head_revision() -> str | None:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(*, connection: Connection) -> str | None:
    """The revision the database is at (None before the first upgrade)."""
    has_table = connection.exec_driver_sql("SELECT to_regclass('lenscat.alembic_version') IS NOT NULL").scalar()
    if not has_table:
        return None
    ctx = MigrationContext.configure(connection, opts={"version_table_schema": "lenscat"})
    return ctx.get_current_revision()


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def ensure_schema(notify: Callable[[str], None] = _stderr) -> None:
    """Bring the schema to head on the embedded default; elsewhere insist on ``lenscat db upgrade``.

    Parameters
    ----------
    notify
        Called with a one-line message when the embedded database is upgraded (stderr by default).

    Raises
    ------
    lenscat.errors.SchemaOutOfDate
        A user-managed server whose schema is not at head (upgrading it is the operator's call).
    """
    engine = get_engine()
    with engine.connect() as conn:
        current = current_revision(connection=conn)
    head = head_revision()
    if current == head:
        return
    if get_settings().embedded:
        notify(f"lenscat: upgrading the embedded database schema {current or '(empty)'} -> {head}")
        with engine.connect() as conn:
            upgrade(connection=conn)
            conn.commit()
        return
    raise SchemaOutOfDate(
        f"the database schema is at {current or '(empty)'} but this lenscat needs {head}: run `lenscat db upgrade`"
    )
