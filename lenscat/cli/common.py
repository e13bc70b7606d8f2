"""Shared pieces of the command line: the --format option, error echo, origins."""

from __future__ import annotations

import click

from lenscat.io.output import FORMATS

FORMAT_OPTION = click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="Output format: aligned table, CSV, or JSON lines (one object per row) on stdout.",
)


RESTART_OPTION = click.option(
    "--restart",
    is_flag=True,
    help="Start over, discarding the saved state of an interrupted run with the same options.",
)


def parse_origins(values: tuple[str, ...]) -> list[str] | None:
    """Label origins from repeatable, comma-separated ``--labels`` values (None: all origins)."""
    return [v.strip() for x in values for v in x.split(",") if v.strip()] or None


def _err(msg: str) -> None:
    click.echo(msg, err=True)
