"""Command line for the spectroscopic lens search: ingest, link, list, scan, hits, detectors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from lenscat.cli.common import FORMAT_OPTION, _err, needs_schema
from lenscat.errors import LenscatError
from lenscat.io.output import write_table
from lenscat.spectra.service import DEFAULT_MF, DEFAULT_OII, get_detector


@click.group("spectra")
def spectra() -> None:
    """Spectra: ingest SDSS/BOSS/DESI files, scan for background emission lines, list hits."""


@spectra.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--pack",
    default="default",
    show_default=True,
    help="Array store to pack the spectra into (search window and full range).",
)
@click.option(
    "--link-radius",
    default="2arcsec",
    show_default=True,
    help="Link each spectrum to the nearest catalogue source within this radius.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Reader processes (default: one per CPU core, at most 8).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@needs_schema
def ingest_cmd(paths: tuple[Path, ...], pack: str, link_radius: str, workers: int | None, as_json: bool) -> None:
    """Ingest spectrum files or directories (spec-*.fits, spPlate-*.fits, DESI coadd-*.fits).

    The readable files are loaded; each file that cannot be (missing, not FITS, truncated or
    corrupt, no usable spectrum) is named on stderr with its reason, one line each, and the exit
    status is then 2, so scripts notice. A spectrum with no pixel of finite flux and ivar > 0 in
    the search window (e.g. flux all NaN) is rejected with its reason (listed in
    ``ingest_rejects``) and not ingested. Re-running skips files already ingested, so an
    interrupted ingest resumes where it stopped.
    """
    from lenscat.sky.coords import parse_angle_quantity
    from lenscat.spectra.ingest import ingest_spectra

    summary = ingest_spectra(
        list(paths),
        pack=pack,
        link_radius=parse_angle_quantity(link_radius),
        workers=workers,
        progress=None if not as_json else False,
    )
    show = 20
    for _f, line in summary.rejections[:show]:
        _err(line)
    if len(summary.rejections) > show:
        _err(
            f"... and {len(summary.rejections) - show} more rejected spectra "
            '(see: lenscat sql "SELECT * FROM ingest_rejects")'
        )
    for f, reason in summary.failures:
        _err(f"lenscat: error: {reason}" if reason.startswith(f) else f"lenscat: error: {f}: {reason}")
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
    else:
        rejected = f", {summary.spectra_rejected} rejected" if summary.spectra_rejected else ""
        click.echo(
            f"{summary.files} files: {summary.spectra_inserted} spectra new, {summary.spectra_updated} "
            f"updated{rejected}, {summary.files_skipped} files already ingested, {summary.files_failed} "
            f"failed; {summary.linked} linked to catalogue sources (store {summary.pack!r})"
        )
    if summary.files_failed:
        sys.exit(2)


@spectra.command("link")
@click.option("--radius", default="2arcsec", show_default=True, help="Link radius.")
@click.option("--relink", is_flag=True, help="Re-link spectra that already have a source.")
@needs_schema
def link_cmd(radius: str, relink: bool) -> None:
    """Link spectra to the nearest catalogue source (run after ingesting more sources)."""
    from lenscat.db.session import session_scope
    from lenscat.sky.coords import parse_angle_quantity
    from lenscat.spectra.ingest import link_spectra

    with session_scope() as s:
        n = link_spectra(session=s, radius=parse_angle_quantity(radius), relink=relink)
    click.echo(f"{n} spectra linked")


@spectra.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--linked-only", is_flag=True, help="Only spectra linked to a catalogue source.")
@FORMAT_OPTION
@needs_schema
def list_cmd(limit: int, linked_only: bool, fmt: str) -> None:
    """List ingested spectra."""
    from lenscat.db.session import session_scope
    from lenscat.spectra.hits import spectra_table

    with session_scope() as s:
        write_table(spectra_table(session=s, limit=limit, linked_only=linked_only), fmt, sys.stdout)


@spectra.command("scan")
@click.option(
    "--detector",
    required=True,
    help=f"Detector (NAME or NAME@VERSION); {DEFAULT_MF!r} and {DEFAULT_OII!r} are registered with default "
    "settings on first use.",
)
@click.option(
    "--chunk-size", type=click.IntRange(min=1), default=5000, show_default=True, help="Spectra per Celery task."
)
@click.option(
    "--local-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Start this many worker processes here (default: 1 when none answers on the embedded broker).",
)
@click.option("--no-wait", is_flag=True, help="Submit and return; watch with `lenscat jobs show ID`.")
@click.option("--json", "as_json", is_flag=True)
@needs_schema
def scan_cmd(detector: str, chunk_size: int, local_workers: int | None, no_wait: bool, as_json: bool) -> None:
    """Scan every spectrum the detector version has not scanned yet, with Celery workers."""
    from lenscat.db.session import session_scope
    from lenscat.jobs.service import pending_chunks
    from lenscat.jobs.submit import submit_and_wait
    from lenscat.spectra.hits import hit_counts
    from lenscat.spectra.scan import analyze_scans, plan_scan, refresh_overdensity
    from lenscat.tasks.names import SCAN_SPECTRA_CHUNK

    with session_scope() as s:
        job = plan_scan(get_detector(detector, session=s), chunk_size=chunk_size, session=s)
        chunks = pending_chunks(job.job_id, session=s)
    if not as_json:
        _err(f"job {job.job_id}: {job.n_items} spectra to scan with {job.detector.label} in {job.n_chunks} chunks")
    state = submit_and_wait(
        SCAN_SPECTRA_CHUNK,
        job.job_id,
        chunks,
        wait=not no_wait,
        local_workers=local_workers,
        unit="spec",
        desc=f"scan {job.detector.label}",
        progress=not as_json,
    )
    out: dict[str, Any] = job.as_dict()
    if state is not None:
        out.update(status=state.status, done=state.n_done, failed_chunks=state.n_chunks_failed)
        if state.status == "failed":
            raise LenscatError(f"job {job.job_id} failed: {state.message}")
        with session_scope() as s:
            out["overdensity_flagged"] = refresh_overdensity(job.detector, session=s)
            out["hits"], out["candidates"] = hit_counts(job.detector.model_id, session=s)
            analyze_scans(session=s)
    click.echo(
        json.dumps(out)
        if as_json
        else f"{job.detector.label}: {out.get('done', 0)} of {job.n_items} spectra scanned (job {job.job_id}); "
        f"{out.get('hits', '?')} hits, {out.get('candidates', '?')} without a veto"
    )


@spectra.command("hits")
@click.option("--detector", default=None, help="Only this detector (NAME or NAME@VERSION).")
@click.option("--candidates", "candidates_only", is_flag=True, help="Only hits without a veto.")
@click.option("--min-snr", type=float, default=None, help="Lowest S/N.")
@click.option("--min-prob", type=float, default=None, help="Lowest ResNet probability.")
@click.option("--spectrum-id", type=int, default=None, help="Only this spectrum.")
@click.option(
    "--line",
    type=click.Choice(["lya", "oii"]),
    default=None,
    help="Only this line family: background Lyman alpha or [OII] doublets.",
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@FORMAT_OPTION
@needs_schema
def hits_cmd(
    detector: str | None,
    candidates_only: bool,
    min_snr: float | None,
    min_prob: float | None,
    spectrum_id: int | None,
    line: str | None,
    limit: int,
    fmt: str,
) -> None:
    """List line hits, most probable / highest S/N first, with the implied source redshift (Lyα or [OII])."""
    from lenscat.db.session import session_scope
    from lenscat.spectra.hits import hits_table

    with session_scope() as s:
        t = hits_table(
            session=s,
            detector=detector,
            candidates_only=candidates_only,
            min_snr=min_snr,
            min_prob=min_prob,
            spectrum_id=spectrum_id,
            line=line,
            limit=limit,
        )
    write_table(t, fmt, sys.stdout)


@spectra.command("detectors")
@FORMAT_OPTION
@needs_schema
def detectors_cmd(fmt: str) -> None:
    """List detector versions with the number of spectra each has scanned and hits found."""
    from lenscat.db.session import session_scope
    from lenscat.spectra.hits import detectors_table

    with session_scope() as s:
        write_table(detectors_table(session=s), fmt, sys.stdout)
