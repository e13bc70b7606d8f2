"""The same code on a user-provided server: LENSCAT_DATABASE_URL pointing at a running PostgreSQL.

CI has no second PostgreSQL with pgvector, so the test points the variable at the test server
itself; the code path (no embedded server management, URL from the environment) is the external one.
"""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_cli_uses_lenscat_database_url(engine, tmp_path):
    from lenscat.db.server import libpq_url

    url = libpq_url(engine.url.render_as_string(hide_password=False))
    env = {**os.environ, "LENSCAT_DATABASE_URL": url, "LENSCAT_HOME": str(tmp_path / "unused-home")}
    out = subprocess.run(
        [sys.executable, "-m", "lenscat.cli", "db", "status", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    info = {json.loads(x)["key"]: json.loads(x)["value"] for x in out.splitlines()}
    assert info["mode"] == "external" and info["schema_revision"] == info["schema_head"]
    assert not (tmp_path / "unused-home" / "pgdata").exists()
    # db stop leaves the user's server alone (and says so); it would stop only the embedded broker
    res = subprocess.run(
        [sys.executable, "-m", "lenscat.cli", "db", "stop"], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert "PostgreSQL: LENSCAT_DATABASE_URL is set; lenscat does not manage that server" in res.stdout
    assert "Redis broker: not running" in res.stdout
    res = subprocess.run(
        [sys.executable, "-m", "lenscat.cli", "db", "stop"],
        env={**env, "LENSCAT_BROKER_URL": "redis://localhost:6379/0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "lenscat manages neither server" in res.stderr
