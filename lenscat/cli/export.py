"""Command line for the candidate catalogue: ``lenscat export`` (files, galleries, summary by region)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from lenscat.cli.common import _err, needs_schema
from lenscat.errors import LenscatError
from lenscat.export.formats import export_format_names


def _check_export(
    grades: str,
    out: Path | None,
    fmt: str | None,
    gallery: Path | None,
    summary: bool,
    site: str | None = None,
    start: str | None = None,
    end: str | None = None,
    moc: Path | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Check the options before the database starts: the grade letters, the file format key, the site and dates."""
    from lenscat.export.catalogue import export_format
    from lenscat.grading.grades import parse_consensus_grades
    from lenscat.proposal.observability import night_dates, parse_date
    from lenscat.proposal.sites import resolve_site

    observe = None
    if site is not None or start is not None or end is not None:
        if site is None or start is None or end is None:
            raise LenscatError("the observability summary needs --site, --from and --to together")
        d0, d1 = parse_date(start, "from"), parse_date(end, "to")
        night_dates(d0, d1, names=("from", "to"))
        observe = (resolve_site(site), d0, d1)

    letters = parse_consensus_grades(grades)
    if out is None and gallery is None and not summary and moc is None:
        raise LenscatError("nothing to do: give --out PATH (and/or --gallery PATH.png|pdf, --moc PATH, --summary)")
    if out is None and fmt is not None:
        raise LenscatError("--format needs --out PATH")
    key = export_format(out, fmt) if out is not None else None
    if gallery is not None and gallery.suffix.lower() not in (".png", ".pdf"):
        raise LenscatError(f"{gallery}: a gallery is a .png or .pdf file")
    return {"letters": letters, "key": key, "observe": observe}


@click.command("export")
@click.option(
    "--grades",
    default="A,B",
    show_default=True,
    help="Consensus grades to export, comma-separated: A sure, B probable, C possible lens, N not a lens.",
)
@click.option("--survey", "surveys", multiple=True, help="Only this survey (repeatable).")
@click.option(
    "--min-votes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Only sources with at least this many (non-skip) votes.",
)
@click.option(
    "--classifier",
    default=None,
    help="Scores and provenance from this classifier (NAME = latest version, or NAME@VERSION); "
    "default: each source's best score over every classifier version.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(export_format_names()),
    default=None,
    help="File format (default from the --out extension: .fits[.gz], .vot/.xml, .ecsv, .csv).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Catalogue file to write (replaced atomically).",
)
@click.option(
    "--gallery",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw the candidates as a labelled grid of RGB cutouts: a .png or a .pdf.",
)
@click.option("--ncols", type=click.IntRange(1, 40), default=8, show_default=True, help="Gallery panels per row.")
@click.option(
    "--max-images",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Gallery: draw at most this many candidates (the best first).",
)
@click.option(
    "--crop",
    "crop_arcsec",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Gallery: show the central CROP x CROP arcsec of each cutout.",
)
@click.option(
    "--site", default=None, help="With --from/--to: add the observability from this site (name or LAT,LON,HEIGHT)."
)
@click.option("--from", "start", default=None, help="First evening of the observability summary, YYYY-MM-DD.")
@click.option("--to", "end", default=None, help="Last evening of the observability summary, YYYY-MM-DD.")
@click.option(
    "--min-altitude",
    type=click.FloatRange(0, 90, max_open=True),
    default=30.0,
    show_default=True,
    help="Observability: lowest useful altitude [deg].",
)
@click.option(
    "--moc",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a MOC (MOC FITS) of the candidates' positions, one HEALPix cell each.",
)
@click.option(
    "--moc-order",
    type=click.IntRange(0, 29),
    default=14,
    show_default=True,
    help="HEALPix order of the MOC's cells (14: about 13 arcsec).",
)
@click.option("--summary", is_flag=True, help="Print counts by consensus grade and survey region.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@needs_schema(before=_check_export)
def export_cmd(
    grades: str,
    surveys: tuple[str, ...],
    min_votes: int,
    classifier: str | None,
    fmt: str | None,
    out: Path | None,
    gallery: Path | None,
    ncols: int,
    max_images: int,
    crop_arcsec: float | None,
    site: str | None,
    start: str | None,
    end: str | None,
    min_altitude: float,
    moc: Path | None,
    moc_order: int,
    summary: bool,
    quiet: bool,
    letters: tuple[str, ...] = (),
    key: str | None = None,
    observe: Any = None,
) -> None:
    """Export the graded candidates for follow-up (public.candidates).

    Writes RA/Dec in degrees and sexagesimal, magnitudes, redshifts, grades, scores, literature
    status, spectral hits and the provenance of every score, with units; the latest lens model's
    parameters with calibrated 1-sigma uncertainties (lm_*), the joint evidence (evidence_score, its
    contributions and category) and, with --site/--from/--to, the observability summary (obs_*).
    Regions in the summary are the survey's Galactic hemispheres (NGC: b >= 0, SGC: b < 0).
    With --moc, also a MOC (MOC FITS, mocpy) of the candidates' positions at --moc-order.
    """
    import astropy.units as u

    from lenscat.db.session import session_scope
    from lenscat.export.catalogue import add_ucds, candidate_table, summary_table, write_candidates, write_gallery
    from lenscat.export.followup import add_evidence_columns, add_lens_model_columns, add_observability_columns
    from lenscat.io.output import write_table

    with session_scope() as s:
        table = candidate_table(
            session=s, grades=letters, surveys=list(surveys) or None, min_votes=min_votes, classifier=classifier
        )
        if len(table) == 0:
            where = f" in {', '.join(surveys)}" if surveys else ""
            raise LenscatError(
                f"no graded source has consensus grade {' or '.join(letters)} with at least "
                f"{min_votes} vote(s){where}; nothing written (grade with `lenscat grade` "
                "or the web app)"
            )
        add_lens_model_columns(table, session=s)
        add_evidence_columns(table, session=s)
        add_ucds(table, session=s)
        if observe is not None:
            add_observability_columns(table, *observe, min_altitude=min_altitude * u.deg)
        drawn = None
        if gallery is not None:
            drawn = write_gallery(
                table,
                gallery,
                session=s,
                ncols=ncols,
                max_images=max_images,
                crop_arcsec=crop_arcsec,
                progress=not quiet,
            )
    if out is not None:
        path = write_candidates(table, out, key)
        click.echo(f"wrote {len(table)} candidates (consensus grade {','.join(letters)}) to {path} ({key})")
    if moc is not None:
        from lenscat.export.moc import write_moc

        moc_path = write_moc(table, moc, moc_order)
        click.echo(f"wrote MOC {moc_path}: {len(table)} candidates as cells of order {moc_order}")
    if drawn is not None:
        for line in drawn.problems[:10]:
            _err(f"lenscat: {line}")
        blank = f", {drawn.n_blank} without a cutout (blank panels)" if drawn.n_blank else ""
        left = f"; {drawn.n_left_out} more not drawn (--max-images)" if drawn.n_left_out else ""
        pages = f", {drawn.n_pages} pages" if drawn.n_pages > 1 else ""
        click.echo(f"wrote gallery {drawn.path}: {drawn.n_panels} panels{blank}{pages}{left}")
    if summary:
        write_table(summary_table(table), "table", sys.stdout)
