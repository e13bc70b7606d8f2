"""Line fits of matched-filter hits and the vetoes that reject false candidates.

This module owns the follow-up of a hit found by :mod:`lenscat.spectra.matched_filter`, after the
BELLS GALLERY recipe (Shu et al. 2016, ApJ 824, 86; Shu et al. 2016b, ApJ 833, 264):

* :func:`fit_line` -- a skew-normal profile (Azzalini 1985) plus a linear continuum-residual term
  fitted by bounded least squares (``scipy.optimize.least_squares``) around the hit; the source
  redshift assumes Lyman alpha;
* :func:`oii_interloper` -- the [OII]-interloper test: were the line [OII] 3727 of a foreground
  galaxy, Hbeta, [OIII] 5007 and Halpha would appear redward (at x1.3042, x1.3432, x1.7607);
* :func:`negative_skew` -- Lyman alpha of a high-redshift galaxy is red-skewed (a red tail, IGM
  absorption of the blue side): a blue-skewed line is suspect;
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

import numpy as np
from scipy import optimize, special, stats

from lenscat.spectra.continuum import robust_sigma_rows
from lenscat.spectra.grid import C_KMS, LYA, WINDOW, LogGrid

__all__ = [
    "INTERLOPER_LINES",
    "OII_REST",
    "FlaggedBins",
    "LineFit",
    "fit_line",
    "negative_skew",
    "oii_interloper",
    "skew_normal_profile",
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
    return float((4.0 - np.pi) / 2.0 * m ** 3 / (1.0 - m * m) ** 1.5)


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


def fit_line(wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray, continuum: np.ndarray,
             centre_guess: float, *, window_kms: float = 3000.0, sigma_guess_kms: float = 150.0,
             mask: np.ndarray | None = None) -> LineFit:
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

    om0 = lam0 * sigma_guess_kms / C_KMS
    near = np.abs(x - lam0) <= 3.0 * om0
    f0 = float(np.clip(np.sum(r[near]) * dpx, 1e-3, None)) if near.any() else 1.0
    lo = np.array([0.0, lam0 - 0.5 * hw, 0.3 * dpx, -20.0, -np.inf, -np.inf])
    hi = np.array([np.inf, lam0 + 0.5 * hw, max(lam0 * 1500.0 / C_KMS, 0.6 * dpx), 20.0, np.inf, np.inf])
    best: optimize.OptimizeResult | None = None
    for a0 in (0.0, 2.0, -2.0):
        q0 = np.clip(np.array([f0, lam0, om0, a0, 0.0, 0.0]), lo, hi)
        try:
            res = optimize.least_squares(resid, q0, bounds=(lo, hi), method="trf", x_scale="jac",
                                         max_nfev=2000)
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
    vals = [out.wavelength, out.wavelength_err, out.line_flux, out.line_flux_err, out.fwhm_kms,
            out.alpha, out.redchi2, out.snr]
    out.ok = bool(best.status > 0 and np.all(np.isfinite(vals)) and flux_err > 0)
    return out


def negative_skew(fit: LineFit, *, n_sigma: float = 0.0) -> bool:
    """True when the fitted line is blue-skewed (``alpha < 0``), unlike Lyman alpha.

    Parameters
    ----------
    fit : LineFit
        Result of :func:`fit_line`.
    n_sigma : float
        Require ``alpha + n_sigma * alpha_err < 0`` (0: the sign alone, as the recipe).

    Returns
    -------
    bool
        False when the fit is not ``ok`` (no evidence either way).
    """
    if not fit.ok or not np.isfinite(fit.alpha):
        return False
    err = fit.alpha_err if np.isfinite(fit.alpha_err) else 0.0
    return bool(fit.alpha + n_sigma * err < 0.0)


def oii_interloper(lam_obs: float, veto_wave: np.ndarray, veto_flux: np.ndarray,
                   veto_ivar: np.ndarray, veto_continuum: np.ndarray, *, threshold: float = 3.0,
                   sigma_kms: float = 150.0, min_coverage: float = 0.7,
                   rescale_ivar: bool = True) -> tuple[bool, dict[str, float]]:
    """Does the red spectrum show the lines of an [OII] 3727 interloper at ``lam_obs``?

    At each of Hbeta, [OIII] 5007 and Halpha (``lam_obs`` x :data:`INTERLOPER_LINES`) the residual
    ``flux - continuum`` is matched to a unit-peak Gaussian of fixed width ``sigma_kms`` centred
    exactly there: ``S/N = sum(r w k) / sqrt(sum(w k^2))`` over pixels within +-4 sigma. A line
    counts as covered when at least ``min_coverage`` of the pixels within +-2 sigma are unmasked
    and inside the grid. With ``rescale_ivar`` the inverse variance is first divided by the squared
    robust scatter of the normalised residuals over the whole veto spectrum (as the matched filter
    does).

    Parameters
    ----------
    lam_obs : float
        Observed wavelength of the candidate line [Angstrom].
    veto_wave : numpy.ndarray
        (Q,) wavelengths of the red ("veto") grid [Angstrom], increasing.
    veto_flux, veto_ivar, veto_continuum : numpy.ndarray
        (Q,) flux density, inverse variance (0 = masked) and continuum there
        [1e-17 erg/s/cm^2/Angstrom].
    threshold : float
        S/N at or above which a line vetoes.
    sigma_kms : float
        Gaussian sigma of the test lines [km/s].
    min_coverage : float
        Minimum unmasked fraction within +-2 sigma.
    rescale_ivar : bool
        Rescale the inverse variance by the robust residual scatter.

    Returns
    -------
    tuple
        ``(flag, snr)``: flag is True when any covered line has S/N >= threshold; ``snr`` maps
        ``'hbeta'``, ``'oiii_5007'``, ``'halpha'`` to their S/N (NaN where not covered).
    """
    wv = np.asarray(veto_wave, dtype=np.float64)
    r = np.asarray(veto_flux, dtype=np.float64) - np.asarray(veto_continuum, dtype=np.float64)
    iv = np.asarray(veto_ivar, dtype=np.float64)
    good = np.isfinite(r) & np.isfinite(iv) & (iv > 0)
    r = np.where(good, r, 0.0)
    w = np.where(good, iv, 0.0)
    if rescale_ivar and good.sum() >= 20:
        s = float(robust_sigma_rows((r * np.sqrt(w))[None, :], good[None, :])[0])
        if np.isfinite(s) and s > 0:
            w = w / (s * s)
    snrs: dict[str, float] = {}
    dlam = np.gradient(wv) if wv.size > 1 else np.ones_like(wv)
    for name, ratio in INTERLOPER_LINES.items():
        lam = float(lam_obs) * ratio
        sig = lam * sigma_kms / C_KMS
        snrs[name] = np.nan
        if wv.size < 2 or not np.isfinite(lam) or lam - 2 * sig < wv[0] or lam + 2 * sig > wv[-1]:
            continue
        inner = np.abs(wv - lam) <= 2.0 * sig
        n_expect = max(int(round(4.0 * sig / float(np.interp(lam, wv, dlam)))), 1)
        if inner.sum() == 0 or good[inner].sum() < min_coverage * max(n_expect, int(inner.sum())):
            continue
        win = np.abs(wv - lam) <= 4.0 * sig
        k = np.exp(-0.5 * ((wv[win] - lam) / sig) ** 2)
        den = float(np.sum(w[win] * k * k))
        if den <= 0:
            continue
        snrs[name] = float(np.sum(r[win] * w[win] * k) / np.sqrt(den))
    flag = any(np.isfinite(v) and v >= threshold for v in snrs.values())
    return bool(flag), snrs


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


def wavelength_overdensity(wavelengths: np.ndarray, n_spectra: int, *, grid: LogGrid = WINDOW,
                           bin_px: int = 2, p_threshold: float = 1e-3,
                           max_iter: int = 20) -> tuple[np.ndarray, FlaggedBins]:
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
