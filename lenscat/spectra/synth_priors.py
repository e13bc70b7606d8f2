"""Priors of the synthetic Lya lines: Li et al.'s (:func:`draw_lya_params`) and matched-S/N
(:func:`draw_matched_params`).

Li et al. (2018, MNRAS 482, 313): line centre uniform over the window, FWHM ~ N(300, 200) km/s with
FWHM > 0.5 A, peak flux density > 1.5e-17 erg/s/cm^2/A, red-skewed profile. The matched priors draw
the full FWHM range, red tails and some symmetric lines, with the line strength drawn as the
matched-filter S/N against the spectrum's own noise.
"""

from __future__ import annotations

import numpy as np

from lenscat.errors import LenscatError
from lenscat.spectra.grid import C_KMS, LYA, WINDOW, LogGrid
from lenscat.spectra.synth import SKEW_LIMIT, skewnorm_shape

__all__ = ["LINE_PRIORS", "draw_lya_params", "draw_matched_params"]

#: line priors of :func:`~lenscat.spectra.synth_training.make_training_set`: ``'li2018'`` (:func:`draw_lya_params`, line
#: strength drawn as a peak flux density) and ``'matched'`` (:func:`draw_matched_params`, line strength
#: drawn as the matched-filter S/N against the spectrum's own noise)
LINE_PRIORS = ("li2018", "matched")


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
      at S/N ~40); :func:`~lenscat.spectra.synth_training.make_training_set` converts it into a line flux.

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
