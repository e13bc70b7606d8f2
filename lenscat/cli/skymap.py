"""Command line: ``lenscat skymap`` (ingest, match, list) -- localisation maps and MOCs (issue 34)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from lenscat.cli.common import FORMAT_OPTION, _err, needs_schema
from lenscat.errors import LenscatError


@click.group("skymap")
def skymap() -> None:
    """Gravitational-wave / GRB localisation maps and MOCs: ingest them, find what lies inside."""


@skymap.command("ingest")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Name to store the map under (e.g. the event, S250206dm).")
@click.option("--replace", is_flag=True, help="Replace a map of the same name read from another file.")
@needs_schema
def skymap_ingest_cmd(file: Path, name: str, replace: bool) -> None:
    """Store a sky map: a flat HEALPix map (RING/NESTED), a multi-order map (UNIQ, PROBDENSITY) or a MOC.

    FITS, gzip-compressed or not (LVK bayestar.fits.gz / *.multiorder.fits, Fermi GBM
    glg_healpix_all_*.fit, MOC FITS). The same file under the same name again is a no-op.
    """
    from lenscat.db.session import session_scope
    from lenscat.skymaps.service import ingest_skymap

    with session_scope() as s:
        res = ingest_skymap(file, name, session=s, replace=replace)
    if res.status == "unchanged":
        click.echo(f"sky map {res.name}: unchanged (this file is already stored)")
        return
    areas = (
        f"50 % region {res.area50_deg2:.4g} deg^2, 90 % region {res.area90_deg2:.4g} deg^2"
        if res.area90_deg2 is not None
        else f"area {res.area_deg2:.4g} deg^2 (a MOC: no probability)"
    )
    click.echo(f"sky map {res.name} {res.status}: {res.kind}, {res.n_tiles} tiles, {areas}")


def _check_match(catalog: str | None, survey: tuple[str, ...], candidates: bool, **_: Any) -> dict[str, Any]:
    if catalog is not None and (survey or candidates):
        raise LenscatError("--catalog (literature lenses) goes with neither --survey nor --candidates")
    target = "literature" if catalog is not None else "candidate" if candidates else "source"
    return {"target": target}


@skymap.command("match")
@click.argument("name")
@click.option(
    "--credible",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.9,
    show_default=True,
    help="Credible level of the region (a MOC: the whole MOC).",
)
@click.option("--catalog", default=None, help="Literature lenses of this catalogue.")
@click.option("--survey", multiple=True, help="Sources of this survey (repeatable; default every real survey).")
@click.option("--candidates", is_flag=True, help="Graded candidates (as `lenscat export` selects them).")
@click.option("--grades", default="A,B", show_default=True, help="With --candidates: consensus grades to take.")
@FORMAT_OPTION
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here, not stdout.")
@needs_schema(before=_check_match)
def skymap_match_cmd(
    name: str,
    credible: float,
    catalog: str | None,
    survey: tuple[str, ...],
    candidates: bool,
    grades: str,
    fmt: str,
    out: Path | None,
    target: str = "source",
) -> None:
    """Sources (default), literature lenses (--catalog) or candidates (--candidates) in the map NAME.

    Each with the map's probability density (sr^-1 and deg^-2) and its credible level (cumprob: the
    smallest credible region holding it), sorted by cumprob. The matches are also stored
    (view public.skymap_matches).
    """
    from lenscat.db.session import session_scope
    from lenscat.io.output import write_table
    from lenscat.skymaps.service import match_skymap

    with session_scope() as s:
        table = match_skymap(
            name,
            session=s,
            credible=credible,
            target=target,
            catalog=catalog,
            surveys=list(survey) or None,
            grades=grades,
        )
    m = table.meta
    region = "the whole MOC" if m["kind"] == "moc" else f"the {m['credible']:g} credible region"
    _err(
        f"{m['n_found']} {target} row(s) inside {region} of {name} (the sky index returned {m['n_probed']}); "
        f"stored: {m['n_inserted']} new, {m['n_updated']} updated"
    )
    if out is None:
        write_table(table, fmt, sys.stdout)
        return
    try:
        with out.open("w", encoding="utf-8") as fh:
            write_table(table, fmt, fh)
    except OSError as exc:
        raise LenscatError(f"{out}: cannot write ({exc.strerror or exc})") from exc
    click.echo(f"wrote {len(table)} matches of {name} at credible level {credible:g} to {out}")


@skymap.command("list")
@FORMAT_OPTION
@needs_schema
def skymap_list_cmd(fmt: str) -> None:
    """The stored sky maps, their kind, resolution, credible-region areas and header metadata."""
    from lenscat.db.session import session_scope
    from lenscat.io.output import write_table
    from lenscat.skymaps.service import list_skymaps

    with session_scope() as s:
        table = list_skymaps(session=s)
    write_table(table, fmt, sys.stdout)
