"""Command line: ``lenscat ingest sources``, source catalogues into the catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lenscat.cli.common import needs_schema, report_rejects


def _parse_map(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected FIELD=COLUMN, e.g. z_spec=ZSPEC", param_hint="--map")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@click.command("sources")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--survey", required=True, help="Survey name, e.g. decals-dr9.")
@click.option(
    "--format",
    "file_format",
    default=None,
    help="astropy format (fits, ascii.csv, ascii.ecsv, votable, parquet) or hdf5-stein; default from suffix.",
)
@click.option("--ra-col", default=None, help="Right-ascension column (deg, or sexagesimal hours).")
@click.option("--dec-col", default=None, help="Declination column (deg, or sexagesimal).")
@click.option(
    "--id-col",
    default=None,
    help="Object-id column(s), comma-separated to join with '_'; @iau = J-name from position; @row = row number.",
)
@click.option(
    "--bands",
    default=None,
    help="Band names of per-band columns, e.g. g,r,z (and of the cutout channels of a Stein-layout file).",
)
@click.option(
    "--pixel-scale",
    default=None,
    help="Pixel scale of a Stein-layout file's cutouts, e.g. 0.168arcsec (a number: arcsec) "
    "[the file does not say; DECaLS: 0.262].",
)
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="FIELD=COLUMN",
    help="Map a field (ebv, source_type, z_spec, z_phot, mag_g, flux_r, ...) to a file column.",
)
@click.option("--keep-extra", is_flag=True, help="Keep unmapped columns in the extra JSON column.")
@click.option("--wrap-ra", is_flag=True, help="Wrap RA from -180..180 (or 360..720) into [0, 360).")
@click.option("--batch-rows", type=click.IntRange(min=1), default=None, help="Rows per all-or-nothing batch.")
@click.option("--strict", is_flag=True, help="Refuse the whole file if any row is rejected.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@needs_schema
def ingest_sources_cmd(
    paths: tuple[Path, ...],
    survey: str,
    file_format: str | None,
    ra_col: str | None,
    dec_col: str | None,
    id_col: str | None,
    bands: str | None,
    pixel_scale: str | None,
    maps: tuple[str, ...],
    keep_extra: bool,
    wrap_ra: bool,
    batch_rows: int | None,
    strict: bool,
    as_json: bool,
) -> None:
    """Ingest source catalogue files (FITS, CSV, ECSV, VOTable, Parquet, Stein HDF5) into SURVEY.

    Several PATHs are ingested one after the other (e.g. south_*.h5). Re-running the same command
    changes nothing; an interrupted run resumes at the first uncommitted batch. Rejected rows are
    listed with file, row, column and reason, and kept in the ingest_rejects view.
    """
    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.catalogue.types import SourceMapping
    from lenscat.settings import get_settings

    mapping = SourceMapping(
        ra_col=ra_col,
        dec_col=dec_col,
        id_cols=[c.strip() for c in id_col.split(",")] if id_col else None,
        bands=[b.strip() for b in bands.split(",")] if bands else None,
        columns=_parse_map(maps),
        keep_extra=keep_extra,
        wrap_ra=wrap_ra,
    )
    for path in paths:
        summary = ingest_sources(
            path,
            survey,
            mapping,
            format=file_format,
            batch_rows=batch_rows or get_settings().ingest_batch_rows,
            strict=strict,
            pixel_scale=pixel_scale,
        )
        report_rejects(summary.rejects, summary.path)
        if as_json:
            click.echo(json.dumps(summary.as_dict()))
            continue
        for gone in summary.cutouts_moved_from:
            click.echo(
                f"{gone}: no longer there; its sources now read their cutouts from {summary.path} (same content)"
            )
        ch = summary.cutouts_changed
        if ch is not None and ch.rows:
            click.echo(
                f"{summary.path}: pixels of {len(ch.rows)} cutouts changed (rows "
                f"{', '.join(map(str, ch.rows[:10]))}{', ...' if len(ch.rows) > 10 else ''}); "
                f"{ch.embeddings_removed} embeddings and {ch.scores_removed} scores of {ch.sources} sources "
                "described the old images and were removed (`lenscat reprocess` recomputes them)"
            )
        if summary.batches_skipped == summary.batches_total:
            click.echo(
                f"{summary.path}: already ingested into survey {survey!r} (ingest {summary.ingest_id}); nothing changed"
            )
            continue
        resumed = f", resumed after {summary.batches_skipped} committed batches" if summary.batches_skipped else ""
        click.echo(
            f"{summary.path} -> survey {survey!r}: {summary.n_rows} rows, {summary.inserted} inserted, "
            f"{summary.updated} updated, {summary.unchanged} unchanged, {summary.rejected} rejected{resumed}"
        )
        click.echo("columns: " + ", ".join(f"{k}<-{v}" for k, v in summary.mapped_columns.items()))
        if summary.ignored_columns:
            click.echo("not loaded (use --map or --keep-extra): " + ", ".join(summary.ignored_columns))
