"""Command line: ``spectra inject`` and ``spectra evaluate`` (detector completeness on injected lines)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from lenscat.cli.common import needs_schema
from lenscat.errors import LenscatError
from lenscat.io.output import write_rows
from lenscat.spectra.service import get_detector


@click.command("inject")
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


@click.command("evaluate")
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
@needs_schema
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
    if protocol == "flux":
        _evaluate_flux(
            detectors, fluxes or "3,5,8,12,20,35,60", fwhms, per_cell or 200, max_spectra, sample, seed, plots, fmt
        )
        return
    from lenscat.spectra.evaluate import evaluate_protocol
    from lenscat.spectra.evaluate_report import plot_protocol, protocol_json, protocol_table

    sr, fr, kr = (
        _floats(snr_range, "snr-range", 2),
        _floats(fwhm_range, "fwhm-range", 2),
        _floats(skew_range, "skew-range", 2),
    )
    conts: Any = {"chosen": None, "pipeline": "pipeline", "fit": "fit", "both": ["pipeline", "fit"]}[continuum]
    with session_scope() as s:
        models = [get_detector(d, session=s) for d in detectors]
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
    from lenscat.spectra.evaluate_fluxgrid import evaluate_detectors
    from lenscat.spectra.evaluate_report import plot_completeness

    fl, fw = _floats(fluxes, "fluxes"), _floats(fwhms, "fwhms")
    with session_scope() as s:
        models = [get_detector(d, session=s) for d in detectors]
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
