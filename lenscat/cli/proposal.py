"""Command line for the joint evidence and the follow-up packs: ``lenscat evidence``, ``lenscat proposal``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from lenscat.cli.common import FORMAT_OPTION, _err, needs_schema
from lenscat.errors import InvalidParameter


@click.command("evidence")
@click.option("--grades", default=None, help="Candidates with these consensus grades, e.g. A,B (default: all).")
@click.option("--classifier", default=None, help="With --top: also this classifier's top N (NAME or NAME@VERSION).")
@click.option("--top", type=click.IntRange(min=1), default=None, help="How many of the classifier's best sources.")
@click.option("--source", "source_ids", type=int, multiple=True, help="Only this source id (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many rows.")
@FORMAT_OPTION
@needs_schema
def evidence_cmd(
    grades: str | None,
    classifier: str | None,
    top: int | None,
    source_ids: tuple[int, ...],
    limit: int | None,
    fmt: str,
) -> None:
    """Rank candidates by their joint evidence (public.joint_evidence).

    evidence_score = grade_llr + image_llr + spectral_llr + model_llr + literature_llr, each a
    documented log10 odds factor (dex) shown in its own column; category says why a candidate is
    where it is ('spectroscopically supported' is its own).
    """
    from lenscat.db.session import session_scope
    from lenscat.evidence.service import joint_evidence
    from lenscat.io.output import write_table

    if top is not None and classifier is None:
        raise InvalidParameter("top", "{top} needs --classifier: the top N of which classifier?")
    with session_scope() as s:
        table = joint_evidence(
            session=s,
            grades=grades if grades is not None or classifier is not None else None,
            classifier=classifier,
            top=top,
            source_ids=list(source_ids) or None,
            limit=limit,
        )
    if len(table) == 0:
        _err("lenscat: no candidate matches (grade sources, scan spectra or model lenses first)")
    write_table(table, fmt, sys.stdout)


def _check_proposal(
    site: str, start: str, end: str, min_altitude: str, grades: str, out: Path, **_: Any
) -> dict[str, Any]:
    """Check the options before the database starts: the site, the dates, the altitude and the grades."""
    import astropy.units as u

    from lenscat.grading.grades import parse_consensus_grades
    from lenscat.proposal.observability import night_dates, parse_date
    from lenscat.proposal.sites import resolve_site

    where = resolve_site(site)
    d0, d1 = parse_date(start, "from"), parse_date(end, "to")
    night_dates(d0, d1, names=("from", "to"))
    try:
        alt = u.Quantity(min_altitude if any(c.isalpha() for c in min_altitude) else f"{min_altitude} deg")
        alt_deg = float(alt.to_value(u.deg))
    except (TypeError, ValueError, u.UnitsError):
        raise InvalidParameter(
            "min_altitude", f"{{min_altitude}} {min_altitude!r} is not an angle (e.g. 30deg)"
        ) from None
    if not 0 <= alt_deg < 90:
        raise InvalidParameter("min_altitude", f"{{min_altitude}} must be in [0, 90) deg, not {alt_deg:g}")
    parse_consensus_grades(grades)
    if out.exists() and not out.is_dir():
        raise InvalidParameter("out", f"{{out}} {out} exists and is not a directory")
    return {"where": where, "d0": d0, "d1": d1, "alt_deg": alt_deg}


@click.command("proposal")
@click.option("--grades", default="A,B", show_default=True, help="Consensus grades of the targets.")
@click.option("--classifier", default=None, help="With --top: also this classifier's top N.")
@click.option("--top", type=click.IntRange(min=1), default=None, help="How many of the classifier's best sources.")
@click.option("--site", required=True, help="Observatory (keck, paranal, gemini_south, ...) or LAT,LON,HEIGHT.")
@click.option("--from", "start", required=True, help="First evening, YYYY-MM-DD.")
@click.option("--to", "end", required=True, help="Last evening, YYYY-MM-DD (inclusive).")
@click.option("--min-altitude", default="30deg", show_default=True, help="Lowest useful altitude (angle).")
@click.option("--max-targets", type=click.IntRange(min=1), default=500, show_default=True, help="Best N only.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Pack directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@needs_schema(before=_check_proposal)
def proposal_cmd(
    grades: str,
    classifier: str | None,
    top: int | None,
    site: str,
    start: str,
    end: str,
    min_altitude: str,
    max_targets: int,
    out: Path,
    quiet: bool,
    where: Any = None,
    d0: Any = None,
    d1: Any = None,
    alt_deg: float = 30.0,
) -> None:
    """Write a follow-up target pack into --out.

    targets.csv/.ecsv (priorities from the joint evidence, observability summary, exposure hint),
    starlist.txt (Keck starlist), targets.reg (ds9 regions), nights.ecsv (per night: hours above the
    altitude in astronomical darkness, best airmass, Moon separation and illumination), charts/*.png
    and *.pdf (finding charts with scale bar, compass and the model's critical curve) and README.txt.
    Works offline (astropy's bundled IERS tables, the shipped site list).
    """
    import astropy.units as u

    from lenscat.db.session import session_scope
    from lenscat.proposal.service import build_pack, write_pack

    if top is not None and classifier is None:
        raise InvalidParameter("top", "{top} needs --classifier: the top N of which classifier?")
    with session_scope() as s:
        pack = build_pack(
            session=s,
            site=where,
            start=d0,
            end=d1,
            grades=grades,
            classifier=classifier,
            top=top,
            min_altitude=alt_deg * u.deg,
            max_targets=max_targets,
        )
        files = write_pack(pack, out, progress=not quiet)
    for note in pack.notes[:10]:
        _err(f"lenscat: {note}")
    t = pack.targets
    n1 = int((t["priority"] == 1).sum())
    click.echo(
        f"wrote {len(t)} targets ({n1} at priority 1) for {pack.site.name}, {d0} to {d1}: "
        f"{len(files)} files in {out} (README.txt)"
    )
