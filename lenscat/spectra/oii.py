"""Background [OII] 3726,3729 emitters behind a galaxy: the family's lines, settings and doublet profile.

This module holds the rest wavelengths, :class:`OIIConfig`, :func:`prepare` and the doublet profile;
the search is :mod:`lenscat.spectra.oii_search`, the per-hit fit :mod:`lenscat.spectra.oii_fit`, the
vetoes :mod:`lenscat.spectra.oii_vetoes` and the injection :mod:`lenscat.spectra.oii_inject`.

The second detector family of the spectroscopic search (SILO on eBOSS; Karp et al.'s DESI
single-fibre search): a star-forming source *behind* the target galaxy (``z_s > z_l``) shows its
[OII] doublet, and where covered Hbeta and [OIII] 4959, 5007 at the same redshift, in the residual
``flux - continuum`` of the galaxy spectrum. Everything here works on the full-range log grid
(:data:`lenscat.spectra.grid.FULL`, 3600-10400 A, 69 km/s pixels) or any other log10 grid.

Search (:func:`~lenscat.spectra.oii_search.search`)
    1. residual ``r = flux - continuum``, weights ``w = ivar`` set to 0 at masked pixels, at every
       emission line of the foreground galaxy at ``z_l`` (full-range list of
       :func:`lenscat.spectra.masks.galaxy_lines`, +-``galaxy_half_width_kms`` = 600 km/s) and at the
       bright sky lines over the whole range (:data:`lenscat.spectra.masks.FULL_SKY_LINES`,
       +-``sky_half_width_kms`` = 150 km/s);
    2. ``w`` rescaled per block of ``scale_block_px`` (300) pixels by the robust spread of the
       normalised residuals ``r sqrt(w)`` (red of 7000 A sky-subtraction residuals make the spread
       grow; a single spectrum-wide factor would let them through);
    3. a bank of doublet kernels: two Gaussians at vacuum 3727.092 and 3729.875 A (3.24 px apart on
       the BOSS grid at any redshift: a doublet is shift-invariant in log lambda), peak ratio
       ``F3729 / F3727`` in ``ratios`` (0.8, 1.3), common width ``sigma_px`` in (0.9, 1.4, 2.1,
       3.0) px (62-207 km/s: resolution-limited to broad sources); the kernel's position is the
       mean rest wavelength 3728.48 A; for every pixel ``S/N = sum(r w k) / sqrt(sum(w k^2))``
       (float32 FFT cross-correlations of ``r w``, ``w`` and the good-pixel mask, blocks of
       ``chunk`` spectra);
    4. a kernel counts at a pixel only where at least ``min_coverage`` (0.7) of its ``k^2`` weight
       falls on good pixels; the map is the maximum over counted kernels;
    5. searched only where the doublet's redshift ``z = lambda / 3728.48 - 1`` lies above
       ``z_l + (1 + z_l) * min_dv_kms / c`` (default 6,000 km/s, ``dz = 0.02 (1 + z_l)``: closer
       sources are the galaxy's own gas or its group and would hardly be lensed -- ``D_ls / D_s``
       below ~2 %), up to ``z_max``;
    6. hits are local maxima (+-``merge_px`` = 4 px) of the map with ``S/N >= threshold`` (6), at most
       ``max_hits`` (5) per spectrum, strongest first.

    The detection statistic is the doublet S/N alone. Hbeta and [OIII] 4959+5007 (ratio 1:2.98) at
    the same redshift are measured at every hit (:func:`~lenscat.spectra.oii_fit.companion_snr`) and reported
    separately: they lie beyond 10400 A for ``z_s > 1.08`` (Hbeta) and their ratio to [OII] spans a factor ~10
    among star-forming galaxies, so adding them to the statistic with fixed weights lowers the S/N
    of the typical source; measured on injections into the real spectra of ``tests/data/spectra``
    (see ``docs/benchmarks.md``).

Per-hit fit (:func:`~lenscat.spectra.oii_fit.fit_doublet`)
    Two Gaussians (common velocity width, ratio ``F3729 / F3727`` free in [0.3, 1.5]) plus a linear
    residual continuum within +-3,000 km/s, bounded least squares: ``z_s`` and error, total flux
    and error, width, ratio, reduced chi^2; and a single Gaussian over the same pixels for
    comparison (``delta_chi2 = chi2_single - chi2_doublet``).

Vetoes (:func:`~lenscat.spectra.oii_vetoes.oii_vetoes`), each its own flag
    * ``veto_doublet`` -- a single narrow line is preferred to the doublet: ``delta_chi2 <=
      -doublet_delta_chi2`` (9), or the single line is narrower than ``narrow_sigma_px`` (0.6 px,
      below the instrumental resolution: a cosmic ray or sky spike) and the doublet is not
      better by ``doublet_delta_chi2``;
    * ``veto_foreground`` -- the feature belongs to the foreground: the fitted ``z_s`` is within
      ``min_dv_kms`` of ``z_l`` (or below it: the galaxy's own [OII] or a neighbour's), or the mean
      doublet wavelength (or the single-line centre) lies within ``foreground_clear_kms`` (1,000 km/s) of
      any emission line of the galaxy at ``z_l`` (residual wings of its Hbeta, [OIII], Halpha beyond
      the +-600 km/s search mask);
    * ``veto_interloper`` -- the line is another line of a lower-redshift emitter and its partner is
      present at the expected position *and* flux ratio (S/N >= ``partner_snr`` = 3), unless the
      doublet is resolved (``delta_chi2 >= doublet_delta_chi2``: no single line fits): [OIII] 5007
      (4959 at x0.99042, 1/2.98 of the flux: ratio 0.2-0.6), [OIII] 4959 (5007 at x1.00967, ratio
      1.7-5), Hbeta ([OIII] 5007 at x1.02992, ratio 0.3-20), Halpha ([NII] 6585 at x1.00315,
      ratio 0.1-3; Hbeta at x0.74074, ratio 0.15-0.6); for [OIII] 5007, Hbeta and Halpha also the
      interloper's own [OII] doublet further blue (x0.74447, x0.76675, x0.56796); partners are
      measured with a fixed Gaussian of the candidate's single-line width and need 90 % of the
      pixels within +-4 sigma unmasked (a partner in the wing of a masked line is not measured);
    * the survey-wide wavelength over-density (``veto_overdensity``) is refreshed over the hits of a
      version as for the Lyman-alpha family (:func:`lenscat.spectra.overdensity.wavelength_overdensity`
      on :data:`lenscat.spectra.grid.FULL`).

Injection (:func:`~lenscat.spectra.oii_inject.draw_oii_params`, :func:`~lenscat.spectra.oii_inject.inject_oii`)
    Doublets (with Hbeta and [OIII] at realistic ratios) scaled to a drawn matched S/N
    ``sqrt(sum ivar p^2)`` of the doublet profile ``p``, for injection-recovery evaluation.

Flux densities are in 1e-17 erg/s/cm^2/Angstrom, line fluxes in 1e-17 erg/s/cm^2, wavelengths in
vacuum Angstrom, velocities in km/s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from lenscat.spectra.grid import C_KMS
from lenscat.spectra.synth import matched_snr  # one answer to "the optimal S/N of a known line"

__all__ = [
    "HBETA",
    "OII_3727",
    "OII_3729",
    "OII_MEAN",
    "OIII_4959",
    "OIII_5007",
    "OIIConfig",
    "doublet_profile",
    "matched_snr",
    "prepare",
]

#: vacuum rest wavelengths [Angstrom]
OII_3727 = 3727.092
OII_3729 = 3729.875
#: flux-weighted mean of the doublet at ratio 1 (the kernel's and the hit's reference wavelength)
OII_MEAN = 0.5 * (OII_3727 + OII_3729)
HBETA = 4862.683
OIII_4959 = 4960.295
OIII_5007 = 5008.240
HALPHA = 6564.614
NII_6585 = 6585.269
#: [OIII] 5007 / 4959 flux ratio (atomic physics)
OIII_RATIO = 2.98

_SQRT2PI = float(np.sqrt(2.0 * np.pi))


@dataclass(frozen=True)
class OIIConfig:
    """Settings of the [OII] doublet search and its vetoes.

    Attributes
    ----------
    threshold : float
        Minimum doublet S/N of a hit.
    sigmas_px : tuple of float
        Gaussian widths of each doublet component [pixels of the log grid; x 69 km/s on BOSS pixels].
    ratios : tuple of float
        Flux ratios ``F3729 / F3727`` of the kernel bank.
    truncate : float
        Kernels are cut at +-``truncate`` sigma beyond each component.
    min_coverage : float
        Minimum fraction of a kernel's ``k^2`` weight on good pixels.
    merge_px : int
        Peaks closer than this are one hit (the highest).
    max_hits : int
        Hits kept per spectrum at most (strongest first).
    min_dv_kms : float
        Minimum velocity of the source behind the galaxy [km/s]: ``z_s >= z_l + (1 + z_l) dv / c``.
    z_max : float
        Highest source redshift searched.
    galaxy_half_width_kms, sky_half_width_kms : float
        Half-widths of the foreground-line and sky-line masks [km/s] (0 disables).
    scale_block_px : int
        Block length of the local noise rescaling [pixels] (0: no rescaling).
    min_good_pixels : int
        Spectra with fewer good pixels are not searched.
    chunk : int
        Rows transformed together.
    fit_window_kms : float
        Half-width of the per-hit fit window [km/s].
    doublet_delta_chi2 : float
        ``veto_doublet``: chi^2 margin by which a single Gaussian must beat the doublet.
    narrow_sigma_px : float
        ``veto_doublet``: a single line narrower than this [pixels] is a spike.
    partner_snr : float
        ``veto_interloper``: S/N at which an interloper's partner line counts.
    foreground_clear_kms : float
        ``veto_foreground``: minimum distance of the doublet from the galaxy's own lines [km/s].
    """

    threshold: float = 6.0
    sigmas_px: tuple[float, ...] = (0.9, 1.4, 2.1, 3.0)
    ratios: tuple[float, ...] = (0.8, 1.3)
    truncate: float = 4.0
    min_coverage: float = 0.7
    merge_px: int = 4
    max_hits: int = 5
    min_dv_kms: float = 6000.0
    z_max: float = 2.0
    galaxy_half_width_kms: float = 600.0
    sky_half_width_kms: float = 150.0
    scale_block_px: int = 300
    min_good_pixels: int = 200
    chunk: int = 256
    fit_window_kms: float = 3000.0
    doublet_delta_chi2: float = 9.0
    narrow_sigma_px: float = 0.6
    partner_snr: float = 3.0
    foreground_clear_kms: float = 1000.0


def _dlog(wave: np.ndarray) -> float:
    return float(np.median(np.diff(np.log10(wave))))


def min_z_source(z_lens: np.ndarray | float, min_dv_kms: float) -> np.ndarray:
    """Lowest searched source redshift ``z_l + (1 + z_l) dv / c`` (NaN z_l -> -inf: no cut)."""
    z = np.asarray(z_lens, dtype=np.float64)
    return np.where(np.isfinite(z), z + (1.0 + z) * min_dv_kms / C_KMS, -np.inf)


# --- preprocessing ------------------------------------------------------------------------------
def _nanmedian(a: np.ndarray) -> np.ndarray:
    """``numpy.nanmedian`` over the last axis (NaN where nothing is finite), without its warnings.

    Sorting puts the NaNs last, so the median of the ``m`` finite values sits at ``(m - 1) // 2``
    and ``m // 2``: the same numbers, several times faster, and no warnings to silence (the
    search calls this from several threads, where ``warnings.catch_warnings`` is not safe).
    """
    srt = np.sort(a, axis=-1)
    m = np.count_nonzero(~np.isnan(a), axis=-1)
    top = a.shape[-1] - 1
    lo = np.take_along_axis(srt, (np.maximum(m - 1, 0) // 2)[..., None], axis=-1)[..., 0]
    hi = np.take_along_axis(srt, np.minimum(m // 2, top)[..., None], axis=-1)[..., 0]
    return np.where(m > 0, (lo + hi) / 2.0, np.nan)


def prepare(
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    z: np.ndarray,
    config: OIIConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Residuals and search weights of a batch: ``(r, w)``, both (N, P) float64.

    ``w`` is ``ivar`` with masked, foreground-line and sky-line pixels set to 0 and rescaled per
    block by the robust residual spread (see the module docstring).
    """
    from lenscat.spectra.masks import galaxy_line_pixels, sky_line_mask

    cfg = config or OIIConfig()
    wave = np.asarray(wave, dtype=np.float64)
    f = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    c = np.atleast_2d(np.asarray(continuum, dtype=np.float64))
    iv = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    z = np.atleast_1d(np.asarray(z, dtype=np.float64))
    r = f - c
    good = np.isfinite(r) & np.isfinite(iv) & (iv > 0)
    if cfg.galaxy_half_width_kms > 0:
        g = galaxy_line_pixels(wave, z, half_width_kms=cfg.galaxy_half_width_kms, full_range=True)
        good.reshape(-1)[g] = False
    if cfg.sky_half_width_kms > 0:
        good &= ~sky_line_mask(wave, half_width_kms=cfg.sky_half_width_kms, full_range=True)[None, :]
    r = np.where(good, r, 0.0)
    w = np.where(good, iv, 0.0)
    b = int(cfg.scale_block_px)
    if b > 0:
        n, p = r.shape
        nb = -(-p // b)
        pad = nb * b - p
        chi = np.abs(np.pad(r * np.sqrt(w), ((0, 0), (0, pad)))).reshape(n, nb, b)
        gb = np.pad(good, ((0, 0), (0, pad))).reshape(n, nb, b)
        few = gb.sum(axis=2) < 30
        with np.errstate(all="ignore"):
            med = _nanmedian(np.where(gb, chi, np.nan)) / 0.6745
            med = np.where(few | ~np.isfinite(med) | (med <= 0), np.nan, med)
            # blocks with too few good pixels take the spectrum's median spread
            row_med = _nanmedian(med) if nb else np.ones(n)
        row_med = np.where(np.isfinite(row_med), row_med, 1.0)
        s = np.where(np.isfinite(med), med, row_med[:, None])
        s = np.repeat(s, b, axis=1)[:, :p]
        w = w / (s * s)
    return r, w


# --- kernels ------------------------------------------------------------------------------------
def _component_offsets(dlog: float) -> tuple[float, float]:
    """Offsets of the 3727 and 3729 components from the mean wavelength [pixels]."""
    return (float(np.log10(OII_3727 / OII_MEAN) / dlog), float(np.log10(OII_3729 / OII_MEAN) / dlog))


def _doublet_kernel(sigma: float, ratio: float, dlog: float, truncate: float) -> tuple[np.ndarray, int]:
    """Unit-peak-amplitude doublet kernel (3727 component amplitude 1, 3729 ``ratio``) and its half-length."""
    d1, d2 = _component_offsets(dlog)
    h = int(np.ceil(max(abs(d1), abs(d2)) + truncate * sigma))
    x = np.arange(-h, h + 1, dtype=np.float64)
    k = np.exp(-0.5 * ((x - d1) / sigma) ** 2) + ratio * np.exp(-0.5 * ((x - d2) / sigma) ** 2)
    return k, h


def _edges(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel edges (geometric midpoints; the end pixels mirrored) of an increasing grid [Angstrom]."""
    if wave.size < 2:
        return wave - 0.5, wave + 0.5
    mid = np.sqrt(wave[1:] * wave[:-1])
    lo = np.concatenate([[wave[0] * wave[0] / mid[0]], mid])
    hi = np.concatenate([mid, [wave[-1] * wave[-1] / mid[-1]]])
    return lo, hi


def _gauss(
    wave: np.ndarray, lam: float, line_flux: float, sigma_kms: float, edges: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Gaussian line of flux ``line_flux`` averaged over each pixel [1e-17 erg/s/cm^2/A].

    Pixel averages (not centre values), so that lines narrower than a pixel keep their flux;
    ``edges`` (lower, upper) when ``wave`` is a subset of a grid (default: from ``wave``).
    """
    sig = lam * sigma_kms / C_KMS
    lo, hi = _edges(wave) if edges is None else edges
    return np.asarray(line_flux * (special.ndtr((hi - lam) / sig) - special.ndtr((lo - lam) / sig)) / (hi - lo))


def doublet_profile(
    wave: np.ndarray,
    z: float,
    line_flux: float,
    sigma_kms: float,
    ratio: float,
    *,
    edges: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """[OII] doublet flux density at redshift ``z``, averaged over each pixel.

    Parameters
    ----------
    wave : numpy.ndarray
        Wavelengths [Angstrom].
    z : float
        Source redshift.
    line_flux : float
        Total flux of both components [1e-17 erg/s/cm^2].
    sigma_kms : float
        Gaussian sigma of each component [km/s].
    ratio : float
        ``F3729 / F3727``.
    edges : tuple of numpy.ndarray, optional
        Pixel edges (lower, upper) [Angstrom] when ``wave`` is a subset of a grid.

    Returns
    -------
    numpy.ndarray
        [1e-17 erg/s/cm^2/Angstrom].
    """
    wave = np.asarray(wave, dtype=np.float64)
    out = np.zeros_like(wave)
    for lam0, frac in ((OII_3727, 1.0 / (1.0 + ratio)), (OII_3729, ratio / (1.0 + ratio))):
        out += _gauss(wave, lam0 * (1.0 + z), line_flux * frac, sigma_kms, edges)
    return out
