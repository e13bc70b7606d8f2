"""Synthetic BOSS early-type spectra with and without background Lyman-alpha lines.

The training and test sets of the spectroscopic lens search follow Li et al. (2018, MNRAS 482,
313; "Using deep residual networks to search for galaxy-Lyα emitter lens candidates based on
spectroscopic selection"): foreground early-type galaxy spectra in the 3800-5000 A window, with
a skew-normal Lyα emission line from a source at 2 < z_s < 3 added to a minority of them. Their
priors: line centre uniform over the window, FWHM ~ N(300, 200) km/s with FWHM > 0.5 A, peak flux
density > 1.5e-17 erg/s/cm^2/A, red-skewed profile; they report 93.6 % completeness on such
synthetic lines.

Units everywhere: wavelength [Angstrom, vacuum], flux density [1e-17 erg/s/cm^2/A], integrated
line flux [1e-17 erg/s/cm^2], inverse variance [(1e-17 erg/s/cm^2/A)^-2], velocity [km/s].

The pieces:

* :func:`lya_profile` (this module) -- a skew-normal line, pixel-integrated, parametrised by its
  peak wavelength, integrated flux, true FWHM and shape parameter;
* :func:`~lenscat.spectra.synth_priors.draw_lya_params` -- Li et al.'s priors (and the matched-S/N
  priors, :mod:`lenscat.spectra.synth_priors`);
* :func:`inject_lines` (this module) -- add lines to real or synthetic spectra; :func:`matched_snr`;
* :func:`~lenscat.spectra.synth_training.make_training_set` -- a
  :class:`~lenscat.spectra.synth_training.SyntheticSet` of galaxies built from the SDSS eigenspectra,
  real SDSS sky, photon + read noise (or real continuum-subtracted residuals;
  :mod:`lenscat.spectra.synth_galaxies`) and ~1 line in 16 spectra, reproducible from one seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np
from scipy import special

from lenscat.errors import LenscatError
from lenscat.spectra.grid import C_KMS

__all__ = ["inject_lines", "lya_profile", "matched_snr", "pixel_edges", "skewnorm_shape"]

#: shape parameters covered by the skew-normal tables (values outside are clipped)
SKEW_LIMIT = 10.0


# --------------------------------------------------------------------------------------------
# the skew-normal line profile
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _skew_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(alpha, mode, FWHM, peak) of the standard skew-normal (location 0, scale 1) per alpha."""
    alpha = np.linspace(-SKEW_LIMIT, SKEW_LIMIT, 801)
    x = np.linspace(-5.0, 5.0, 20001)
    dx = x[1] - x[0]
    mode = np.empty_like(alpha)
    fwhm = np.empty_like(alpha)
    peak = np.empty_like(alpha)
    for i, a in enumerate(alpha):
        pdf = 2.0 * np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi) * special.ndtr(a * x)
        j = int(np.argmax(pdf))
        # parabolic refinement of the maximum
        y0, y1, y2 = pdf[j - 1], pdf[j], pdf[j + 1]
        den = y0 - 2.0 * y1 + y2
        off = 0.5 * (y0 - y2) / den if den != 0 else 0.0
        mode[i] = x[j] + off * dx
        peak[i] = y1 - 0.25 * (y0 - y2) * off
        half = 0.5 * peak[i]
        above = np.flatnonzero(pdf >= half)
        lo, hi = above[0], above[-1]
        xl = x[lo - 1] + (half - pdf[lo - 1]) / (pdf[lo] - pdf[lo - 1]) * dx
        xh = x[hi] + (pdf[hi] - half) / (pdf[hi] - pdf[hi + 1]) * dx
        fwhm[i] = xh - xl
    return alpha, mode, fwhm, peak


def skewnorm_shape(skew: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mode, FWHM and peak value of the standard skew-normal density with shape ``skew``.

    The standard skew-normal is ``g(x) = 2 phi(x) Phi(skew * x)`` (location 0, scale 1); the
    values are interpolated from a table (relative accuracy ~1e-4), ``|skew|`` clipped to
    :data:`SKEW_LIMIT`.

    Returns
    -------
    mode, fwhm, peak : numpy.ndarray
        ``argmax g``, full width at half maximum of ``g`` and ``max g``, shaped like ``skew``.
    """
    a_tab, m_tab, w_tab, p_tab = _skew_tables()
    a = np.clip(np.asarray(skew, dtype=np.float64), -SKEW_LIMIT, SKEW_LIMIT)
    return np.interp(a, a_tab, m_tab), np.interp(a, a_tab, w_tab), np.interp(a, a_tab, p_tab)


def pixel_edges(wave: np.ndarray) -> np.ndarray:
    """Pixel edges [Angstrom] of increasing pixel centres ``wave``: midpoints, ends mirrored."""
    w = np.asarray(wave, dtype=np.float64)
    if w.ndim != 1 or w.size < 2 or np.any(np.diff(w) <= 0):
        raise LenscatError("wavelengths must be a 1-D increasing array of at least 2 pixels")
    mid = 0.5 * (w[1:] + w[:-1])
    return np.concatenate([[2.0 * w[0] - mid[0]], mid, [2.0 * w[-1] - mid[-1]]])


def _skew_params(
    centre: np.ndarray, fwhm_kms: np.ndarray, skew: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(location xi, scale omega [A], clipped shape, standard peak) of lines given by their peak."""
    a = np.clip(skew, -SKEW_LIMIT, SKEW_LIMIT)
    mode, width, peak = skewnorm_shape(a)
    omega = centre * fwhm_kms / C_KMS / width
    xi = centre - omega * mode
    return xi, omega, a, peak


def lya_profile(
    wave: np.ndarray,
    centre: np.ndarray | float,
    line_flux: np.ndarray | float,
    fwhm_kms: np.ndarray | float,
    skew: np.ndarray | float,
    *,
    integrate: bool = True,
) -> np.ndarray:
    """A skew-normal emission line: flux density on the pixels ``wave``.

    The profile is ``F / omega * g((lambda - xi) / omega)`` with the standard skew-normal
    ``g(x) = 2 phi(x) Phi(skew * x)``. It is parametrised so that ``centre`` is its **peak
    wavelength** (the mode), ``fwhm_kms`` its **true full width at half maximum** (of the skewed
    profile, not of the underlying Gaussian): ``FWHM [A] = centre * fwhm_kms / c``, and ``F`` its
    integral. Positive ``skew`` gives a red (long-wavelength) tail, as for Lyα at high redshift;
    ``skew = 0`` is a Gaussian.

    Parameters
    ----------
    wave : numpy.ndarray, shape (P,)
        Pixel centres [Angstrom], increasing.
    centre : float or array, shape (N,)
        Peak wavelength [Angstrom].
    line_flux : float or array, shape (N,)
        Integrated line flux ``F`` [1e-17 erg/s/cm^2].
    fwhm_kms : float or array, shape (N,)
        True FWHM of the profile [km/s], > 0.
    skew : float or array, shape (N,)
        Skew-normal shape parameter (dimensionless; clipped to +-:data:`SKEW_LIMIT`).
    integrate : bool
        True (default): each pixel gets the profile averaged over the pixel (exact, from the
        skew-normal CDF; edges from :func:`pixel_edges`), so ``sum(profile * diff(edges)) = F``
        up to flux beyond the ends, even for lines narrower than a pixel. False: the density
        sampled at the pixel centres.

    Returns
    -------
    numpy.ndarray, shape (P,) or (N, P), float64
        Flux density [1e-17 erg/s/cm^2/A]; (P,) when all parameters are scalars.
    """
    w = np.asarray(wave, dtype=np.float64)
    scalar = all(np.ndim(v) == 0 for v in (centre, line_flux, fwhm_kms, skew))
    c, f, v, s = (np.atleast_1d(np.asarray(q, dtype=np.float64)) for q in (centre, line_flux, fwhm_kms, skew))
    c, f, v, s = np.broadcast_arrays(c, f, v, s)
    if c.ndim != 1:
        raise LenscatError("line parameters must be scalars or 1-D arrays")
    if np.any(~(v > 0)):
        raise LenscatError("line FWHM must be positive")
    xi, omega, a, _ = _skew_params(c, v, s)
    if integrate:
        e = pixel_edges(w)
        x = (e[None, :] - xi[:, None]) / omega[:, None]
        cdf = special.ndtr(x) - 2.0 * special.owens_t(x, a[:, None])
        out = f[:, None] * np.diff(cdf, axis=1) / np.diff(e)[None, :]
    else:
        x = (w[None, :] - xi[:, None]) / omega[:, None]
        pdf = 2.0 * np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi) * special.ndtr(a[:, None] * x)
        out = f[:, None] * pdf / omega[:, None]
    return np.asarray(out[0] if scalar else out)


# --------------------------------------------------------------------------------------------
# matched S/N and line injection
# --------------------------------------------------------------------------------------------


def matched_snr(line: np.ndarray, ivar: np.ndarray) -> np.ndarray:
    """Matched-filter (optimal) S/N of known lines: ``sqrt(sum(line^2 ivar))`` per row.

    Parameters
    ----------
    line : numpy.ndarray, shape (N, P) or (P,)
        Line flux density [1e-17 erg/s/cm^2/A] on the pixels.
    ivar : numpy.ndarray, shape (N, P) or (P,)
        Inverse variance of the spectrum; 0 (masked) pixels do not count.

    Returns
    -------
    numpy.ndarray, shape (N,) or scalar array
        The S/N a filter of exactly the line's shape reaches (dimensionless).
    """
    ln = np.asarray(line, dtype=np.float64)
    iv = np.asarray(ivar, dtype=np.float64)
    return np.asarray(np.sqrt(np.sum(ln * ln * np.where(np.isfinite(iv) & (iv > 0), iv, 0.0), axis=-1)))


def _matched_line_flux(
    unit: np.ndarray, gain: np.ndarray, shape_var: np.ndarray, inv_t: np.ndarray, good: np.ndarray, target: np.ndarray
) -> np.ndarray:
    """Line flux F [1e-17 erg/s/cm^2] per row with ``F sqrt(sum(u^2 / var(F))) = target`` over good pixels.

    ``var(F) = gain (shape_var + F u inv_t)`` includes the line's photon noise; ``F S(F)`` is
    increasing in F, and the fixed-point iteration from the noiseless-line value converges to the
    root from below (to 1e-12 relative, in a few steps: the line's photon noise is a small
    correction). A line mostly masked is scaled as if none were masked.
    """
    u2 = unit * unit
    # a line mostly on masked pixels (less than a quarter of its noiseless S/N^2 left) would need
    # an absurd flux to reach the target on its visible tail: it is scaled as if nothing were
    # masked (its recorded matched S/N is then lower than drawn: a rare, partly hidden positive)
    w0 = u2 / (gain[:, None] * shape_var)
    hidden = ~(np.sum(np.where(good, w0, 0.0), axis=1) >= 0.25 * np.sum(w0, axis=1))
    good = good | hidden[:, None]

    def s2(f: np.ndarray) -> np.ndarray:
        var = gain[:, None] * (shape_var + f[:, None] * np.clip(unit, 0.0, None) * inv_t)
        return np.asarray(np.sum(np.where(good, u2 / var, 0.0), axis=1))

    f = target / np.sqrt(s2(np.zeros(len(target))))
    for _ in range(200):
        new = target / np.sqrt(s2(f))
        done = np.all(np.abs(new - f) <= 1e-12 * np.abs(new))
        f = new
        if done:
            break
    return np.asarray(f)


def inject_lines(
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    params: Mapping[str, np.ndarray],
    *,
    variance_per_flux: np.ndarray | float | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Add skew-normal lines (:func:`lya_profile`) to spectra.

    Parameters
    ----------
    wave : numpy.ndarray, shape (P,)
        Pixel centres [Angstrom].
    flux, ivar : numpy.ndarray, shape (N, P)
        Flux density [1e-17 erg/s/cm^2/A] and its inverse variance (not modified).
    params : mapping
        ``centre``, ``line_flux``, ``fwhm_kms`` and ``skew``, each shape (N,) (as returned by
        :func:`~lenscat.spectra.synth_priors.draw_lya_params`); a row whose ``centre`` or ``line_flux`` is NaN gets no
        line.
    variance_per_flux : float or array (N,) or (N, P), optional
        Photon noise of the line: the line adds ``variance_per_flux * line`` to each pixel's
        variance [(1e-17 erg/s/cm^2/A)^2 per 1e-17 erg/s/cm^2/A] (``k / T(lambda)`` of
        :func:`~lenscat.spectra.synth_training.make_training_set`). ``None`` (default): the line is added noiseless and
        ``ivar`` is returned unchanged -- a fair approximation when the line is faint next to the sky,
        which dominates the noise of BOSS early types in this window.
    rng : numpy.random.Generator, optional
        With ``variance_per_flux``, draws the extra noise added to ``flux`` (default: a new
        generator seeded 0).

    Returns
    -------
    flux, ivar : numpy.ndarray, shape (N, P)
        New arrays (dtype of the input); masked pixels (``ivar == 0``) stay masked.
    """
    f = np.array(flux, copy=True)
    iv = np.array(ivar, copy=True)
    if f.ndim == 1:
        f, iv = f[None, :], iv[None, :]
    if f.shape != iv.shape or f.shape[1] != np.shape(wave)[0]:
        raise LenscatError(f"flux {f.shape}, ivar {iv.shape} and wave {np.shape(wave)} disagree")
    c = np.asarray(params["centre"], dtype=np.float64).reshape(-1)
    lf = np.asarray(params["line_flux"], dtype=np.float64).reshape(-1)
    if len(c) != len(f):
        raise LenscatError(f"{len(c)} line parameter rows for {len(f)} spectra")
    rows = np.flatnonzero(np.isfinite(c) & np.isfinite(lf))
    if len(rows):
        fw = np.asarray(params["fwhm_kms"], dtype=np.float64).reshape(-1)[rows]
        sk = np.asarray(params["skew"], dtype=np.float64).reshape(-1)[rows]
        line = lya_profile(wave, c[rows], lf[rows], fw, sk)
        if variance_per_flux is not None:
            vpf = np.broadcast_to(
                np.asarray(variance_per_flux, dtype=np.float64),
                f.shape if np.ndim(variance_per_flux) == 2 else (len(f),),
            )
            vr = vpf[rows] if vpf.ndim == 2 else vpf[rows][:, None]
            extra = np.clip(vr * line, 0.0, None)
            gen = rng if rng is not None else np.random.default_rng(0)
            good = iv[rows] > 0
            var = np.where(good, 1.0 / np.where(good, iv[rows], 1.0), 0.0) + extra
            f[rows] = f[rows] + line + np.sqrt(extra) * gen.standard_normal(line.shape)
            iv[rows] = np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)
        else:
            f[rows] = f[rows] + line
    shape = np.shape(flux)
    return f.reshape(shape), iv.reshape(shape)
