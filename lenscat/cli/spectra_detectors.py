"""Command line: spectral detectors (matched-filter, oii-filter, train, ensemble, continuum)."""

from __future__ import annotations

import json
import sys

import click

from lenscat.cli.common import FORMAT_OPTION, RESTART_OPTION, _err, needs_schema
from lenscat.io.output import write_table
from lenscat.spectra.service import DEFAULT_MF, get_detector


@click.command("matched-filter")
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
@needs_schema
def matched_filter_cmd(name: str, threshold: float, sample: str, as_json: bool) -> None:
    """Register a matched-filter detector version (the same settings give the same version)."""
    from lenscat.db.session import session_scope
    from lenscat.spectra.scan import register_matched_filter

    with session_scope() as s:
        mv, created = register_matched_filter(name, threshold=threshold, sample=sample, session=s)
    out = {"detector": mv.label, "model_id": mv.model_id, "created": created, "hparams": mv.hparams}
    click.echo(json.dumps(out) if as_json else f"{mv.label} ({'registered' if created else 'already registered'})")


@click.command("oii-filter")
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
@needs_schema
def oii_filter_cmd(name: str, threshold: float, min_dv_kms: float, sample: str, as_json: bool) -> None:
    """Register an [OII] doublet-filter detector version for background emitters (full range).

    The same settings give the same version. Scan with ``lenscat spectra scan --detector NAME``;
    its hits have line 'oii'.
    """
    from lenscat.db.session import session_scope
    from lenscat.spectra.detector_oii import register_oii_filter

    with session_scope() as s:
        mv, created = register_oii_filter(name, threshold=threshold, min_dv_kms=min_dv_kms, sample=sample, session=s)
    out = {"detector": mv.label, "model_id": mv.model_id, "created": created, "hparams": mv.hparams}
    click.echo(json.dumps(out) if as_json else f"{mv.label} ({'registered' if created else 'already registered'})")


@click.command("train")
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
@click.option("--device", default=None, help="cpu, cuda, cuda:0 ... (default: LENSCAT_DEVICE, else CUDA).")
@RESTART_OPTION
@click.option("--json", "as_json", is_flag=True)
@needs_schema
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


@click.command("ensemble")
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
@click.option(
    "--rule",
    type=click.Choice(["stack", "union"]),
    default="union",
    show_default=True,
    help="Candidates: (union) every matched-filter hit and where the stack passes its threshold, so the "
    "ensemble is at least as complete as the filter (docs/benchmarks.md, issue 31); or (stack) the stack alone.",
)
@click.option(
    "--real-calibration",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also hold the threshold, on this many clean re-noised real early-type spectra, to the stricter of "
    "1e-3 and the matched filter's own false rate there (0: synthetic only).",
)
@click.option("--json", "as_json", is_flag=True)
@needs_schema
def ensemble_cmd(
    name: str,
    members: tuple[str, ...],
    n_fit: int,
    pack: str | None,
    seed: int,
    rule: str,
    real_calibration: int,
    as_json: bool,
) -> None:
    """Stack a ResNet and a matched filter (logistic regression) into one detector version.

    The stack is fitted on synthetic spectra and its threshold set at a false-positive rate of
    1e-3; completeness of the ensemble and of both members is measured on an independent set.
    By default (--rule union) every hit of the matched filter is a candidate too; --real-calibration N
    holds what the stack adds to the filter's own false rate on real clean spectra.
    """
    from lenscat.db.session import session_scope
    from lenscat.spectra.detector_ensemble import register_ensemble

    with session_scope() as s:
        mvs = [get_detector(m, session=s) for m in members]
        mv, metrics = register_ensemble(
            name,
            mvs,
            n_fit=n_fit,
            seed=seed,
            residual_pack=pack,
            rule=rule,
            real_calibration=real_calibration,
            progress=not as_json,
            session=s,
        )
    out = {"detector": mv.label, "model_id": mv.model_id, "metrics": metrics}
    click.echo(
        json.dumps(out, default=str)
        if as_json
        else f"{mv.label}: "
        + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if v is not None)
    )


@click.group("continuum")
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
@needs_schema
def continuum_choose_cmd(detector: str, surveys: tuple[str, ...], realisations: int, seed: int, fmt: str) -> None:
    """Measure completeness (S/N >= 8, after vetoes) and false rate with each continuum, store the choice per survey.

    The more complete continuum wins unless its false-candidate rate is worse by more than one
    percentage point; a survey without pipeline models gets the fit. Detector versions registered
    afterwards use the stored choices.
    """
    from lenscat.db.session import session_scope
    from lenscat.spectra.continuum_choice import choose_continua

    with session_scope() as s:
        t = choose_continua(
            get_detector(detector, session=s),
            session=s,
            surveys=list(surveys) or None,
            realisations=realisations,
            seed=seed,
        )
    for sv, why in t.meta.get("skipped", []):
        _err(f"{sv}: not measured ({why}); its detectors keep the pipeline model where there is one")
    write_table(t, fmt, sys.stdout)


@continuum_group.command("show")
@FORMAT_OPTION
@needs_schema
def continuum_show_cmd(fmt: str) -> None:
    """The continuum chosen per survey, with the measurements behind it."""
    from lenscat.db.session import session_scope
    from lenscat.spectra.continuum_choice import show_choices

    with session_scope() as s:
        write_table(show_choices(session=s), fmt, sys.stdout)
