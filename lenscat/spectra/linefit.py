"""Line fits of matched-filter hits and the vetoes that reject false candidates.

This module owns the follow-up of a hit found by :mod:`lenscat.spectra.matched_filter`, after the
BELLS GALLERY recipe (Shu et al. 2016, ApJ 824, 86; Shu et al. 2016b, ApJ 833, 264):

* :func:`fit_line` -- a skew-normal profile (Azzalini 1985) plus a linear continuum-residual term
  fitted by bounded least squares (``scipy.optimize.least_squares``) around the hit; the source
  redshift assumes Lyman alpha;
* :func:`lya_vetoes` -- the per-line vetoes of a Lyman-alpha candidate, tuned to keep real lines
  (issue 31), with thresholds in :class:`VetoConfig`:

  - :func:`skew_test` -- Lyman alpha of a high-redshift galaxy is red-skewed (a red tail, IGM
    absorption of the blue side). The shape is measured with its uncertainty by profile
    likelihood; a line is vetoed only when it is *significantly* blue-skewed, or bright, resolved
    and symmetric where a red tail is excluded -- never for a red tail at modest S/N;
  - :func:`oii_interloper_test` -- were the line [OII] 3726,3729 of a foreground galaxy, the
    doublet would be resolved and Hbeta, [OIII] 4960, 5007, Halpha and [NII] 6585 would appear
    redward; the veto fires only when the doublet fits better than a single line or the
    companions are jointly significant (local noise, sky lines and the lens's own lines masked);

  (the earlier sign-only skew veto and fixed-width companion test discarded about a sixth of
  real red-tailed lines at matched S/N 8-15; see docs/benchmarks.md, issue 31);
* :func:`wavelength_overdensity` -- survey-wide: hits pile up at wavelengths of airglow and template
  residuals; bins whose hit count is improbable under a uniform rate are flagged.

Sign convention: the skew-normal shape ``alpha`` is defined on increasing wavelength, so
``alpha > 0`` is a tail to the red (longer wavelengths; positive third moment), as Lyman alpha
shows, and ``alpha < 0`` a tail to the blue.

Flux densities are in 1e-17 erg/s/cm^2/Angstrom, line fluxes in 1e-17 erg/s/cm^2, wavelengths in
vacuum Angstrom, velocities in km/s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, special, stats

from lenscat.spectra.continuum import robust_sigma_rows
from lenscat.spectra.grid import C_KMS, LYA, WINDOW, LogGrid
from lenscat.spectra.masks import line_mask, sky_line_mask
from lenscat.spectra.oii import HALPHA, HBETA, NII_6585, OII_3727, OII_3729, OIII_4959, OIII_5007
from lenscat.spectra.reference import emission_lines

__all__ = [
    "INTERLOPER_LINES",
    "OII_COMPANIONS",
    "OII_DOUBLET",
    "OII_REST",
    "FlaggedBins",
    "LineFit",
    "OIITest",
    "SkewTest",
    "VetoConfig",
    "VetoResult",
    "fit_line",
    "lya_vetoes",
    "oii_interloper_test",
    "skew_normal_profile",
    "skew_test",
    "wavelength_overdensity",
]

#: rest wavelength of the [OII] 3726, 3729 doublet (mean of the vacuum components) [Angstrom]
OII_REST = 3728.48
#: lines of an [OII]-emitting interloper and their wavelength ratio to [OII] 3727
#: (vacuum: Hbeta 4862.68, [OIII] 5008.24, Halpha 6564.61 Angstrom)
INTERLOPER_LINES: dict[str, float] = {"hbeta": 1.3042, "oiii_5007": 1.3432, "halpha": 1.7607}

_SQRT2PI = float(np.sqrt(2.0 * np.pi))


def skew_normal_profile(wave: np.ndarray, flux: float, xi: float, omega: float, alpha: float) -> np.ndarray:
    """Skew-normal line profile of integrated flux ``flux``.

    ``f(lambda) = flux * (2 / omega) * phi(t) * Phi(alpha * t)`` with ``t = (lambda - xi) / omega``.

    Parameters
    ----------
    wave : numpy.ndarray
        Wavelengths [Angstrom].
    flux : float
        Integrated flux [1e-17 erg/s/cm^2].
    xi, omega : float
        Location and scale [Angstrom].
    alpha : float
        Shape; > 0 = tail to the red.

    Returns
    -------
    numpy.ndarray
        Flux density [1e-17 erg/s/cm^2/Angstrom].
    """
    t = (np.asarray(wave, dtype=np.float64) - xi) / omega
    return np.asarray(flux * (2.0 / omega) * np.exp(-0.5 * t * t) / _SQRT2PI * special.ndtr(alpha * t))


def _mode_fwhm(xi: float, omega: float, alpha: float) -> tuple[float, float]:
    """Mode and FWHM [Angstrom] of the skew-normal, numerically on a fine grid."""
    x = np.linspace(-5.0, 5.0, 4001)
    y = 2.0 * np.exp(-0.5 * x * x) * special.ndtr(alpha * x)
    i = int(np.argmax(y))
    xm = x[i]
    if 0 < i < x.size - 1:  # parabolic refinement
        d = y[i - 1] - 2.0 * y[i] + y[i + 1]
        if d < 0:
            xm = x[i] + 0.5 * (y[i - 1] - y[i + 1]) / d * (x[1] - x[0])
    half = 0.5 * y[i]
    above = np.flatnonzero(y >= half)
    lo, hi = above[0], above[-1]

    def cross(a: int, b: int) -> float:
        # linear interpolation of the half-maximum crossing between samples a and b
        return float(x[a] + (half - y[a]) * (x[b] - x[a]) / (y[b] - y[a])) if y[b] != y[a] else float(x[a])

    xl = cross(lo - 1, lo) if lo > 0 else float(x[0])
    xh = cross(hi, hi + 1) if hi < x.size - 1 else float(x[-1])
    return float(xi + omega * xm), float(omega * (xh - xl))


def _skewness(alpha: float) -> float:
    """Third standardised moment of a skew-normal of shape ``alpha`` (analytic)."""
    d = alpha / np.sqrt(1.0 + alpha * alpha)
    m = d * np.sqrt(2.0 / np.pi)
    return float((4.0 - np.pi) / 2.0 * m**3 / (1.0 - m * m) ** 1.5)


@dataclass
class LineFit:
    """Skew-normal fit of one emission line (see :func:`fit_line`).

    Attributes
    ----------
    wavelength, wavelength_err : float
        Peak (mode) of the fitted profile and its 1-sigma error [Angstrom, vacuum].
    z_source, z_source_err : float
        Redshift if the line is Lyman alpha (``wavelength / 1215.67 - 1``) and its error.
    line_flux, line_flux_err : float
        Integrated line flux and its error [1e-17 erg/s/cm^2].
    fwhm_kms : float
        Full width at half maximum of the profile [km/s] (numerical).
    alpha, alpha_err : float
        Skew-normal shape and its error; > 0 = red tail.
    skewness : float
        Third standardised moment of the fitted profile (same sign as ``alpha``).
    xi, omega : float
        Skew-normal location and scale [Angstrom].
    cont0, cont1 : float
        Residual continuum at the window centre [1e-17 erg/s/cm^2/A] and its slope per
        half-window.
    redchi2 : float
        Reduced chi-square of the fit.
    snr : float
        ``line_flux / line_flux_err``.
    n_pix : int
        Pixels fitted.
    ok : bool
        The optimiser converged and every reported quantity is finite.
    """

    wavelength: float = np.nan
    wavelength_err: float = np.nan
    z_source: float = np.nan
    z_source_err: float = np.nan
    line_flux: float = np.nan
    line_flux_err: float = np.nan
    fwhm_kms: float = np.nan
    alpha: float = np.nan
    alpha_err: float = np.nan
    skewness: float = np.nan
    xi: float = np.nan
    omega: float = np.nan
    cont0: float = np.nan
    cont1: float = np.nan
    redchi2: float = np.nan
    snr: float = np.nan
    n_pix: int = 0
    ok: bool = False


def fit_line(
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    centre_guess: float,
    *,
    window_kms: float = 3000.0,
    sigma_guess_kms: float = 150.0,
    mask: np.ndarray | None = None,
) -> LineFit:
    """Fit a skew-normal emission line plus a linear residual continuum around a hit.

    The residual ``flux - continuum`` within +-``window_kms`` of ``centre_guess`` is fitted, with
    weights ``ivar``, by ``skew_normal(flux, xi, omega, alpha) + c0 + c1 * (lambda - centre) / hw``
    (``hw`` the half-window in Angstrom) using bounded trust-region least squares
    (``flux >= 0``; ``xi`` within half the window of the guess; ``omega`` from 0.3 px to
    1500 km/s; ``|alpha| <= 20``), from three starting shapes (alpha = -2, 0, 2), keeping the best.
    Errors come from the Jacobian at the solution, the covariance scaled by ``max(1, redchi2)``;
    the error of the mode is propagated numerically from (xi, omega, alpha).

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) wavelengths [Angstrom], increasing.
    flux : numpy.ndarray
        (P,) flux density [1e-17 erg/s/cm^2/Angstrom].
    ivar : numpy.ndarray
        (P,) inverse variance; 0 = masked.
    continuum : numpy.ndarray
        (P,) continuum model [1e-17 erg/s/cm^2/Angstrom].
    centre_guess : float
        Starting wavelength of the line [Angstrom] (a matched-filter hit).
    window_kms : float
        Half-width of the fitted window [km/s].
    sigma_guess_kms : float
        Starting Gaussian width [km/s].
    mask : numpy.ndarray, optional
        (P,) bool, extra pixels to leave out (True = excluded).

    Returns
    -------
    LineFit
        ``ok`` is False (and values NaN) when fewer than 10 usable pixels remain or the fit fails.
    """
    wave = np.asarray(wave, dtype=np.float64)
    r_all = np.asarray(flux, dtype=np.float64) - np.asarray(continuum, dtype=np.float64)
    iv_all = np.asarray(ivar, dtype=np.float64)
    lam0 = float(centre_guess)
    hw = lam0 * window_kms / C_KMS
    sel = (np.abs(wave - lam0) <= hw) & np.isfinite(r_all) & np.isfinite(iv_all) & (iv_all > 0)
    if mask is not None:
        sel &= ~np.asarray(mask, dtype=bool)
    n = int(sel.sum())
    if n < 10 or not np.isfinite(lam0) or hw <= 0:
        return LineFit(n_pix=n)
    x, r, sw = wave[sel], r_all[sel], np.sqrt(iv_all[sel])
    u = (x - lam0) / hw
    dpx = float(np.median(np.diff(wave))) if wave.size > 1 else 1.0

    def resid(q: np.ndarray) -> np.ndarray:
        return np.asarray((skew_normal_profile(x, q[0], q[1], q[2], q[3]) + q[4] + q[5] * u - r) * sw)

    win = _Win(x=x, r=r, sw=sw, u=u, lam0=lam0, hw=hw, dpx=dpx)

    def jac_fn(q: np.ndarray) -> np.ndarray:
        return _skew_jac(win, q)

    om0 = lam0 * sigma_guess_kms / C_KMS
    near = np.abs(x - lam0) <= 3.0 * om0
    f0 = float(np.clip(np.sum(r[near]) * dpx, 1e-3, None)) if near.any() else 1.0
    lo = np.array([0.0, lam0 - 0.5 * hw, 0.3 * dpx, -20.0, -np.inf, -np.inf])
    hi = np.array([np.inf, lam0 + 0.5 * hw, max(lam0 * 1500.0 / C_KMS, 0.6 * dpx), 20.0, np.inf, np.inf])
    best: optimize.OptimizeResult | None = None
    for a0 in (0.0, 2.0, -2.0):
        q0 = np.clip(np.array([f0, lam0, om0, a0, 0.0, 0.0]), lo, hi)
        try:
            res = optimize.least_squares(
                resid, q0, jac=jac_fn, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=2000
            )
        except (ValueError, np.linalg.LinAlgError):  # pragma: no cover - defensive
            continue
        if best is None or res.cost < best.cost:
            best = res
    if best is None:
        return LineFit(n_pix=n)
    q = best.x
    dof = max(n - q.size, 1)
    redchi2 = float(2.0 * best.cost / dof)
    jac = best.jac
    with np.errstate(all="ignore"):
        cov = np.linalg.pinv(jac.T @ jac) * max(1.0, redchi2)
    perr = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    mode, fwhm = _mode_fwhm(q[1], q[2], q[3])
    # mode error: numerical gradient of the mode in (xi, omega, alpha)
    grad = np.zeros(q.size)
    grad[1] = 1.0
    for i, step in ((2, 1e-4 * q[2]), (3, 1e-4)):
        qp, qm = q.copy(), q.copy()
        qp[i] += step
        qm[i] -= step
        grad[i] = (_mode_fwhm(qp[1], qp[2], qp[3])[0] - _mode_fwhm(qm[1], qm[2], qm[3])[0]) / (2.0 * step)
    mode_err = float(np.sqrt(max(float(grad @ cov @ grad), 0.0)))
    flux_err = float(perr[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = float(q[0] / flux_err) if flux_err > 0 else np.nan
    out = LineFit(
        wavelength=mode,
        wavelength_err=mode_err,
        z_source=mode / LYA - 1.0,
        z_source_err=mode_err / LYA,
        line_flux=float(q[0]),
        line_flux_err=flux_err,
        fwhm_kms=fwhm / mode * C_KMS,
        alpha=float(q[3]),
        alpha_err=float(perr[3]),
        skewness=_skewness(float(q[3])),
        xi=float(q[1]),
        omega=float(q[2]),
        cont0=float(q[4]),
        cont1=float(q[5]),
        redchi2=redchi2,
        snr=snr,
        n_pix=n,
    )
    vals = [
        out.wavelength,
        out.wavelength_err,
        out.line_flux,
        out.line_flux_err,
        out.fwhm_kms,
        out.alpha,
        out.redchi2,
        out.snr,
    ]
    out.ok = bool(best.status > 0 and np.all(np.isfinite(vals)) and flux_err > 0)
    return out


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
#: bound on |alpha| in the skew-normal fits (as :func:`fit_line`)
_ALPHA_MAX = 20.0
#: fixed shapes that trace the chi^2 profile in alpha (besides the constrained optima)
_ALPHA_PROFILE: tuple[float, ...] = (-6.0, -2.0, -0.7, 0.7, 2.0, 6.0)
#: Gaussian sigma per FWHM
_FWHM_TO_SIGMA = float(1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0))))
#: least-squares settings of the veto refits (as :func:`fit_line`)
_LSQ: dict[str, Any] = {"method": "trf", "x_scale": "jac", "max_nfev": 2000}


@dataclass(frozen=True)
class VetoConfig:
    """Thresholds of the Lyman-alpha vetoes (:func:`lya_vetoes`); the defaults are the project's.

    Attributes
    ----------
    window_kms : float
        Half-width of the window refitted around the line [km/s] (as :func:`fit_line`).
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
    """Skewness of a line by profile likelihood (:func:`skew_test`).

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
    """Is a line [OII] 3726,3729 of an interloper? (:func:`oii_interloper_test`).

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
    """Outcome of :func:`lya_vetoes`.

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


@dataclass
class _Win:
    """Pixels around a line: wavelengths, residual, sqrt(ivar), normalised offset, centre, half-width."""

    x: np.ndarray
    r: np.ndarray
    sw: np.ndarray
    u: np.ndarray
    lam0: float
    hw: float
    dpx: float


def _window(
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    centre: float,
    window_kms: float,
    mask: np.ndarray | None,
) -> _Win | None:
    wave = np.asarray(wave, dtype=np.float64)
    r_all = np.asarray(flux, dtype=np.float64) - np.asarray(continuum, dtype=np.float64)
    iv = np.asarray(ivar, dtype=np.float64)
    lam0 = float(centre)
    hw = lam0 * window_kms / C_KMS
    if not np.isfinite(lam0) or hw <= 0 or wave.size < 2:
        return None
    sel = (np.abs(wave - lam0) <= hw) & np.isfinite(r_all) & np.isfinite(iv) & (iv > 0)
    if mask is not None:
        sel &= ~np.asarray(mask, dtype=bool)
    if int(sel.sum()) < 10:
        return None
    x = wave[sel]
    dpx = float(np.interp(lam0, wave[1:], np.diff(wave)))
    return _Win(x=x, r=r_all[sel], sw=np.sqrt(iv[sel]), u=(x - lam0) / hw, lam0=lam0, hw=hw, dpx=dpx)


def _skew_bounds(w: _Win) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([0.0, w.lam0 - 0.5 * w.hw, 0.3 * w.dpx, -_ALPHA_MAX, -np.inf, -np.inf])
    hi = np.array([np.inf, w.lam0 + 0.5 * w.hw, max(w.lam0 * 1500.0 / C_KMS, 0.6 * w.dpx), _ALPHA_MAX, np.inf, np.inf])
    return lo, hi


def _xi_for_mode(mode: float, omega: float, alpha: float) -> float:
    """Skew-normal location that puts the profile's mode at ``mode``."""
    return mode - (_mode_fwhm(0.0, omega, alpha)[0])


def _skew_jac(w: _Win, q: np.ndarray) -> np.ndarray:
    """(n, 6) analytic Jacobian of the weighted residual of the skew-normal + linear model in
    (flux, xi, omega, alpha, c0, c1)."""
    f, xi, om, a = q[0], q[1], q[2], q[3]
    t = (w.x - xi) / om
    phi = np.exp(-0.5 * t * t) / _SQRT2PI
    big_phi = special.ndtr(a * t)
    phi_a = np.exp(-0.5 * (a * t) ** 2) / _SQRT2PI
    g = 2.0 * phi * big_phi / om  # profile per unit flux
    dg_dt = 2.0 / om * phi * (a * phi_a - t * big_phi)
    jac = np.empty((w.x.size, 6))
    jac[:, 0] = g
    jac[:, 1] = -f * dg_dt / om
    jac[:, 2] = -f * g / om - f * dg_dt * t / om
    jac[:, 3] = f * 2.0 / om * phi * phi_a * t
    jac[:, 4] = 1.0
    jac[:, 5] = w.u
    return jac * w.sw[:, None]


def _fit_skew(w: _Win, starts: list[np.ndarray], alpha_lo: float, alpha_hi: float) -> tuple[float, np.ndarray]:
    """Least chi-square skew-normal + linear residual with alpha in [alpha_lo, alpha_hi] (fixed if equal)."""
    lo, hi = _skew_bounds(w)
    fixed = alpha_hi - alpha_lo < 1e-9
    free = [0, 1, 2, 4, 5] if fixed else [0, 1, 2, 3, 4, 5]
    lo[3], hi[3] = alpha_lo, alpha_hi
    best_chi2, best_q = np.inf, starts[0].copy()
    for q0 in starts:
        full = np.asarray(q0, dtype=np.float64).copy()
        full[3] = float(np.clip(full[3], alpha_lo, alpha_hi))

        def expand(p: np.ndarray, full: np.ndarray = full) -> np.ndarray:
            qq = full.copy()
            qq[free] = p
            return qq

        def resid(p: np.ndarray) -> np.ndarray:
            qq = expand(p)
            return np.asarray((skew_normal_profile(w.x, qq[0], qq[1], qq[2], qq[3]) + qq[4] + qq[5] * w.u - w.r) * w.sw)

        def jac(p: np.ndarray) -> np.ndarray:
            return _skew_jac(w, expand(p))[:, free]

        p0 = np.clip(full[free], lo[free], hi[free])
        try:
            res = optimize.least_squares(resid, p0, jac=jac, bounds=(lo[free], hi[free]), **_LSQ)
        except (ValueError, np.linalg.LinAlgError):  # pragma: no cover - defensive
            continue
        chi2 = float(2.0 * res.cost)
        if chi2 < best_chi2:
            best_chi2, best_q = chi2, expand(np.asarray(res.x, dtype=np.float64))
    return best_chi2, best_q


def _start(fit: LineFit, w: _Win, alpha: float) -> np.ndarray:
    """Starting parameters with shape ``alpha``, keeping the fitted mode, width and flux."""
    a = float(np.clip(alpha, -_ALPHA_MAX, _ALPHA_MAX))
    om = float(fit.omega) if np.isfinite(fit.omega) and fit.omega > 0 else w.lam0 * 150.0 / C_KMS
    # keep the FWHM: omega scales with FWHM(alpha) / FWHM(fit alpha)
    a_fit = float(fit.alpha) if np.isfinite(fit.alpha) else 0.0
    om = om * _mode_fwhm(0.0, 1.0, a_fit)[1] / _mode_fwhm(0.0, 1.0, a)[1]
    mode = float(fit.wavelength) if np.isfinite(fit.wavelength) else w.lam0
    f = float(fit.line_flux) if np.isfinite(fit.line_flux) and fit.line_flux > 0 else 1.0
    c0 = float(fit.cont0) if np.isfinite(fit.cont0) else 0.0
    return np.array([f, _xi_for_mode(mode, om, a), om, a, c0, 0.0])


def _profile_range(alphas: np.ndarray, dchi2: np.ndarray, a_best: float) -> tuple[float, float]:
    """Where the scaled chi-square profile first rises by 1 either side of the best alpha."""
    order = np.argsort(alphas)
    a, d = alphas[order], dchi2[order]
    i = int(np.argmin(np.abs(a - a_best)))
    lo, hi = -_ALPHA_MAX, _ALPHA_MAX

    def cross(k: int, m: int) -> float:  # alpha where the profile reaches 1 between samples k and m
        return float(a[k] + (1.0 - d[k]) * (a[m] - a[k]) / (d[m] - d[k])) if d[m] > d[k] else float(a[m])

    for k in range(i, 0, -1):
        if d[k - 1] >= 1.0:
            lo = cross(k, k - 1) if d[k] < 1.0 else float(a[k])
            break
    for k in range(i, a.size - 1):
        if d[k + 1] >= 1.0:
            hi = cross(k, k + 1) if d[k] < 1.0 else float(a[k])
            break
    return lo, hi


def skew_test(
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    fit: LineFit,
    *,
    mask: np.ndarray | None = None,
    config: VetoConfig | None = None,
) -> SkewTest:
    """Skewness of a fitted line with its uncertainty, by profile likelihood, and the skew veto.

    Around the fitted line (+-``config.window_kms``) the skew-normal + linear residual model of
    :func:`fit_line` is refitted with the shape constrained to ``alpha >= 0`` (a red tail, as
    Lyman alpha), ``alpha <= 0``, ``alpha = 0`` and ``alpha >= config.lya_min_alpha``, and at fixed
    shapes for the profile. Chi-square differences are divided by ``max(1, reduced chi-square)``
    of the best fit, so that an under-estimated inverse variance does not manufacture significance.

    The line is vetoed

    * ``'blue-skewed'`` when the best fit has ``alpha < 0`` and ``alpha >= 0`` is rejected by at
      least ``config.blue_dchi2`` (default 9, ~3 sigma);
    * ``'symmetric-narrow'`` (``config.symmetric_veto``) when a resolved (FWHM >=
      ``config.sym_min_fwhm_px`` pixels), high-S/N (>= ``config.sym_min_snr``) line rejects
      ``alpha >= config.lya_min_alpha`` against the symmetric profile by at least
      ``config.sym_dchi2`` (default 25, 5 sigma): a bright, resolved line with no red tail.

    A red tail at modest S/N is never vetoed: neither rule can fire for a best fit with
    ``alpha >= 0`` below ``sym_min_snr``.

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) wavelengths [Angstrom], increasing.
    flux, continuum : numpy.ndarray
        (P,) flux density and continuum [1e-17 erg/s/cm^2/Angstrom].
    ivar : numpy.ndarray
        (P,) inverse variance; 0 = masked.
    fit : LineFit
        The line fit (:func:`fit_line`) on the same arrays.
    mask : numpy.ndarray, optional
        (P,) bool, extra pixels to leave out (True = excluded).
    config : VetoConfig, optional
        Thresholds (default :class:`VetoConfig`).

    Returns
    -------
    SkewTest
        ``ok`` False (and no veto) when the fit is not ``ok`` or fewer than 10 pixels remain.
    """
    cfg = config or VetoConfig()
    if not fit.ok or not np.isfinite(fit.wavelength):
        return SkewTest()
    w = _window(wave, flux, ivar, continuum, fit.wavelength, cfg.window_kms, mask)
    if w is None:
        return SkewTest()
    a_fit = float(fit.alpha)
    s_fit = _start(fit, w, a_fit)
    # the fit's own shape starts the constrained fit on its side; the other side starts at |alpha| = 2
    s_red = s_fit if a_fit >= 0 else _start(fit, w, 2.0)
    s_blue = s_fit if a_fit <= 0 else _start(fit, w, -2.0)
    chi2_red, q_red = _fit_skew(w, [s_red], 0.0, _ALPHA_MAX)
    chi2_blue, q_blue = _fit_skew(w, [s_blue], -_ALPHA_MAX, 0.0)
    chi2_sym, _ = _fit_skew(w, [q_red if chi2_red <= chi2_blue else q_blue], 0.0, 0.0)
    amin = float(cfg.lya_min_alpha)
    if q_red[3] >= amin:
        chi2_lya = chi2_red
    else:
        chi2_lya, _ = _fit_skew(w, [_start(fit, w, max(amin, 2.0))], amin, _ALPHA_MAX)
    dof = max(w.x.size - 6, 1)
    # profile in alpha: fixed shapes, warm-started from the constrained optimum on their side
    alphas = [float(q_red[3]), float(q_blue[3]), 0.0]
    chi2s = [chi2_red, chi2_blue, chi2_sym]
    for a in _ALPHA_PROFILE:
        c, _ = _fit_skew(w, [q_red if a > 0 else q_blue], a, a)
        alphas.append(a)
        chi2s.append(c)
        # a fixed shape is a feasible point of every constrained fit whose range holds it
        if a >= 0:
            chi2_red = min(chi2_red, c)
        if a <= 0:
            chi2_blue = min(chi2_blue, c)
        if a >= amin:
            chi2_lya = min(chi2_lya, c)
    al, c2 = np.asarray(alphas), np.asarray(chi2s)
    chi2_best = float(c2.min())
    a_best = float(al[int(np.argmin(c2))])
    scale = max(1.0, chi2_best / dof)
    d = (c2 - chi2_best) / scale
    lo, hi = _profile_range(al, d, a_best)
    dchi2_red = (chi2_red - chi2_best) / scale
    dchi2_sym = (chi2_lya - chi2_sym) / scale
    fwhm_px = float(fit.fwhm_kms / C_KMS * fit.wavelength / w.dpx) if np.isfinite(fit.fwhm_kms) else np.nan
    reason: str | None = None
    if a_best < 0 and dchi2_red >= cfg.blue_dchi2:
        reason = "blue-skewed"
    elif (
        cfg.symmetric_veto
        and np.isfinite(fit.snr)
        and fit.snr >= cfg.sym_min_snr
        and np.isfinite(fwhm_px)
        and fwhm_px >= cfg.sym_min_fwhm_px
        and dchi2_sym >= cfg.sym_dchi2
    ):
        reason = "symmetric-narrow"
    return SkewTest(
        alpha=a_best,
        alpha_lo=lo,
        alpha_hi=hi,
        alpha_err=0.5 * (hi - lo),
        chi2_best=chi2_best,
        chi2_red=chi2_red,
        chi2_blue=chi2_blue,
        chi2_sym=chi2_sym,
        chi2_lya=chi2_lya,
        scale=scale,
        dchi2_red=float(dchi2_red),
        dchi2_sym=float(dchi2_sym),
        snr=float(fit.snr),
        fwhm_px=fwhm_px,
        n_pix=int(w.x.size),
        veto=reason is not None,
        reason=reason,
        ok=True,
    )


def _doublet_model(x: np.ndarray, p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """[OII] doublet (total flux p0, redshift p1, sigma p2 [A], ratio p3) + linear residual (p4, p5)."""
    f, z, sig, ratio = p[0], p[1], p[2], p[3]
    c1, c2 = OII_DOUBLET[0] * (1.0 + z), OII_DOUBLET[1] * (1.0 + z)
    f1, f2 = f / (1.0 + ratio), f * ratio / (1.0 + ratio)
    norm = 1.0 / (sig * _SQRT2PI)
    g = f1 * np.exp(-0.5 * ((x - c1) / sig) ** 2) + f2 * np.exp(-0.5 * ((x - c2) / sig) ** 2)
    return np.asarray(g * norm + p[4] + p[5] * u)


def _fit_doublet(w: _Win, fit: LineFit, cfg: VetoConfig) -> tuple[float, np.ndarray] | None:
    lam = float(fit.wavelength) if np.isfinite(fit.wavelength) else w.lam0
    sep = (OII_DOUBLET[1] - OII_DOUBLET[0]) * lam / OII_REST
    sig_max = max(lam * cfg.doublet_max_sigma_kms / C_KMS, w.dpx)
    lo = np.array([0.0, (w.lam0 - 0.5 * w.hw) / OII_REST - 1.0, 0.5 * w.dpx, cfg.doublet_ratio[0], -np.inf, -np.inf])
    hi = np.array([np.inf, (w.lam0 + 0.5 * w.hw) / OII_REST - 1.0, sig_max, cfg.doublet_ratio[1], np.inf, np.inf])
    fwhm_a = float(fit.fwhm_kms) * lam / C_KMS if np.isfinite(fit.fwhm_kms) else 2.355 * lam * 100.0 / C_KMS
    sig0 = float(np.clip(np.sqrt(max(fwhm_a * fwhm_a - sep * sep, 0.0)) * _FWHM_TO_SIGMA, w.dpx, sig_max))
    f0 = float(fit.line_flux) if np.isfinite(fit.line_flux) and fit.line_flux > 0 else 1.0
    c0 = float(fit.cont0) if np.isfinite(fit.cont0) else 0.0

    def resid(p: np.ndarray) -> np.ndarray:
        return np.asarray((_doublet_model(w.x, p, w.u) - w.r) * w.sw)

    def jac(p: np.ndarray) -> np.ndarray:
        f, z, sig, ratio = p[0], p[1], p[2], p[3]
        norm = 1.0 / (sig * _SQRT2PI)
        out = np.empty((w.x.size, 6))
        out[:, :4] = 0.0
        for rest, share, dshare in (
            (OII_DOUBLET[0], 1.0 / (1.0 + ratio), -1.0 / (1.0 + ratio) ** 2),
            (OII_DOUBLET[1], ratio / (1.0 + ratio), 1.0 / (1.0 + ratio) ** 2),
        ):
            d = w.x - rest * (1.0 + z)
            gauss = norm * np.exp(-0.5 * (d / sig) ** 2)
            out[:, 0] += share * gauss
            out[:, 1] += f * share * gauss * d / sig**2 * rest
            out[:, 2] += f * share * gauss * (d * d / sig**3 - 1.0 / sig)
            out[:, 3] += f * dshare * gauss
        out[:, 4] = 1.0
        out[:, 5] = w.u
        return out * w.sw[:, None]

    best: tuple[float, np.ndarray] | None = None
    # the line's peak as the blue component, the doublet's centre, or the red component
    for rest in (OII_DOUBLET[0], OII_REST, OII_DOUBLET[1]):
        p0 = np.clip(np.array([f0, lam / rest - 1.0, sig0, 1.0, c0, 0.0]), lo, hi)
        try:
            res = optimize.least_squares(resid, p0, jac=jac, bounds=(lo, hi), **_LSQ)
        except (ValueError, np.linalg.LinAlgError):  # pragma: no cover - defensive
            continue
        chi2 = float(2.0 * res.cost)
        if best is None or chi2 < best[0]:
            best = (chi2, np.asarray(res.x, dtype=np.float64))
    return best


def _good_red(
    wave: np.ndarray, r: np.ndarray, iv: np.ndarray, z_oii: float, z_lens: float | None, cfg: VetoConfig
) -> np.ndarray:
    """Good red pixels: finite, ivar > 0, off bright sky lines and (unless the line is the lens's own
    [OII]) off the lens galaxy's own emission lines."""
    good = np.isfinite(r) & np.isfinite(iv) & (iv > 0)
    if wave.size < 2:
        return good
    good &= ~sky_line_mask(wave, full_range=True, half_width_px=cfg.sky_half_px)
    if z_lens is not None and np.isfinite(z_lens) and abs(z_oii - z_lens) * C_KMS / (1.0 + z_lens) > 1000.0:
        rest = np.array([v for v in emission_lines().values() if v > 3000.0])
        good &= ~line_mask(wave, rest * (1.0 + z_lens), cfg.lens_line_kms)
    return good


def _companions(
    wave: np.ndarray, r: np.ndarray, iv: np.ndarray, good: np.ndarray, z_oii: float, sigma_kms: float, cfg: VetoConfig
) -> tuple[dict[str, float], dict[str, float], float, int]:
    """Per-line S/N, noise scales, joint significance and number of covered companion lines."""
    snr: dict[str, float] = {k: np.nan for k in OII_COMPANIONS}
    scales: dict[str, float] = {k: np.nan for k in OII_COMPANIONS}
    if wave.size < 2 or not np.isfinite(z_oii):
        return snr, scales, np.nan, 0
    dpx = np.gradient(wave)
    centres = {k: v * (1.0 + z_oii) for k, v in OII_COMPANIONS.items()}
    sig = {k: max(c * sigma_kms / C_KMS, float(np.interp(c, wave, dpx))) for k, c in centres.items()}
    cores = np.zeros(wave.size, dtype=bool)
    for k, c in centres.items():
        cores |= np.abs(wave - c) <= 3.0 * sig[k]
    covered: list[str] = []
    for k, c in centres.items():
        s = sig[k]
        if c - 2 * s < wave[0] or c + 2 * s > wave[-1]:
            continue
        inner = np.abs(wave - c) <= 2.0 * s
        n_expect = max(int(round(4.0 * s / float(np.interp(c, wave, dpx)))), 1)
        if good[inner].sum() < cfg.min_coverage * max(n_expect, int(inner.sum())):
            continue
        covered.append(k)
    if not covered:
        return snr, scales, np.nan, 0
    # per-line local offset and noise scale, from the local window outside every line core
    offsets = np.zeros(len(covered))
    scl = np.ones(len(covered))
    for j, k in enumerate(covered):
        c = centres[k]
        loc = (np.abs(wave - c) <= c * cfg.local_kms / C_KMS) & good & ~cores
        if loc.sum() >= 10:
            offsets[j] = float(np.median(r[loc]))
            rs = float(
                robust_sigma_rows(
                    ((r[loc] - offsets[j]) * np.sqrt(iv[loc]))[None, :], np.ones((1, int(loc.sum())), dtype=bool)
                )[0]
            )
            if np.isfinite(rs):
                scl[j] = max(1.0, rs)
        scales[k] = float(scl[j])
        fit_px = (np.abs(wave - c) <= 4.0 * sig[k]) & good
        kern = np.exp(-0.5 * ((wave[fit_px] - c) / sig[k]) ** 2)
        wk = iv[fit_px] / scl[j] ** 2
        den = float(np.sum(wk * kern * kern))
        if den > 0:
            snr[k] = float(np.sum((r[fit_px] - offsets[j]) * wk * kern) / np.sqrt(den))
    # joint non-negative fit; a pixel in two line windows takes the offset and scale of the nearer line
    cen = np.array([centres[k] for k in covered])
    sg = np.array([sig[k] for k in covered])
    dist = np.abs(wave[:, None] - cen[None, :])
    inwin = (dist <= 4.0 * sg[None, :]) & good[:, None]
    used = inwin.any(axis=1)
    owner = np.argmin(np.where(inwin, dist, np.inf), axis=1)
    y = np.where(used, r - offsets[owner], 0.0)
    wt = np.where(used, iv / scl[owner] ** 2, 0.0)
    px = np.flatnonzero(used)
    sw = np.sqrt(wt[px])
    design = np.stack([np.exp(-0.5 * ((wave[px] - centres[k]) / sig[k]) ** 2) for k in covered], axis=1)
    amps, rnorm = optimize.nnls(design * sw[:, None], y[px] * sw)
    chi0 = float(np.sum((y[px] * sw) ** 2))
    joint = float(np.sqrt(max(chi0 - float(rnorm) ** 2, 0.0)))
    return snr, scales, joint, len(covered)


def oii_interloper_test(
    lam_obs: float,
    fit: LineFit,
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    red_wave: np.ndarray,
    red_flux: np.ndarray,
    red_ivar: np.ndarray,
    red_continuum: np.ndarray,
    *,
    z_lens: float | None = None,
    mask: np.ndarray | None = None,
    single_chi2: float | None = None,
    config: VetoConfig | None = None,
) -> OIITest:
    """Is the line at ``lam_obs`` [OII] 3726,3729 of an interloper at ``z = lam_obs / 3728.48 - 1``?

    The veto fires only when the [OII] interpretation is consistent with the data:

    (a) **doublet** -- two Gaussians at vacuum 3727.092 and 3729.875 A x (1 + z), common width,
        flux ratio F(3729)/F(3727) within ``config.doublet_ratio``, plus a linear residual, fitted
        around the line (+-``config.window_kms``), is preferred over the skew-normal single line
        (same number of parameters) by at least ``config.doublet_dchi2`` after dividing by
        ``max(1, reduced chi-square)``. Only a resolved doublet (~3 BOSS pixels apart) can do that.
    (b) **companions** -- Hbeta, [OIII] 4960, 5008, Halpha and [NII] 6585 at that z, on the red
        arrays, each where at least ``config.min_coverage`` of the pixels within +-2 sigma are
        good (not masked, not within ``config.sky_half_px`` pixels of a bright sky line of
        :func:`lenscat.spectra.reference.sky_lines`, not on the lens galaxy's own emission lines
        unless z is the lens's), as Gaussians of the candidate's width (the doublet's when it fits
        better than the single line, else FWHM / 2.355 of the fit; at least one pixel). The
        residual of each is offset by the local median and its noise rescaled by the robust
        scatter (at least 1) of the normalised residuals within +-``config.local_kms`` outside the
        line cores. They count when the joint significance (square root of the chi-square
        improvement of a non-negative fit of all their amplitudes) reaches
        ``config.companion_snr`` and one line alone reaches ``config.companion_single_snr``.

    Parameters
    ----------
    lam_obs : float
        Observed wavelength of the line [Angstrom].
    fit : LineFit
        Its skew-normal fit (:func:`fit_line`).
    wave, flux, ivar, continuum : numpy.ndarray
        Window arrays holding the line: (P,) wavelengths [Angstrom, increasing], flux density and
        continuum [1e-17 erg/s/cm^2/Angstrom], inverse variance (0 = masked).
    red_wave, red_flux, red_ivar, red_continuum : numpy.ndarray
        (Q,) the same for the red range read for the companions (any increasing grid, e.g. the
        full 3600-10400 A range).
    z_lens : float, optional
        Redshift of the lens galaxy (its own lines are masked); None or NaN: unknown.
    mask : numpy.ndarray, optional
        (P,) bool, window pixels to leave out of the doublet fit (True = excluded).
    single_chi2 : float, optional
        Chi-square of the best skew-normal fit on the same window (:attr:`SkewTest.chi2_best`);
        refitted when not given.
    config : VetoConfig, optional
        Thresholds (default :class:`VetoConfig`).

    Returns
    -------
    OIITest
    """
    cfg = config or VetoConfig()
    lam = float(lam_obs)
    z_oii = lam / OII_REST - 1.0
    out = OIITest(z_oii=z_oii)
    sigma_kms = float(fit.fwhm_kms) * _FWHM_TO_SIGMA if fit.ok and np.isfinite(fit.fwhm_kms) else 100.0
    w = _window(wave, flux, ivar, continuum, lam, cfg.window_kms, mask) if np.isfinite(lam) else None
    if w is not None and fit.ok:
        dbl = _fit_doublet(w, fit, cfg)
        if single_chi2 is None or not np.isfinite(single_chi2):
            starts = [_start(fit, w, float(fit.alpha)), _start(fit, w, 0.0)]
            single_chi2, _ = _fit_skew(w, starts, -_ALPHA_MAX, _ALPHA_MAX)
        if dbl is not None and np.isfinite(single_chi2):
            chi2_d, p = dbl
            dof = max(w.x.size - 6, 1)
            scale = max(1.0, min(chi2_d, single_chi2) / dof)
            out.doublet_ok = True
            out.doublet_dchi2 = float((single_chi2 - chi2_d) / scale)
            out.doublet_flux = float(p[0])
            out.doublet_ratio = float(p[3])
            lam_d = OII_REST * (1.0 + p[1])
            out.doublet_sigma_kms = float(p[2] / lam_d * C_KMS)
            out.doublet = bool(out.doublet_dchi2 >= cfg.doublet_dchi2 and p[0] > 0)
            if out.doublet_dchi2 > 0:
                out.z_oii = float(p[1])
                sigma_kms = out.doublet_sigma_kms
    rw = np.asarray(red_wave, dtype=np.float64)
    rr = np.asarray(red_flux, dtype=np.float64) - np.asarray(red_continuum, dtype=np.float64)
    riv = np.asarray(red_ivar, dtype=np.float64)
    good = _good_red(rw, rr, riv, out.z_oii, z_lens, cfg)
    rr = np.where(good, rr, 0.0)
    riv = np.where(good, riv, 0.0)
    snr, scales, joint, n_cov = _companions(rw, rr, riv, good, out.z_oii, sigma_kms, cfg)
    out.companion_snr, out.companion_scale, out.companion_joint, out.n_covered = snr, scales, joint, n_cov
    best_single = max((v for v in snr.values() if np.isfinite(v)), default=np.nan)
    out.companions = bool(
        n_cov > 0
        and np.isfinite(joint)
        and joint >= cfg.companion_snr
        and np.isfinite(best_single)
        and best_single >= cfg.companion_single_snr
    )
    out.veto = bool(out.doublet or out.companions)
    return out


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
    """Both per-line vetoes of a Lyman-alpha candidate: skew (:func:`skew_test`) and [OII] interloper
    (:func:`oii_interloper_test`).

    Parameters
    ----------
    wave, flux, ivar, continuum : numpy.ndarray
        (P,) window arrays of the spectrum: wavelengths [Angstrom, increasing], flux density and
        continuum [1e-17 erg/s/cm^2/Angstrom], inverse variance (0 = masked).
    fit : LineFit
        :func:`fit_line` on those arrays.
    red_wave, red_flux, red_ivar, red_continuum : numpy.ndarray
        (Q,) the red (or full-range) arrays of the same spectrum, any increasing grid.
    z_lens : float, optional
        Lens galaxy redshift (None / NaN: unknown).
    mask : numpy.ndarray, optional
        (P,) bool, window pixels to leave out (True = excluded).
    config : VetoConfig, optional
        Thresholds (default :class:`VetoConfig`).

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


@dataclass
class FlaggedBins:
    """Wavelength bins with an improbable number of hits (parallel arrays, one entry per bin).

    Attributes
    ----------
    wave_lo, wave_hi : numpy.ndarray
        Bin edges [Angstrom].
    count : numpy.ndarray
        int64, hits in the bin.
    expected : numpy.ndarray
        Hits expected under the uniform rate.
    p_value : numpy.ndarray
        Binomial tail probability P(X >= count) of the bin (before the trials correction).
    """

    wave_lo: np.ndarray = field(default_factory=lambda: np.zeros(0))
    wave_hi: np.ndarray = field(default_factory=lambda: np.zeros(0))
    count: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    expected: np.ndarray = field(default_factory=lambda: np.zeros(0))
    p_value: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return int(self.count.size)


def wavelength_overdensity(
    wavelengths: np.ndarray,
    n_spectra: int,
    *,
    grid: LogGrid = WINDOW,
    bin_px: int = 2,
    p_threshold: float = 1e-3,
    max_iter: int = 20,
) -> tuple[np.ndarray, FlaggedBins]:
    """Flag hits in wavelength bins holding far more hits than a uniform rate gives.

    Hits (all spectra of a survey) are binned in ``bin_px``-pixel bins of ``grid``, at every
    1-pixel phase of the binning (so a spike on a bin edge is not split). The uniform rate per bin
    is the mean count of the unflagged bins (iterated until stable), and a bin is flagged when the
    binomial tail probability of its count (``n_spectra`` trials, per-spectrum probability
    ``rate / n_spectra``) times the number of bins tested is below ``p_threshold``
    (a Bonferroni-corrected family-wise false-flag probability). Such pile-ups come from airglow,
    sky-subtraction and template residuals rather than from lensed sources.

    Parameters
    ----------
    wavelengths : numpy.ndarray
        (H,) hit wavelengths [Angstrom].
    n_spectra : int
        Spectra searched to get them.
    grid : LogGrid
        The search grid.
    bin_px : int
        Bin width [pixels].
    p_threshold : float
        Family-wise false-flag probability.
    max_iter : int
        Iterations of the rate estimate.

    Returns
    -------
    tuple
        ``(flagged, bins)``: (H,) bool, True for hits in a flagged bin (hits off the grid are never
        flagged), and the :class:`FlaggedBins` (sorted by wavelength).
    """
    lam = np.asarray(wavelengths, dtype=np.float64).ravel()
    flagged = np.zeros(lam.size, dtype=bool)
    bin_px = max(int(bin_px), 1)
    n_spec = max(int(n_spectra), 1)
    if lam.size == 0:
        return flagged, FlaggedBins()
    with np.errstate(divide="ignore", invalid="ignore"):
        pix = np.rint(np.log10(lam) / grid.dlog - grid.k0)
    on = np.isfinite(pix) & (pix >= 0) & (pix < grid.n)
    pix_i = np.where(on, pix, 0).astype(np.int64)
    edges = grid.edges
    n_phase = bin_px
    n_bins_total = sum(int(np.ceil((grid.n + ph) / bin_px)) for ph in range(n_phase))
    alpha = p_threshold / max(n_bins_total, 1)
    lo_l: list[float] = []
    hi_l: list[float] = []
    cnt_l: list[int] = []
    exp_l: list[float] = []
    p_l: list[float] = []
    for ph in range(n_phase):
        nb = int(np.ceil((grid.n + ph) / bin_px))
        b = (pix_i + ph) // bin_px
        counts = np.bincount(b[on], minlength=nb)
        bad = np.zeros(nb, dtype=bool)
        pv = np.ones(nb)
        for _ in range(max(max_iter, 1)):
            mu = float(counts[~bad].mean()) if (~bad).any() else 0.0
            prob = min(mu / n_spec, 1.0)
            pv = stats.binom.sf(counts - 1, n_spec, prob) if prob > 0 else np.where(counts > 0, 0.0, 1.0)
            new = pv < alpha
            if np.array_equal(new, bad):
                break
            bad = new
        flagged |= on & bad[b]
        for j in np.flatnonzero(bad):
            p0 = int(max(int(j) * bin_px - ph, 0))
            p1 = int(min((int(j) + 1) * bin_px - ph, grid.n))
            lo_l.append(float(edges[p0]))
            hi_l.append(float(edges[p1]))
            cnt_l.append(int(counts[j]))
            exp_l.append(mu)
            p_l.append(float(pv[j]))
    order = np.argsort(np.asarray(lo_l, dtype=np.float64), kind="stable")
    table = FlaggedBins(
        wave_lo=np.asarray(lo_l, dtype=np.float64)[order],
        wave_hi=np.asarray(hi_l, dtype=np.float64)[order],
        count=np.asarray(cnt_l, dtype=np.int64)[order],
        expected=np.asarray(exp_l, dtype=np.float64)[order],
        p_value=np.asarray(p_l, dtype=np.float64)[order],
    )
    return flagged, table
