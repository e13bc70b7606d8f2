"""Line fits of matched-filter hits: the skew-normal line model and its bounded least-squares fit.

This module owns the line model of the follow-up of a hit found by
:mod:`lenscat.spectra.matched_filter`, after the BELLS GALLERY recipe (Shu et al. 2016, ApJ 824, 86;
Shu et al. 2016b, ApJ 833, 264):

* :func:`fit_line` -- a skew-normal profile (Azzalini 1985) plus a linear continuum-residual term
  fitted by bounded least squares (``scipy.optimize.least_squares``) around the hit; the source
  redshift assumes Lyman alpha;
* the fit window and constrained refits (``_window``, ``_fit_skew``) shared by the vetoes.

The vetoes that reject false candidates live in :mod:`lenscat.spectra.vetoes` (combined),
:mod:`lenscat.spectra.veto_skew`, :mod:`lenscat.spectra.veto_oii` and
:mod:`lenscat.spectra.veto_types`; the survey-wide wavelength overdensity in
:mod:`lenscat.spectra.overdensity`.

Sign convention: the skew-normal shape ``alpha`` is defined on increasing wavelength, so
``alpha > 0`` is a tail to the red (longer wavelengths; positive third moment), as Lyman alpha
shows, and ``alpha < 0`` a tail to the blue.

Flux densities are in 1e-17 erg/s/cm^2/Angstrom, line fluxes in 1e-17 erg/s/cm^2, wavelengths in
vacuum Angstrom, velocities in km/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, special

from lenscat.spectra.grid import C_KMS, LYA

__all__ = ["OII_REST", "LineFit", "fit_line", "skew_normal_profile"]

#: rest wavelength of the [OII] 3726, 3729 doublet (mean of the vacuum components) [Angstrom]
OII_REST = 3728.48

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


#: bound on |alpha| in the skew-normal fits (as :func:`fit_line`)
_ALPHA_MAX = 20.0
#: Gaussian sigma per FWHM
_FWHM_TO_SIGMA = float(1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0))))
#: least-squares settings of the veto refits (as :func:`fit_line`)
_LSQ: dict[str, Any] = {"method": "trf", "x_scale": "jac", "max_nfev": 2000}


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
