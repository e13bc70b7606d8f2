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

* :func:`lya_profile` -- a skew-normal line, pixel-integrated, parametrised by its peak
  wavelength, integrated flux, true FWHM and shape parameter;
* :func:`draw_lya_params` -- Li et al.'s priors;
* :func:`inject_lines` -- add lines to real or synthetic spectra;
* :func:`make_training_set` -- a :class:`SyntheticSet` of galaxies built from the SDSS
  eigenspectra, real SDSS sky, photon + read noise (or real continuum-subtracted residuals) and
  ~1 line in 16 spectra, reproducible from one seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import special

from lenscat.errors import LenscatError
from lenscat.spectra.grid import C_KMS, LYA, WINDOW, LogGrid
from lenscat.spectra.reference import eigen_basis, sdss_sky_spectra

__all__ = [
    "LINE_PRIORS",
    "SyntheticSet",
    "draw_lya_params",
    "draw_matched_params",
    "inject_lines",
    "lya_profile",
    "iter_training_set",
    "make_training_set",
    "matched_snr",
    "pixel_edges",
    "skewnorm_shape",
]

#: shape parameters covered by the skew-normal tables (values outside are clipped)
SKEW_LIMIT = 10.0

#: line priors of :func:`make_training_set`: ``'li2018'`` (:func:`draw_lya_params`, line strength
#: drawn as a peak flux density) and ``'matched'`` (:func:`draw_matched_params`, line strength
#: drawn as the matched-filter S/N against the spectrum's own noise)
LINE_PRIORS = ("li2018", "matched")


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
# Li et al. (2018) priors
# --------------------------------------------------------------------------------------------


def draw_lya_params(
    rng: np.random.Generator,
    n: int,
    *,
    grid: LogGrid = WINDOW,
    edge_px: int = 5,
    fwhm_mean: float = 300.0,
    fwhm_sigma: float = 200.0,
    fwhm_max: float = 1100.0,
    peak_range: tuple[float, float] = (1.5, 25.0),
    skew_mean: float = 2.0,
    skew_sigma: float = 2.0,
) -> dict[str, np.ndarray]:
    """Draw Lyα line parameters from the priors of Li et al. (2018).

    * centre: uniform in pixel index (i.e. in log wavelength / Lyα redshift) over the grid,
      at least ``edge_px`` pixels from either end; it is the **peak** wavelength;
    * FWHM ~ N(``fwhm_mean``, ``fwhm_sigma``) km/s truncated to ``[lo, fwhm_max]``, with
      ``lo`` the larger of 0.5 A (Li et al.) and one pixel (69 km/s on BOSS pixels; a narrower
      line is not resolved);
    * peak flux density: log-uniform over ``peak_range`` [1e-17 erg/s/cm^2/A] (Li et al. require
      > 1.5e-17; the upper end, bright BELLS-GALLERY-like lines, is our choice); the integrated
      flux follows from the peak, FWHM and skewness. The peak is that of the continuous profile:
      a line narrower than a pixel peaks lower once pixel-integrated;
    * skewness (skew-normal shape): N(``skew_mean``, ``skew_sigma``) clipped to +-10 --
      positive-leaning (84 % red-skewed with the defaults), as observed for high-z Lyα.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    n : int
        Number of lines.
    grid : LogGrid
        Pixel grid of the spectra (default the 3800-5000 A search window).

    Returns
    -------
    dict of numpy.ndarray, each shape (n,)
        ``centre`` [A], ``pixel`` (fractional pixel index of the peak on ``grid``), ``z_lya``,
        ``fwhm_kms`` [km/s], ``fwhm_A`` [A], ``skew``, ``peak`` [1e-17 erg/s/cm^2/A] and
        ``line_flux`` [1e-17 erg/s/cm^2].
    """
    if n < 0:
        raise LenscatError(f"n must be >= 0, got {n}")
    if not 0 < peak_range[0] < peak_range[1]:
        raise LenscatError(f"peak_range must be increasing and positive, got {peak_range}")
    if 2 * edge_px >= grid.n - 1:
        raise LenscatError(f"edge_px={edge_px} leaves no room on a {grid.n}-pixel grid")
    pix = rng.uniform(edge_px, grid.n - 1 - edge_px, size=n)
    centre = 10.0 ** ((grid.k0 + pix) * grid.dlog)
    lo = np.maximum(0.5 / centre * C_KMS, grid.velocity_per_pixel)
    fwhm = rng.normal(fwhm_mean, fwhm_sigma, size=n)
    bad = (fwhm < lo) | (fwhm > fwhm_max)
    for _ in range(1000):  # rejection sampling of the truncated normal
        if not bad.any():
            break
        fwhm[bad] = rng.normal(fwhm_mean, fwhm_sigma, size=int(bad.sum()))
        bad = (fwhm < lo) | (fwhm > fwhm_max)
    if bad.any():
        raise LenscatError("FWHM prior too narrow: cannot draw FWHM within its bounds")
    skew = np.clip(rng.normal(skew_mean, skew_sigma, size=n), -SKEW_LIMIT, SKEW_LIMIT)
    peak = np.exp(rng.uniform(np.log(peak_range[0]), np.log(peak_range[1]), size=n))
    _, width, gmax = skewnorm_shape(skew)
    fwhm_a = centre * fwhm / C_KMS
    line_flux = peak * (fwhm_a / width) / gmax
    return {
        "centre": centre,
        "pixel": pix,
        "z_lya": centre / LYA - 1.0,
        "fwhm_kms": fwhm,
        "fwhm_A": fwhm_a,
        "skew": skew,
        "peak": peak,
        "line_flux": line_flux,
    }


def draw_matched_params(
    rng: np.random.Generator,
    n: int,
    *,
    grid: LogGrid = WINDOW,
    edge_px: int = 5,
    fwhm_range: tuple[float, float] = (70.0, 1100.0),
    red_fraction: float = 0.8,
    red_skew: tuple[float, float] = (0.0, 8.0),
    symmetric_sigma: float = 0.5,
    snr_range: tuple[float, float] = (3.0, 20.0),
    bright_fraction: float = 0.15,
    bright_range: tuple[float, float] = (20.0, 150.0),
) -> dict[str, np.ndarray]:
    """Draw Lyα line shapes and target matched S/N (the ``'matched'`` priors).

    These priors spread the training lines over everything the search must find (the issue-31
    protocol: FWHM 120-700 km/s, red-tailed, matched S/N 4-15) and beyond, and put the line
    strength where detection is decided:

    * centre: uniform in pixel index over the grid, at least ``edge_px`` pixels from either end
      (the peak wavelength), as :func:`draw_lya_params`;
    * FWHM: log-uniform over ``fwhm_range`` [km/s] (lower end raised to one pixel / 0.5 A);
    * skewness: with probability ``red_fraction`` uniform over ``red_skew`` (red tails, as
      high-z Lyα), otherwise ``N(0, symmetric_sigma)`` (nearly symmetric lines);
    * strength: the matched-filter S/N ``sqrt(sum(line^2 ivar))`` of the line against the
      spectrum's own inverse variance (including the line's photon noise and the masks),
      uniform over ``snr_range``, except for a fraction ``bright_fraction`` drawn log-uniformly
      over ``bright_range`` (bright lines, BELLS-GALLERY-like, must not look foreign to the
      network: without them a small network trained on S/N 3-20 missed half of the broad lines
      at S/N ~40); :func:`make_training_set` converts it into a line flux.

    Returns
    -------
    dict of numpy.ndarray, each shape (n,)
        ``centre`` [A], ``pixel`` (fractional peak pixel on ``grid``), ``z_lya``, ``fwhm_kms``
        [km/s], ``fwhm_A`` [A], ``skew`` and ``snr_target`` (the matched S/N to reach).
    """
    if n < 0:
        raise LenscatError(f"n must be >= 0, got {n}")
    if 2 * edge_px >= grid.n - 1:
        raise LenscatError(f"edge_px={edge_px} leaves no room on a {grid.n}-pixel grid")
    if not 0 < fwhm_range[0] < fwhm_range[1]:
        raise LenscatError(f"fwhm_range must be increasing and positive, got {fwhm_range}")
    if not 0 < snr_range[0] <= snr_range[1]:
        raise LenscatError(f"snr_range must be increasing and positive, got {snr_range}")
    if not 0.0 <= red_fraction <= 1.0:
        raise LenscatError(f"red_fraction must be in [0, 1], got {red_fraction}")
    pix = rng.uniform(edge_px, grid.n - 1 - edge_px, size=n)
    centre = 10.0 ** ((grid.k0 + pix) * grid.dlog)
    lo = np.maximum(np.maximum(0.5 / centre * C_KMS, grid.velocity_per_pixel), fwhm_range[0])
    hi = np.maximum(lo * 1.0001, fwhm_range[1])
    fwhm = np.exp(np.log(lo) + rng.random(n) * (np.log(hi) - np.log(lo)))
    red = rng.random(n) < red_fraction
    skew = np.where(red, rng.uniform(red_skew[0], red_skew[1], size=n), rng.normal(0.0, symmetric_sigma, size=n))
    skew = np.clip(skew, -SKEW_LIMIT, SKEW_LIMIT)
    snr = rng.uniform(snr_range[0], snr_range[1], size=n)
    if not 0.0 <= bright_fraction <= 1.0 or not 0 < bright_range[0] <= bright_range[1]:
        raise LenscatError(
            f"bright_fraction must be in [0, 1] and bright_range increasing, got {bright_fraction}, {bright_range}"
        )
    if bright_fraction > 0:
        bright = rng.random(n) < bright_fraction
        snr[bright] = np.exp(rng.uniform(np.log(bright_range[0]), np.log(bright_range[1]), size=int(bright.sum())))
    return {
        "centre": centre,
        "pixel": pix,
        "z_lya": centre / LYA - 1.0,
        "fwhm_kms": fwhm,
        "fwhm_A": centre * fwhm / C_KMS,
        "skew": skew,
        "snr_target": snr,
    }


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
        :func:`draw_lya_params`); a row whose ``centre`` or ``line_flux`` is NaN gets no line.
    variance_per_flux : float or array (N,) or (N, P), optional
        Photon noise of the line: the line adds ``variance_per_flux * line`` to each pixel's
        variance [(1e-17 erg/s/cm^2/A)^2 per 1e-17 erg/s/cm^2/A] (``k / T(lambda)`` of
        :func:`make_training_set`). ``None`` (default): the line is added noiseless and ``ivar``
        is returned unchanged -- a fair approximation when the line is faint next to the sky,
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


# --------------------------------------------------------------------------------------------
# synthetic galaxies
# --------------------------------------------------------------------------------------------

#: rest-frame range over which eigen-component amplitudes are compared [Angstrom]
_REST_RANGE = (2200.0, 3900.0)
#: relative amplitude (vs component 0, by rms) of eigen-components 1, 2, 3 in the early-type mix
_EIGEN_MIX = (0.08, 0.03, 0.02)


@lru_cache(maxsize=4)
def _eigen_rms(name: str) -> np.ndarray:
    eb = eigen_basis(name)
    m = (eb.wave > _REST_RANGE[0]) & (eb.wave < _REST_RANGE[1])
    return np.asarray(np.sqrt(np.mean(eb.basis[:, m] ** 2, axis=1)))


@lru_cache(maxsize=4)
def _sky_on_grid(k0: int, n: int, dlog: float) -> tuple[np.ndarray, np.ndarray]:
    """The four real SDSS sky spectra on a grid (ends extended flat), and their line parts."""
    grid = LogGrid(k0=k0, n=n, dlog=dlog)
    w, sky = sdss_sky_spectra()
    lw = np.log10(w)
    lg = grid.loglam
    out = np.empty((len(sky), n))
    for i, s in enumerate(sky):
        ok = s > 0
        lo = float(np.median(s[ok][:10]))
        hi = float(np.median(s[ok][-10:]))
        out[i] = np.interp(lg, lw[ok], s[ok], left=lo, right=hi)
    # line part: the spectrum minus a running median (31 px), the template of sky residuals
    half = 15
    pad = np.pad(out, ((0, 0), (half, half)), mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(pad, 2 * half + 1, axis=1)
    lines = out - np.median(win, axis=2)
    return out, lines


def _galaxies(
    rng: np.random.Generator, z: np.ndarray, grid: LogGrid, basis_name: str, level: np.ndarray, continuum_error: float
) -> tuple[np.ndarray, np.ndarray]:
    """(galaxy, continuum estimate) (N, P) float64: eigen mixes at z scaled to ``level``."""
    eb = eigen_basis(basis_name)
    n = len(z)
    rms = _eigen_rms(basis_name)
    coef = np.zeros((n, eb.basis.shape[0]))
    coef[:, 0] = 1.0
    k = min(len(_EIGEN_MIX), eb.basis.shape[0] - 1)
    coef[:, 1 : 1 + k] = rng.normal(size=(n, k)) * (np.asarray(_EIGEN_MIX[:k]) * rms[0] / rms[1 : 1 + k])
    dcoef = np.zeros_like(coef)
    if continuum_error > 0 and k:
        dcoef[:, 1 : 1 + k] = rng.normal(size=(n, k)) * (continuum_error / np.sqrt(k) * rms[0] / rms[1 : 1 + k])
    # fractional rest-frame pixel of every observed pixel; the coefficients are applied on the
    # rest-frame span first, then each row is read off at its offset (linear interpolation)
    d_eig = float(eb.loglam[1] - eb.loglam[0])
    pos = (grid.loglam[None, :] - np.log10(1.0 + z)[:, None] - eb.loglam[0]) / d_eig
    if pos.min() < 0 or pos.max() > eb.basis.shape[1] - 1:
        raise LenscatError("galaxy redshift range outside the eigenspectra's coverage")
    if abs(d_eig - grid.dlog) < 1e-9 * grid.dlog:
        # same log step (BOSS pixels): a constant sub-pixel offset per row, contiguous slices
        base = np.floor(pos[:, 0]).astype(np.int64)
        frac = (pos[:, 0] - base)[:, None]
        lo, hi = int(base.min()), int(base.max()) + grid.n + 1
        base -= lo
        span = eb.basis[:, lo : min(hi, eb.basis.shape[1])]
        if span.shape[1] < hi - lo:
            span = np.pad(span, ((0, 0), (0, hi - lo - span.shape[1])), mode="edge")
        rows = np.arange(n)

        def shifted(c: np.ndarray) -> np.ndarray:
            comb = c @ span
            win = np.lib.stride_tricks.sliding_window_view(comb, grid.n + 1, axis=1)[rows, base]
            return np.asarray(win[:, :-1] * (1.0 - frac) + win[:, 1:] * frac)
    else:
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, eb.basis.shape[1] - 2)
        fr = pos - i0
        lo = int(i0.min())
        i0 -= lo
        span = eb.basis[:, lo : int(i0.max()) + lo + 2]

        def shifted(c: np.ndarray) -> np.ndarray:
            comb = c @ span
            return np.asarray(
                np.take_along_axis(comb, i0, axis=1) * (1.0 - fr) + np.take_along_axis(comb, i0 + 1, axis=1) * fr
            )

    gal = shifted(coef)
    err = shifted(dcoef) if continuum_error > 0 else np.zeros_like(gal)
    med = np.median(gal, axis=1)
    bad = ~(gal.min(axis=1) > 0.2 * np.abs(med)) | ~(med > 0)
    if bad.any():  # keep the continuum positive: fall back to the pure early-type component
        pure = np.zeros_like(coef)
        pure[:, 0] = 1.0
        gal[bad] = shifted(pure)[bad]
        err[bad] = 0.0
        med = np.median(gal, axis=1)
    scale = level / med
    gal *= scale[:, None]
    cont = gal.copy()
    if continuum_error > 0:
        x = np.linspace(-1.0, 1.0, grid.n)
        leg = np.polynomial.legendre.legvander(x, 3)  # (P, 4)
        a = rng.normal(size=(n, 4)) * (continuum_error / 2.0)
        cont = (gal + err * scale[:, None]) * (1.0 + a @ leg.T)
        cont = np.clip(cont, 0.05 * gal, None)
    return gal, cont


@dataclass
class SyntheticSet:
    """Synthetic spectra on a grid, as :func:`make_training_set` returns them.

    Attributes
    ----------
    wave : numpy.ndarray, shape (P,)
        Pixel centres [Angstrom].
    flux : numpy.ndarray, shape (N, P), float32
        Sky-subtracted flux density [1e-17 erg/s/cm^2/A]: galaxy + line + sky-subtraction
        residual + noise.
    ivar : numpy.ndarray, shape (N, P), float32
        Inverse variance of the noise actually added; 0 at masked pixels.
    continuum : numpy.ndarray, shape (N, P), float32
        The continuum a search subtracts: the true galaxy with a small template/calibration
        error (``continuum_error``), or the :func:`~lenscat.spectra.continuum.fit_continua`
        fit (``continuum='fit'``).
    z : numpy.ndarray, shape (N,), float64
        Galaxy redshift.
    labels : numpy.ndarray, shape (N,), int8
        1 where a Lyα line was added.
    line : dict of numpy.ndarray, each shape (N,)
        :func:`draw_lya_params` output for every row, NaN for negatives; ``line['pixel']`` is
        the fractional peak pixel.
    line_pixel : numpy.ndarray, shape (N,), int64
        Rounded peak pixel of the line, -1 for negatives.
    truth : numpy.ndarray or None, shape (N, P), float32
        Noise-free flux (galaxy + line + sky residual): ``(flux - truth) * sqrt(ivar)`` is the
        unit-variance noise. None unless kept.
    galaxy : numpy.ndarray or None, shape (N, P), float32
        The true galaxy continuum (kept with ``truth``).
    meta : dict
        Per-row ``snr`` (median continuum S/N per pixel), ``level`` (median galaxy flux
        density), ``sky_index``, ``sky_scale``, ``noise_kind`` (0 synthetic Gaussian, 1 real
        residual), and ``seed``.
    """

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    continuum: np.ndarray
    z: np.ndarray
    labels: np.ndarray
    line: dict[str, np.ndarray]
    line_pixel: np.ndarray
    truth: np.ndarray | None = None
    galaxy: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def arrays(self) -> dict[str, np.ndarray]:
        """``flux``, ``ivar``, ``continuum``, ``z``, ``labels``, ``line_pixel`` (for training)."""
        return {
            "flux": self.flux,
            "ivar": self.ivar,
            "continuum": self.continuum,
            "z": self.z,
            "labels": self.labels,
            "line_pixel": self.line_pixel,
        }

    def subset(self, index: np.ndarray | slice) -> SyntheticSet:
        """The rows ``index`` as a new set (arrays are copies for index arrays, views for slices)."""
        return SyntheticSet(
            wave=self.wave,
            flux=self.flux[index],
            ivar=self.ivar[index],
            continuum=self.continuum[index],
            z=self.z[index],
            labels=self.labels[index],
            line={k: v[index] for k, v in self.line.items()},
            line_pixel=self.line_pixel[index],
            truth=None if self.truth is None else self.truth[index],
            galaxy=None if self.galaxy is None else self.galaxy[index],
            meta={k: (v[index] if isinstance(v, np.ndarray) else v) for k, v in self.meta.items()},
        )


def make_training_set(
    n: int,
    *,
    positive_fraction: float = 1.0 / 16.0,
    seed: int = 0,
    sky: np.ndarray | None = None,
    residuals: np.ndarray | None = None,
    residual_fraction: float = 0.5,
    grid: LogGrid = WINDOW,
    z_range: tuple[float, float] = (0.3, 0.7),
    level_range: tuple[float, float] = (0.5, 5.0),
    snr_range: tuple[float, float] = (1.0, 5.0),
    sky_scale_range: tuple[float, float] = (0.7, 1.5),
    sky_residual: float = 0.02,
    throughput_slope: tuple[float, float] = (4.0, 7.0),
    read_fraction: tuple[float, float] = (0.05, 0.3),
    bad_pixel_fraction: float = 0.002,
    bad_run_probability: float = 0.05,
    continuum_error: float = 0.02,
    continuum: str = "true",
    line_priors: Mapping[str, Any] | None = None,
    keep_truth: bool = True,
    basis: str = "spEigenGal-55740",
    priors: str = "li2018",
) -> SyntheticSet:
    """Synthetic BOSS early-type spectra, about one in 16 with a background Lyα line.

    Each spectrum is built as follows (all draws from one ``numpy`` generator seeded ``seed``,
    so a seed and the options give identical arrays):

    1. **galaxy**: ``z ~ U(z_range)``; SDSS eigenspectra (``basis``) redshifted onto the grid
       with coefficients ``(1, c1, c2, c3)``, ``c_i`` Gaussian with rms amplitude 8 %, 3 % and
       2 % of component 0 (the early-type mean spectrum), falling back to component 0 alone
       if the mix is not clearly positive; scaled to a median flux density log-uniform in
       ``level_range`` (BOSS CMASS/LOWZ in 3800-5000 A: ~0.5-5e-17 erg/s/cm^2/A);
    2. **sky**: a random row of :func:`~lenscat.spectra.reference.sdss_sky_spectra` (or of
       ``sky``) times ``U(sky_scale_range)``; it enters the noise, and a sky-subtraction
       residual ``eps * lines + delta * d(lines)/d(pixel)`` is added to the flux, ``lines`` being
       the sky row's line part (minus a 31-px running median: Hg I 4047, 4358 etc.),
       ``eps ~ N(0, sky_residual)`` and a wavelength error ``delta ~ N(0, 0.1) px``;
    3. **noise**: variance ``k (galaxy + line + sky) / T + r^2 / T^2`` with a throughput shape
       ``T = (lambda / 5000 A)^beta``, ``beta ~ U(throughput_slope)`` (BOSS's blue end has ~5x
       the variance per unit flux of 5000 A), read noise ``r^2 = rho k median(sky)`` with
       ``rho ~ U(read_fraction)``, and the gain-like ``k`` set so that the median continuum S/N
       per pixel is log-uniform in ``snr_range``; Gaussian noise of that variance is added and
       ``ivar = 1 / variance``. With ``residuals``, a fraction ``residual_fraction`` of the
       spectra get instead ``sigma * r`` with ``r`` a random row of ``residuals``;
    4. **masks**: a fraction ``bad_pixel_fraction`` of single pixels, and with probability
       ``bad_run_probability`` a run of 5-40 pixels, get ``ivar = 0``;
    5. **line** (positives): :func:`lya_profile` with its photon noise; parameters from
       :func:`draw_lya_params` (``priors='li2018'``, Li et al.'s peak-flux priors) or
       :func:`draw_matched_params` (``priors='matched'``: full FWHM range, red tails and some
       symmetric lines, and the line flux set so that the line's matched-filter S/N against the
       spectrum's final ``ivar`` (masks and the line's own photon noise included) is exactly the
       drawn one), with options ``line_priors``; ``line['snr_matched']`` records that S/N for
       either priors;
    6. **continuum**: ``'true'`` -- the true galaxy with a smooth error: eigen coefficients
       perturbed and a cubic Legendre factor, each ~``continuum_error`` rms relative (a
       template/calibration mismatch like a real fit's); ``'fit'`` -- the
       :func:`lenscat.spectra.continuum.fit_continua` fit of the synthetic spectrum (what real
       data get; slower); ``'auto'`` -- ``'fit'`` when that module is installed, else ``'true'``.

    Parameters
    ----------
    n : int
        Number of spectra.
    positive_fraction : float
        Fraction with a line (exactly ``round(n * positive_fraction)`` of them, at random rows).
    seed : int
        Seed of every random draw.
    sky : numpy.ndarray, shape (M, P), optional
        Sky spectra on ``grid`` [1e-17 erg/s/cm^2/A] (default the four real SDSS ones).
    residuals : numpy.ndarray, shape (M, P), optional
        Real continuum-subtracted residuals **in S/N units**, ``(flux - continuum) *
        sqrt(ivar)``, on ``grid`` (e.g. from the packed store); NaN or exactly 0 marks a
        masked pixel (there ``ivar`` is set to 0). They replace the Gaussian noise (scaled by
        the synthetic sigma) for ``residual_fraction`` of the spectra, bringing real
        continuum-fit and sky residual structure into training. They may hold a rare real
        line: label noise at the 1e-3 level.
    priors : {'li2018', 'matched'}
        Line priors (:data:`LINE_PRIORS`, step 5); ``line_priors`` are the keyword options of
        the corresponding draw function.
    keep_truth : bool
        Keep the noise-free ``truth`` and ``galaxy`` arrays (2 more float32 (N, P) arrays).

    Returns
    -------
    SyntheticSet
        float32 arrays on ``grid``.

    Raises
    ------
    LenscatError
        Bad options or array shapes; ``continuum='fit'`` without the continuum module.
    """
    if n < 1:
        raise LenscatError(f"n must be positive, got {n}")
    p = grid.n
    out = {k: np.empty((n, p), dtype=np.float32) for k in ("flux", "ivar", "continuum")}
    if keep_truth:
        out.update({k: np.empty((n, p), dtype=np.float32) for k in ("truth", "galaxy")})
    z = np.empty(n)
    labels = np.empty(n, dtype=np.int8)
    line_pixel = np.empty(n, dtype=np.int64)
    scalars: dict[str, list[np.ndarray]] = {}
    line_parts: list[dict[str, np.ndarray]] = []
    cont_kind = continuum
    s0 = 0
    for part in iter_training_set(
        n,
        positive_fraction=positive_fraction,
        seed=seed,
        sky=sky,
        residuals=residuals,
        residual_fraction=residual_fraction,
        grid=grid,
        z_range=z_range,
        level_range=level_range,
        snr_range=snr_range,
        sky_scale_range=sky_scale_range,
        sky_residual=sky_residual,
        throughput_slope=throughput_slope,
        read_fraction=read_fraction,
        bad_pixel_fraction=bad_pixel_fraction,
        bad_run_probability=bad_run_probability,
        continuum_error=continuum_error,
        continuum=continuum,
        line_priors=line_priors,
        keep_truth=keep_truth,
        basis=basis,
        priors=priors,
    ):
        sl = slice(s0, s0 + len(part))
        s0 += len(part)
        for k, arr in out.items():
            arr[sl] = getattr(part, k)
        z[sl], labels[sl], line_pixel[sl] = part.z, part.labels, part.line_pixel
        line_parts.append(part.line)
        for k, v in part.meta.items():
            if isinstance(v, np.ndarray):
                scalars.setdefault(k, []).append(v)
        cont_kind = str(part.meta["continuum"])
    meta: dict[str, Any] = {k: np.concatenate(v) for k, v in scalars.items()}
    line = {k: np.concatenate([d[k] for d in line_parts]) for k in line_parts[0]}
    meta.update(seed=seed, continuum=cont_kind, priors=priors)
    return SyntheticSet(
        wave=grid.wave,
        flux=out["flux"],
        ivar=out["ivar"],
        continuum=out["continuum"],
        z=z,
        labels=labels,
        line=line,
        line_pixel=line_pixel,
        truth=out.get("truth"),
        galaxy=out.get("galaxy"),
        meta=meta,
    )


def iter_training_set(
    n: int,
    *,
    positive_fraction: float = 1.0 / 16.0,
    seed: int = 0,
    sky: np.ndarray | None = None,
    residuals: np.ndarray | None = None,
    residual_fraction: float = 0.5,
    grid: LogGrid = WINDOW,
    z_range: tuple[float, float] = (0.3, 0.7),
    level_range: tuple[float, float] = (0.5, 5.0),
    snr_range: tuple[float, float] = (1.0, 5.0),
    sky_scale_range: tuple[float, float] = (0.7, 1.5),
    sky_residual: float = 0.02,
    throughput_slope: tuple[float, float] = (4.0, 7.0),
    read_fraction: tuple[float, float] = (0.05, 0.3),
    bad_pixel_fraction: float = 0.002,
    bad_run_probability: float = 0.05,
    continuum_error: float = 0.02,
    continuum: str = "true",
    line_priors: Mapping[str, Any] | None = None,
    keep_truth: bool = True,
    basis: str = "spEigenGal-55740",
    priors: str = "li2018",
) -> Iterator[SyntheticSet]:
    """:func:`make_training_set` in consecutive blocks of rows, for sets too large to hold twice.

    Takes the options of :func:`make_training_set` and yields :class:`SyntheticSet` blocks of
    at most 4,096 rows in order; concatenated they are exactly ``make_training_set(n, ...)``
    (same seed, same arrays). A caller that turns each block into network input
    (:func:`lenscat.models.specnet.prepare_inputs`) and drops it holds only the inputs: a
    1.5e5-spectrum set then needs ~2 GB instead of ~6 GB.

    Yields
    ------
    SyntheticSet
        Rows ``[i * 4096, min(n, (i + 1) * 4096))``; ``meta`` holds the per-row arrays and
        ``seed``, ``continuum``, ``priors``, ``start`` (first row).
    """
    if n < 1:
        raise LenscatError(f"n must be positive, got {n}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise LenscatError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    if continuum not in ("true", "fit", "auto"):
        raise LenscatError(f"continuum must be 'true', 'fit' or 'auto', got {continuum!r}")
    if priors not in LINE_PRIORS:
        raise LenscatError(f"line priors must be one of {', '.join(LINE_PRIORS)}, got {priors!r}")
    for name, r in (
        ("z_range", z_range),
        ("level_range", level_range),
        ("snr_range", snr_range),
        ("sky_scale_range", sky_scale_range),
    ):
        if not 0 < r[0] <= r[1]:
            raise LenscatError(f"{name} must be positive and increasing, got {r}")
    if continuum == "auto":
        try:
            import lenscat.spectra.continuum  # noqa: F401
        except ImportError:
            continuum = "true"
        else:
            continuum = "fit"
    fit: Callable[..., np.ndarray] | None = None
    if continuum == "fit":
        try:
            from lenscat.spectra.continuum import fit_continua
        except ImportError as exc:
            raise LenscatError("continuum='fit' needs lenscat.spectra.continuum") from exc
        fit = fit_continua
    p = grid.n
    wave = grid.wave
    if sky is None:
        sky_rows, sky_lines = _sky_on_grid(grid.k0, grid.n, grid.dlog)
    else:
        sky_rows = np.asarray(sky, dtype=np.float64)
        if sky_rows.ndim != 2 or sky_rows.shape[1] != p or len(sky_rows) == 0:
            raise LenscatError(f"sky must be (M, {p}) with M >= 1, got {sky_rows.shape}")
        sky_lines = sky_rows - np.median(sky_rows, axis=1, keepdims=True)
    res: np.ndarray | None = None
    if residuals is not None:
        res = np.asarray(residuals, dtype=np.float64)
        if res.ndim != 2 or res.shape[1] != p or len(res) == 0:
            raise LenscatError(f"residuals must be (M, {p}) with M >= 1, got {res.shape}")

    # which rows get a line: from the first child of the seed; each chunk of rows from its own
    n_chunks = (n + _CHUNK - 1) // _CHUNK
    seqs = np.random.SeedSequence(seed).spawn(1 + n_chunks)
    n_pos = int(round(n * positive_fraction))
    labels = np.zeros(n, dtype=np.int8)
    if n_pos:
        labels[np.random.default_rng(seqs[0]).choice(n, size=n_pos, replace=False)] = 1

    for j in range(n_chunks):
        sl = slice(j * _CHUNK, min(n, (j + 1) * _CHUNK))
        rng = np.random.default_rng(seqs[1 + j])
        chunk = _synth_chunk(
            rng,
            labels[sl].astype(bool),
            grid,
            sky_rows,
            sky_lines,
            res,
            residual_fraction=residual_fraction,
            z_range=z_range,
            level_range=level_range,
            snr_range=snr_range,
            sky_scale_range=sky_scale_range,
            sky_residual=sky_residual,
            throughput_slope=throughput_slope,
            read_fraction=read_fraction,
            bad_pixel_fraction=bad_pixel_fraction,
            bad_run_probability=bad_run_probability,
            continuum_error=continuum_error,
            line_priors=dict(line_priors or {}),
            basis=basis,
            priors=priors,
        )
        arrays = {
            k: np.asarray(chunk.pop(k), dtype=np.float32) for k in ("flux", "ivar", "continuum", "truth", "galaxy")
        }
        line = chunk.pop("line")
        z = chunk.pop("z")
        lab = labels[sl].copy()
        lpix = np.where(lab == 1, np.rint(np.nan_to_num(line["pixel"], nan=-1.0)), -1)
        if fit is not None:
            arrays["continuum"] = np.asarray(fit(wave, arrays["flux"], arrays["ivar"], z), dtype=np.float32)
        meta: dict[str, Any] = dict(chunk)
        meta.update(seed=seed, continuum=continuum, priors=priors, start=sl.start)
        yield SyntheticSet(
            wave=wave,
            flux=arrays["flux"],
            ivar=arrays["ivar"],
            continuum=arrays["continuum"],
            z=z,
            labels=lab,
            line=line,
            line_pixel=lpix.astype(np.int64),
            truth=arrays["truth"] if keep_truth else None,
            galaxy=arrays["galaxy"] if keep_truth else None,
            meta=meta,
        )


#: rows generated at a time (bounds the float64 temporaries to ~40 MB each)
_CHUNK = 4096


def _synth_chunk(
    rng: np.random.Generator,
    positive: np.ndarray,
    grid: LogGrid,
    sky_rows: np.ndarray,
    sky_lines: np.ndarray,
    res: np.ndarray | None,
    *,
    residual_fraction: float,
    z_range: tuple[float, float],
    level_range: tuple[float, float],
    snr_range: tuple[float, float],
    sky_scale_range: tuple[float, float],
    sky_residual: float,
    throughput_slope: tuple[float, float],
    read_fraction: tuple[float, float],
    bad_pixel_fraction: float,
    bad_run_probability: float,
    continuum_error: float,
    line_priors: dict[str, Any],
    basis: str,
    priors: str = "li2018",
) -> dict[str, Any]:
    """One chunk of :func:`make_training_set` (steps 1-6 but the continuum fit).

    The random draws come in the same order for both priors' code paths as before the
    ``'matched'`` priors existed, so ``'li2018'`` sets are unchanged; the line amplitude of
    ``'matched'`` lines is solved for once the noise and masks are known.
    """
    n = len(positive)
    p = grid.n
    wave = grid.wave

    # 1. galaxies
    z = rng.uniform(z_range[0], z_range[1], size=n)
    level = np.exp(rng.uniform(np.log(level_range[0]), np.log(level_range[1]), size=n))
    gal, cont = _galaxies(rng, z, grid, basis, level, continuum_error)

    # 2. sky and its subtraction residual
    sky_index = rng.integers(0, len(sky_rows), size=n)
    sky_scale = rng.uniform(sky_scale_range[0], sky_scale_range[1], size=n)
    sky_f = np.clip(sky_rows[sky_index] * sky_scale[:, None], 0.0, None)
    lines_f = sky_lines[sky_index] * sky_scale[:, None]
    eps = rng.normal(0.0, sky_residual, size=n) if sky_residual > 0 else np.zeros(n)
    delta = rng.normal(0.0, 0.1, size=n) if sky_residual > 0 else np.zeros(n)
    truth = gal + eps[:, None] * lines_f + delta[:, None] * np.gradient(lines_f, axis=1)

    # 5. lines (drawn before the noise: they add photon noise)
    pos = np.flatnonzero(positive)
    matched = priors == "matched"
    line_f = np.zeros((n, p))
    unit_line = np.zeros((len(pos), p))
    if matched:
        drawn = draw_matched_params(rng, len(pos), grid=grid, **line_priors)
        if len(pos):  # unit-flux profiles; the flux follows from the noise below
            unit_line = lya_profile(wave, drawn["centre"], 1.0, drawn["fwhm_kms"], drawn["skew"])
    else:
        drawn = draw_lya_params(rng, len(pos), grid=grid, **line_priors)
        if len(pos):
            line_f[pos] = lya_profile(wave, drawn["centre"], drawn["line_flux"], drawn["fwhm_kms"], drawn["skew"])
        truth += line_f

    # 3. noise: variance per unit gain k from galaxy + sky photons and read noise, k set by S/N
    beta = rng.uniform(throughput_slope[0], throughput_slope[1], size=n)
    inv_t = (wave[None, :] / 5000.0) ** (-beta[:, None])  # 1 / T
    rho = rng.uniform(read_fraction[0], read_fraction[1], size=n)
    read = rho * np.median(sky_f, axis=1)
    shape_var = (gal + sky_f) * inv_t + read[:, None] * inv_t * inv_t
    snr = np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1]), size=n))
    snr0 = np.median(gal / np.sqrt(shape_var), axis=1)
    gain = (snr0 / snr) ** 2
    unit = rng.standard_normal((n, p))
    noise_kind = np.zeros(n, dtype=np.int8)
    masked = np.zeros((n, p), dtype=bool)
    if res is not None:
        use = rng.random(n) < residual_fraction
        r = res[rng.integers(0, len(res), size=int(use.sum()))]
        bad_r = ~np.isfinite(r) | (r == 0)
        unit[use] = np.where(bad_r, 0.0, r)
        masked[use] |= bad_r
        noise_kind[use] = 1

    # 4. masked pixels
    if bad_pixel_fraction > 0:
        masked |= rng.random((n, p)) < bad_pixel_fraction
    runs = np.flatnonzero(rng.random(n) < bad_run_probability)
    if len(runs):
        length = rng.integers(5, 41, size=len(runs))
        start = rng.integers(0, p - 5, size=len(runs))
        cols = np.arange(p)[None, :]
        masked[runs] |= (cols >= start[:, None]) & (cols < (start + length)[:, None])

    # 5b. matched priors: the line flux that gives the drawn matched S/N against the final ivar
    if matched:
        if len(pos):
            flux_l = _matched_line_flux(
                unit_line, gain[pos], shape_var[pos], inv_t[pos], ~masked[pos], drawn["snr_target"]
            )
            line_f[pos] = flux_l[:, None] * unit_line
        else:
            flux_l = np.zeros(0)
        _, width, gmax = skewnorm_shape(drawn["skew"])
        drawn["line_flux"] = flux_l
        drawn["peak"] = flux_l * gmax * width / np.maximum(drawn["fwhm_A"], 1e-30)
        truth += line_f
    var = gain[:, None] * (shape_var + np.clip(line_f, 0.0, None) * inv_t)
    flux = truth + np.sqrt(var) * unit
    ivar = np.where(masked, 0.0, 1.0 / var)
    drawn["snr_matched"] = matched_snr(line_f[pos], ivar[pos]) if len(pos) else np.zeros(0)
    line = {k: np.full(n, np.nan) for k in drawn}
    for k, v in drawn.items():
        line[k][pos] = v
    return {
        "flux": flux,
        "ivar": ivar,
        "continuum": cont,
        "truth": truth,
        "galaxy": gal,
        "line": line,
        "z": z,
        "snr": snr,
        "level": level,
        "sky_index": sky_index,
        "sky_scale": sky_scale,
        "noise_kind": noise_kind,
        "gain": gain,
    }
