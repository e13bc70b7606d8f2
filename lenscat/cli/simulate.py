"""Command line: ``lenscat simulate`` (catalog, survey, inject): realistic simulated inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from lenscat.cli.common import needs_schema
from lenscat.errors import LenscatError


@click.group()
def simulate() -> None:
    """Make realistic simulated inputs."""


@simulate.command("catalog")
@click.option("--n", "n", type=click.IntRange(min=1), default=100_000, show_default=True, help="Number of sources.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--lenses-from",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="A literature lens list: put a galaxy at each lens position (within 1 arcsec) in the footprint.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Output file (.fits, .csv, .ecsv, .parquet)."
)
def simulate_catalog_cmd(n: int, seed: int, lenses_from: Path | None, out: Path) -> None:
    """A DECaLS-like source catalogue (positions, grz magnitudes, E(B-V), types, photo-z)."""
    from lenscat.simulate.catalogue import simulate_catalog

    table = simulate_catalog(n, seed=seed, lens_list=lenses_from)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.write(out, overwrite=True)
    click.echo(f"wrote {len(table)} simulated sources to {out}")


@simulate.command("survey")
@click.option("--n", "n", type=click.IntRange(min=1), default=2000, show_default=True, help="Number of cutouts.")
@click.option(
    "--lens-fraction",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="Fraction of cutouts that are strong lenses.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--stamp", type=click.IntRange(min=32), default=152, show_default=True, help="Cutout size [pixels].")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes (default: all cores).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output HDF5 file (Stein layout).")
@click.option(
    "--simulator",
    type=click.Choice(["lenstronomy", "independent"]),
    default="lenstronomy",
    show_default=True,
    help="'independent': a second simulator written separately in numpy (other populations, "
    "double-Gaussian PSF, CCD noise, clumpy sources), for the transfer check: evaluate "
    "on data made differently from the training data.",
)
def simulate_survey_cmd(
    n: int, lens_fraction: float, seed: int, stamp: int, workers: int | None, out: Path, simulator: str
) -> None:
    """A DECaLS-like g,r,z imaging survey rendered with lenstronomy (lenses and false positives).

    Writes cutouts in nanomaggies at 0.262"/px with a catalogue and the simulation truth
    (is_lens, kind, theta_e, ...) in the Stein et al. HDF5 layout; ingest it with
    `lenscat ingest sources OUT --survey NAME`. Interrupted (Ctrl-C), the same command resumes
    after the finished rows. `--simulator independent` renders the same layout with a simulator
    that shares no code or population with the default one (lenscat.simulate.alt).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    if simulator == "independent":
        from lenscat.simulate.alt import simulate_survey_alt

        summary: Any = simulate_survey_alt(n, lens_fraction, seed, out, stamp=stamp, workers=workers, progress=True)
    else:
        from lenscat.simulate.survey import simulate_survey

        summary = simulate_survey(n, lens_fraction, seed, out, stamp=stamp, workers=workers, progress=True)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items()))
    resumed = f" (resumed: {summary.resumed_rows} rows kept from the interrupted run)" if summary.resumed_rows else ""
    click.echo(
        f"wrote {summary.n} cutouts ({summary.n_lenses} lenses) to {out} in {summary.seconds:.1f} s{resumed}; {kinds}"
    )


def _pair(text: str, what: str) -> tuple[float, float]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        a, b = float(parts[0]), float(parts[1])
    except ValueError:
        raise LenscatError(f"{what} must be MIN,MAX (two numbers), got {text!r}") from None
    return a, b


def _psf(text: str | None) -> dict[str, float] | float | None:
    if text is None:
        return None
    if "=" not in text:
        try:
            return float(text)
        except ValueError:
            raise LenscatError(f"--psf-fwhm must be a number of arcsec or BAND=FWHM,..., got {text!r}") from None
    out = {}
    for part in text.split(","):
        band, _, value = part.partition("=")
        try:
            out[band.strip()] = float(value)
        except ValueError:
            raise LenscatError(f"--psf-fwhm must be a number of arcsec or BAND=FWHM,..., got {text!r}") from None
    return out


def _fmt_range(r: tuple[float, float], spec: str = ".2f") -> str:
    return "-" if any(not math.isfinite(x) for x in r) else f"{r[0]:{spec}}-{r[1]:{spec}}"


@simulate.command("inject")
@click.option("--survey", required=True, help="Host survey: its own galaxies get the simulated lenses.")
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Number of injected lenses.")
@click.option(
    "--name", default=None, help="Name of the injection set (a survey of kind 'injection'); default SURVEY-inject."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="HDF5 file to write (Stein layout); default LENSCAT_HOME/injections/NAME-seedSEED-nN.h5.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--theta-e",
    default="0.8,3.0",
    show_default=True,
    metavar="MIN,MAX",
    help="Einstein radius range [arcsec], uniform.",
)
@click.option(
    "--source-mag",
    default="21.5,24.0",
    show_default=True,
    metavar="MIN,MAX",
    help="Unlensed source r magnitude range [AB mag], uniform (lensed arcs r ~ 19.6-22 at the "
    "typical magnification of 6).",
)
@click.option(
    "--source-g-r",
    default="0.0,0.6",
    show_default=True,
    metavar="MIN,MAX",
    help="Source g-r colour range [mag] (clumps 0.3 mag bluer).",
)
@click.option(
    "--source-r-z", default="-0.1,0.5", show_default=True, metavar="MIN,MAX", help="Source r-z colour range [mag]."
)
@click.option(
    "--psf-fwhm",
    default=None,
    metavar="FWHM|BAND=FWHM,...",
    help="PSF FWHM [arcsec]; default: the median psf_fwhm_<band> of the catalogue's kept columns, else 1.3.",
)
@click.option("--psf-model", type=click.Choice(["moffat", "gaussian"]), default="moffat", show_default=True)
@click.option(
    "--gain",
    type=float,
    default=None,
    help="Electrons per nanomaggy: add the Poisson noise of the added light (default: noiseless arcs).",
)
@click.option("--host-min-mag-r", type=float, default=16.0, show_default=True, help="Brightest host r [mag].")
@click.option("--host-max-mag-r", type=float, default=21.5, show_default=True, help="Faintest host r [mag].")
@click.option(
    "--host-min-g-r", type=float, default=1.0, show_default=True, help="Reddest-cut: smallest host g-r [mag]."
)
@click.option("--host-min-r-z", type=float, default=0.5, show_default=True, help="Smallest host r-z [mag].")
@click.option(
    "--host-min-size",
    type=float,
    default=0.6,
    show_default=True,
    help="Smallest host half-light radius [arcsec] (measured with the PSF).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@needs_schema
def inject_cmd(
    survey: str,
    n: int,
    name: str | None,
    out: Path | None,
    seed: int,
    theta_e: str,
    source_mag: str,
    source_g_r: str,
    source_r_z: str,
    psf_fwhm: str | None,
    psf_model: str,
    gain: float | None,
    host_min_mag_r: float,
    host_max_mag_r: float,
    host_min_g_r: float,
    host_min_r_z: float,
    host_min_size: float,
    as_json: bool,
) -> None:
    """Paint simulated lenses (SIE + shear, Sérsic + clumpy source) on the survey's own red galaxies.

    Picks massive, red, early-type-looking hosts of SURVEY (known lenses and their surroundings
    left out), adds lensed light rendered with lenstronomy in the survey's PSF and pixel scale to
    their real cutouts (real noise and neighbours kept), writes a Stein-layout HDF5 with the truth
    and ingests it as survey NAME of kind 'injection', with labels of origin 'injection'. Train
    with `lenscat classifier train --survey SURVEY --survey NAME`; injected cutouts never enter
    SURVEY's rankings, exports, grading samples or cone searches. Running it again changes
    nothing; interrupted, the same command resumes.
    """
    from lenscat.db.session import session_scope
    from lenscat.simulate.injection import inject_survey

    with session_scope() as s:
        summary = inject_survey(
            survey,
            n,
            out,
            session=s,
            name=name,
            seed=seed,
            theta_e=_pair(theta_e, "--theta-e"),
            source_mag=_pair(source_mag, "--source-mag"),
            source_g_r=_pair(source_g_r, "--source-g-r"),
            source_r_z=_pair(source_r_z, "--source-r-z"),
            psf_fwhm=_psf(psf_fwhm),
            psf_model=psf_model,
            gain=gain,
            host_min_mag_r=host_min_mag_r,
            host_max_mag_r=host_max_mag_r,
            host_min_g_r=host_min_g_r,
            host_min_r_z=host_min_r_z,
            host_min_size_arcsec=host_min_size,
            progress=not as_json,
        )
    if as_json:
        click.echo(json.dumps(summary.as_dict(), default=str))
        return
    how = (
        "rendered"
        if summary.rendered and not summary.resumed_rows
        else f"resumed after {summary.resumed_rows} rows"
        if summary.rendered
        else "already rendered"
    )
    click.echo(
        f"injection set {summary.survey} (parent {summary.parent}): {summary.n} lenses on {summary.n} "
        f"hosts ({summary.n_eligible} eligible among those measured; {summary.n_candidates} of "
        f"{summary.n_sources} pass the catalogue cuts; {summary.n_excluded_known} left out as known lenses "
        f"or near one)"
    )
    click.echo(
        f"  theta_E {_fmt_range(summary.theta_e_range)} arcsec, arc S/N {_fmt_range(summary.arc_snr_range, '.1f')}, "
        f"magnification {_fmt_range(summary.magnification_range, '.1f')}; PSF FWHM "
        + ", ".join(f"{b} {v:.2f}" for b, v in summary.psf_fwhm.items())
        + " arcsec"
    )
    ing = summary.ingest
    ingested = (
        f"{ing['inserted']} new, {ing['updated']} updated, {ing['unchanged']} unchanged"
        if ing["batches_written"]
        else "already done"
    )
    click.echo(
        f"  file {summary.path} ({how}); ingest: {ingested}; labels (origin injection): "
        f"{summary.n_labels_written} written, {summary.n_labels_removed} removed"
    )
