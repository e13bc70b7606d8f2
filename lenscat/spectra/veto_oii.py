"""The [OII] interloper veto of a Lyman-alpha candidate (:func:`oii_interloper_test`).

Were the line [OII] 3726,3729 of a foreground galaxy, the doublet would be resolved and Hbeta,
[OIII] 4960, 5007, Halpha and [NII] 6585 would appear redward; the veto fires only when the doublet
fits better than a single line or the companions are jointly significant (local noise, sky lines and
the lens's own lines masked).
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

from lenscat.spectra.continuum import robust_sigma_rows
from lenscat.spectra.grid import C_KMS
from lenscat.spectra.linefit import (
    _ALPHA_MAX,
    _FWHM_TO_SIGMA,
    _LSQ,
    _SQRT2PI,
    OII_REST,
    LineFit,
    _fit_skew,
    _start,
    _Win,
    _window,
)
from lenscat.spectra.masks import line_mask, sky_line_mask
from lenscat.spectra.reference import emission_lines
from lenscat.spectra.veto_types import OII_COMPANIONS, OII_DOUBLET, OIITest, VetoConfig

__all__ = ["oii_interloper_test"]


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
        Its skew-normal fit (:func:`~lenscat.spectra.linefit.fit_line`).
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
        Chi-square of the best skew-normal fit on the same window
        (:attr:`~lenscat.spectra.veto_types.SkewTest.chi2_best`); refitted when not given.
    config : VetoConfig, optional
        Thresholds (default :class:`~lenscat.spectra.veto_types.VetoConfig`).

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
