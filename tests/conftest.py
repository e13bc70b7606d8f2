"""Test fixtures: a real embedded PostgreSQL (or LENSCAT_DATABASE_URL) migrated once per session.

Integration tests run inside one outer transaction per test; every ``session_scope()`` the code
opens joins it through a SAVEPOINT, and the outer transaction is rolled back afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Settings are read once: point LENSCAT_HOME at a throw-away directory before lenscat is imported.
# The directory (an embedded PostgreSQL data directory of ~600 MB after a full run) is removed when
# the session ends, after the servers in it have stopped (see ``pytest_sessionfinish``).
THROWAWAY_HOME: str | None = None
if "LENSCAT_DATABASE_URL" not in os.environ:
    THROWAWAY_HOME = tempfile.mkdtemp(prefix="lenscat-test-")
    os.environ["LENSCAT_HOME"] = THROWAWAY_HOME
    os.environ.pop("LENSCAT_READONLY_DATABASE_URL", None)

DATA = Path(__file__).parent / "data"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Delete the throw-away ``LENSCAT_HOME`` (session fixtures have stopped its servers by now).

    A broker a CLI subprocess started there (and left running, as commands do while a Celery
    connection is open) is stopped first, whoever started it.
    """
    if THROWAWAY_HOME is not None:
        from lenscat.settings import Settings
        from lenscat.tasks.broker import stop_home_broker

        stop_home_broker(Settings(home=Path(THROWAWAY_HOME), broker_url=None))
        shutil.rmtree(THROWAWAY_HOME, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = bool(torch.cuda.is_available())
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data."""
    return DATA


@pytest.fixture(scope="session")
def engine():
    """The migrated database engine (alembic upgrade head, committed once)."""
    from lenscat.db import migrate
    from lenscat.db.session import dispose_engine, get_engine

    eng = get_engine()
    with eng.connect() as conn:
        migrate.upgrade("head", connection=conn)
        conn.commit()
    yield eng
    dispose_engine()
    from lenscat.tasks.broker import stop_embedded_broker

    stop_embedded_broker()
    from lenscat.settings import get_settings

    if get_settings().embedded:
        from lenscat.db.server import stop_embedded

        stop_embedded()


@pytest.fixture
def db_conn(engine):
    """A connection in an outer transaction that is rolled back after the test."""
    from lenscat.db.session import bind_connection

    conn = engine.connect()
    trans = conn.begin()
    bind_connection(conn)
    try:
        yield conn
    finally:
        bind_connection(None)
        trans.rollback()
        conn.close()


@pytest.fixture
def session(db_conn):
    """A session inside the test's rolled-back transaction."""
    from lenscat.db.session import session_scope

    with session_scope() as s:
        yield s
