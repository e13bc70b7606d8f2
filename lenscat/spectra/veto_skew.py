"""The line-shape veto of a Lyman-alpha candidate (:func:`skew_test`).

Lyman alpha of a high-redshift galaxy is red-skewed (a red tail, IGM absorption of the blue side).
The shape is measured with its uncertainty by profile likelihood; a line is vetoed only when it is
*significantly* blue-skewed, or bright, resolved and symmetric where a red tail is excluded -- never
for a red tail at modest S/N.

Sign convention: the skew-normal shape ``alpha`` is defined on increasing wavelength, so
``alpha > 0`` is a tail to the red.
"""

from __future__ import annotations

import numpy as np

from lenscat.spectra.grid import C_KMS
from lenscat.spectra.linefit import _ALPHA_MAX, LineFit, _fit_skew, _start, _window
from lenscat.spectra.veto_types import SkewTest, VetoConfig

__all__ = ["skew_test"]

#: fixed shapes that trace the chi^2 profile in alpha (besides the constrained optima)
_ALPHA_PROFILE: tuple[float, ...] = (-6.0, -2.0, -0.7, 0.7, 2.0, 6.0)


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
    :func:`~lenscat.spectra.linefit.fit_line` is refitted with the shape constrained to ``alpha >= 0`` (a red tail, as
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
        The line fit (:func:`~lenscat.spectra.linefit.fit_line`) on the same arrays.
    mask : numpy.ndarray, optional
        (P,) bool, extra pixels to leave out (True = excluded).
    config : VetoConfig, optional
        Thresholds (default :class:`~lenscat.spectra.veto_types.VetoConfig`).

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
