"""Pixel masks for the line search: the foreground galaxy's own lines and bright sky lines.

A background line search must not fire on the lens galaxy's emission lines (Li et al. 2018 mask
[NeV] 3347, 3427, [OII] 3727 and [NeIII] 3869 at the galaxy's redshift) nor on sky-subtraction
residuals of bright night-sky lines.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from lenscat.spectra.grid import C_KMS
from lenscat.spectra.reference import air_to_vacuum, emission_lines

#: the foreground lines Li et al. (2018) mask, rest vacuum [Angstrom]
LI2018_GALAXY_LINES: dict[str, float] = {
    "[Ne V] 3346": 3346.79,
    "[Ne V] 3426": 3426.85,
    "[O II] 3726": float(air_to_vacuum(3726.032)),
    "[O II] 3729": float(air_to_vacuum(3728.815)),
    "[Ne III] 3869": float(air_to_vacuum(3868.76)),
}

#: bright sky lines inside or near 3800-5000 A (Hg I street-lamp lines, [O I] 5577), vacuum [Angstrom]
WINDOW_SKY_LINES: tuple[float, ...] = tuple(float(w) for w in air_to_vacuum(np.array([4046.56, 4358.33, 5460.74, 5577.339])))


def galaxy_lines(extended: bool = False) -> dict[str, float]:
    """Rest wavelengths of the foreground-galaxy lines to mask [Angstrom, vacuum].

    ``extended`` adds every emission line of the shipped list with rest wavelength 3300-5100 A
    (Balmer lines, [OIII], HeII...), which the matched filter masks as BELLS GALLERY does.
    """
    out = dict(LI2018_GALAXY_LINES)
    if extended:
        out.update({k: v for k, v in emission_lines().items() if 3300.0 < v < 5100.0})
    return out


def line_mask(wave: np.ndarray, centres: np.ndarray | list[float], half_width_kms: float) -> np.ndarray:
    """True where ``wave`` lies within ``half_width_kms`` of any of ``centres`` (all Angstrom)."""
    wave = np.asarray(wave, dtype=np.float64)
    mask = np.zeros(wave.shape, dtype=bool)
    for c in np.atleast_1d(np.asarray(centres, dtype=np.float64)):
        mask |= np.abs(wave - c) <= c * half_width_kms / C_KMS
    return mask


def galaxy_line_mask(wave: np.ndarray, z: float | None, *, half_width_kms: float = 600.0,
                     extended: bool = False) -> np.ndarray:
    """Mask of the foreground galaxy's lines redshifted to ``z`` (all False when z is unknown)."""
    if z is None or not np.isfinite(z):
        return np.zeros(np.shape(wave), dtype=bool)
    rest = np.array(list(galaxy_lines(extended).values()))
    return line_mask(wave, rest * (1.0 + z), half_width_kms)


def galaxy_line_masks(wave: np.ndarray, z: np.ndarray, *,
                           half_width_kms: float = 600.0,
                           extended: bool = False) -> np.ndarray:
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

    Returns
    -------
    numpy.ndarray
        (N, P) bool, True = masked.
    """
    wave = np.asarray(wave, dtype=np.float64)
    z = np.atleast_1d(np.asarray(z, dtype=np.float64))
    mask = np.zeros((z.size, wave.size), dtype=bool)
    mask.reshape(-1)[galaxy_line_pixels(wave, z, half_width_kms=half_width_kms, extended=extended)] = True
    return mask


@lru_cache(maxsize=2)
def _rest_lines(extended: bool) -> np.ndarray:
    return np.unique(np.array(list(galaxy_lines(extended).values()), dtype=np.float64))


def galaxy_line_pixels(wave: np.ndarray, z: np.ndarray, *, half_width_kms: float = 600.0,
                       extended: bool = False) -> np.ndarray:
    """Flat indices into an (N, P) array of the pixels :func:`galaxy_line_masks` masks.

    Index runs per (spectrum, line): a few hundred pixels per spectrum instead of all P, for callers
    that only need to zero those pixels.
    """
    wave = np.asarray(wave, dtype=np.float64)
    z = np.atleast_1d(np.asarray(z, dtype=np.float64))
    rest = _rest_lines(extended)
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


def sky_line_mask(wave: np.ndarray, *, half_width_kms: float = 150.0) -> np.ndarray:
    """Mask of the bright sky lines in :data:`WINDOW_SKY_LINES`."""
    return line_mask(wave, list(WINDOW_SKY_LINES), half_width_kms)
