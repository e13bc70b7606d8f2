"""Per-hit fit of a background [OII] doublet (:func:`fit_doublet`) and its companion lines (:func:`companion_snr`).

Two Gaussians (common velocity width, ratio ``F3729 / F3727`` free in [0.3, 1.5]) plus a linear
residual continuum within +-3,000 km/s, bounded least squares, compared with a single Gaussian over
the same pixels; see :mod:`lenscat.spectra.oii` (section "Per-hit fit").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from lenscat.spectra.grid import C_KMS
from lenscat.spectra.oii import HBETA, OII_MEAN, OIII_4959, OIII_5007, OIII_RATIO, _edges, _gauss, doublet_profile

__all__ = ["DoubletFit", "companion_snr", "fit_doublet"]


# --- single-line measurements ---------------------------------------------------------------------
def _line_measure(
    wave: np.ndarray,
    r: np.ndarray,
    w: np.ndarray,
    centres: list[tuple[float, float]],
    sigma_kms: float,
    min_coverage: float = 0.7,
    cover_nsigma: float = 2.0,
) -> tuple[float, float]:
    """Flux and its error of a fixed template (sum of Gaussians ``(lambda, weight)``) on residuals ``r``.

    Returns (NaN, NaN) when the template's main line is not covered (``min_coverage`` of its pixels
    within +-``cover_nsigma`` sigma unmasked, and inside the grid).
    """
    lam0 = centres[0][0]
    sig0 = lam0 * sigma_kms / C_KMS
    if not (wave[0] <= lam0 - cover_nsigma * sig0 and lam0 + cover_nsigma * sig0 <= wave[-1]):
        return np.nan, np.nan
    inner = np.abs(wave - lam0) <= cover_nsigma * sig0
    step = float(np.interp(lam0, wave, np.gradient(wave)))
    need = max(int(round(2.0 * cover_nsigma * sig0 / step)), int(inner.sum()), 1)
    if (w[inner] > 0).sum() < min_coverage * need or (w[inner] > 0).sum() == 0:
        return np.nan, np.nan
    k = np.zeros_like(wave)
    for lam, wt in centres:
        k += wt * _gauss(wave, lam, 1.0, sigma_kms)
    den = float(np.sum(w * k * k))
    if den <= 0:
        return np.nan, np.nan
    return float(np.sum(r * w * k) / den), float(1.0 / np.sqrt(den))


def companion_snr(wave: np.ndarray, r: np.ndarray, w: np.ndarray, z: float, sigma_kms: float) -> dict[str, float]:
    """S/N and fluxes of Hbeta and [OIII] 4959+5007 (1:2.98) at source redshift ``z``.

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) wavelengths [Angstrom].
    r, w : numpy.ndarray
        (P,) residual [1e-17 erg/s/cm^2/A] and search weights of one spectrum (from
        :func:`~lenscat.spectra.oii.prepare`).
    z : float
        Source redshift.
    sigma_kms : float
        Gaussian sigma of the lines [km/s].

    Returns
    -------
    dict
        ``hbeta_snr``, ``hbeta_flux``, ``oiii_snr``, ``oiii_flux`` (total 4959+5007), NaN where not
        covered; ``companion_snr``: the larger covered S/N (NaN when neither is covered).
    """
    out: dict[str, float] = {}
    hb, hb_e = _line_measure(wave, r, w, [(HBETA * (1 + z), 1.0)], sigma_kms)
    o3, o3_e = _line_measure(
        wave,
        r,
        w,
        [(OIII_5007 * (1 + z), OIII_RATIO / (1 + OIII_RATIO)), (OIII_4959 * (1 + z), 1.0 / (1 + OIII_RATIO))],
        sigma_kms,
    )
    out["hbeta_flux"], out["hbeta_snr"] = hb, hb / hb_e if np.isfinite(hb_e) else np.nan
    out["oiii_flux"], out["oiii_snr"] = o3, o3 / o3_e if np.isfinite(o3_e) else np.nan
    vals = [v for v in (out["hbeta_snr"], out["oiii_snr"]) if np.isfinite(v)]
    out["companion_snr"] = max(vals) if vals else np.nan
    return out


# --- per-hit fit ------------------------------------------------------------------------------------
@dataclass
class DoubletFit:
    """Doublet fit of one hit (NaN values and ``ok = False`` when it failed).

    Attributes
    ----------
    z, z_err : float
        Source redshift and error.
    wavelength, wavelength_err : float
        Observed mean doublet wavelength ``OII_MEAN (1 + z)`` and error [Angstrom].
    line_flux, line_flux_err : float
        Total doublet flux and error [1e-17 erg/s/cm^2].
    sigma_kms, sigma_kms_err : float
        Gaussian sigma of each component [km/s].
    ratio, ratio_err : float
        ``F3729 / F3727`` (bounded to [0.3, 1.5]).
    chi2, redchi2 : float
        chi^2 and reduced chi^2 of the doublet fit.
    single_chi2, single_sigma_kms, single_wavelength : float
        chi^2, sigma [km/s] and centre [Angstrom] of the single-Gaussian fit of the same pixels.
    n_pix : int
        Pixels fitted.
    ok : bool
        The doublet fit converged to finite values.
    """

    z: float = np.nan
    z_err: float = np.nan
    wavelength: float = np.nan
    wavelength_err: float = np.nan
    line_flux: float = np.nan
    line_flux_err: float = np.nan
    sigma_kms: float = np.nan
    sigma_kms_err: float = np.nan
    ratio: float = np.nan
    ratio_err: float = np.nan
    chi2: float = np.nan
    redchi2: float = np.nan
    single_chi2: float = np.nan
    single_sigma_kms: float = np.nan
    single_wavelength: float = np.nan
    n_pix: int = 0
    ok: bool = False

    @property
    def snr(self) -> float:
        """Fitted flux over its error."""
        return float(self.line_flux / self.line_flux_err) if self.line_flux_err > 0 else np.nan

    @property
    def delta_chi2(self) -> float:
        """``single_chi2 - chi2``: > 0 when the doublet fits better."""
        return float(self.single_chi2 - self.chi2)

    @property
    def fwhm_kms(self) -> float:
        """FWHM of each component [km/s]."""
        return float(self.sigma_kms * 2.0 * np.sqrt(2.0 * np.log(2.0)))


def _errors(res: optimize.OptimizeResult, dof: int) -> np.ndarray:
    try:
        jtj = res.jac.T @ res.jac
        cov = np.linalg.pinv(jtj)
    except (np.linalg.LinAlgError, ValueError):
        return np.full(res.x.size, np.nan)
    red = float(2.0 * res.cost / max(dof, 1))
    return np.sqrt(np.clip(np.diag(cov), 0, None) * max(1.0, red))


def fit_doublet(
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    z_guess: float,
    *,
    window_kms: float = 3000.0,
    sigma_guess_kms: float = 80.0,
    mask: np.ndarray | None = None,
) -> DoubletFit:
    """Fit an [OII] doublet plus a linear residual continuum around a hit; compare a single Gaussian.

    The residual within +-``window_kms`` of ``OII_MEAN (1 + z_guess)`` is fitted by two Gaussians of
    common velocity sigma (3727.092, 3729.875 A at ``1 + z``), total flux ``F >= 0``, ratio
    ``F3729 / F3727`` in [0.3, 1.5], sigma from 0.7 px to 500 km/s, ``z`` within half the window of the
    guess, plus ``c0 + c1 u`` (bounded trust-region least squares from two ratios, keeping the
    better). Errors from the Jacobian, the covariance scaled by ``max(1, redchi2)``. A single
    Gaussian with a linear continuum is fitted to the same pixels.

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) wavelengths [Angstrom].
    flux, continuum : numpy.ndarray
        (P,) flux density and continuum [1e-17 erg/s/cm^2/Angstrom].
    ivar : numpy.ndarray
        (P,) inverse variance; 0 = masked.
    z_guess : float
        Starting redshift (the filter's peak).
    window_kms : float
        Half-width of the fitted window [km/s].
    sigma_guess_kms : float
        Starting sigma [km/s].
    mask : numpy.ndarray, optional
        (P,) bool, pixels to leave out (True = excluded).

    Returns
    -------
    DoubletFit
    """
    wave = np.asarray(wave, dtype=np.float64)
    r_all = np.asarray(flux, dtype=np.float64) - np.asarray(continuum, dtype=np.float64)
    iv_all = np.asarray(ivar, dtype=np.float64)
    lam0 = OII_MEAN * (1.0 + float(z_guess))
    hw = lam0 * window_kms / C_KMS
    sel = (np.abs(wave - lam0) <= hw) & np.isfinite(r_all) & np.isfinite(iv_all) & (iv_all > 0)
    if mask is not None:
        sel &= ~np.asarray(mask, dtype=bool)
    n = int(sel.sum())
    if n < 12 or not np.isfinite(lam0):
        return DoubletFit(n_pix=n)
    x, r, sw = wave[sel], r_all[sel], np.sqrt(iv_all[sel])
    e_lo, e_hi = _edges(wave)
    ed = (e_lo[sel], e_hi[sel])
    u = (x - lam0) / hw
    dpx = float(np.median(np.diff(wave)))
    z0 = float(z_guess)
    dz = 0.5 * window_kms / C_KMS * (1 + z0)

    def model_d(q: np.ndarray) -> np.ndarray:
        return np.asarray(doublet_profile(x, q[1], q[0], q[2], q[3], edges=ed) + q[4] + q[5] * u)

    def resid_d(q: np.ndarray) -> np.ndarray:
        return np.asarray((model_d(q) - r) * sw)

    near = np.abs(x - lam0) <= 3.0 * lam0 * sigma_guess_kms / C_KMS
    f0 = float(np.clip(np.sum(r[near]) * dpx, 1e-3, None)) if near.any() else 1.0
    sig_min = 0.7 * dpx / lam0 * C_KMS  # 0.7 px: below the instrumental resolution of SDSS/BOSS/DESI
    lo = np.array([0.0, z0 - dz, sig_min, 0.3, -np.inf, -np.inf])
    hi = np.array([np.inf, z0 + dz, 500.0, 1.5, np.inf, np.inf])
    best: optimize.OptimizeResult | None = None
    for q_ratio in (0.8, 1.3):
        q0 = np.clip(np.array([f0, z0, sigma_guess_kms, q_ratio, 0.0, 0.0]), lo, hi)
        try:
            res = optimize.least_squares(resid_d, q0, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=2000)
        except (ValueError, np.linalg.LinAlgError):  # pragma: no cover - defensive
            continue
        if best is None or res.cost < best.cost:
            best = res
    if best is None or not np.all(np.isfinite(best.x)):
        return DoubletFit(n_pix=n)
    err = _errors(best, n - 6)
    chi2 = float(2.0 * best.cost)

    def resid_s(q: np.ndarray) -> np.ndarray:
        return np.asarray((_gauss(x, q[1], q[0], q[2], ed) + q[3] + q[4] * u - r) * sw)

    lo_s = np.array([0.0, lam0 - 0.5 * hw, 0.2 * dpx / lam0 * C_KMS, -np.inf, -np.inf])
    hi_s = np.array([np.inf, lam0 + 0.5 * hw, 800.0, np.inf, np.inf])
    single = np.nan, np.nan, np.nan
    best_s: optimize.OptimizeResult | None = None
    for sg in (40.0, sigma_guess_kms + 60.0):
        q0 = np.clip(np.array([f0, float(OII_MEAN * (1 + best.x[1])), sg, 0.0, 0.0]), lo_s, hi_s)
        try:
            res_s = optimize.least_squares(resid_s, q0, bounds=(lo_s, hi_s), method="trf", x_scale="jac", max_nfev=2000)
        except (ValueError, np.linalg.LinAlgError):  # pragma: no cover - defensive
            continue
        if best_s is None or res_s.cost < best_s.cost:
            best_s = res_s
    if best_s is not None:
        single = float(2.0 * best_s.cost), float(best_s.x[2]), float(best_s.x[1])
    z = float(best.x[1])
    return DoubletFit(
        z=z,
        z_err=float(err[1]),
        wavelength=OII_MEAN * (1 + z),
        wavelength_err=OII_MEAN * float(err[1]),
        line_flux=float(best.x[0]),
        line_flux_err=float(err[0]),
        sigma_kms=float(best.x[2]),
        sigma_kms_err=float(err[2]),
        ratio=float(best.x[3]),
        ratio_err=float(err[3]),
        chi2=chi2,
        redchi2=chi2 / max(n - 6, 1),
        single_chi2=single[0],
        single_sigma_kms=single[1],
        single_wavelength=single[2],
        n_pix=n,
        ok=bool(np.isfinite(err[0])),
    )
