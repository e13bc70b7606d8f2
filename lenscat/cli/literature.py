"""Command line: ``lenscat ingest literature`` (published lens lists) and ``lenscat crossmatch``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lenscat.cli.common import FORMAT_OPTION, _err, needs_schema, report_rejects
from lenscat.io.output import write_table


@click.command("literature")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--catalog", required=True, help="Name for this lens list, e.g. lenscat-1.1.3.")
@click.option("--citation", default=None, help="Bibliographic reference.")
@click.option(
    "--layout",
    type=click.Choice(["lenscat", "stein2021", "sled", "generic"]),
    default=None,
    help="Force a layout (default: recognised from the columns).",
)
@click.option("--format", "file_format", default=None, help="astropy format; default from suffix.")
@click.option("--ra-col", default=None)
@click.option("--dec-col", default=None)
@click.option("--name-col", default=None)
@click.option("--grade-col", default=None)
@click.option("--zlens-col", default=None)
@click.option("--zsource-col", default=None)
@click.option("--type-col", default=None, help="Deflector type column.")
@click.option("--ref-col", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@needs_schema
def ingest_literature_cmd(
    path: Path,
    catalog: str,
    citation: str | None,
    layout: str | None,
    file_format: str | None,
    ra_col: str | None,
    dec_col: str | None,
    name_col: str | None,
    grade_col: str | None,
    zlens_col: str | None,
    zsource_col: str | None,
    type_col: str | None,
    ref_col: str | None,
    as_json: bool,
) -> None:
    """Ingest a published lens list: the community catalogue CSV, Stein et al. TSVs, SLED, or any table."""
    from lenscat.db.session import session_scope
    from lenscat.literature.ingest import prepare_literature
    from lenscat.literature.service import write_literature
    from lenscat.literature.types import LiteratureColumns

    cols = LiteratureColumns(
        ra=ra_col,
        dec=dec_col,
        name=name_col,
        grade=grade_col,
        z_lens=zlens_col,
        z_source=zsource_col,
        lens_type=type_col,
        refs=ref_col,
    )
    prep = prepare_literature(path, catalog, cols, format=file_format, layout=layout)
    with session_scope() as session:
        summary = write_literature(prep, session=session, citation=citation)
    report_rejects(summary.rejects, summary.path)
    for d in summary.duplicates[:20]:
        _err(f"{summary.path}: row {d.row}: {d.reason}; not loaded")
    if len(summary.duplicates) > 20:
        _err(
            f"... and {len(summary.duplicates) - 20} more duplicate rows "
            '(see: lenscat sql "SELECT * FROM ingest_rejects")'
        )
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
    elif summary.already_done:
        click.echo(f"{summary.path}: already ingested as catalogue {catalog!r}; nothing changed")
    else:
        removed = f", {summary.removed} rows of the earlier version removed" if summary.removed else ""
        dups = f", {len(summary.duplicates)} duplicate rows skipped" if summary.duplicates else ""
        repeats = (
            f", {summary.repeats} rows share the name and position of an earlier row with other values (kept)"
            if summary.repeats
            else ""
        )
        click.echo(
            f"{summary.path} -> catalogue {catalog!r} ({summary.layout} layout): "
            f"{summary.loaded} lenses, {summary.rejected} rejected{dups}{repeats}{removed}"
        )


@click.command("crossmatch")
@click.option("--catalog", required=True, help="Literature catalogue name.")
@click.option("--radius", default="5arcsec", show_default=True, help="Match radius with unit (5arcsec, 0.1arcmin).")
@click.option("--survey", "surveys", multiple=True, help="Only match sources of this survey (repeatable).")
@click.option("--all", "show_all", is_flag=True, help="List neighbours too, not only each lens's nearest match.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Print at most this many rows.")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
@FORMAT_OPTION
@needs_schema
def crossmatch_cmd(
    catalog: str, radius: str, surveys: tuple[str, ...], show_all: bool, limit: int | None, quiet: bool, fmt: str
) -> None:
    """Cross-match a literature catalogue with the source catalogue and store the matches.

    The nearest source within the radius is each lens's match (is_nearest); other sources within
    the radius are recorded as neighbours. Results: the crossmatches view.
    """
    from lenscat.db.session import session_scope
    from lenscat.literature.crossmatch import crossmatch_catalog, crossmatch_table
    from lenscat.sky.coords import parse_angle_quantity

    r = parse_angle_quantity(radius)
    with session_scope() as session:
        summary = crossmatch_catalog(catalog, r, session=session, surveys=list(surveys) or None)
        table = None if quiet else crossmatch_table(catalog, session=session, nearest_only=not show_all, limit=limit)
    _err(
        f"crossmatch {catalog!r} within {summary.radius_arcsec:g} arcsec: {summary.n_matched} of "
        f"{summary.n_lenses} lenses matched, {summary.n_pairs} lens-source pairs"
    )
    if table is not None:
        write_table(table, fmt, sys.stdout)
