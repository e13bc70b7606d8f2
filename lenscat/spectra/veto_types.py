"""Thresholds and results of the Lyman-alpha vetoes (:mod:`lenscat.spectra.vetoes`).

:class:`VetoConfig` holds the thresholds (the defaults are the project's, tuned in issue 31 to keep
real red-tailed lines); :class:`SkewTest`, :class:`OIITest` and :class:`VetoResult` the outcomes,
with their JSON forms as stored with a hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lenscat.spectra.oii import HALPHA, HBETA, NII_6585, OII_3727, OII_3729, OIII_4959, OIII_5007

__all__ = ["INTERLOPER_LINES", "OII_COMPANIONS", "OII_DOUBLET", "OIITest", "SkewTest", "VetoConfig", "VetoResult"]

#: lines of an [OII]-emitting interloper and their wavelength ratio to [OII] 3727
#: (vacuum: Hbeta 4862.68, [OIII] 5008.24, Halpha 6564.61 Angstrom)
INTERLOPER_LINES: dict[str, float] = {"hbeta": 1.3042, "oiii_5007": 1.3432, "halpha": 1.7607}


#: the [OII] 3726, 3729 doublet, rest vacuum wavelengths [Angstrom] (:mod:`lenscat.spectra.oii`'s)
OII_DOUBLET: tuple[float, float] = (OII_3727, OII_3729)


#: lines an [OII] emitter also shows redward, rest vacuum wavelengths [Angstrom]
OII_COMPANIONS: dict[str, float] = {
    "hbeta": HBETA,
    "oiii_4960": OIII_4959,
    "oiii_5008": OIII_5007,
    "halpha": HALPHA,
    "nii_6585": NII_6585,
}


@dataclass(frozen=True)
class VetoConfig:
    """Thresholds of the Lyman-alpha vetoes (:func:`~lenscat.spectra.vetoes.lya_vetoes`); the defaults are the
    project's.

    Attributes
    ----------
    window_kms : float
        Half-width of the window refitted around the line [km/s] (as :func:`~lenscat.spectra.linefit.fit_line`).
    blue_dchi2 : float
        Skew veto ``'blue-skewed'``: the best fit has ``alpha < 0`` and the hypothesis ``alpha >= 0``
        is rejected by at least this scaled chi-square difference (9: ~3 sigma).
    symmetric_veto : bool
        Apply the ``'symmetric-narrow'`` rule at all.
    lya_min_alpha : float
        The least red tail a high-S/N Lyman-alpha line is expected to show (skew-normal shape).
    sym_dchi2 : float
        ``'symmetric-narrow'``: the red-tailed hypothesis ``alpha >= lya_min_alpha`` is rejected
        against the symmetric profile (``alpha = 0``) by at least this scaled chi-square difference ...
    sym_min_snr : float
        ... and the fitted line S/N is at least this ...
    sym_min_fwhm_px : float
        ... and the line is resolved: FWHM at least this many pixels.
    doublet_dchi2 : float
        [OII] veto (a): the two-Gaussian [OII] doublet is preferred over the skew-normal single line
        by at least this scaled chi-square difference (both models have 6 free parameters).
    doublet_ratio : tuple of float
        Allowed range of the doublet flux ratio F(3729) / F(3727) (low to high electron density).
    doublet_max_sigma_kms : float
        Largest Gaussian sigma of a doublet component [km/s].
    companion_snr : float
        [OII] veto (b): joint significance (square root of the chi-square improvement of a
        non-negative fit of all covered companion lines) at or above which they count ...
    companion_single_snr : float
        ... when also at least one companion alone reaches this S/N.
    min_coverage : float
        A companion line is tested only when at least this fraction of the pixels within +-2 sigma
        of it are good (unmasked, off the bright sky lines and the lens galaxy's own lines).
    sky_half_px : float
        Half-width of the mask around each bright sky line [pixels].
    lens_line_kms : float
        Half-width of the mask around the lens galaxy's own emission lines [km/s].
    local_kms : float
        Half-width of the local window whose robust residual scatter rescales the noise at each
        companion line [km/s].
    """

    window_kms: float = 3000.0
    blue_dchi2: float = 9.0
    symmetric_veto: bool = True
    lya_min_alpha: float = 1.0
    sym_dchi2: float = 25.0
    sym_min_snr: float = 20.0
    sym_min_fwhm_px: float = 2.5
    doublet_dchi2: float = 9.0
    doublet_ratio: tuple[float, float] = (0.3, 1.5)
    doublet_max_sigma_kms: float = 500.0
    companion_snr: float = 4.0
    companion_single_snr: float = 3.0
    min_coverage: float = 0.7
    sky_half_px: float = 1.5
    lens_line_kms: float = 400.0
    local_kms: float = 4000.0


@dataclass
class SkewTest:
    """Skewness of a line by profile likelihood (:func:`~lenscat.spectra.veto_skew.skew_test`).

    Attributes
    ----------
    alpha : float
        Best-fitting skew-normal shape (> 0 = red tail).
    alpha_lo, alpha_hi : float
        Range of alpha within a scaled chi-square difference of 1 of the best fit (the fit's
        limits, +-20, when the profile does not rise that far).
    alpha_err : float
        ``(alpha_hi - alpha_lo) / 2``.
    chi2_best, chi2_red, chi2_blue, chi2_sym, chi2_lya : float
        Chi-square of the best fit and with ``alpha >= 0``, ``alpha <= 0``, ``alpha = 0`` and
        ``alpha >= lya_min_alpha``.
    scale : float
        ``max(1, reduced chi-square of the best fit)``; every difference below is divided by it.
    dchi2_red : float
        ``(chi2_red - chi2_best) / scale``: how strongly a red (Lyman-alpha-like) tail is rejected.
    dchi2_sym : float
        ``(chi2_lya - chi2_sym) / scale``: how strongly ``alpha >= lya_min_alpha`` is rejected
        against the symmetric profile (negative when the red tail fits better).
    snr, fwhm_px : float
        Line S/N and FWHM [pixels] of the fit tested.
    n_pix : int
        Pixels fitted.
    veto : bool
        The line is vetoed.
    reason : str or None
        ``'blue-skewed'``, ``'symmetric-narrow'`` or None.
    ok : bool
        The test ran (the line fit was ``ok`` and enough pixels remained).
    """

    alpha: float = np.nan
    alpha_lo: float = np.nan
    alpha_hi: float = np.nan
    alpha_err: float = np.nan
    chi2_best: float = np.nan
    chi2_red: float = np.nan
    chi2_blue: float = np.nan
    chi2_sym: float = np.nan
    chi2_lya: float = np.nan
    scale: float = np.nan
    dchi2_red: float = np.nan
    dchi2_sym: float = np.nan
    snr: float = np.nan
    fwhm_px: float = np.nan
    n_pix: int = 0
    veto: bool = False
    reason: str | None = None
    ok: bool = False

    def detail(self) -> dict[str, Any]:
        """JSON-ready values (non-finite numbers as None)."""
        return {k: _json_value(v) for k, v in self.__dict__.items()}


@dataclass
class OIITest:
    """Is a line [OII] 3726,3729 of an interloper? (:func:`~lenscat.spectra.veto_oii.oii_interloper_test`).

    Attributes
    ----------
    z_oii : float
        Redshift of the [OII] interpretation (from the doublet fit when it converged, else
        ``lam_obs / 3728.48 - 1``).
    doublet_ok : bool
        The doublet fit ran.
    doublet_dchi2 : float
        ``(chi2_single - chi2_doublet) / scale``: > 0 when the doublet fits better.
    doublet_flux, doublet_ratio, doublet_sigma_kms : float
        Fitted total doublet flux [1e-17 erg/s/cm^2], F(3729)/F(3727), component sigma [km/s].
    doublet : bool
        Criterion (a): ``doublet_dchi2 >= doublet_dchi2`` threshold.
    companion_snr : dict
        Per companion line its S/N alone (NaN: not covered).
    companion_scale : dict
        Per companion line the local noise rescaling factor applied (>= 1).
    companion_joint : float
        Joint significance of the covered companions (NaN when none is covered).
    n_covered : int
        Companion lines tested.
    companions : bool
        Criterion (b).
    veto : bool
        (a) or (b).
    """

    z_oii: float = np.nan
    doublet_ok: bool = False
    doublet_dchi2: float = np.nan
    doublet_flux: float = np.nan
    doublet_ratio: float = np.nan
    doublet_sigma_kms: float = np.nan
    doublet: bool = False
    companion_snr: dict[str, float] = field(default_factory=dict)
    companion_scale: dict[str, float] = field(default_factory=dict)
    companion_joint: float = np.nan
    n_covered: int = 0
    companions: bool = False
    veto: bool = False

    def detail(self) -> dict[str, Any]:
        """JSON-ready values (non-finite numbers as None)."""
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            out[k] = {kk: _json_value(vv) for kk, vv in v.items()} if isinstance(v, dict) else _json_value(v)
        return out


@dataclass
class VetoResult:
    """Outcome of :func:`~lenscat.spectra.vetoes.lya_vetoes`.

    Attributes
    ----------
    veto_skew, veto_oii : bool
        The skew and [OII]-interloper vetoes.
    detail : dict
        ``{'skew': SkewTest.detail(), 'oii': OIITest.detail()}`` (JSON-ready, for ``veto_detail``).
    skew, oii : SkewTest, OIITest
        The full test results.
    """

    veto_skew: bool
    veto_oii: bool
    detail: dict[str, Any]
    skew: SkewTest = field(default_factory=SkewTest)
    oii: OIITest = field(default_factory=OIITest)


def _json_value(v: Any) -> Any:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    return v
