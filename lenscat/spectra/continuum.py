"""Galaxy continuum models for the line search: redshifted eigenspectra plus a low-order polynomial.

This module owns the continuum the residual line search subtracts when a spectrum file carries no
pipeline model (and the masks that fit uses). The recipe is that of BOSS Emission-Line Lens Survey
(BELLS; Bolton et al. 2006, ApJ 638, 703; Brownstein et al. 2012) and BELLS GALLERY (Shu et al. 2016,
ApJ 824, 86): the SDSS galaxy eigenspectra ``spEigenGal-55740`` (four rest-frame components, see
:func:`lenscat.spectra.reference.eigen_basis`) are redshifted to the foreground galaxy's redshift and
interpolated onto the observed pixels, a low-order Legendre polynomial in wavelength (scaled to
[-1, 1] over the grid) absorbs spectrophotometric residuals, and the coefficients come from weighted
linear least squares with the galaxy's emission lines, bright sky lines and masked pixels given zero
weight, followed by rounds of sigma clipping (which also keep a background emission line out of the
fit).

Fluxes are in the survey unit, 1e-17 erg/s/cm^2/Angstrom; wavelengths are vacuum Angstrom.
"""

from __future__ import annotations

import numpy as np

from lenscat.spectra.masks import galaxy_line_masks, sky_line_mask
from lenscat.spectra.reference import eigen_basis

__all__ = [
    "CLIP_NSIGMA",
    "CLIP_ROUNDS",
    "GALAXY_HALF_WIDTH_KMS",
    "N_POLY_NO_Z",
    "fit_continua",
    "fit_continuum",
    "fit_mask",
    "robust_sigma_rows",
]

#: half-width of the galaxy emission-line masks used by the continuum fit [km/s]
GALAXY_HALF_WIDTH_KMS = 600.0
#: half-width of the bright-sky-line masks [km/s]
SKY_HALF_WIDTH_KMS = 150.0
#: number of Legendre terms (degree + 1) when the redshift is unknown (no eigenspectra)
N_POLY_NO_Z = 6
#: clipping threshold, in units of the robust scatter of the normalised residuals
CLIP_NSIGMA = 3.0
#: rounds of sigma clipping after the first fit
CLIP_ROUNDS = 2
#: rows fitted together (bounds the (rows, terms, pixels) design array to a few tens of MB)
_CHUNK = 512
#: MAD -> sigma for a Gaussian
_MAD_TO_SIGMA = 1.0 / 0.6744897501960817


def fit_mask(
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    z: np.ndarray,
    *,
    galaxy_half_width_kms: float = GALAXY_HALF_WIDTH_KMS,
    sky_half_width_kms: float = SKY_HALF_WIDTH_KMS,
    extended: bool = True,
    full_range: bool = False,
) -> np.ndarray:
    """(N, P) pixels usable for a continuum or line fit: finite, ``ivar > 0``, off galaxy and sky lines.

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) wavelengths [Angstrom].
    flux, ivar : numpy.ndarray
        (N, P) flux [1e-17 erg/s/cm^2/A] and inverse variance.
    z : numpy.ndarray
        (N,) galaxy redshifts (NaN: no galaxy-line mask).
    galaxy_half_width_kms, sky_half_width_kms : float
        Mask half-widths [km/s].
    extended : bool
        Use the extended galaxy line list (all lines 3300-5100 A rest, as BELLS GALLERY).
    full_range : bool
        Mask every galaxy line of the shipped list and every sky line of
        :data:`lenscat.spectra.masks.FULL_SKY_LINES` (fits over 3600-10400 A).
    """
    good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
    good &= ~galaxy_line_masks(wave, z, half_width_kms=galaxy_half_width_kms, extended=extended, full_range=full_range)
    if sky_half_width_kms > 0:
        good &= ~sky_line_mask(wave, half_width_kms=sky_half_width_kms, full_range=full_range)[None, :]
    return np.asarray(good)


def robust_sigma_rows(x: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Per-row robust scatter ``median(|x|) / 0.6745`` over ``good`` pixels (NaN for empty rows).

    A zero-centred estimate (the normalised residuals of a fit have zero mean), so that for Gaussian
    residuals it equals their standard deviation.

    Parameters
    ----------
    x : numpy.ndarray
        (N, P) values (e.g. ``(flux - model) * sqrt(ivar)``).
    good : numpy.ndarray
        (N, P) bool, pixels to use.
    """
    a = np.where(good, np.abs(x), np.inf)
    a.sort(axis=1)
    ng = good.sum(axis=1)
    idx = np.clip((ng - 1) // 2, 0, max(x.shape[1] - 1, 0))
    lo = np.take_along_axis(a, idx[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(a, np.clip(ng // 2, 0, max(x.shape[1] - 1, 0))[:, None], axis=1)[:, 0]
    med = np.where(ng > 0, 0.5 * (np.where(np.isfinite(lo), lo, 0.0) + np.where(np.isfinite(hi), hi, 0.0)), np.nan)
    return np.asarray(med * _MAD_TO_SIGMA, dtype=np.float64)


def _poly_basis(wave: np.ndarray, n_terms: int) -> np.ndarray:
    """(n_terms, P) Legendre polynomials P_0..P_{n-1} of wavelength mapped linearly onto [-1, 1]."""
    lo, hi = float(wave[0]), float(wave[-1])
    x = 2.0 * (wave - lo) / (hi - lo) - 1.0 if hi > lo else np.zeros_like(wave)
    return np.asarray(np.polynomial.legendre.legvander(x, max(n_terms, 1) - 1).T)


def _eigen_on_grid(wave: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenspectra redshifted to each ``z`` and linearly interpolated onto ``wave``.

    Returns
    -------
    tuple of numpy.ndarray
        (n, n_eigen, P) templates and the (n,) bool "the basis covers every pixel" flag.
    """
    eb = eigen_basis()
    ll0 = float(eb.loglam[0])
    dll = float(eb.loglam[1] - eb.loglam[0])
    m = eb.loglam.size
    t = (np.log10(wave)[None, :] - np.log10(1.0 + z)[:, None] - ll0) / dll  # (n, P)
    covered = (t.min(axis=1) >= 0.0) & (t.max(axis=1) <= m - 1)
    t = np.clip(t, 0.0, m - 1.0)
    i0 = np.minimum(np.floor(t).astype(np.int64), m - 2)
    f = t - i0
    b = eb.basis  # (E, M)
    tmpl = b[:, i0] * (1.0 - f)[None] + b[:, i0 + 1] * f[None]  # (E, n, P)
    return np.ascontiguousarray(np.moveaxis(tmpl, 0, 1)), covered


def _solve(design: np.ndarray, flux: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares coefficients for a batch: (n, K) from (n, K, P) design, (n, P) data.

    The normal equations are Jacobi-scaled and given a 1e-10 ridge, so singular systems (all pixels
    masked, or a term with no support) solve to finite values (zeros when there is no data).
    """
    dw = design * w[:, None, :]
    a = dw @ np.swapaxes(design, 1, 2)  # (n, K, K)
    b = np.einsum("nkp,np->nk", dw, flux)
    return _solve_normal(a, b)


def _solve_normal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve batched normal equations ``a c = b`` ((n, K, K), (n, K)), Jacobi-scaled with a 1e-10 ridge."""
    d = np.einsum("nkk->nk", a).copy()
    d = np.where(d > 0, d, 1.0)
    s = 1.0 / np.sqrt(d)
    a = a * s[:, :, None] * s[:, None, :]
    a += 1e-10 * np.eye(a.shape[1])[None]
    c = np.linalg.solve(a, (b * s)[..., None])[..., 0]
    return np.asarray(c * s)


def _fit_block_incremental(
    design: np.ndarray, flux: np.ndarray, ivar: np.ndarray, good: np.ndarray, n_clip: int, clip_nsigma: float
) -> np.ndarray:
    """:func:`_fit_block` for wide designs: the normal equations are built once and then updated by
    the pixels each clipping round adds or removes (a few per cent), not rebuilt.

    Products use ``numpy.einsum`` (no BLAS): small BLAS products from several ingest worker
    processes at once oversubscribe the cores and run 10-100x slower.
    """
    use = good.copy()
    w = np.where(use, ivar, 0.0)
    a = np.einsum("nkp,njp->nkj", design * w[:, None, :], design)
    b = np.einsum("nkp,np->nk", design, w * flux)
    model = np.zeros_like(flux)
    for it in range(n_clip + 1):
        coef = _solve_normal(a, b)
        model = np.einsum("nk,nkp->np", coef, design)
        if it == n_clip:
            break
        chi = (flux - model) * np.sqrt(np.where(good, ivar, 0.0))
        s = robust_sigma_rows(chi, use)
        s = np.where(np.isfinite(s) & (s > 0), s, np.inf)
        use = good & (np.abs(chi) <= clip_nsigma * s[:, None])
        w_new = np.where(use, ivar, 0.0)
        dw = w_new - w
        w = w_new
        rr, pp = np.nonzero(dw)
        if rr.size == 0:
            break
        dcol = design[rr, :, pp]  # (M, K): the design columns of the changed pixels
        contrib = np.einsum("mk,mj->mkj", dcol * dw[rr, pp][:, None], dcol)
        starts = np.flatnonzero(np.r_[True, rr[1:] != rr[:-1]])
        a[rr[starts]] += np.add.reduceat(contrib, starts, axis=0)
        b[rr[starts]] += np.add.reduceat(dcol * (dw[rr, pp] * flux[rr, pp])[:, None], starts, axis=0)
    return model


def _fit_block(
    design: np.ndarray, flux: np.ndarray, ivar: np.ndarray, good: np.ndarray, n_clip: int, clip_nsigma: float
) -> np.ndarray:
    """Fit, clip and refit one block of spectra sharing a design layout; returns (n, P) models."""
    use = good.copy()
    model = np.zeros_like(flux)
    for it in range(n_clip + 1):
        w = np.where(use, ivar, 0.0)
        coef = _solve(design, flux, w)
        model = np.einsum("nk,nkp->np", coef, design)
        if it == n_clip:
            break
        chi = (flux - model) * np.sqrt(np.where(good, ivar, 0.0))
        s = robust_sigma_rows(chi, use)
        s = np.where(np.isfinite(s) & (s > 0), s, np.inf)
        use = good & (np.abs(chi) <= clip_nsigma * s[:, None])
    return model


def _fit_inputs(
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    z: np.ndarray,
    *,
    galaxy_half_width_kms: float,
    sky_half_width_kms: float,
    full_range: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked float64 inputs of a batch fit: (wave, z, good pixels, flux and ivar zeroed off them, zero output)."""
    wave = np.asarray(wave, dtype=np.float64)
    flux2 = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    ivar2 = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    z1 = np.atleast_1d(np.asarray(z, dtype=np.float64))
    n, p = flux2.shape
    if ivar2.shape != (n, p) or z1.shape != (n,) or wave.shape != (p,):
        raise ValueError(f"shape mismatch: wave {wave.shape}, flux {flux2.shape}, ivar {ivar2.shape}, z {z1.shape}")
    good = fit_mask(
        wave,
        flux2,
        ivar2,
        z1,
        galaxy_half_width_kms=galaxy_half_width_kms,
        sky_half_width_kms=sky_half_width_kms,
        extended=True,
        full_range=full_range,
    )
    return (wave, z1, good, np.where(good, flux2, 0.0), np.where(good, ivar2, 0.0), np.zeros((n, p), dtype=np.float64))


def fit_continua(
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    z: np.ndarray,
    *,
    n_poly: int = 3,
    n_poly_no_z: int = N_POLY_NO_Z,
    n_clip: int = CLIP_ROUNDS,
    clip_nsigma: float = CLIP_NSIGMA,
    galaxy_half_width_kms: float = GALAXY_HALF_WIDTH_KMS,
    sky_half_width_kms: float = SKY_HALF_WIDTH_KMS,
    full_range: bool = False,
) -> np.ndarray:
    """Eigenspectra + polynomial continua for a batch of spectra on one grid (BELLS GALLERY recipe).

    Per spectrum the model is ``sum_e a_e T_e(lambda / (1 + z)) + sum_j b_j P_j(x)`` with ``T_e``
    the four ``spEigenGal-55740`` eigenspectra and ``P_j`` Legendre polynomials of ``x``, the
    wavelength mapped linearly onto [-1, 1] over ``wave``. The fit is weighted linear least squares
    (batched normal equations) over pixels with ``ivar > 0``, off the galaxy's emission lines
    (extended list, +-``galaxy_half_width_kms``) and bright sky lines, then ``n_clip`` rounds of
    clipping of pixels whose normalised residual exceeds ``clip_nsigma`` times its robust scatter.

    Spectra with NaN redshift, or whose redshifted basis does not cover the whole grid
    (z > ~1.1 for 3800 A), get a polynomial-only fit of ``n_poly_no_z`` terms. Spectra with fewer
    than twice as many usable pixels as fit terms get a zero continuum.

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) vacuum wavelengths [Angstrom], increasing.
    flux : numpy.ndarray
        (N, P) flux density [1e-17 erg/s/cm^2/Angstrom].
    ivar : numpy.ndarray
        (N, P) inverse variance of ``flux``; 0 = masked.
    z : numpy.ndarray
        (N,) foreground-galaxy redshifts (NaN = unknown).
    n_poly : int
        Number of polynomial terms added to the eigenspectra (3: constant, linear, quadratic).
    n_poly_no_z : int
        Number of polynomial terms when no eigenspectra are used (6: degree 5).
    n_clip : int
        Rounds of sigma clipping after the first fit.
    clip_nsigma : float
        Clipping threshold in units of the robust residual scatter.
    galaxy_half_width_kms, sky_half_width_kms : float
        Half-widths of the galaxy-line and sky-line masks [km/s].

    Returns
    -------
    numpy.ndarray
        (N, P) float64 continuum [1e-17 erg/s/cm^2/Angstrom], defined at every pixel (masked ones
        included); zeros where no fit was possible.
    """
    wave, z1, good, fl, iv, out = _fit_inputs(
        wave,
        flux,
        ivar,
        z,
        galaxy_half_width_kms=galaxy_half_width_kms,
        sky_half_width_kms=sky_half_width_kms,
        full_range=full_range,
    )
    n, p = out.shape
    if n == 0 or p == 0:
        return out
    ngood = good.sum(axis=1)
    poly = _poly_basis(wave, n_poly)
    poly_noz = _poly_basis(wave, n_poly_no_z)
    zz = np.where(np.isfinite(z1) & (z1 > -1.0), z1, np.nan)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        zc = zz[sl]
        covered = np.zeros(zc.shape, dtype=bool)
        tmpl = np.zeros((zc.size, 0, p))
        has_z = np.isfinite(zc)
        if has_z.any():
            tmpl_z, cov_z = _eigen_on_grid(wave, zc[has_z])
            covered[has_z] = cov_z
            tmpl = tmpl_z[cov_z]
        idx_e = np.flatnonzero(covered)
        idx_p = np.flatnonzero(~covered)
        n_e = eigen_basis().basis.shape[0] + n_poly
        for idx, k in ((idx_e, n_e), (idx_p, n_poly_no_z)):
            rows = idx[ngood[sl][idx] >= 2 * k]
            if rows.size == 0:
                continue
            if k == n_e:
                # rows of ``tmpl`` follow idx_e; pick the fitted subset
                sel = np.searchsorted(idx_e, rows)
                design = np.concatenate([tmpl[sel], np.broadcast_to(poly, (rows.size,) + poly.shape)], axis=1)
            else:
                design = np.ascontiguousarray(np.broadcast_to(poly_noz, (rows.size,) + poly_noz.shape))
            g = start + rows
            out[g] = _fit_block(design, fl[g], iv[g], good[g], n_clip, clip_nsigma)
    return out


def fit_continuum(
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    z: float | None,
    *,
    n_poly: int = 3,
    n_clip: int = CLIP_ROUNDS,
    clip_nsigma: float = CLIP_NSIGMA,
) -> np.ndarray:
    """Eigenspectra + polynomial continuum of one spectrum (see :func:`fit_continua`).

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) vacuum wavelengths [Angstrom], increasing.
    flux : numpy.ndarray
        (P,) flux density [1e-17 erg/s/cm^2/Angstrom].
    ivar : numpy.ndarray
        (P,) inverse variance; 0 = masked.
    z : float or None
        Foreground-galaxy redshift (None/NaN: polynomial-only fit of degree 5).
    n_poly : int
        Polynomial terms added to the eigenspectra.
    n_clip : int
        Rounds of sigma clipping.
    clip_nsigma : float
        Clipping threshold [robust sigma].

    Returns
    -------
    numpy.ndarray
        (P,) float64 continuum [1e-17 erg/s/cm^2/Angstrom]; zeros when the spectrum is (nearly) all
        masked.
    """
    zv = np.nan if z is None else float(z)
    return fit_continua(
        wave,
        np.asarray(flux)[None, :],
        np.asarray(ivar)[None, :],
        np.array([zv]),
        n_poly=n_poly,
        n_clip=n_clip,
        clip_nsigma=clip_nsigma,
    )[0]
