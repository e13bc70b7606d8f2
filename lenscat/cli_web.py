"""Command line for the grading web app (``lenscat serve``)."""

from __future__ import annotations

import click

from lenscat.cli_common import _err, ensure_schema


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 to serve other machines, behind HTTPS).")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Server processes.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve_cmd(host: str, port: int, workers: int, log_level: str) -> None:
    """Serve the inspection grids, candidate pages, search, query page and export to graders."""
    import uvicorn

    from lenscat.db.session import session_scope
    from lenscat.grading import list_graders

    ensure_schema()
    with session_scope() as s:
        graders = list_graders(session=s)
    if not graders:
        _err("lenscat: no grader accounts yet; add one with: lenscat grader add NAME")
    _err(f"lenscat: serving on http://{host}:{port}/  (Ctrl-C to stop)")
    uvicorn.run("lenscat.web.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, proxy_headers=True)


def register(cli: click.Group) -> None:
    """Attach these commands to the top-level group."""
    cli.add_command(serve_cmd)
