"""Alembic environment: runs against the connection lenscat hands over, or lenscat's own database."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from lenscat.db.server import resolve_database_url, sqlalchemy_url

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=None,
        version_table="alembic_version",
        version_table_schema="lenscat",
        transaction_per_migration=True,
    )
    # The version table lives in the lenscat schema, which the first revision also creates.
    connection.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS lenscat")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run migrations on a live connection."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.attributes.get("url") or sqlalchemy_url(resolve_database_url())
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()


if context.is_offline_mode():
    context.configure(
        url=config.attributes.get("url") or "postgresql+psycopg://",
        literal_binds=True,
        version_table_schema="lenscat",
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
