"""Command line for the spectroscopic lens search: ingest, detectors, scans, hits, evaluation."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from lenscat.cli_common import FORMAT_OPTION, RESTART_OPTION, _err, ensure_schema
from lenscat.errors import LenscatError
from lenscat.output import write_rows, write_table

DEFAULT_MF = "matched-filter"


@click.group("spectra")
def spectra() -> None:
    """Spectra: ingest SDSS/BOSS/DESI files, scan for background emission lines, list hits."""


@spectra.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--pack", default="default", show_default=True, help="Array store to pack the search window into.")
@click.option("--link-radius", default="2arcsec", show_default=True,
              help="Link each spectrum to the nearest catalogue source within this radius.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Reader processes (default: one per CPU core, at most 8).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def ingest_cmd(paths: tuple[Path, ...], pack: str, link_radius: str, workers: int | None, as_json: bool) -> None:
    """Ingest spectrum files or directories (spec-*.fits, spPlate-*.fits, DESI coadd-*.fits).

    The readable files are loaded; each file that cannot be (missing, not FITS, truncated or
    corrupt, no usable spectrum) is named on stderr with its reason, one line each, and the exit
    status is then 2, so scripts notice. A spectrum with no pixel of finite flux and ivar > 0 in
    the search window (e.g. flux all NaN) is rejected with its reason (listed in
    ``ingest_rejects``) and not ingested. Re-running skips files already ingested, so an
    interrupted ingest resumes where it stopped.
    """
    from lenscat.sky import parse_angle_quantity
    from lenscat.spectra.ingest import ingest_spectra

    ensure_schema()
    summary = ingest_spectra(list(paths), pack=pack, link_radius=parse_angle_quantity(link_radius),
                             workers=workers, progress=None if not as_json else False)
    show = 20
    for _f, line in summary.rejections[:show]:
        _err(line)
    if len(summary.rejections) > show:
        _err(f"... and {len(summary.rejections) - show} more rejected spectra "
             "(see: lenscat sql \"SELECT * FROM ingest_rejects\")")
    for f, reason in summary.failures:
        _err(f"lenscat: error: {reason}" if reason.startswith(f) else f"lenscat: error: {f}: {reason}")
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
    else:
        rejected = f", {summary.spectra_rejected} rejected" if summary.spectra_rejected else ""
        click.echo(f"{summary.files} files: {summary.spectra_inserted} spectra new, {summary.spectra_updated} "
                   f"updated{rejected}, {summary.files_skipped} files already ingested, {summary.files_failed} "
                   f"failed; {summary.linked} linked to catalogue sources (store {summary.pack!r})")
    if summary.files_failed:
        sys.exit(2)


@spectra.command("inject")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--wavelength", type=float, required=True, help="Observed peak wavelength [Angstrom].")
@click.option("--flux", "line_flux", type=float, required=True, help="Line flux [1e-17 erg/s/cm^2].")
@click.option("--fwhm", type=float, default=300.0, show_default=True, help="Line FWHM [km/s].")
@click.option("--skew", type=float, default=2.0, show_default=True, help="Skew-normal shape (> 0: red tail).")
@click.option("--fiber", type=int, default=None, help="Fiber number of the copy (default: original + 500).")
@click.option("--overwrite", is_flag=True)
def inject_cmd(src: Path, dest: Path, wavelength: float, line_flux: float, fwhm: float, skew: float,
               fiber: int | None, overwrite: bool) -> None:
    """Copy an SDSS spec file with a Lyman-alpha-like line added (to test the search end to end)."""
    from lenscat.spectra.injection import inject_line_file

    out = inject_line_file(src, dest, wavelength=wavelength, line_flux=line_flux, fwhm_kms=fwhm, skew=skew,
                           fiber=fiber, overwrite=overwrite)
    click.echo(f"wrote {out}: line at {wavelength:.1f} A (z_Lya = {wavelength / 1215.67 - 1:.3f}), "
               f"{line_flux:g}e-17 erg/s/cm2, FWHM {fwhm:g} km/s")


@spectra.command("link")
@click.option("--radius", default="2arcsec", show_default=True, help="Link radius.")
@click.option("--relink", is_flag=True, help="Re-link spectra that already have a source.")
def link_cmd(radius: str, relink: bool) -> None:
    """Link spectra to the nearest catalogue source (run after ingesting more sources)."""
    from lenscat.db.session import session_scope
    from lenscat.sky import parse_angle_quantity
    from lenscat.spectra.ingest import link_spectra

    ensure_schema()
    with session_scope() as s:
        n = link_spectra(session=s, radius=parse_angle_quantity(radius), relink=relink)
    click.echo(f"{n} spectra linked")


@spectra.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--linked-only", is_flag=True, help="Only spectra linked to a catalogue source.")
@FORMAT_OPTION
def list_cmd(limit: int, linked_only: bool, fmt: str) -> None:
    """List ingested spectra."""
    from lenscat.db.session import session_scope
    from lenscat.spectra.hits import spectra_table

    ensure_schema()
    with session_scope() as s:
        write_table(spectra_table(session=s, limit=limit, linked_only=linked_only), fmt, sys.stdout)


@spectra.command("matched-filter")
@click.option("--name", default=DEFAULT_MF, show_default=True, help="Detector name.")
@click.option("--threshold", type=float, default=6.0, show_default=True, help="S/N threshold of a hit.")
@click.option("--sample", type=click.Choice(["galaxies", "all"]), default="galaxies", show_default=True,
              help="Spectra it scans: galaxies with a pipeline redshift (Li et al.'s sample), or all.")
@click.option("--json", "as_json", is_flag=True)
def matched_filter_cmd(name: str, threshold: float, sample: str, as_json: bool) -> None:
    """Register a matched-filter detector version (the same settings give the same version)."""
    from lenscat.db.session import session_scope
    from lenscat.spectra.scan import register_matched_filter

    ensure_schema()
    with session_scope() as s:
        mv, created = register_matched_filter(name, threshold=threshold, sample=sample, session=s)
    out = {"detector": mv.label, "model_id": mv.model_id, "created": created, "hparams": mv.hparams}
    click.echo(json.dumps(out) if as_json else f"{mv.label} ({'registered' if created else 'already registered'})")


@spectra.command("train")
@click.option("--name", default="specnet", show_default=True, help="Detector name for the trained ResNet.")
@click.option("--n", "n_train", type=click.IntRange(min=100), default=20_000, show_default=True,
              help="Synthetic training spectra.")
@click.option("--n-val", type=click.IntRange(min=100), default=5_000, show_default=True,
              help="Synthetic validation spectra.")
@click.option("--positive-fraction", type=click.FloatRange(0.001, 0.5), default=1 / 16, show_default=True,
              help="Fraction with an injected Lyman-alpha line (Li et al.: ~1:15).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs (default: the model's).")
@click.option("--real-residuals", "pack", default=None,
              help="Add real residuals (flux - continuum) from this spectrum store to part of the set.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Probability of a hit (default: the validation threshold giving <= 1 false hit per 1,000).")
@click.option("--sample", type=click.Choice(["galaxies", "all"]), default="galaxies", show_default=True,
              help="Spectra the detector scans: galaxies with a pipeline redshift, or all.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:0 ... (default: cuda when available).")
@RESTART_OPTION
@click.option("--json", "as_json", is_flag=True)
def train_cmd(name: str, n_train: int, n_val: int, positive_fraction: float, epochs: int | None, pack: str | None,
              threshold: float | None, sample: str, seed: int, device: str | None, restart: bool,
              as_json: bool) -> None:
    """Train the Li et al. (2018) 1-D ResNet on synthetic spectra and register it as a detector.

    The training state is saved after every epoch; after Ctrl-C the same command resumes.
    """
    from lenscat.db.session import session_scope
    from lenscat.spectra.training import train_detector

    ensure_schema()
    with session_scope() as s:
        mv, metrics = train_detector(name, n_train=n_train, n_val=n_val, positive_fraction=positive_fraction,
                                     epochs=epochs, residual_pack=pack, threshold=threshold, seed=seed,
                                     device=device, progress=not as_json, sample=sample, session=s,
                                     resume=not restart)
    out = {"detector": mv.label, "model_id": mv.model_id, "metrics": metrics}
    click.echo(json.dumps(out, default=str) if as_json else
               f"{mv.label}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in metrics.items() if not isinstance(v, dict | list)))


@spectra.command("detectors")
@FORMAT_OPTION
def detectors_cmd(fmt: str) -> None:
    """List detector versions with the number of spectra each has scanned and hits found."""
    from sqlalchemy import text

    from lenscat.db.session import session_scope

    ensure_schema()
    with session_scope() as s:
        res = s.execute(text(
            """SELECT m.model_id, m.name, m.version, m.architecture, m.checkpoint_sha256,
                      (SELECT count(*) FROM lenscat.spectral_scans x WHERE x.model_id = m.model_id) AS scanned,
                      (SELECT count(*) FROM lenscat.spectral_hits h WHERE h.model_id = m.model_id) AS hits,
                      m.created_at
               FROM lenscat.model_versions m WHERE m.kind = 'detector' ORDER BY m.name, m.version"""))
        write_rows(list(res.keys()), [list(r) for r in res], fmt, sys.stdout)


def _detector(name: str, session: Any) -> Any:
    from lenscat.errors import NotFoundError
    from lenscat.registry import get_model
    from lenscat.spectra.scan import register_matched_filter

    try:
        return get_model("detector", name, session=session)
    except NotFoundError:
        if name != DEFAULT_MF:
            raise
        return register_matched_filter(DEFAULT_MF, session=session)[0]


@spectra.command("scan")
@click.option("--detector", required=True,
              help=f"Detector (NAME or NAME@VERSION); {DEFAULT_MF!r} is registered with default settings on first use.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Spectra per Celery task.")
@click.option("--local-workers", type=click.IntRange(min=0), default=None,
              help="Start this many worker processes here (default: 1 when none answers on the embedded broker).")
@click.option("--no-wait", is_flag=True, help="Submit and return; watch with `lenscat jobs show ID`.")
@click.option("--json", "as_json", is_flag=True)
def scan_cmd(detector: str, chunk_size: int, local_workers: int | None, no_wait: bool, as_json: bool) -> None:
    """Scan every spectrum the detector version has not scanned yet, with Celery workers."""
    from sqlalchemy import text

    from lenscat.db.session import session_scope
    from lenscat.jobs import pending_chunks, submit_and_wait
    from lenscat.spectra.scan import plan_scan, refresh_overdensity

    ensure_schema()
    with session_scope() as s:
        job = plan_scan(_detector(detector, s), chunk_size=chunk_size, session=s)
        chunks = pending_chunks(job.job_id, session=s)
    if not as_json:
        _err(f"job {job.job_id}: {job.n_items} spectra to scan with {job.detector.label} in {job.n_chunks} chunks")
    state = submit_and_wait("lenscat.scan_spectra_chunk", job.job_id, chunks, wait=not no_wait,
                            local_workers=local_workers, unit="spec", desc=f"scan {job.detector.label}",
                            progress=not as_json)
    out: dict[str, Any] = job.as_dict()
    if state is not None:
        out.update(status=state.status, done=state.n_done, failed_chunks=state.n_chunks_failed)
        if state.status == "failed":
            raise LenscatError(f"job {job.job_id} failed: {state.message}")
        with session_scope() as s:
            out["overdensity_flagged"] = refresh_overdensity(job.detector, session=s)
            row = s.execute(text("SELECT count(*), count(*) FILTER (WHERE is_candidate) FROM public.spectral_hits "
                                 "WHERE detector_id = :m"), {"m": job.detector.model_id}).one()
            out["hits"], out["candidates"] = int(row[0]), int(row[1])
            s.execute(text("ANALYZE lenscat.spectral_scans"))
    click.echo(json.dumps(out) if as_json else
               f"{job.detector.label}: {out.get('done', 0)} of {job.n_items} spectra scanned (job {job.job_id}); "
               f"{out.get('hits', '?')} hits, {out.get('candidates', '?')} without a veto")


@spectra.command("hits")
@click.option("--detector", default=None, help="Only this detector (NAME or NAME@VERSION).")
@click.option("--candidates", "candidates_only", is_flag=True, help="Only hits without a veto.")
@click.option("--min-snr", type=float, default=None, help="Lowest S/N.")
@click.option("--min-prob", type=float, default=None, help="Lowest ResNet probability.")
@click.option("--spectrum-id", type=int, default=None, help="Only this spectrum.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@FORMAT_OPTION
def hits_cmd(detector: str | None, candidates_only: bool, min_snr: float | None, min_prob: float | None,
             spectrum_id: int | None, limit: int, fmt: str) -> None:
    """List line hits, most probable / highest S/N first, with the implied Lyman-alpha redshift."""
    from lenscat.db.session import session_scope
    from lenscat.spectra.hits import hits_table

    ensure_schema()
    with session_scope() as s:
        t = hits_table(session=s, detector=detector, candidates_only=candidates_only, min_snr=min_snr,
                       min_prob=min_prob, spectrum_id=spectrum_id, limit=limit)
    write_table(t, fmt, sys.stdout)


@spectra.command("evaluate")
@click.option("--detector", "detectors", multiple=True, required=True,
              help="Detector to evaluate (repeatable: side by side).")
@click.option("--fluxes", default=",".join(str(f) for f in (3, 5, 8, 12, 20, 35, 60)), show_default=True,
              help="Injected line fluxes [1e-17 erg/s/cm^2], comma-separated.")
@click.option("--fwhms", default="150,300,500,800", show_default=True,
              help="Injected line widths, FWHM [km/s], comma-separated.")
@click.option("--per-cell", type=click.IntRange(min=1), default=200, show_default=True,
              help="Injections per (flux, width) cell.")
@click.option("--max-spectra", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Real spectra to inject into (a random subset beyond that).")
@click.option("--sample", type=click.Choice(["galaxies", "all"]), default="galaxies", show_default=True,
              help="Real spectra to inject into: galaxies with a pipeline redshift, or all.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plots", type=click.Path(path_type=Path), default=None,
              help="Directory for completeness.png.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def evaluate_cmd(detectors: tuple[str, ...], fluxes: str, fwhms: str, per_cell: int, max_spectra: int, sample: str,
                 seed: int, plots: Path | None, fmt: str) -> None:
    """Injection-recovery into the ingested real spectra: completeness vs line flux and width, and
    false hits per 1,000 spectra, for each detector side by side."""
    from lenscat.db.session import session_scope
    from lenscat.spectra.evaluate import evaluate_detectors, plot_completeness

    def floats(text_: str, what: str) -> tuple[float, ...]:
        try:
            vals = tuple(float(v) for v in text_.split(",") if v.strip())
        except ValueError as exc:
            raise LenscatError(f"--{what}: expected comma-separated numbers, got {text_!r}") from exc
        if not vals or min(vals) <= 0:
            raise LenscatError(f"--{what}: expected positive numbers, got {text_!r}")
        return vals

    fl, fw = floats(fluxes, "fluxes"), floats(fwhms, "fwhms")
    ensure_schema()
    with session_scope() as s:
        models = [_detector(d, s) for d in detectors]
        results, info = evaluate_detectors(models, session=s, fluxes=fl, fwhms=fw, injections_per_cell=per_cell,
                                           max_spectra=max_spectra, seed=seed, sample=sample)
    out: dict[str, Any] = {**info, "detectors": [r.as_dict(fl, fw) for r in results]}
    if plots is not None:
        out["plot"] = str(plot_completeness(results, fl, fw, plots / "completeness.png"))
    if fmt == "json":
        click.echo(json.dumps(out, default=str))
        return
    click.echo(f"{info['n_injected']} lines injected into {info['n_real_spectra']} real spectra "
               f"(recovered = a hit within {info['tolerance_px']} px)")
    cols = ["line_flux [1e-17 erg/s/cm2]"] + [f"{r.detector} completeness" for r in results]
    rows = [[f] + [round(float(np.average(r.completeness[i], weights=np.maximum(r.n_trials[i], 1))), 3)
                   for r in results] for i, f in enumerate(fl)]
    write_rows(cols, rows, "table", sys.stdout)
    for r in results:
        click.echo(f"{r.detector}: {r.false_hits_per_1000:.1f} hits per 1,000 real spectra as observed after vetoes "
                   f"({r.false_hits_raw_per_1000:.1f} before; an upper limit on false hits); candidates: "
                   + (", ".join(f"{c['spectrum']} at {c['wavelength']:.1f} A" for c in r.real_candidates) or "none"))
    if plots is not None:
        click.echo(f"plot: {out['plot']}")


def register(cli: click.Group) -> None:
    """Attach these commands to the top-level group."""
    cli.add_command(spectra)
