"""Local ``lenscat worker`` processes, for when nobody runs a worker on the embedded broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from lenscat.errors import LenscatError
from lenscat.settings import get_settings


def workers_listening(app: Any, timeout_s: float = 1.0) -> list[str]:
    """Names of Celery workers answering a ping on the app's broker."""
    try:
        replies = app.control.ping(timeout=timeout_s) or []
    except Exception:  # broker unreachable: no worker can be listening either
        return []
    return [name for reply in replies for name in reply]


@contextmanager
def spawn_local_workers(
    n: int, *, concurrency: int = 1, wait_s: float = 60.0
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``n`` ``lenscat worker`` processes for the duration of the block, then stop them.

    Used when nobody runs a worker on the embedded broker. Each process gets its own process
    group so that stopping it also stops its pool children. The children inherit this process's
    environment, so they read the same settings and reach the same (embedded) broker and database.
    """
    from lenscat.tasks.app import get_app

    logs = get_settings().home.expanduser().resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(n):
            log = logs / f"worker-local-{i}.log"
            with open(log, "ab") as fh:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "lenscat.cli",
                            "worker",
                            "--concurrency",
                            str(concurrency),
                            "--hostname",
                            f"lenscat-local-{os.getpid()}-{i}@%h",
                            "--loglevel",
                            "INFO",
                        ],
                        start_new_session=True,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + wait_s
        app = get_app()
        while len(workers_listening(app, 0.5)) < n:
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                raise LenscatError(
                    f"a local worker exited with status {dead[0].returncode} at start-up; see {logs}/worker-local-*.log"
                )
            if time.monotonic() > deadline:
                raise LenscatError(f"local workers did not answer within {wait_s:.0f} s")
            time.sleep(0.5)
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
