"""Command line for the spectroscopic lens search: ingest, detectors, scans, hits, evaluation."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from lenscat.cli.common import FORMAT_OPTION, RESTART_OPTION, _err
from lenscat.db.migrate import ensure_schema
from lenscat.errors import LenscatError
from lenscat.io.output import write_rows, write_table

DEFAULT_MF = "matched-filter"
DEFAULT_OII = "oii"


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

    ensure_schema()
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


@spectra.command("inject")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option(
    "--line",
    type=click.Choice(["lya", "oii"]),
    default="lya",
    show_default=True,
    help="lya: one Lyman-alpha-like line at --wavelength; oii: an [OII] 3726,3729 doublet (with Hbeta "
    "and [OIII]) of a background source at --z-source.",
)
@click.option("--wavelength", type=float, default=None, help="Observed peak wavelength [Angstrom] (--line lya).")
@click.option("--z-source", type=float, default=None, help="Redshift of the background source (--line oii).")
@click.option(
    "--flux",
    "line_flux",
    type=float,
    required=True,
    help="Line flux [1e-17 erg/s/cm^2] (for oii: both doublet components together).",
)
@click.option(
    "--fwhm",
    type=float,
    default=None,
    help="Line FWHM [km/s] (default 300 for lya; 190 for oii, each doublet component).",
)
@click.option("--skew", type=float, default=2.0, show_default=True, help="Skew-normal shape (> 0: red tail; lya).")
@click.option("--ratio", type=float, default=1.0, show_default=True, help="[OII] F(3729)/F(3727) (oii).")
@click.option(
    "--hbeta",
    "hbeta_ratio",
    type=float,
    default=0.4,
    show_default=True,
    help="Hbeta / [OII] flux ratio (oii; 0: none).",
)
@click.option(
    "--oiii",
    "oiii_ratio",
    type=float,
    default=0.5,
    show_default=True,
    help="[OIII] 5007 / [OII] flux ratio (oii; 0: none; 4959 gets 1/2.98 of it).",
)
@click.option("--fiber", type=int, default=None, help="Fiber number of the copy (default: original + 500).")
@click.option("--overwrite", is_flag=True)
def inject_cmd(
    src: Path,
    dest: Path,
    line: str,
    wavelength: float | None,
    z_source: float | None,
    line_flux: float,
    fwhm: float | None,
    skew: float,
    ratio: float,
    hbeta_ratio: float,
    oiii_ratio: float,
    fiber: int | None,
    overwrite: bool,
) -> None:
    """Copy an SDSS spec file with a background line added (to test the search end to end)."""
    from lenscat.spectra.injection import inject_line_file, inject_oii_file

    if line == "oii":
        if z_source is None:
            raise click.UsageError("--line oii needs --z-source")
        fw = 190.0 if fwhm is None else fwhm
        out = inject_oii_file(
            src,
            dest,
            z_source=z_source,
            line_flux=line_flux,
            fwhm_kms=fw,
            ratio=ratio,
            hbeta_ratio=hbeta_ratio,
            oiii_ratio=oiii_ratio,
            fiber=fiber,
            overwrite=overwrite,
        )
        click.echo(
            f"wrote {out}: [OII] doublet at z = {z_source:.4f} ({3728.48 * (1 + z_source):.1f} A), "
            f"{line_flux:g}e-17 erg/s/cm2, FWHM {fw:g} km/s, ratio {ratio:g}"
        )
        return
    if wavelength is None:
        raise click.UsageError("--line lya needs --wavelength")
    fw = 300.0 if fwhm is None else fwhm
    out = inject_line_file(
        src, dest, wavelength=wavelength, line_flux=line_flux, fwhm_kms=fw, skew=skew, fiber=fiber, overwrite=overwrite
    )
    click.echo(
        f"wrote {out}: line at {wavelength:.1f} A (z_Lya = {wavelength / 1215.67 - 1:.3f}), "
        f"{line_flux:g}e-17 erg/s/cm2, FWHM {fw:g} km/s"
    )


@spectra.command("link")
@click.option("--radius", default="2arcsec", show_default=True, help="Link radius.")
@click.option("--relink", is_flag=True, help="Re-link spectra that already have a source.")
def link_cmd(radius: str, relink: bool) -> None:
    """Link spectra to the nearest catalogue source (run after ingesting more sources)."""
    from lenscat.db.session import session_scope
    from lenscat.sky.coords import parse_angle_quantity
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
@click.option(
    "--sample",
    type=click.Choice(["galaxies", "all"]),
    default="galaxies",
    show_default=True,
    help="Spectra it scans: galaxies with a pipeline redshift (Li et al.'s sample), or all.",
)
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


@spectra.command("oii-filter")
@click.option("--name", default="oii", show_default=True, help="Detector name.")
@click.option("--threshold", type=float, default=6.0, show_default=True, help="Doublet S/N threshold of a hit.")
@click.option(
    "--min-dv",
    "min_dv_kms",
    type=click.FloatRange(min=0),
    default=6000.0,
    show_default=True,
    help="Minimum velocity of the source behind the galaxy [km/s].",
)
@click.option(
    "--sample",
    type=click.Choice(["galaxies", "all"]),
    default="galaxies",
    show_default=True,
    help="Spectra it scans: galaxies with a pipeline redshift (z_s > z_l needs it), or all.",
)
@click.option("--json", "as_json", is_flag=True)
def oii_filter_cmd(name: str, threshold: float, min_dv_kms: float, sample: str, as_json: bool) -> None:
    """Register an [OII] doublet-filter detector version for background emitters (full range).

    The same settings give the same version. Scan with ``lenscat spectra scan --detector NAME``;
    its hits have line 'oii'.
    """
    from lenscat.db.session import session_scope
    from lenscat.spectra.detector_oii import register_oii_filter

    ensure_schema()
    with session_scope() as s:
        mv, created = register_oii_filter(name, threshold=threshold, min_dv_kms=min_dv_kms, sample=sample, session=s)
    out = {"detector": mv.label, "model_id": mv.model_id, "created": created, "hparams": mv.hparams}
    click.echo(json.dumps(out) if as_json else f"{mv.label} ({'registered' if created else 'already registered'})")


@spectra.command("train")
@click.option("--name", default="specnet", show_default=True, help="Detector name for the trained ResNet.")
@click.option(
    "--recipe",
    type=click.Choice(["cpu", "gpu"]),
    default="cpu",
    show_default=True,
    help="Defaults of set size and schedule: cpu (40,000 spectra, 4 epochs, batch 128: minutes on 2 "
    "cores) or gpu (Li et al.'s 150,000 spectra, 12 epochs, batch 512, mixed precision).",
)
@click.option(
    "--n",
    "n_train",
    type=click.IntRange(min=100),
    default=None,
    help="Synthetic training spectra (default: the recipe's; Li et al. used --n 150000).",
)
@click.option(
    "--n-val",
    type=click.IntRange(min=100),
    default=None,
    help="Synthetic validation spectra, independent seed (default: the recipe's).",
)
@click.option(
    "--arch",
    type=click.Choice(["li2018", "small"]),
    default="li2018",
    show_default=True,
    help="Network: li2018 (two residual blocks per stage, 16/32/64 channels) or small (one block, 16/24/48).",
)
@click.option(
    "--priors",
    type=click.Choice(["matched", "li2018"]),
    default="matched",
    show_default=True,
    help="Line priors: matched (FWHM 70-1100 km/s, red tails, matched-filter S/N 3-20) or li2018 "
    "(Li et al.: FWHM N(300, 200) km/s, peak flux 1.5-25e-17).",
)
@click.option(
    "--positive-fraction",
    type=click.FloatRange(0.001, 0.5),
    default=1 / 16,
    show_default=True,
    help="Fraction with an injected Lyman-alpha line (Li et al.: ~1:15).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs (default: the recipe's).")
@click.option(
    "--batch-size", type=click.IntRange(min=2), default=None, help="Spectra per step (default: the recipe's)."
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Peak learning rate (default: the recipe's).",
)
@click.option(
    "--real-residuals",
    "pack",
    default=None,
    help="Take the noise of most of the set from real residuals (flux - continuum) of this spectrum store.",
)
@click.option(
    "--residual-fraction",
    type=click.FloatRange(0, 1),
    default=0.8,
    show_default=True,
    help="Fraction of the spectra whose noise is a real residual (with --real-residuals).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Probability of a hit (default: the validation threshold giving <= 1 false hit per 1,000).",
)
@click.option(
    "--sample",
    type=click.Choice(["galaxies", "all"]),
    default="galaxies",
    show_default=True,
    help="Spectra the detector scans: galaxies with a pipeline redshift, or all.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:0 ... (default: cuda when available).")
@RESTART_OPTION
@click.option("--json", "as_json", is_flag=True)
def train_cmd(
    name: str,
    recipe: str,
    n_train: int | None,
    n_val: int | None,
    arch: str,
    priors: str,
    positive_fraction: float,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    pack: str | None,
    residual_fraction: float,
    threshold: float | None,
    sample: str,
    seed: int,
    device: str | None,
    restart: bool,
    as_json: bool,
) -> None:
    """Train the Li et al. (2018) 1-D ResNet on synthetic spectra and register it as a detector.

    The matched filter is measured on the same validation spectra at the same false-positive rate
    (metrics mf_val_*). The training state is saved after every epoch; after Ctrl-C the same
    command resumes.
    """
    from lenscat.db.session import session_scope
    from lenscat.spectra.training import train_detector

    ensure_schema()
    with session_scope() as s:
        mv, metrics = train_detector(
            name,
            n_train=n_train,
            n_val=n_val,
            positive_fraction=positive_fraction,
            epochs=epochs,
            residual_pack=pack,
            residual_fraction=residual_fraction,
            priors=priors,
            arch=arch,
            recipe=recipe,
            batch_size=batch_size,
            lr=lr,
            threshold=threshold,
            seed=seed,
            device=device,
            progress=not as_json,
            sample=sample,
            session=s,
            resume=not restart,
        )
    out = {"detector": mv.label, "model_id": mv.model_id, "metrics": metrics}
    click.echo(
        json.dumps(out, default=str)
        if as_json
        else f"{mv.label}: "
        + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in metrics.items()
            if not isinstance(v, dict | list)
        )
    )


@spectra.command("ensemble")
@click.option("--name", default="ensemble", show_default=True, help="Detector name for the ensemble.")
@click.option(
    "--member",
    "members",
    multiple=True,
    required=True,
    help="A member detector (NAME or NAME@VERSION): give one matched filter and one ResNet.",
)
@click.option(
    "--n",
    "n_fit",
    type=click.IntRange(min=200),
    default=20_000,
    show_default=True,
    help="Synthetic spectra to fit the stack on (and as many, independent, to measure it).",
)
@click.option(
    "--real-residuals",
    "pack",
    default=None,
    help="Take the noise of most of the synthetic spectra from real residuals of this spectrum store.",
)
@click.option("--seed", type=int, default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def ensemble_cmd(name: str, members: tuple[str, ...], n_fit: int, pack: str | None, seed: int, as_json: bool) -> None:
    """Stack a ResNet and a matched filter (logistic regression) into one detector version.

    The stack is fitted on synthetic spectra and its threshold set at a false-positive rate of
    1e-3; completeness of the ensemble and of both members is measured on an independent set.
    """
    from lenscat.db.session import session_scope
    from lenscat.spectra.detector_ensemble import register_ensemble

    ensure_schema()
    with session_scope() as s:
        mvs = [_detector(m, s) for m in members]
        mv, metrics = register_ensemble(
            name, mvs, n_fit=n_fit, seed=seed, residual_pack=pack, progress=not as_json, session=s
        )
    out = {"detector": mv.label, "model_id": mv.model_id, "metrics": metrics}
    click.echo(
        json.dumps(out, default=str)
        if as_json
        else f"{mv.label}: "
        + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if v is not None)
    )


@spectra.command("detectors")
@FORMAT_OPTION
def detectors_cmd(fmt: str) -> None:
    """List detector versions with the number of spectra each has scanned and hits found."""
    from lenscat.db.session import session_scope
    from lenscat.spectra.hits import detectors_table

    ensure_schema()
    with session_scope() as s:
        write_table(detectors_table(session=s), fmt, sys.stdout)


def _detector(name: str, session: Any) -> Any:
    """A detector version by name; the default matched filter and [OII] filter register on first use."""
    from lenscat.errors import NotFoundError
    from lenscat.registry.versions import get_model
    from lenscat.spectra.detector_oii import register_oii_filter
    from lenscat.spectra.scan import register_matched_filter

    try:
        return get_model("detector", name, session=session)
    except NotFoundError:
        if name == DEFAULT_MF:
            return register_matched_filter(DEFAULT_MF, session=session)[0]
        if name == DEFAULT_OII:
            return register_oii_filter(DEFAULT_OII, session=session)[0]
        raise


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
def scan_cmd(detector: str, chunk_size: int, local_workers: int | None, no_wait: bool, as_json: bool) -> None:
    """Scan every spectrum the detector version has not scanned yet, with Celery workers."""
    from lenscat.db.session import session_scope
    from lenscat.jobs.service import pending_chunks, submit_and_wait
    from lenscat.spectra.hits import hit_counts
    from lenscat.spectra.scan import analyze_scans, plan_scan, refresh_overdensity

    ensure_schema()
    with session_scope() as s:
        job = plan_scan(_detector(detector, s), chunk_size=chunk_size, session=s)
        chunks = pending_chunks(job.job_id, session=s)
    if not as_json:
        _err(f"job {job.job_id}: {job.n_items} spectra to scan with {job.detector.label} in {job.n_chunks} chunks")
    state = submit_and_wait(
        "lenscat.scan_spectra_chunk",
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

    ensure_schema()
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


def _floats(text_: str, what: str, n: int | None = None) -> tuple[float, ...]:
    """Comma-separated positive numbers of an option (``n``: exactly that many)."""
    try:
        vals = tuple(float(v) for v in text_.split(",") if v.strip())
    except ValueError as exc:
        raise LenscatError(f"--{what}: expected comma-separated numbers, got {text_!r}") from exc
    if not vals or min(vals) <= 0 or (n is not None and len(vals) != n):
        raise LenscatError(f"--{what}: expected {n or 'some'} positive comma-separated numbers, got {text_!r}")
    if n == 2 and vals[0] > vals[1]:
        raise LenscatError(f"--{what}: expected LOW,HIGH, got {text_!r}")
    return vals


@spectra.command("evaluate")
@click.option(
    "--detector", "detectors", multiple=True, required=True, help="Detector to evaluate (repeatable: side by side)."
)
@click.option(
    "--protocol",
    type=click.Choice(["snr", "flux"]),
    default=None,
    help="snr: re-noised early-type hosts with lines at a drawn matched-filter S/N (default); "
    "flux: lines by flux into the spectra as observed (default when --fluxes or --per-cell is given).",
)
@click.option(
    "--realisations",
    type=click.IntRange(min=2),
    default=240,
    show_default=True,
    help="[snr] Re-noised realisations, half of them with a line.",
)
@click.option("--snr-range", default="4,15", show_default=True, help="[snr] Matched-filter S/N of the lines: LOW,HIGH.")
@click.option("--fwhm-range", default="120,700", show_default=True, help="[snr] Line FWHM [km/s]: LOW,HIGH.")
@click.option(
    "--skew-range", default="1,6", show_default=True, help="[snr] Skew-normal shape (> 0: red tail): LOW,HIGH."
)
@click.option(
    "--continuum",
    type=click.Choice(["chosen", "pipeline", "fit", "both"]),
    default="chosen",
    show_default=True,
    help="[snr] Continuum subtracted: each detector's own per-survey choice, the pipeline model, the "
    "project's fit, or both side by side.",
)
@click.option(
    "--family",
    type=click.Choice(["lya", "oii"]),
    default="lya",
    show_default=True,
    help="[snr] Injected line family: Lyman alpha, or a background [OII] doublet.",
)
@click.option(
    "--hosts",
    type=click.Choice(["early-type", "galaxies", "all"]),
    default="early-type",
    show_default=True,
    help="[snr] Host spectra of the realisations.",
)
@click.option(
    "--fluxes",
    default=None,
    help="[flux] Injected line fluxes [1e-17 erg/s/cm^2], comma-separated (default 3,5,8,12,20,35,60).",
)
@click.option(
    "--fwhms",
    default="150,300,500,800",
    show_default=True,
    help="[flux] Injected line widths, FWHM [km/s], comma-separated.",
)
@click.option(
    "--per-cell",
    type=click.IntRange(min=1),
    default=None,
    help="[flux] Injections per (flux, width) cell (default 200).",
)
@click.option(
    "--max-spectra",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="[flux] Real spectra to inject into (a random subset beyond that).",
)
@click.option(
    "--sample",
    type=click.Choice(["galaxies", "all"]),
    default="galaxies",
    show_default=True,
    help="Real spectra scanned as observed (and, for flux, injected into).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plots", type=click.Path(path_type=Path), default=None, help="Directory for completeness.png.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def evaluate_cmd(
    detectors: tuple[str, ...],
    protocol: str | None,
    realisations: int,
    snr_range: str,
    fwhm_range: str,
    skew_range: str,
    continuum: str,
    family: str,
    hosts: str,
    fluxes: str | None,
    fwhms: str,
    per_cell: int | None,
    max_spectra: int,
    sample: str,
    seed: int,
    plots: Path | None,
    fmt: str,
) -> None:
    """Injection-recovery into real spectra, every detector side by side, in memory (nothing is written).

    The snr protocol (default): real early-type spectra re-noised into new realisations (noise of
    variance 1/ivar added, ivar halved), half with one red-tailed Lyman-alpha-like line scaled to a
    matched-filter S/N drawn from --snr-range; completeness by S/N, FWHM and skew before and after
    the vetoes, lines lost to each veto, clean spectra with a false candidate, and every candidate
    in the real spectra as observed (strong-emission galaxies named). The flux protocol: lines by
    flux into the spectra as observed, completeness per (flux, FWHM) cell and hits per 1,000.
    """
    from lenscat.db.session import session_scope

    if protocol is None:
        protocol = "flux" if (fluxes is not None or per_cell is not None) else "snr"
    ensure_schema()
    if protocol == "flux":
        _evaluate_flux(
            detectors, fluxes or "3,5,8,12,20,35,60", fwhms, per_cell or 200, max_spectra, sample, seed, plots, fmt
        )
        return
    from lenscat.spectra.evaluate import (
        evaluate_protocol,
        plot_protocol,
        protocol_json,
        protocol_table,
    )

    sr, fr, kr = (
        _floats(snr_range, "snr-range", 2),
        _floats(fwhm_range, "fwhm-range", 2),
        _floats(skew_range, "skew-range", 2),
    )
    conts: Any = {"chosen": None, "pipeline": "pipeline", "fit": "fit", "both": ["pipeline", "fit"]}[continuum]
    with session_scope() as s:
        models = [_detector(d, s) for d in detectors]
        results, info = evaluate_protocol(
            models,
            session=s,
            realisations=realisations,
            snr_range=(sr[0], sr[1]),
            fwhm_range=(fr[0], fr[1]),
            skew_range=(kr[0], kr[1]),
            hosts=hosts,
            continuum=conts,
            family=family,
            seed=seed,
            real_sample=sample,
        )
    plot = str(plot_protocol(results, plots / "completeness.png")) if plots is not None else None
    if fmt == "json":
        doc = json.loads(protocol_json(results, info))
        if plot:
            doc["plot"] = plot
        click.echo(json.dumps(doc, default=str))
        return
    click.echo(
        f"{info['realisations']} re-noised realisations of {info['n_hosts']} {hosts} host spectra: "
        f"{info['n_lines']} with one {family} line (matched S/N {sr[0]:g}-{sr[1]:g}, FWHM {fr[0]:g}-{fr[1]:g} "
        f"km/s), {info['n_clean']} clean; seed {seed}"
    )
    cols, rows = protocol_table(results)
    write_rows(cols, rows, "table", sys.stdout)
    click.echo("")
    edges = info["snr_bins"]
    bcols = ["detector", "continuum"] + [f"S/N {lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]

    def cell(b: dict[str, Any]) -> str:
        return "-" if not b["n"] else f"{b['before']:.2f} / {b['after']:.2f} (n={b['n']})"

    write_rows(
        bcols,
        [[r.detector, r.continuum, *(cell(b) for b in r.binned("snr", edges))] for r in results],
        "table",
        sys.stdout,
    )
    click.echo("(completeness before / after vetoes)")
    for label, key, eds in (("FWHM [km/s]", "fwhm", info["fwhm_bins"]), ("skew", "skew", info["skew_bins"])):
        bc = ["detector", "continuum"] + [f"{label} {lo:g}-{hi:g}" for lo, hi in zip(eds[:-1], eds[1:], strict=True)]
        write_rows(
            bc,
            [[r.detector, r.continuum, *(cell(b) for b in r.binned(key, eds))] for r in results],
            "table",
            sys.stdout,
        )
    for r in results:
        cands = ", ".join(f"{c['spectrum']} at {c['wavelength']:.1f} A" for c in r.real_candidates) or "none"
        click.echo(f"{r.detector} ({r.continuum}): candidates in the {r.n_real} real spectra as observed: {cands}")
        for g in r.emission_galaxies:
            verdict = "NOT a candidate" if not g["candidates"] else f"{g['candidates']} CANDIDATE(S)"
            click.echo(
                f"  strong-emission galaxy {g['spectrum']} ({g['subclass'] or 'emission lines'}): {verdict} "
                f"({g['hits']} detections before vetoes)"
            )
    if plot:
        click.echo(f"plot: {plot}")


def _evaluate_flux(
    detectors: tuple[str, ...],
    fluxes: str,
    fwhms: str,
    per_cell: int,
    max_spectra: int,
    sample: str,
    seed: int,
    plots: Path | None,
    fmt: str,
) -> None:
    """The flux-grid protocol of ``spectra evaluate``."""
    from lenscat.db.session import session_scope
    from lenscat.spectra.evaluate import evaluate_detectors, plot_completeness

    fl, fw = _floats(fluxes, "fluxes"), _floats(fwhms, "fwhms")
    with session_scope() as s:
        models = [_detector(d, s) for d in detectors]
        results, info = evaluate_detectors(
            models,
            session=s,
            fluxes=fl,
            fwhms=fw,
            injections_per_cell=per_cell,
            max_spectra=max_spectra,
            seed=seed,
            sample=sample,
        )
    out: dict[str, Any] = {**info, "detectors": [r.as_dict(fl, fw) for r in results]}
    if plots is not None:
        out["plot"] = str(plot_completeness(results, fl, fw, plots / "completeness.png"))
    if fmt == "json":
        click.echo(json.dumps(out, default=str))
        return
    click.echo(
        f"{info['n_injected']} lines injected into {info['n_real_spectra']} real spectra "
        f"(recovered = a hit within {info['tolerance_px']} px)"
    )
    cols = ["line_flux [1e-17 erg/s/cm2]"] + [f"{r.detector} completeness" for r in results]
    rows = [
        [f] + [round(float(np.average(r.completeness[i], weights=np.maximum(r.n_trials[i], 1))), 3) for r in results]
        for i, f in enumerate(fl)
    ]
    write_rows(cols, rows, "table", sys.stdout)
    for r in results:
        click.echo(
            f"{r.detector}: {r.false_hits_per_1000:.1f} hits per 1,000 real spectra as observed after vetoes "
            f"({r.false_hits_raw_per_1000:.1f} before; an upper limit on false hits); candidates: "
            + (", ".join(f"{c['spectrum']} at {c['wavelength']:.1f} A" for c in r.real_candidates) or "none")
        )
    if plots is not None:
        click.echo(f"plot: {out['plot']}")


@spectra.group("continuum")
def continuum_group() -> None:
    """Which continuum the line detectors subtract per survey: the pipeline model or the project's fit."""


@continuum_group.command("choose")
@click.option(
    "--detector", default=DEFAULT_MF, show_default=True, help="Detector measured with (NAME or NAME@VERSION)."
)
@click.option(
    "--survey",
    "surveys",
    multiple=True,
    type=click.Choice(["sdss", "boss", "desi"]),
    help="Survey to measure (repeatable; default every survey with early-type hosts).",
)
@click.option(
    "--realisations",
    type=click.IntRange(min=2),
    default=240,
    show_default=True,
    help="Re-noised realisations per survey and continuum.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@FORMAT_OPTION
def continuum_choose_cmd(detector: str, surveys: tuple[str, ...], realisations: int, seed: int, fmt: str) -> None:
    """Measure completeness (S/N >= 8, after vetoes) and false rate with each continuum, store the choice per survey.

    The more complete continuum wins unless its false-candidate rate is worse by more than one
    percentage point; a survey without pipeline models gets the fit. Detector versions registered
    afterwards use the stored choices.
    """
    from lenscat.db.session import session_scope
    from lenscat.spectra.continuum_choice import choose_continua

    ensure_schema()
    with session_scope() as s:
        t = choose_continua(
            _detector(detector, s), session=s, surveys=list(surveys) or None, realisations=realisations, seed=seed
        )
    for sv, why in t.meta.get("skipped", []):
        _err(f"{sv}: not measured ({why}); its detectors keep the pipeline model where there is one")
    write_table(t, fmt, sys.stdout)


@continuum_group.command("show")
@FORMAT_OPTION
def continuum_show_cmd(fmt: str) -> None:
    """The continuum chosen per survey, with the measurements behind it."""
    from lenscat.db.session import session_scope
    from lenscat.spectra.continuum_choice import show_choices

    ensure_schema()
    with session_scope() as s:
        write_table(show_choices(session=s), fmt, sys.stdout)


def register(cli: click.Group) -> None:
    """Attach these commands to the top-level group."""
    cli.add_command(spectra)
