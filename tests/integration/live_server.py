"""A throw-away database on the test server and `lenscat serve` on a free local port.

Used by the browser tests, the TAP tests (real clients need a real HTTP server) and ``bench/tap.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def fresh_database(base_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database ``PREFIX_xxxxxxxx`` on the server of ``base_url`` (libpq URL); dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(base_url, autocommit=True)
    try:
        admin.execute(f"CREATE DATABASE {name}")
        yield urlunsplit(urlsplit(base_url)._replace(path=f"/{name}"))
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@contextlib.contextmanager
def lenscat_server(env: dict[str, str], *args: str, timeout: float = 60.0) -> Iterator[str]:
    """Run ``lenscat serve`` (with ``args``) under ``env`` on a free port; yield its base URL once
    ``/healthz`` answers; stop it after.

    Its log goes to a temporary file (a pipe nobody reads would block the server once full) and
    is quoted when the server exits or does not come up within ``timeout`` seconds.
    """
    port = free_port()
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "lenscat.cli", "serve", "--port", str(port), *args],
            env=env,
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

        def tail() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-3000:]

        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None:
                    raise RuntimeError(f"lenscat serve exited with {server.returncode}: {tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"lenscat serve did not come up within {timeout:g} s: {tail()}")
                time.sleep(0.2)
            yield base
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
