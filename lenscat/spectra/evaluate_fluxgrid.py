"""The flux-grid evaluation of spectral detectors (:func:`evaluate_detectors`, the original mode).

Lines are injected by flux into real spectra as observed; completeness is reported per (flux, FWHM)
cell with the hits per 1,000 real spectra (drawn by
:func:`lenscat.spectra.evaluate_report.plot_completeness`). The matched-S/N protocol is
:mod:`lenscat.spectra.evaluate`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from lenscat.registry.versions import ModelVersion
from lenscat.spectra.evaluate import _is_candidate, run_detector
from lenscat.spectra.evaluate_hosts import load_real_sample
from lenscat.spectra.grid import WINDOW

DEFAULT_FLUXES = (3.0, 5.0, 8.0, 12.0, 20.0, 35.0, 60.0)  # 1e-17 erg/s/cm^2


DEFAULT_FWHMS = (150.0, 300.0, 500.0, 800.0)  # km/s


@dataclass
class DetectorEvaluation:
    """Results for one detector (flux-grid mode)."""

    detector: str
    completeness: np.ndarray  #: (n_flux, n_fwhm) recovered fraction
    n_trials: np.ndarray  #: (n_flux, n_fwhm)
    false_hits_per_1000: float
    false_hits_raw_per_1000: float
    real_candidates: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, fluxes: tuple[float, ...], fwhms: tuple[float, ...]) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "detector": self.detector,
            "completeness": [
                {
                    "line_flux": f,
                    "fwhm_kms": w,
                    "completeness": float(self.completeness[i, j]),
                    "trials": int(self.n_trials[i, j]),
                }
                for i, f in enumerate(fluxes)
                for j, w in enumerate(fwhms)
            ],
            "completeness_by_flux": {
                str(f): float(np.average(self.completeness[i], weights=np.maximum(self.n_trials[i], 1)))
                for i, f in enumerate(fluxes)
            },
            "false_hits_per_1000": self.false_hits_per_1000,
            "false_hits_before_vetoes_per_1000": self.false_hits_raw_per_1000,
            "real_candidates": self.real_candidates,
        }


def _recovered(c: Any, n: int, centre_px: np.ndarray, tol: int) -> np.ndarray:
    rec = np.zeros(n, dtype=bool)
    if c.row.size:
        close = np.abs(c.pixel - centre_px[c.row]) <= tol
        rec[c.row[close]] = True
    return rec


def evaluate_detectors(
    detectors: list[ModelVersion],
    *,
    session: Session,
    fluxes: tuple[float, ...] = DEFAULT_FLUXES,
    fwhms: tuple[float, ...] = DEFAULT_FWHMS,
    injections_per_cell: int = 200,
    max_spectra: int | None = 2000,
    tolerance_px: int = 4,
    seed: int = 0,
    device: str | None = None,
    sample: str = "galaxies",
) -> tuple[list[DetectorEvaluation], dict[str, Any]]:
    """Flux-grid injection-recovery and false-hit rates of detectors on the ingested real spectra.

    Lines are added to real spectra as observed (their noise is kept: the injected line adds
    signal, the ivar stays as observed) on a grid of line fluxes and widths at random window
    pixels; a line is recovered when the detector reports a hit within ``tolerance_px`` pixels of
    the injected peak. The same detectors scan the real spectra as observed, which gives the hits
    per 1,000 spectra that survive the per-line vetoes (an upper limit on the false-positive rate).

    Parameters
    ----------
    detectors
        Detector versions to compare.
    fluxes
        Injected line fluxes [1e-17 erg/s/cm^2].
    fwhms
        Injected line widths, FWHM [km/s].
    injections_per_cell
        Injected lines per (flux, width) cell, spread over the real spectra.
    max_spectra
        Real spectra to use at most (a random subset beyond that).
    tolerance_px
        A hit within this many pixels of the injected peak counts as recovered.
    sample
        Real spectra to use (:data:`lenscat.spectra.scan.SAMPLES`; default the science sample,
        galaxies with a pipeline redshift).
    """
    from lenscat.spectra.detectors import load_detector
    from lenscat.spectra.synth import inject_lines

    real = load_real_sample(session=session, max_spectra=max_spectra, seed=seed, sample=sample, full=True)
    n_real = len(real.spectrum_ids)
    rng = np.random.default_rng(seed)
    wave = WINDOW.wave
    results = []
    # the injected set: the same lines for every detector
    cells = [(i, j) for i in range(len(fluxes)) for j in range(len(fwhms))]
    base = np.concatenate([np.full(injections_per_cell, k) for k in range(len(cells))])
    host = rng.integers(0, n_real, size=base.size)
    margin = 20
    centre_px = rng.integers(margin, WINDOW.n - margin, size=base.size)
    skew = rng.uniform(0.0, 4.0, size=base.size)
    params = {
        "centre": wave[centre_px],
        "line_flux": np.array([fluxes[cells[k][0]] for k in base]),
        "fwhm_kms": np.array([fwhms[cells[k][1]] for k in base]),
        "skew": skew,
    }
    flux_inj, ivar_inj = inject_lines(wave, real.rows.flux[host], real.rows.ivar[host], params)
    inj = dataclasses.replace(
        real.rows,
        **{
            f.name: getattr(real.rows, f.name)[host]
            for f in dataclasses.fields(real.rows)
            if getattr(real.rows, f.name) is not None
        },
    )
    inj = dataclasses.replace(
        inj, flux=np.asarray(flux_inj, dtype=np.float32), ivar=np.asarray(ivar_inj, dtype=np.float32)
    )
    inj_surveys = [real.surveys[h] for h in host]
    for model in detectors:
        from lenscat.spectra.detectors import SpectrumBatch, apply_continuum

        det = load_detector(model, device)
        choices = det.continuum_for(inj_surveys)
        c = det.detect(
            SpectrumBatch(apply_continuum(inj, choices), np.arange(base.size), inj_surveys, continuum=choices)
        )
        rec = _recovered(c, base.size, centre_px, tolerance_px)
        comp = np.zeros((len(fluxes), len(fwhms)))
        ntr = np.zeros((len(fluxes), len(fwhms)), dtype=np.int64)
        for k, (i, j) in enumerate(cells):
            m = base == k
            ntr[i, j] = int(m.sum())
            comp[i, j] = float(rec[m].mean()) if m.any() else np.nan
        # false hits on the real spectra as observed, after the per-line vetoes
        c0, hits, _ = run_detector(
            det, real.rows, real.spectrum_ids, real.surveys, full=real.full, red=real.red, continuum=None
        )
        key_of = dict(zip(real.spectrum_ids.tolist(), real.keys, strict=True))
        kept = [
            {
                "spectrum_id": h.spectrum_id,
                "spectrum": key_of[int(h.spectrum_id)],
                "wavelength": h.wavelength,
                **h.values,
            }
            for h in hits
            if _is_candidate(h.values)
        ]
        results.append(
            DetectorEvaluation(
                detector=model.label,
                completeness=comp,
                n_trials=ntr,
                false_hits_per_1000=1000.0 * len(kept) / n_real,
                false_hits_raw_per_1000=1000.0 * int(c0.row.size) / n_real,
                real_candidates=kept,
            )
        )
    info = {
        "protocol": "flux",
        "n_real_spectra": n_real,
        "n_injected": int(base.size),
        "tolerance_px": tolerance_px,
        "fluxes": list(fluxes),
        "fwhms_kms": list(fwhms),
        "seed": seed,
        "sample": sample,
    }
    return results, info
