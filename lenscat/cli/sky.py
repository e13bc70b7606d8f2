"""Command line: ``lenscat cone``, sources around a position."""

from __future__ import annotations

import sys
from typing import Any

import click

from lenscat.cli.common import FORMAT_OPTION, needs_schema
from lenscat.io.output import write_table


def _parse_cone(ra: str, dec: str, radius: str, **_: Any) -> dict[str, Any]:
    """The cone's centre and radius, parsed before the database starts."""
    from lenscat.sky.coords import parse_angle_quantity, parse_position

    return {"coord": parse_position(ra, dec), "r": parse_angle_quantity(radius)}


@click.command("cone")
@click.argument("ra")
@click.argument("dec")
@click.argument("radius", default="5arcsec")
@click.option("--survey", "surveys", multiple=True, help="Only this survey (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many rows.")
@FORMAT_OPTION
@needs_schema(before=_parse_cone)
def cone_cmd(
    ra: str,
    dec: str,
    radius: str,
    surveys: tuple[str, ...],
    limit: int | None,
    fmt: str,
    coord: Any = None,
    r: Any = None,
) -> None:
    """Sources within RADIUS of (RA, DEC), nearest first.

    RA/DEC in degrees or sexagesimal (10:00:24.5 +02:12:00); RADIUS with a unit (5arcsec, 1arcmin;
    a bare number is arcsec).
    """
    from lenscat.db.session import session_scope
    from lenscat.sky.service import cone_search

    with session_scope() as session:
        table = cone_search(coord, r, session=session, surveys=list(surveys) or None, limit=limit)
    write_table(table, fmt, sys.stdout)
