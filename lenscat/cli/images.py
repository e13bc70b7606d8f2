"""Command line for cutout images: ``lenscat cutout`` and ``lenscat ingest cutouts``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lenscat.cli.common import FORMAT_OPTION, needs_schema
from lenscat.io.output import write_rows


@click.command("cutout")
@click.argument("source_id", type=int)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file to write.")
@click.option("--stretch", type=click.Choice(["lupton", "asinh"]), default="asinh", show_default=True)
@needs_schema
def cutout_cmd(source_id: int, out: Path, stretch: str) -> None:
    """Render a source's cutout as an RGB PNG (z,r,g -> R,G,B)."""
    from lenscat.db.session import session_scope
    from lenscat.images.store import rgb_image, save_png, source_cutout

    with session_scope() as s:
        img, bands = source_cutout(source_id, session=s)
    save_png(rgb_image(img, bands, stretch=stretch), out)
    click.echo(f"wrote {out}")


@click.command("cutouts")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--survey", required=True, help="Survey the objects belong to, e.g. ps1-lenses.")
@FORMAT_OPTION
@needs_schema
def ingest_cutouts_cmd(paths: tuple[Path, ...], survey: str, fmt: str) -> None:
    """Register FITS cutouts with a WCS as sources (one per file, or per set of NAME_<band>.fits)."""
    from lenscat.catalogue.ingest_fits import ingest_fits_cutouts
    from lenscat.db.session import session_scope

    with session_scope() as s:
        done = ingest_fits_cutouts(list(paths), survey, session=s)
    cols = ["source_id", "objid", "ra", "dec", "bands", "files"]
    write_rows(
        cols, [[d.source_id, d.objid, d.ra, d.dec, ",".join(d.bands), len(d.files)] for d in done], fmt, sys.stdout
    )
