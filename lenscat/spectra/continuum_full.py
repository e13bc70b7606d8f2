"""The full-range (3600-10400 A) continuum fit of :mod:`lenscat.spectra.continuum` (:func:`fit_continua_full`).

More eigenspectrum multiplicative terms and polynomial orders over the whole range, with fewer terms
where the spectrum is not covered; spectra in blocks of :data:`_CHUNK_FULL`.
"""

from __future__ import annotations

import numpy as np

from lenscat.spectra.continuum import (
    CLIP_NSIGMA,
    CLIP_ROUNDS,
    GALAXY_HALF_WIDTH_KMS,
    SKY_HALF_WIDTH_KMS,
    _eigen_on_grid,
    _fit_block_incremental,
    _fit_inputs,
)
from lenscat.spectra.reference import eigen_basis

__all__ = ["FULL_N_MULT", "FULL_N_POLY", "fit_continua_full"]

#: full-range fit: each eigenspectrum is multiplied by Legendre polynomials P_0..P_{FULL_N_MULT-1}
FULL_N_MULT = 4


#: full-range fit: additive Legendre terms
FULL_N_POLY = 6


#: full-range fit: additive Legendre terms when the redshift is unknown (no eigenspectra)
FULL_N_POLY_NO_Z = 10


#: full-range fit: Legendre terms of the extra polynomial on the pixels the eigenbasis does not reach
FULL_N_POLY_UNCOVERED = 4


#: rows per block of the full-range fit (its design, ~22 terms x 4,608 px x 32 rows, is 26 MB)
_CHUNK_FULL = 32


def _row_poly(wave: np.ndarray, good: np.ndarray, n_terms: int, sel: np.ndarray | None = None) -> np.ndarray:
    """(n, n_terms, P) Legendre polynomials of wavelength mapped onto [-1, 1] over each row's span.

    The span of a row is from its first to its last pixel in ``good & sel`` (``sel``: (n, P) bool,
    default all); the polynomials are zero outside ``sel`` and held at their end values outside the
    span, so a row covering part of the grid gets a well-conditioned basis.
    """
    p = good.shape[1]
    use = good if sel is None else good & sel
    has = use.any(axis=1)
    first = np.where(has, np.argmax(use, axis=1), 0)
    last = np.where(has, p - 1 - np.argmax(use[:, ::-1], axis=1), p - 1)
    lo, hi = wave[first], wave[last]
    width = np.where(hi > lo, hi - lo, 1.0)
    x = np.clip(2.0 * (wave[None, :] - lo[:, None]) / width[:, None] - 1.0, -1.0, 1.0)
    basis = np.moveaxis(np.polynomial.legendre.legvander(x, max(n_terms, 1) - 1), -1, 1)  # (n, K, P)
    if sel is not None:
        basis = basis * sel[:, None, :]
    return np.asarray(basis)


def fit_continua_full(
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    z: np.ndarray,
    *,
    n_mult: int = FULL_N_MULT,
    n_poly: int = FULL_N_POLY,
    n_poly_no_z: int = FULL_N_POLY_NO_Z,
    n_poly_uncovered: int = FULL_N_POLY_UNCOVERED,
    n_clip: int = CLIP_ROUNDS,
    clip_nsigma: float = CLIP_NSIGMA,
    galaxy_half_width_kms: float = GALAXY_HALF_WIDTH_KMS,
    sky_half_width_kms: float = SKY_HALF_WIDTH_KMS,
) -> np.ndarray:
    """Continua over the whole SDSS/BOSS/DESI range (3600-10400 A) for a batch of spectra on one grid.

    A single eigenspectra + cubic fit (:func:`~lenscat.spectra.continuum.fit_continua`) is too stiff over a factor of
    2.9 in wavelength: spectrophotometric errors and the galaxy's colour gradient are not additive. Here
    every eigenspectrum is multiplied by Legendre polynomials (a smooth, per-component flux
    calibration), and an additive polynomial is added::

        model = sum_e sum_{j < n_mult} a_ej T_e(lambda / (1 + z)) P_j(x) + sum_{k < n_poly} b_k P_k(x)

    with ``x`` the wavelength mapped onto [-1, 1] over the spectrum's own span of usable pixels.
    ``spEigenGal-55740`` covers 1800-10500 A rest, i.e. all of 3600-10400 A for
    -0.009 < z < 1.0; at higher z its blue end falls short, and the pixels it does not reach get
    their own ``n_poly_uncovered``-term polynomial (a per-segment fallback). Spectra with an unknown
    redshift get a polynomial of ``n_poly_no_z`` terms. Masks (every galaxy emission line of the
    shipped list, every sky line of :data:`lenscat.spectra.masks.FULL_SKY_LINES`) and sigma
    clipping as in :func:`~lenscat.spectra.continuum.fit_continua`. Spectra with fewer than twice as many usable pixels
    as terms get a zero continuum.

    On the four real SDSS spectra of ``tests/data/spectra`` the robust scatter of
    ``(flux - fit) * sqrt(ivar)`` matches that of the pipeline's own ``model`` (see
    ``docs/benchmarks.md``), and the fit restricted to 3800-5000 A is as good as a window-only fit.

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) vacuum wavelengths [Angstrom], increasing (normally :data:`lenscat.spectra.grid.FULL`).
    flux : numpy.ndarray
        (N, P) flux density [1e-17 erg/s/cm^2/Angstrom].
    ivar : numpy.ndarray
        (N, P) inverse variance of ``flux``; 0 = masked or not covered.
    z : numpy.ndarray
        (N,) foreground-galaxy redshifts (NaN = unknown).
    n_mult, n_poly, n_poly_no_z, n_poly_uncovered : int
        Numbers of Legendre terms (see above).
    n_clip : int
        Rounds of sigma clipping after the first fit.
    clip_nsigma : float
        Clipping threshold in units of the robust residual scatter.
    galaxy_half_width_kms, sky_half_width_kms : float
        Half-widths of the galaxy-line and sky-line masks [km/s].

    Returns
    -------
    numpy.ndarray
        (N, P) float64 continuum [1e-17 erg/s/cm^2/Angstrom], defined at every pixel inside the
        spectrum's span (masked ones included), held smooth outside it; zeros where no fit was possible.
    """
    wave, z1, good, fl, iv, out = _fit_inputs(
        wave,
        flux,
        ivar,
        z,
        galaxy_half_width_kms=galaxy_half_width_kms,
        sky_half_width_kms=sky_half_width_kms,
        full_range=True,
    )
    n, p = out.shape
    if n == 0 or p == 0:
        return out
    ngood = good.sum(axis=1)
    eb = eigen_basis()
    rest_lo, rest_hi = float(eb.loglam[0]), float(eb.loglam[-1])
    zz = np.where(np.isfinite(z1) & (z1 > -1.0), z1, np.nan)
    loglam = np.log10(wave)
    for start in range(0, n, _CHUNK_FULL):
        sl = slice(start, min(start + _CHUNK_FULL, n))
        zc, g = zz[sl], good[sl]
        has_z = np.isfinite(zc)
        rest = loglam[None, :] - np.log10(1.0 + np.where(has_z, zc, 0.0))[:, None]
        reach = has_z[:, None] & (rest >= rest_lo) & (rest <= rest_hi)  # (m, P) pixels the basis covers
        partial = has_z & ~reach.all(axis=1) & (g & ~reach).any(axis=1)
        for kind in ("eigen", "poly"):
            rows = (
                np.flatnonzero(has_z & (g & reach).any(axis=1))
                if kind == "eigen"
                else np.flatnonzero(~(has_z & (g & reach).any(axis=1)))
            )
            if rows.size == 0:
                continue
            if kind == "eigen":
                tmpl, _ = _eigen_on_grid(wave, zc[rows])  # (r, E, P), held at the basis ends outside
                tmpl = tmpl * reach[rows][:, None, :]
                mult = _row_poly(wave, g[rows], n_mult, reach[rows])
                parts = [
                    (tmpl[:, :, None, :] * mult[:, None, :, :]).reshape(rows.size, -1, p),
                    _row_poly(wave, g[rows], n_poly),
                ]
                k = eb.basis.shape[0] * n_mult + n_poly
                if partial[rows].any():
                    parts.append(
                        _row_poly(wave, g[rows], n_poly_uncovered, ~reach[rows]) * partial[rows][:, None, None]
                    )
                    k += n_poly_uncovered
                design = np.concatenate(parts, axis=1)
            else:
                design = _row_poly(wave, g[rows], n_poly_no_z)
                k = n_poly_no_z
            enough = ngood[sl][rows] >= 2 * k
            if not enough.any():
                continue
            ok = rows[enough]
            if not enough.all():
                design = design[enough]
            gi = start + ok
            out[gi] = _fit_block_incremental(design, fl[gi], iv[gi], good[gi], n_clip, clip_nsigma)
    return out
