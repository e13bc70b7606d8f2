"""Command line: ``lenscat labels`` (lens / non-lens labels)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lenscat.cli.common import FORMAT_OPTION, _err, needs_schema
from lenscat.io.output import write_rows


@click.group("labels")
def labels() -> None:
    """Lens / non-lens labels: from literature cross-matches, tables, simulation truth."""


@labels.command("from-crossmatch")
@click.option("--catalog", required=True, help="Literature catalogue whose cross-matched lenses become positives.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@needs_schema
def labels_from_crossmatch_cmd(catalog: str, as_json: bool) -> None:
    """Positive labels for the nearest source of every lens of a cross-matched literature catalogue."""
    from lenscat.classifiers.labels import labels_from_crossmatch
    from lenscat.db.session import session_scope

    with session_scope() as s:
        summary = labels_from_crossmatch(catalog, session=s)
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
    else:
        click.echo(
            f"{catalog}: {summary.n_positive} lens labels ({summary.n_written} written or changed, "
            f"{summary.n_removed} removed as no longer matched)"
        )


@labels.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--label-col",
    default="label",
    show_default=True,
    help="Column with the label (1/0, true/false, yes/no, lens/non-lens, A/B/C = lens).",
)
@click.option("--survey", default=None, help="Match rows by (survey, object id) instead of position.")
@click.option("--id-col", default=None, help="Object id column for --survey (default objid).")
@click.option("--ra-col", default=None, help="RA column [deg] for matching by position.")
@click.option("--dec-col", default=None, help="Dec column [deg] for matching by position.")
@click.option("--radius", default="2arcsec", show_default=True, help="Match radius for positions.")
@click.option(
    "--origin",
    type=click.Choice(["import", "simulation"]),
    default="import",
    show_default=True,
    help="'simulation' for the truth table of a simulated survey.",
)
@click.option("--provenance", default=None, help="Label set name (default: file name and sha256).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@needs_schema
def labels_import_cmd(
    path: Path,
    label_col: str,
    survey: str | None,
    id_col: str | None,
    ra_col: str | None,
    dec_col: str | None,
    radius: str,
    origin: str,
    provenance: str | None,
    as_json: bool,
) -> None:
    """Labels from a table with (ra, dec) or (survey, objid) and a label column; re-importing updates."""
    from lenscat.classifiers.labels import import_labels
    from lenscat.db.session import session_scope
    from lenscat.sky.coords import parse_angle_quantity

    with session_scope() as s:
        summary = import_labels(
            path,
            label_col=label_col,
            survey=survey,
            id_col=id_col,
            ra_col=ra_col,
            dec_col=dec_col,
            radius=parse_angle_quantity(radius),
            origin=origin,
            provenance=provenance,
            session=s,
        )
    for row, why in summary.rejects[:20]:
        _err(f"{path}: row {row}: {why}; row rejected")
    if len(summary.rejects) > 20:
        _err(f"{path}: ... and {len(summary.rejects) - 20} more rejected rows")
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
    else:
        click.echo(
            f"{path}: {summary.n_rows} rows, {summary.n_positive} lenses and {summary.n_negative} non-lenses "
            f"labelled as {origin} '{summary.provenance}' ({summary.n_written} written or changed, "
            f"{len(summary.rejects)} rejected)"
        )


@labels.command("list")
@FORMAT_OPTION
@needs_schema
def labels_list_cmd(fmt: str) -> None:
    """Label sets: origin, provenance, number of lenses and non-lenses."""
    from lenscat.classifiers.labels import label_counts
    from lenscat.db.session import session_scope

    with session_scope() as s:
        rows = label_counts(session=s)
    cols = ["origin", "provenance", "positive", "negative", "updated_at"]
    write_rows(cols, [[r[c] for c in cols] for r in rows], fmt, sys.stdout)
