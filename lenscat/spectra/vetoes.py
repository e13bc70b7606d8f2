"""The Lyman-alpha vetoes of a fitted matched-filter hit, combined (:func:`lya_vetoes`).

The individual tests live in :mod:`lenscat.spectra.veto_skew` (line shape) and
:mod:`lenscat.spectra.veto_oii` ([OII] interloper); their thresholds and results in
:mod:`lenscat.spectra.veto_types`.
"""

from __future__ import annotations

import numpy as np

from lenscat.spectra.linefit import LineFit
from lenscat.spectra.veto_oii import oii_interloper_test
from lenscat.spectra.veto_skew import skew_test
from lenscat.spectra.veto_types import OIITest, SkewTest, VetoConfig, VetoResult

__all__ = ["lya_vetoes"]


def lya_vetoes(
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    fit: LineFit,
    red_wave: np.ndarray,
    red_flux: np.ndarray,
    red_ivar: np.ndarray,
    red_continuum: np.ndarray,
    *,
    z_lens: float | None = None,
    mask: np.ndarray | None = None,
    config: VetoConfig | None = None,
) -> VetoResult:
    """Both per-line vetoes of a Lyman-alpha candidate: skew (:func:`~lenscat.spectra.veto_skew.skew_test`) and [OII]
    interloper (:func:`~lenscat.spectra.veto_oii.oii_interloper_test`).

    Parameters
    ----------
    wave, flux, ivar, continuum : numpy.ndarray
        (P,) window arrays of the spectrum: wavelengths [Angstrom, increasing], flux density and
        continuum [1e-17 erg/s/cm^2/Angstrom], inverse variance (0 = masked).
    fit : LineFit
        :func:`~lenscat.spectra.linefit.fit_line` on those arrays.
    red_wave, red_flux, red_ivar, red_continuum : numpy.ndarray
        (Q,) the red (or full-range) arrays of the same spectrum, any increasing grid.
    z_lens : float, optional
        Lens galaxy redshift (None / NaN: unknown).
    mask : numpy.ndarray, optional
        (P,) bool, window pixels to leave out (True = excluded).
    config : VetoConfig, optional
        Thresholds (default :class:`~lenscat.spectra.veto_types.VetoConfig`).

    Returns
    -------
    VetoResult
        Both flags False when the fit is not ``ok`` (no evidence either way).
    """
    cfg = config or VetoConfig()
    if not fit.ok or not np.isfinite(fit.wavelength):
        sk, oi = SkewTest(), OIITest()
    else:
        sk = skew_test(wave, flux, ivar, continuum, fit, mask=mask, config=cfg)
        z = None if z_lens is None or not np.isfinite(z_lens) else float(z_lens)
        oi = oii_interloper_test(
            float(fit.wavelength),
            fit,
            wave,
            flux,
            ivar,
            continuum,
            red_wave,
            red_flux,
            red_ivar,
            red_continuum,
            z_lens=z,
            mask=mask,
            single_chi2=sk.chi2_best if sk.ok else None,
            config=cfg,
        )
    return VetoResult(
        veto_skew=bool(sk.veto),
        veto_oii=bool(oi.veto),
        detail={"skew": sk.detail(), "oii": oi.detail()},
        skew=sk,
        oii=oi,
    )
