"""Shared pieces of the command line: the --format option, error echo, schema check."""

from __future__ import annotations

import click

from lenscat.errors import LenscatError
from lenscat.output import FORMATS

FORMAT_OPTION = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
    help="Output format: aligned table, CSV, or JSON lines (one object per row) on stdout.",
)


RESTART_OPTION = click.option(
    "--restart", is_flag=True,
    help="Start over, discarding the saved state of an interrupted run with the same options.",
)


def parse_origins(values: tuple[str, ...]) -> list[str] | None:
    """Label origins from repeatable, comma-separated ``--labels`` values (None: all origins)."""
    return [v.strip() for x in values for v in x.split(",") if v.strip()] or None


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def ensure_schema() -> None:
    """Bring the schema to head on the embedded default; elsewhere insist on `lenscat db upgrade`."""
    from lenscat.db import migrate
    from lenscat.db.session import get_engine
    from lenscat.settings import get_settings

    engine = get_engine()
    with engine.connect() as conn:
        current = migrate.current_revision(connection=conn)
    head = migrate.head_revision()
    if current == head:
        return
    if get_settings().embedded:
        _err(f"lenscat: upgrading the embedded database schema {current or '(empty)'} -> {head}")
        with engine.connect() as conn:
            migrate.upgrade(connection=conn)
            conn.commit()
        return
    raise LenscatError(
        f"the database schema is at {current or '(empty)'} but this lenscat needs {head}: "
        f"run `lenscat db upgrade`"
    )
