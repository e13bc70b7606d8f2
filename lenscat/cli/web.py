"""Command line for the grading web app (``lenscat serve``)."""

from __future__ import annotations

import ipaddress
from typing import Any

import click

from lenscat.cli.common import _err, needs_schema
from lenscat.errors import LenscatError


def is_loopback(host: str) -> bool:
    """True when ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``.

    Any other name counts as non-loopback: it may resolve to an address other machines reach.
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _check_host(host: str, insecure: bool, **_: Any) -> None:
    """Refuse (or, with --insecure, warn about) a non-loopback host without Secure cookies."""
    from lenscat.settings import get_settings

    if not is_loopback(host) and not get_settings().web_secure_cookies:
        if not insecure:
            raise LenscatError(
                f"refusing to serve on {host}, which other machines can reach, with cookies that are not Secure: "
                "serve behind HTTPS and set LENSCAT_WEB_SECURE_COOKIES=true, or pass --insecure"
            )
        _err(
            "lenscat: WARNING: --insecure: serving on a non-loopback address over plain HTTP without Secure "
            "cookies.\nlenscat: WARNING: passwords, login cookies and API tokens cross the network in clear "
            "text; anyone on the path can log in as your graders.\nlenscat: WARNING: serve behind HTTPS and set "
            "LENSCAT_WEB_SECURE_COOKIES=true instead."
        )


@click.command("serve")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on (0.0.0.0 to serve other machines, behind HTTPS with LENSCAT_WEB_SECURE_COOKIES=true).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Server processes.")
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Serve a non-loopback --host without Secure cookies: passwords and login cookies then "
    "cross the network in clear text unless something else encrypts it.",
)
@needs_schema(before=_check_host)
def serve_cmd(host: str, port: int, workers: int, log_level: str, insecure: bool) -> None:
    """Serve the inspection grids, candidate pages, search, query page and export to graders.

    On a non-loopback --host (other machines can connect) it refuses to start unless cookies are
    marked Secure (LENSCAT_WEB_SECURE_COOKIES=true, behind an HTTPS proxy) or --insecure is given.
    """
    import uvicorn

    from lenscat.db.session import session_scope
    from lenscat.grading.accounts import list_graders

    with session_scope() as s:
        graders = list_graders(session=s)
    if not graders:
        _err("lenscat: no grader accounts yet; add one with: lenscat grader add NAME")
    _err(f"lenscat: serving on http://{host}:{port}/  (Ctrl-C to stop)")
    uvicorn.run(
        "lenscat.web.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        proxy_headers=True,
    )
