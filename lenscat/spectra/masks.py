"""Pixel masks for the line search: the foreground galaxy's own lines and bright sky lines.

A background line search must not fire on the lens galaxy's emission lines (Li et al. 2018 mask
[NeV] 3347, 3427, [OII] 3727 and [NeIII] 3869 at the galaxy's redshift) nor on sky-subtraction
residuals of bright night-sky lines.

Full range (3600-10400 A, :data:`lenscat.spectra.grid.FULL`; for the [OII] detector and the vetoes):

* galaxy lines: ``galaxy_line_mask(s)(..., full_range=True)`` / :func:`galaxy_line_pixels` and
  ``galaxy_lines(full_range=True)`` mask every line of the shipped emission-line list (Hbeta, [OIII],
  [OI], [NII], Halpha, [SII], [SIII]...), not only those with rest wavelength 3300-5100 A;
* sky lines: ``sky_line_mask(wave, full_range=True, half_width_kms=...)`` or
  ``sky_line_mask(wave, full_range=True, half_width_px=...)`` masks :data:`FULL_SKY_LINES` (the idlspec2d
  list of :func:`lenscat.spectra.reference.sky_lines` plus the bright lines it leaves out);
  :func:`sky_line_centres` returns the centres.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from lenscat.spectra.grid import C_KMS
from lenscat.spectra.reference import air_to_vacuum, emission_lines, sky_lines

#: the foreground lines Li et al. (2018) mask, rest vacuum [Angstrom]
LI2018_GALAXY_LINES: dict[str, float] = {
    "[Ne V] 3346": 3346.79,
    "[Ne V] 3426": 3426.85,
    "[O II] 3726": float(air_to_vacuum(3726.032)),
    "[O II] 3729": float(air_to_vacuum(3728.815)),
    "[Ne III] 3869": float(air_to_vacuum(3868.76)),
}

#: bright sky lines inside or near 3800-5000 A (Hg I street-lamp lines, [O I] 5577), vacuum [Angstrom]
WINDOW_SKY_LINES: tuple[float, ...] = tuple(
    float(w) for w in air_to_vacuum(np.array([4046.56, 4358.33, 5460.74, 5577.339]))
)


#: bright sky lines the idlspec2d list leaves out (it keeps lines fit for wavelength calibration):
#: Hg I street-lamp lines, Na D, [O I] 6300/6364 -- vacuum [Angstrom]
EXTRA_SKY_LINES: tuple[float, ...] = tuple(
    float(w) for w in air_to_vacuum(np.array([4046.56, 4358.33, 5460.74, 5889.95, 5895.924, 6300.304, 6363.776]))
)


def galaxy_lines(extended: bool = False, *, full_range: bool = False) -> dict[str, float]:
    """Rest wavelengths of the foreground-galaxy lines to mask [Angstrom, vacuum].

    ``extended`` adds every emission line of the shipped list with rest wavelength 3300-5100 A
    (Balmer lines, [OIII], HeII...), which the matched filter masks as BELLS GALLERY does.
    ``full_range`` adds every line of the shipped list (Halpha, [NII], [SII], [OI], [SIII]... as well),
    for fits and searches over the full 3600-10400 A range.
    """
    out = dict(LI2018_GALAXY_LINES)
    if full_range:
        out.update(emission_lines())
    elif extended:
        out.update({k: v for k, v in emission_lines().items() if 3300.0 < v < 5100.0})
    return out


def sky_line_centres(full_range: bool = False) -> np.ndarray:
    """Sorted sky-line centres [Angstrom, vacuum].

    ``full_range=False``: :data:`WINDOW_SKY_LINES` (the bright lines in or near 3800-5000 A);
    ``True``: :data:`FULL_SKY_LINES` (3600-10400 A).
    """
    return np.asarray(FULL_SKY_LINES if full_range else WINDOW_SKY_LINES, dtype=np.float64)


def line_mask(wave: np.ndarray, centres: np.ndarray | list[float], half_width_kms: float) -> np.ndarray:
    """True where ``wave`` lies within ``half_width_kms`` of any of ``centres`` (all Angstrom)."""
    wave = np.asarray(wave, dtype=np.float64)
    mask = np.zeros(wave.shape, dtype=bool)
    for c in np.atleast_1d(np.asarray(centres, dtype=np.float64)):
        mask |= np.abs(wave - c) <= c * half_width_kms / C_KMS
    return mask


def galaxy_line_mask(
    wave: np.ndarray,
    z: float | None,
    *,
    half_width_kms: float = 600.0,
    extended: bool = False,
    full_range: bool = False,
) -> np.ndarray:
    """Mask of the foreground galaxy's lines redshifted to ``z`` (all False when z is unknown).

    ``extended`` / ``full_range`` choose the line list (see :func:`galaxy_lines`).
    """
    if z is None or not np.isfinite(z):
        return np.zeros(np.shape(wave), dtype=bool)
    rest = np.array(list(galaxy_lines(extended, full_range=full_range).values()))
    return line_mask(wave, rest * (1.0 + z), half_width_kms)


def galaxy_line_masks(
    wave: np.ndarray, z: np.ndarray, *, half_width_kms: float = 600.0, extended: bool = False, full_range: bool = False
) -> np.ndarray:
    """(N, P) masks of the foreground galaxy's lines at N redshifts on one increasing grid.

    A pixel is masked when ``|wave - c| <= c * half_width_kms / c_light`` for a line observed at
    ``c``; NaN redshift masks nothing. Built from per-line pixel ranges: O(N * P) memory and time.

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) pixel wavelengths [Angstrom], increasing.
    z : numpy.ndarray
        (N,) foreground redshifts; NaN = unknown.
    half_width_kms : float
        Mask half-width [km/s].
    extended : bool
        Mask the extended line list (see :func:`galaxy_lines`).
    full_range : bool
        Mask every line of the shipped list (see :func:`galaxy_lines`).

    Returns
    -------
    numpy.ndarray
        (N, P) bool, True = masked.
    """
    wave = np.asarray(wave, dtype=np.float64)
    z = np.atleast_1d(np.asarray(z, dtype=np.float64))
    mask = np.zeros((z.size, wave.size), dtype=bool)
    mask.reshape(-1)[
        galaxy_line_pixels(wave, z, half_width_kms=half_width_kms, extended=extended, full_range=full_range)
    ] = True
    return mask


@lru_cache(maxsize=4)
def _rest_lines(extended: bool, full_range: bool = False) -> np.ndarray:
    return np.unique(np.array(list(galaxy_lines(extended, full_range=full_range).values()), dtype=np.float64))


def galaxy_line_pixels(
    wave: np.ndarray, z: np.ndarray, *, half_width_kms: float = 600.0, extended: bool = False, full_range: bool = False
) -> np.ndarray:
    """Flat indices into an (N, P) array of the pixels :func:`galaxy_line_masks` masks.

    Index runs per (spectrum, line): a few hundred pixels per spectrum instead of all P, for callers
    that only need to zero those pixels.
    """
    wave = np.asarray(wave, dtype=np.float64)
    z = np.atleast_1d(np.asarray(z, dtype=np.float64))
    rest = _rest_lines(extended, full_range)
    n, p = z.size, wave.size
    finite = np.isfinite(z)
    obs = rest[None, :] * (1.0 + np.where(finite, z, 0.0)[:, None])  # (N, L)
    tol = obs * half_width_kms / C_KMS
    lo = np.searchsorted(wave, (obs - tol).ravel(), side="left").reshape(obs.shape)
    hi = np.searchsorted(wave, (obs + tol).ravel(), side="right").reshape(obs.shape)
    keep = finite[:, None] & (hi > lo)
    if not keep.any():
        return np.zeros(0, dtype=np.int64)
    rows = np.broadcast_to(np.arange(n)[:, None], obs.shape)[keep]
    length = (hi - lo)[keep]
    first = rows * p + lo[keep]
    run_start = np.cumsum(length) - length
    return np.asarray(np.arange(int(length.sum())) + np.repeat(first - run_start, length), dtype=np.int64)


def line_mask_px(wave: np.ndarray, centres: np.ndarray | list[float], half_width_px: float) -> np.ndarray:
    """True where ``wave`` lies within ``half_width_px`` pixels of any of ``centres`` [Angstrom].

    The pixel width is the local spacing of ``wave`` at each centre (any increasing grid).
    """
    wave = np.asarray(wave, dtype=np.float64)
    mask = np.zeros(wave.shape, dtype=bool)
    if wave.size < 2:
        return mask
    step = np.gradient(wave)
    for c in np.atleast_1d(np.asarray(centres, dtype=np.float64)):
        if c < wave[0] - step[0] * (half_width_px + 1) or c > wave[-1] + step[-1] * (half_width_px + 1):
            continue
        d = step[int(np.clip(np.searchsorted(wave, c), 0, wave.size - 1))]
        mask |= np.abs(wave - c) <= half_width_px * d
    return mask


def sky_line_mask(
    wave: np.ndarray, *, half_width_kms: float = 150.0, full_range: bool = False, half_width_px: float | None = None
) -> np.ndarray:
    """Mask of bright sky lines.

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) wavelengths [Angstrom, vacuum], increasing.
    half_width_kms : float
        Mask half-width [km/s] (ignored when ``half_width_px`` is given).
    full_range : bool
        False: the lines of :data:`WINDOW_SKY_LINES` (3800-5000 A and [O I] 5577); True: every line
        of :data:`FULL_SKY_LINES` (3600-10400 A).
    half_width_px : float or None
        Mask half-width in pixels of ``wave`` instead of km/s (the BOSS log grid: 69 km/s per pixel).

    Returns
    -------
    numpy.ndarray
        (P,) bool, True = masked.
    """
    centres = sky_line_centres(full_range)
    if half_width_px is not None:
        return line_mask_px(wave, centres, half_width_px)
    return line_mask(wave, centres, half_width_kms)


#: every bright sky line masked over the full range (3600-10400 A): the idlspec2d list
#: (:func:`lenscat.spectra.reference.sky_lines`), :data:`WINDOW_SKY_LINES` and :data:`EXTRA_SKY_LINES`,
#: vacuum [Angstrom], sorted
FULL_SKY_LINES: tuple[float, ...] = tuple(
    float(w)
    for w in np.unique(
        np.round(np.concatenate([sky_lines(), np.array(WINDOW_SKY_LINES), np.array(EXTRA_SKY_LINES)]), 3)
    )
)


def specnet_pixel_mask(
    wave: np.ndarray, z: np.ndarray, *, mask_sky: bool = True, galaxy_half_width_kms: float = 600.0
) -> np.ndarray:
    """The pixels the 1-D ResNet's input masks (the ``pixel_mask`` of
    :func:`lenscat.models.specnet_inputs.prepare_inputs`).

    The foreground galaxy's lines of Li et al. (2018) (:func:`galaxy_line_masks`: [NeV] 3347, 3427,
    [OII] 3727, [NeIII] 3869 at ``z``, +-``galaxy_half_width_kms``) and, with ``mask_sky``, the bright
    sky lines of the window (:func:`sky_line_mask`: Hg I 4047, 4358; +-150 km/s).

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) pixel wavelengths [Angstrom], increasing.
    z : numpy.ndarray
        (N,) foreground redshifts; NaN = unknown (no galaxy lines masked).
    mask_sky : bool
        Mask the bright sky lines too.
    galaxy_half_width_kms : float
        Half-width of the galaxy-line masks [km/s].

    Returns
    -------
    numpy.ndarray
        (N, P) bool, True = masked.
    """
    mask = galaxy_line_masks(wave, z, half_width_kms=galaxy_half_width_kms)
    if mask_sky:
        mask |= sky_line_mask(wave)[None, :]
    return mask
