"""The [OII] detector family: background [OII] 3726,3729 doublets over the full wavelength range.

Architecture ``oii-filter``, family ``oii``. :meth:`OIIFilter.detect` runs the doublet matched
filter of :mod:`lenscat.spectra.oii` over the full-range rows of a batch
(:meth:`lenscat.spectra.detectors.SpectrumBatch.full`, :data:`lenscat.spectra.grid.FULL`);
:meth:`OIIFilter.characterise` fits every candidate with the doublet model, measures Hbeta and
[OIII] at the same redshift and applies the [OII]-family vetoes. Its hits go to
``lenscat.spectral_hits`` with ``line = 'oii'``, ``wavelength`` the observed mean doublet
wavelength, ``z_source`` the doublet redshift and ``pixel`` the FULL-grid pixel of the filter's peak.

A version is the sha256 of its configuration (:func:`register_oii_filter`), as for the matched filter.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from lenscat.registry.versions import ModelVersion
from lenscat.spectra.configured import register_configured_detector
from lenscat.spectra.detectors import (
    Candidates,
    Detector,
    HitRow,
    SpectrumBatch,
    finite_or_none,
    register_detector,
)
from lenscat.spectra.grid import FULL
from lenscat.spectra.oii import OIIConfig, prepare
from lenscat.spectra.oii_fit import companion_snr, fit_doublet
from lenscat.spectra.oii_search import search
from lenscat.spectra.oii_vetoes import oii_vetoes

OII_FILTER = "oii-filter"

#: hyper-parameters of a version that are not OIIConfig fields
VERSION_KEYS = ("sample", "continuum")


def register_oii_filter(
    name: str,
    *,
    session: Session,
    sample: str = "galaxies",
    continuum: str | dict[str, str] | None = None,
    **config: Any,
) -> tuple[ModelVersion, bool]:
    """Register an [OII] doublet-filter detector version with the given configuration (defaults otherwise).

    Parameters
    ----------
    name
        Detector name.
    session
        Database session (the caller commits).
    sample
        Spectra it scans (:data:`lenscat.spectra.scan.SAMPLES`); the default, galaxies with a
        pipeline redshift, is what the search needs (``z_s > z_l``).
    continuum
        ``'pipeline'``, ``'fit'`` or ``{survey: choice}``; default: the measured per-survey choices
        (:func:`lenscat.spectra.scan.continuum_snapshot`).
    **config
        :class:`~lenscat.spectra.oii.OIIConfig` fields.

    Returns
    -------
    tuple
        ``(version, created)``.
    """
    return register_configured_detector(
        name,
        OII_FILTER,
        OIIConfig(**config),
        sample=sample,
        continuum=continuum,
        input_spec={"full_k0": FULL.k0, "full_n": FULL.n, "dlog": FULL.dlog},
        description="[OII] 3726,3729 doublet matched filter (background emitters)",
        session=session,
    )


def config_from_hparams(hparams: dict[str, Any]) -> OIIConfig:
    """The :class:`OIIConfig` of a version's hyper-parameters."""
    hp: dict[str, Any] = {
        k: (tuple(v) if isinstance(v, list) else v) for k, v in hparams.items() if k not in VERSION_KEYS
    }
    return OIIConfig(**hp)


def _full_arrays(batch: SpectrumBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    full = batch.full()
    cont = np.asarray(full.continuum(batch.continuum_choice))
    z = np.asarray(getattr(full, "z", batch.rows.z), dtype=np.float64)
    return np.asarray(full.flux), np.asarray(full.ivar), cont, z


@register_detector
class OIIFilter(Detector):
    """Doublet matched filter for background [OII] emitters (full range, FULL grid)."""

    architecture = OII_FILTER
    family = "oii"

    def __init__(self, model: ModelVersion, device: str | None = None) -> None:
        super().__init__(model, device)
        self.config = config_from_hparams(model.hparams)

    def detect(self, batch: SpectrumBatch) -> Candidates:
        """Doublet hits (local S/N maxima above the threshold, ``z_s > z_l``) and the best S/N per spectrum."""
        flux, ivar, cont, z = _full_arrays(batch)
        h = search(FULL.wave, flux, ivar, cont, z, self.config)
        return Candidates(
            row=h.row,
            pixel=h.pixel,
            snr=h.snr,
            prob=np.full(len(h), np.nan),
            best=h.best,
            family="oii",
            wavelength=h.wavelength,
            z_source=h.z,
            extra={"filter_sigma_px": h.sigma_px, "filter_ratio": h.ratio, "filter_line_flux": h.line_flux},
        )

    def characterise(self, cands: Candidates, batch: SpectrumBatch) -> list[HitRow]:
        """Doublet fit, companions and [OII]-family vetoes of every candidate."""
        if len(cands) == 0:
            return []
        flux, ivar, cont, z = _full_arrays(batch)
        return characterise_oii(cands, batch.spectrum_ids, flux, ivar, cont, z, self.config)


def characterise_oii(
    cands: Candidates,
    spectrum_ids: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    z_lens: np.ndarray,
    config: OIIConfig | None = None,
    wave: np.ndarray | None = None,
) -> list[HitRow]:
    """Hit rows of [OII] candidates on full-range arrays (shared by scans and evaluation).

    Parameters
    ----------
    cands : Candidates
        From :meth:`OIIFilter.detect` (``row`` indexes the arrays below).
    spectrum_ids : numpy.ndarray
        (N,) ids of the rows.
    flux, ivar, continuum : numpy.ndarray
        (N, P) full-range arrays [1e-17 erg/s/cm^2/Angstrom].
    z_lens : numpy.ndarray
        (N,) foreground redshifts.
    config : OIIConfig, optional
        The version's settings.
    wave : numpy.ndarray, optional
        (P,) wavelengths [Angstrom]; default :data:`lenscat.spectra.grid.FULL`.
    """
    cfg = config or OIIConfig()
    wv = FULL.wave if wave is None else np.asarray(wave, dtype=np.float64)
    out: list[HitRow] = []
    prepared: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    z_src = cands.z_source if cands.z_source is not None else wv[cands.pixel] / 3728.48 - 1.0
    for j, (r, px) in enumerate(zip(cands.row.tolist(), cands.pixel.tolist(), strict=True)):
        if r not in prepared:
            rr, ww = prepare(wv, flux[r : r + 1], ivar[r : r + 1], continuum[r : r + 1], z_lens[r : r + 1], cfg)
            prepared[r] = (rr[0], ww[0])
        res, w = prepared[r]
        fit = fit_doublet(wv, res, w, np.zeros_like(res), float(z_src[j]), window_kms=cfg.fit_window_kms)
        zs = float(fit.z) if fit.ok else float(z_src[j])
        lam = float(fit.wavelength) if fit.ok else float(wv[px])
        sig = float(fit.sigma_kms) if fit.ok else 80.0
        comp = companion_snr(wv, res, w, zs, sig)
        vet = oii_vetoes(fit, wv, res, w, float(z_lens[r]), cfg)
        detail: dict[str, Any] = {k: (v[j].item() if hasattr(v[j], "item") else v[j]) for k, v in cands.extra.items()}
        detail.update(
            {
                "oii": vet.detail,
                "companions": comp,
                "single_wavelength": fit.single_wavelength,
                "sigma_kms": fit.sigma_kms,
                "fit_snr": fit.snr,
            }
        )
        out.append(
            HitRow(
                int(spectrum_ids[r]),
                int(px),
                lam,
                {
                    "line": "oii",
                    "wavelength_err": finite_or_none(fit.wavelength_err),
                    "z_source": zs,
                    "z_source_err": finite_or_none(fit.z_err),
                    "snr": finite_or_none(cands.snr[j]),
                    "prob": None,
                    "line_flux": finite_or_none(fit.line_flux),
                    "line_flux_err": finite_or_none(fit.line_flux_err),
                    "fwhm_kms": finite_or_none(fit.fwhm_kms),
                    "skew_alpha": None,
                    "skewness": None,
                    "fit_chi2": finite_or_none(fit.redchi2),
                    "fit_ok": bool(fit.ok),
                    "veto_oii": False,
                    "veto_skew": False,
                    "doublet_ratio": finite_or_none(fit.ratio),
                    "doublet_ratio_err": finite_or_none(fit.ratio_err),
                    "doublet_dchi2": finite_or_none(fit.delta_chi2),
                    "companion_snr": finite_or_none(comp["companion_snr"]),
                    "veto_doublet": vet.veto_doublet,
                    "veto_foreground": vet.veto_foreground,
                    "veto_interloper": vet.veto_interloper,
                    "veto_detail": json.dumps(_clean(detail)),
                },
            )
        )
    return out


def _clean(x: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None (jsonb has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return finite_or_none(x)
    return x


def is_candidate(values: dict[str, Any]) -> bool:
    """A hit row's ``is_candidate`` before the survey-wide over-density veto."""
    return bool(values.get("fit_ok")) and not any(
        bool(values.get(k))
        for k in ("veto_oii", "veto_skew", "veto_doublet", "veto_foreground", "veto_interloper", "veto_overdensity")
    )
