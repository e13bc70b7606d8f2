"""Reports of the spectral-detector evaluation: tables, JSON and figures of :mod:`lenscat.spectra.evaluate`.

:func:`protocol_table` / :func:`headline_cells` (the headline "lines with S/N >= 8 found, before and
after vetoes"), :func:`protocol_json` and :func:`plot_protocol` report the matched-S/N protocol's
:class:`~lenscat.spectra.evaluate.ProtocolResult`; :func:`plot_completeness` draws the flux-grid mode's
completeness.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lenscat.spectra.evaluate import HEADLINE_SNR, SNR_BINS, ProtocolResult
from lenscat.spectra.evaluate_fluxgrid import DetectorEvaluation


def headline_cells(r: ProtocolResult) -> tuple[str, str, str]:
    """The issue's table cells: found before vetoes, after vetoes (with losses per veto), false rate."""
    h = r.headline()
    n = h["n_lines"]

    def frac(k: int) -> str:
        return f"{k} / {n} ({k / n:.2f})" if n else f"{k} / 0"

    lost = ", ".join(
        f"{v} lost to `{k}`" if i == 0 else f"{v} to `{k}`" for i, (k, v) in enumerate(h["removed"].items())
    )
    after = frac(h["found_after"]) + (f": {lost}" if lost else "")
    fr = r.false_rate(True)
    fb = r.false_rate(False)
    false = f"{100 * fr:.0f} % ({r.false_after} / {r.n_clean}; {100 * fb:.0f} % before vetoes)" if r.n_clean else "n/a"
    return frac(h["found_before"]), after, false


def protocol_table(results: Sequence[ProtocolResult]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the issue's table (one row per detector and continuum)."""
    cols = [
        "detector",
        "continuum",
        f"lines with S/N >= {HEADLINE_SNR:g} found, before vetoes",
        "after vetoes",
        "clean spectra with a false candidate",
    ]
    rows = [[r.detector, r.continuum, *headline_cells(r)] for r in results]
    return cols, rows


def plot_protocol(results: Sequence[ProtocolResult], path: str | Path) -> Path:
    """Completeness vs matched S/N per detector (and continuum), before and after the vetoes (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4), squeeze=False, sharey=True)
    mids = 0.5 * (np.asarray(SNR_BINS[:-1]) + np.asarray(SNR_BINS[1:]))
    for ax, r in zip(axes[0], results, strict=True):
        b = r.binned("snr", SNR_BINS)
        for key, style in (("before", "o--"), ("after", "o-")):
            y = [np.nan if c[key] is None else c[key] for c in b]
            ax.plot(mids, y, style, label=f"{key} vetoes")
        ax.set_xlabel("matched-filter S/N of the injected line")
        ax.set_title(f"{r.detector} ({r.continuum}): false {100 * r.false_rate():.0f} %", fontsize=9)
        ax.grid(alpha=0.3)
    return _save_completeness_figure(fig, axes, path)


def plot_completeness(
    results: list[DetectorEvaluation], fluxes: tuple[float, ...], fwhms: tuple[float, ...], path: str | Path
) -> Path:
    """Completeness vs line flux, one panel per detector, one curve per width (PNG)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], results, strict=True):
        for j, w in enumerate(fwhms):
            ax.plot(fluxes, r.completeness[:, j], marker="o", label=f"FWHM {w:.0f} km/s")
        ax.set_xscale("log")
        ax.set_xticks(list(fluxes))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel(r"injected line flux [$10^{-17}$ erg s$^{-1}$ cm$^{-2}$]")
        ax.set_title(f"{r.detector}: {r.false_hits_per_1000:.0f} hits / 1000 real spectra")
        ax.grid(alpha=0.3)
    return _save_completeness_figure(fig, axes, path)


def protocol_json(results: Sequence[ProtocolResult], info: dict[str, Any]) -> str:
    """The protocol's results as one JSON document."""
    fe, se = info["fwhm_bins"], info["skew_bins"]
    return json.dumps({**info, "detectors": [r.as_dict(fe, se) for r in results]}, default=str)


def _save_completeness_figure(fig: Any, axes: Any, path: Path) -> Path:
    """Label, lay out, write (PNG) and close a row of completeness panels."""
    import matplotlib.pyplot as plt

    axes[0][0].set_ylabel("completeness")
    axes[0][0].set_ylim(0, 1.02)
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
