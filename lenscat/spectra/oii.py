"""Background [OII] 3726,3729 emitters behind a galaxy: doublet matched filter, doublet fit, vetoes.

The second detector family of the spectroscopic search (SILO on eBOSS; Karp et al.'s DESI
single-fibre search): a star-forming source *behind* the target galaxy (``z_s > z_l``) shows its
[OII] doublet, and where covered Hbeta and [OIII] 4959, 5007 at the same redshift, in the residual
``flux - continuum`` of the galaxy spectrum. Everything here works on the full-range log grid
(:data:`lenscat.spectra.grid.FULL`, 3600-10400 A, 69 km/s pixels) or any other log10 grid.

Search (:func:`search`)
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
    the same redshift are measured at every hit (:func:`companion_snr`) and reported separately:
    they lie beyond 10400 A for ``z_s > 1.08`` (Hbeta) and their ratio to [OII] spans a factor ~10
    among star-forming galaxies, so adding them to the statistic with fixed weights lowers the S/N
    of the typical source; measured on injections into the real spectra of ``tests/data/spectra``
    (see ``docs/benchmarks.md``).

Per-hit fit (:func:`fit_doublet`)
    Two Gaussians (common velocity width, ratio ``F3729 / F3727`` free in [0.3, 1.5]) plus a linear
    residual continuum within +-3,000 km/s, bounded least squares: ``z_s`` and error, total flux
    and error, width, ratio, reduced chi^2; and a single Gaussian over the same pixels for
    comparison (``delta_chi2 = chi2_single - chi2_doublet``).

Vetoes (:func:`oii_vetoes`), each its own flag
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
      version as for the Lyman-alpha family (:func:`lenscat.spectra.linefit.wavelength_overdensity`
      on :data:`lenscat.spectra.grid.FULL`).

Injection (:func:`draw_oii_params`, :func:`inject_oii`)
    Doublets (with Hbeta and [OIII] at realistic ratios) scaled to a drawn matched S/N
    ``sqrt(sum ivar p^2)`` of the doublet profile ``p``, for injection-recovery evaluation.

Flux densities are in 1e-17 erg/s/cm^2/Angstrom, line fluxes in 1e-17 erg/s/cm^2, wavelengths in
vacuum Angstrom, velocities in km/s.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, special
from scipy.ndimage import maximum_filter1d

from lenscat.spectra.grid import C_KMS
from lenscat.spectra.synth import matched_snr  # one answer to "the optimal S/N of a known line"

__all__ = [
    "HBETA",
    "OII_3727",
    "OII_3729",
    "OII_MEAN",
    "OIII_4959",
    "OIII_5007",
    "DoubletFit",
    "OIIConfig",
    "OIIHits",
    "OIIParams",
    "OIIVetoes",
    "companion_snr",
    "doublet_profile",
    "draw_oii_params",
    "fit_doublet",
    "inject_oii",
    "interloper_tests",
    "matched_snr",
    "oii_vetoes",
    "prepare",
    "search",
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
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks and rows
            med = np.nanmedian(np.where(gb, chi, np.nan), axis=2) / 0.6745
            med = np.where(few | ~np.isfinite(med) | (med <= 0), np.nan, med)
            # blocks with too few good pixels take the spectrum's median spread
            row_med = np.nanmedian(med, axis=1) if nb else np.ones(n)
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


# --- search -------------------------------------------------------------------------------------
@dataclass
class OIIHits:
    """Doublet-filter hits as parallel arrays (one entry per hit), and the best S/N per spectrum.

    Attributes
    ----------
    row, pixel : numpy.ndarray
        int64: spectrum within the batch, peak pixel on the grid.
    wavelength : numpy.ndarray
        Mean doublet wavelength at the peak (``OII_MEAN * (1 + z)``) [Angstrom].
    z : numpy.ndarray
        Doublet redshift at the peak.
    snr : numpy.ndarray
        Doublet S/N of the best kernel.
    sigma_px, ratio : numpy.ndarray
        Width [pixels] and ``F3729 / F3727`` of the best kernel.
    line_flux : numpy.ndarray
        Total doublet flux of the best kernel [1e-17 erg/s/cm^2].
    best : numpy.ndarray
        (N,) best doublet S/N of every spectrum over the searched range (NaN: not searched).
    """

    row: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pixel: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    wavelength: np.ndarray = field(default_factory=lambda: np.zeros(0))
    z: np.ndarray = field(default_factory=lambda: np.zeros(0))
    snr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sigma_px: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ratio: np.ndarray = field(default_factory=lambda: np.zeros(0))
    line_flux: np.ndarray = field(default_factory=lambda: np.zeros(0))
    best: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return int(self.row.size)


def _next_fast(n: int) -> int:
    from scipy.fft import next_fast_len

    return int(next_fast_len(n, real=True))


def search(
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    z_lens: np.ndarray,
    config: OIIConfig | None = None,
) -> OIIHits:
    """Search a batch of spectra on one log grid for background [OII] doublets.

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) pixel wavelengths [Angstrom] of a log10-uniform grid (e.g. :data:`lenscat.spectra.grid.FULL`).
    flux, ivar, continuum : numpy.ndarray
        (N, P) flux density and continuum [1e-17 erg/s/cm^2/Angstrom], inverse variance (0 = masked).
    z_lens : numpy.ndarray
        (N,) foreground-galaxy redshifts (NaN: no foreground masks, whole range searched).
    config : OIIConfig, optional
        Search settings.

    Returns
    -------
    OIIHits
        Hits sorted by row, then S/N (descending).
    """
    cfg = config or OIIConfig()
    wave = np.asarray(wave, dtype=np.float64)
    zl = np.atleast_1d(np.asarray(z_lens, dtype=np.float64))
    n, p = np.atleast_2d(flux).shape
    out_best = np.full(n, np.nan)
    if n == 0:
        return OIIHits(best=out_best)
    dlog = _dlog(wave)
    kernels = [(s, q, *_doublet_kernel(s, q, dlog, cfg.truncate)) for s in cfg.sigmas_px for q in cfg.ratios]
    hmax = max(h for _, _, _, h in kernels)
    length = _next_fast(p + 2 * hmax + 1)
    from scipy import fft as sfft

    spec_k = []
    for s, q, k, h in kernels:
        kk = np.zeros(length)
        kk[np.arange(-h, h + 1) % length] = k
        kk2 = np.zeros(length)
        kk2[np.arange(-h, h + 1) % length] = k * k
        spec_k.append(
            (
                s,
                q,
                np.conj(sfft.rfft(kk)).astype(np.complex64),
                np.conj(sfft.rfft(kk2)).astype(np.complex64),
                float(np.sum(k * k)),
                k,
                h,
            )
        )
    z_pix = wave / OII_MEAN - 1.0
    zmin = min_z_source(zl, cfg.min_dv_kms)
    dpx_a = np.gradient(wave)
    rows_l, pix_l, snr_l, sig_l, rat_l, amp_l = [], [], [], [], [], []
    step = max(1, int(cfg.chunk))
    for s0 in range(0, n, step):
        s1 = min(n, s0 + step)
        r, w = prepare(
            wave,
            np.atleast_2d(flux)[s0:s1],
            np.atleast_2d(ivar)[s0:s1],
            np.atleast_2d(continuum)[s0:s1],
            zl[s0:s1],
            cfg,
        )
        good = w > 0
        ok_row = good.sum(axis=1) >= cfg.min_good_pixels
        allowed = (z_pix[None, :] >= zmin[s0:s1, None]) & (z_pix[None, :] <= cfg.z_max) & ok_row[:, None]
        # float32 transforms: the sums need ~1e-4 relative precision, not 1e-12
        f_rw = sfft.rfft((r * w).astype(np.float32), n=length, axis=1)
        f_w = sfft.rfft(w.astype(np.float32), n=length, axis=1)
        f_g = sfft.rfft(good.astype(np.float32), n=length, axis=1)
        smap = np.full((s1 - s0, p), -np.inf, dtype=np.float32)
        kidx = np.zeros((s1 - s0, p), dtype=np.int8)
        for j, (_s, _q, fk, fk2, k2sum, _k, _h) in enumerate(spec_k):
            num = sfft.irfft(f_rw * fk, n=length, axis=1)[:, :p]
            den = sfft.irfft(f_w * fk2, n=length, axis=1)[:, :p]
            cov = sfft.irfft(f_g * fk2, n=length, axis=1)[:, :p]
            use = (cov >= cfg.min_coverage * k2sum) & (den > 1e-12 * float(np.max(den, initial=0.0))) & allowed
            np.maximum(den, np.float32(1e-30), out=den)
            np.sqrt(den, out=den)
            np.divide(num, den, out=num)
            num[~use] = -np.inf
            better = num > smap
            smap[better] = num[better]
            kidx[better] = j
        best = smap.max(axis=1)
        out_best[s0:s1] = np.where(np.isfinite(best), best, np.nan)
        peak = (
            smap == maximum_filter1d(smap, size=2 * int(cfg.merge_px) + 1, axis=1, mode="constant", cval=-np.inf)
        ) & (smap >= cfg.threshold)
        rr, pp = np.nonzero(peak)
        for i in np.unique(rr):
            sel = np.flatnonzero(rr == i)
            order = sel[np.argsort(-smap[i, pp[sel]], kind="stable")][: int(cfg.max_hits)]
            for o in order:
                px = int(pp[o])
                j = int(kidx[i, px])
                s, q, _fk, _fk2, _k2, k, h = spec_k[j]
                # the best kernel's amplitude at the peak, exactly: A = sum(r w k) / sum(w k^2) (3727
                # component), total flux A (1 + q) sigma_lambda sqrt(2 pi)
                lo, hi = max(px - h, 0), min(px + h + 1, p)
                kw = k[lo - (px - h) : hi - (px - h)]
                den1 = float(np.sum(w[i, lo:hi] * kw * kw))
                amp = float(np.sum(r[i, lo:hi] * w[i, lo:hi] * kw)) / den1 if den1 > 0 else np.nan
                sig_lam = s * float(dpx_a[px])  # component sigma [Angstrom]
                rows_l.append(s0 + int(i))
                pix_l.append(px)
                snr_l.append(float(smap[i, px]))
                sig_l.append(s)
                rat_l.append(q)
                amp_l.append(amp * (1.0 + q) * sig_lam * _SQRT2PI)
    row = np.asarray(rows_l, dtype=np.int64)
    pix = np.asarray(pix_l, dtype=np.int64)
    return OIIHits(
        row=row,
        pixel=pix,
        wavelength=wave[pix] if pix.size else np.zeros(0),
        z=z_pix[pix] if pix.size else np.zeros(0),
        snr=np.asarray(snr_l, dtype=np.float64),
        sigma_px=np.asarray(sig_l, dtype=np.float64),
        ratio=np.asarray(rat_l, dtype=np.float64),
        line_flux=np.asarray(amp_l, dtype=np.float64),
        best=out_best,
    )


# --- single-line measurements ---------------------------------------------------------------------
def _line_measure(
    wave: np.ndarray,
    r: np.ndarray,
    w: np.ndarray,
    centres: list[tuple[float, float]],
    sigma_kms: float,
    min_coverage: float = 0.7,
    cover_nsigma: float = 2.0,
) -> tuple[float, float]:
    """Flux and its error of a fixed template (sum of Gaussians ``(lambda, weight)``) on residuals ``r``.

    Returns (NaN, NaN) when the template's main line is not covered (``min_coverage`` of its pixels
    within +-``cover_nsigma`` sigma unmasked, and inside the grid).
    """
    lam0 = centres[0][0]
    sig0 = lam0 * sigma_kms / C_KMS
    if not (wave[0] <= lam0 - cover_nsigma * sig0 and lam0 + cover_nsigma * sig0 <= wave[-1]):
        return np.nan, np.nan
    inner = np.abs(wave - lam0) <= cover_nsigma * sig0
    step = float(np.interp(lam0, wave, np.gradient(wave)))
    need = max(int(round(2.0 * cover_nsigma * sig0 / step)), int(inner.sum()), 1)
    if (w[inner] > 0).sum() < min_coverage * need or (w[inner] > 0).sum() == 0:
        return np.nan, np.nan
    k = np.zeros_like(wave)
    for lam, wt in centres:
        k += wt * _gauss(wave, lam, 1.0, sigma_kms)
    den = float(np.sum(w * k * k))
    if den <= 0:
        return np.nan, np.nan
    return float(np.sum(r * w * k) / den), float(1.0 / np.sqrt(den))


def companion_snr(wave: np.ndarray, r: np.ndarray, w: np.ndarray, z: float, sigma_kms: float) -> dict[str, float]:
    """S/N and fluxes of Hbeta and [OIII] 4959+5007 (1:2.98) at source redshift ``z``.

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) wavelengths [Angstrom].
    r, w : numpy.ndarray
        (P,) residual [1e-17 erg/s/cm^2/A] and search weights of one spectrum (from :func:`prepare`).
    z : float
        Source redshift.
    sigma_kms : float
        Gaussian sigma of the lines [km/s].

    Returns
    -------
    dict
        ``hbeta_snr``, ``hbeta_flux``, ``oiii_snr``, ``oiii_flux`` (total 4959+5007), NaN where not
        covered; ``companion_snr``: the larger covered S/N (NaN when neither is covered).
    """
    out: dict[str, float] = {}
    hb, hb_e = _line_measure(wave, r, w, [(HBETA * (1 + z), 1.0)], sigma_kms)
    o3, o3_e = _line_measure(
        wave,
        r,
        w,
        [(OIII_5007 * (1 + z), OIII_RATIO / (1 + OIII_RATIO)), (OIII_4959 * (1 + z), 1.0 / (1 + OIII_RATIO))],
        sigma_kms,
    )
    out["hbeta_flux"], out["hbeta_snr"] = hb, hb / hb_e if np.isfinite(hb_e) else np.nan
    out["oiii_flux"], out["oiii_snr"] = o3, o3 / o3_e if np.isfinite(o3_e) else np.nan
    vals = [v for v in (out["hbeta_snr"], out["oiii_snr"]) if np.isfinite(v)]
    out["companion_snr"] = max(vals) if vals else np.nan
    return out


# --- per-hit fit ------------------------------------------------------------------------------------
@dataclass
class DoubletFit:
    """Doublet fit of one hit (NaN values and ``ok = False`` when it failed).

    Attributes
    ----------
    z, z_err : float
        Source redshift and error.
    wavelength, wavelength_err : float
        Observed mean doublet wavelength ``OII_MEAN (1 + z)`` and error [Angstrom].
    line_flux, line_flux_err : float
        Total doublet flux and error [1e-17 erg/s/cm^2].
    sigma_kms, sigma_kms_err : float
        Gaussian sigma of each component [km/s].
    ratio, ratio_err : float
        ``F3729 / F3727`` (bounded to [0.3, 1.5]).
    chi2, redchi2 : float
        chi^2 and reduced chi^2 of the doublet fit.
    single_chi2, single_sigma_kms, single_wavelength : float
        chi^2, sigma [km/s] and centre [Angstrom] of the single-Gaussian fit of the same pixels.
    n_pix : int
        Pixels fitted.
    ok : bool
        The doublet fit converged to finite values.
    """

    z: float = np.nan
    z_err: float = np.nan
    wavelength: float = np.nan
    wavelength_err: float = np.nan
    line_flux: float = np.nan
    line_flux_err: float = np.nan
    sigma_kms: float = np.nan
    sigma_kms_err: float = np.nan
    ratio: float = np.nan
    ratio_err: float = np.nan
    chi2: float = np.nan
    redchi2: float = np.nan
    single_chi2: float = np.nan
    single_sigma_kms: float = np.nan
    single_wavelength: float = np.nan
    n_pix: int = 0
    ok: bool = False

    @property
    def snr(self) -> float:
        """Fitted flux over its error."""
        return float(self.line_flux / self.line_flux_err) if self.line_flux_err > 0 else np.nan

    @property
    def delta_chi2(self) -> float:
        """``single_chi2 - chi2``: > 0 when the doublet fits better."""
        return float(self.single_chi2 - self.chi2)

    @property
    def fwhm_kms(self) -> float:
        """FWHM of each component [km/s]."""
        return float(self.sigma_kms * 2.0 * np.sqrt(2.0 * np.log(2.0)))


def _errors(res: optimize.OptimizeResult, dof: int) -> np.ndarray:
    try:
        jtj = res.jac.T @ res.jac
        cov = np.linalg.pinv(jtj)
    except (np.linalg.LinAlgError, ValueError):
        return np.full(res.x.size, np.nan)
    red = float(2.0 * res.cost / max(dof, 1))
    return np.sqrt(np.clip(np.diag(cov), 0, None) * max(1.0, red))


def fit_doublet(
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    z_guess: float,
    *,
    window_kms: float = 3000.0,
    sigma_guess_kms: float = 80.0,
    mask: np.ndarray | None = None,
) -> DoubletFit:
    """Fit an [OII] doublet plus a linear residual continuum around a hit; compare a single Gaussian.

    The residual within +-``window_kms`` of ``OII_MEAN (1 + z_guess)`` is fitted by two Gaussians of
    common velocity sigma (3727.092, 3729.875 A at ``1 + z``), total flux ``F >= 0``, ratio
    ``F3729 / F3727`` in [0.3, 1.5], sigma from 0.7 px to 500 km/s, ``z`` within half the window of the
    guess, plus ``c0 + c1 u`` (bounded trust-region least squares from two ratios, keeping the
    better). Errors from the Jacobian, the covariance scaled by ``max(1, redchi2)``. A single
    Gaussian with a linear continuum is fitted to the same pixels.

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) wavelengths [Angstrom].
    flux, continuum : numpy.ndarray
        (P,) flux density and continuum [1e-17 erg/s/cm^2/Angstrom].
    ivar : numpy.ndarray
        (P,) inverse variance; 0 = masked.
    z_guess : float
        Starting redshift (the filter's peak).
    window_kms : float
        Half-width of the fitted window [km/s].
    sigma_guess_kms : float
        Starting sigma [km/s].
    mask : numpy.ndarray, optional
        (P,) bool, pixels to leave out (True = excluded).

    Returns
    -------
    DoubletFit
    """
    wave = np.asarray(wave, dtype=np.float64)
    r_all = np.asarray(flux, dtype=np.float64) - np.asarray(continuum, dtype=np.float64)
    iv_all = np.asarray(ivar, dtype=np.float64)
    lam0 = OII_MEAN * (1.0 + float(z_guess))
    hw = lam0 * window_kms / C_KMS
    sel = (np.abs(wave - lam0) <= hw) & np.isfinite(r_all) & np.isfinite(iv_all) & (iv_all > 0)
    if mask is not None:
        sel &= ~np.asarray(mask, dtype=bool)
    n = int(sel.sum())
    if n < 12 or not np.isfinite(lam0):
        return DoubletFit(n_pix=n)
    x, r, sw = wave[sel], r_all[sel], np.sqrt(iv_all[sel])
    e_lo, e_hi = _edges(wave)
    ed = (e_lo[sel], e_hi[sel])
    u = (x - lam0) / hw
    dpx = float(np.median(np.diff(wave)))
    z0 = float(z_guess)
    dz = 0.5 * window_kms / C_KMS * (1 + z0)

    def model_d(q: np.ndarray) -> np.ndarray:
        return np.asarray(doublet_profile(x, q[1], q[0], q[2], q[3], edges=ed) + q[4] + q[5] * u)

    def resid_d(q: np.ndarray) -> np.ndarray:
        return np.asarray((model_d(q) - r) * sw)

    near = np.abs(x - lam0) <= 3.0 * lam0 * sigma_guess_kms / C_KMS
    f0 = float(np.clip(np.sum(r[near]) * dpx, 1e-3, None)) if near.any() else 1.0
    sig_min = 0.7 * dpx / lam0 * C_KMS  # 0.7 px: below the instrumental resolution of SDSS/BOSS/DESI
    lo = np.array([0.0, z0 - dz, sig_min, 0.3, -np.inf, -np.inf])
    hi = np.array([np.inf, z0 + dz, 500.0, 1.5, np.inf, np.inf])
    best: optimize.OptimizeResult | None = None
    for q_ratio in (0.8, 1.3):
        q0 = np.clip(np.array([f0, z0, sigma_guess_kms, q_ratio, 0.0, 0.0]), lo, hi)
        try:
            res = optimize.least_squares(resid_d, q0, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=2000)
        except (ValueError, np.linalg.LinAlgError):  # pragma: no cover - defensive
            continue
        if best is None or res.cost < best.cost:
            best = res
    if best is None or not np.all(np.isfinite(best.x)):
        return DoubletFit(n_pix=n)
    err = _errors(best, n - 6)
    chi2 = float(2.0 * best.cost)

    def resid_s(q: np.ndarray) -> np.ndarray:
        return np.asarray((_gauss(x, q[1], q[0], q[2], ed) + q[3] + q[4] * u - r) * sw)

    lo_s = np.array([0.0, lam0 - 0.5 * hw, 0.2 * dpx / lam0 * C_KMS, -np.inf, -np.inf])
    hi_s = np.array([np.inf, lam0 + 0.5 * hw, 800.0, np.inf, np.inf])
    single = np.nan, np.nan, np.nan
    best_s: optimize.OptimizeResult | None = None
    for sg in (40.0, sigma_guess_kms + 60.0):
        q0 = np.clip(np.array([f0, float(OII_MEAN * (1 + best.x[1])), sg, 0.0, 0.0]), lo_s, hi_s)
        try:
            res_s = optimize.least_squares(resid_s, q0, bounds=(lo_s, hi_s), method="trf", x_scale="jac", max_nfev=2000)
        except (ValueError, np.linalg.LinAlgError):  # pragma: no cover - defensive
            continue
        if best_s is None or res_s.cost < best_s.cost:
            best_s = res_s
    if best_s is not None:
        single = float(2.0 * best_s.cost), float(best_s.x[2]), float(best_s.x[1])
    z = float(best.x[1])
    return DoubletFit(
        z=z,
        z_err=float(err[1]),
        wavelength=OII_MEAN * (1 + z),
        wavelength_err=OII_MEAN * float(err[1]),
        line_flux=float(best.x[0]),
        line_flux_err=float(err[0]),
        sigma_kms=float(best.x[2]),
        sigma_kms_err=float(err[2]),
        ratio=float(best.x[3]),
        ratio_err=float(err[3]),
        chi2=chi2,
        redchi2=chi2 / max(n - 6, 1),
        single_chi2=single[0],
        single_sigma_kms=single[1],
        single_wavelength=single[2],
        n_pix=n,
        ok=bool(np.isfinite(err[0])),
    )


# --- vetoes -------------------------------------------------------------------------------------------
#: doublet template of [OII] as a partner line: (rest, share of the total flux) at ratio 1
_OII_PAIR = [(OII_3727, 0.5), (OII_3729, 0.5)]
#: interloper hypotheses: the candidate is line ``rest``; partners (name, template [(rest, share)],
#: (min, max) flux ratio partner / line)
INTERLOPERS: dict[str, tuple[float, list[tuple[str, list[tuple[float, float]], tuple[float, float]]]]] = {
    "oiii_5007": (OIII_5007, [("oiii_4959", [(OIII_4959, 1.0)], (0.2, 0.6)), ("oii", _OII_PAIR, (0.3, 20.0))]),
    "oiii_4959": (OIII_4959, [("oiii_5007", [(OIII_5007, 1.0)], (1.7, 5.0))]),
    "hbeta": (HBETA, [("oiii_5007", [(OIII_5007, 1.0)], (0.3, 20.0)), ("oii", _OII_PAIR, (0.3, 10.0))]),
    "halpha": (
        HALPHA,
        [
            ("nii_6585", [(NII_6585, 1.0)], (0.1, 3.0)),
            ("hbeta", [(HBETA, 1.0)], (0.15, 0.6)),
            ("oii", _OII_PAIR, (0.1, 3.0)),
        ],
    ),
}


def interloper_tests(
    wave: np.ndarray,
    r: np.ndarray,
    w: np.ndarray,
    lam_obs: float,
    line_flux: float,
    sigma_kms: float,
    *,
    partner_snr: float = 3.0,
) -> tuple[bool, dict[str, dict[str, float]]]:
    """Is the candidate line another line of a lower-redshift emitter?

    For each hypothesis of :data:`INTERLOPERS` (the candidate is [OIII] 5007, [OIII] 4959, Hbeta or
    Halpha) the partner lines are measured with fixed Gaussians (``sigma_kms``; [OII] as its
    doublet) at ``lam_obs * partner / line`` on the residuals; the hypothesis holds when a covered
    partner has ``S/N >= partner_snr`` and a flux ratio ``partner / line_flux`` inside its range.
    Partners at a foreground or sky line are masked (``w = 0``) and count as not covered.

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) wavelengths [Angstrom].
    r, w : numpy.ndarray
        (P,) residual [1e-17 erg/s/cm^2/A] and weights (:func:`prepare`).
    lam_obs : float
        Observed wavelength of the candidate line [Angstrom] (a doublet's mean wavelength).
    line_flux : float
        Its flux [1e-17 erg/s/cm^2].
    sigma_kms : float
        Gaussian sigma of the partner lines [km/s].
    partner_snr : float
        S/N at which a partner counts.

    Returns
    -------
    tuple
        ``(flag, detail)``; detail maps hypothesis -> {partner: S/N, partner_ratio: ratio, holds}.
    """
    detail: dict[str, dict[str, float]] = {}
    flag = False
    for name, (rest, partners) in INTERLOPERS.items():
        d: dict[str, float] = {}
        for pname, template, (rmin, rmax) in partners:
            # strict coverage: a partner in the wing of a masked foreground or sky line is not measured
            fl, er = _line_measure(
                wave,
                r,
                w,
                [(lam_obs * pr / rest, wt) for pr, wt in template],
                sigma_kms,
                min_coverage=0.9,
                cover_nsigma=4.0,
            )
            sn = fl / er if np.isfinite(er) and er > 0 else np.nan
            ratio = fl / line_flux if line_flux > 0 else np.nan
            d[pname] = sn
            d[f"{pname}_ratio"] = ratio
            if np.isfinite(sn) and sn >= partner_snr and rmin <= ratio <= rmax:
                flag = True
                d["holds"] = 1.0
        detail[name] = d
    return flag, detail


@dataclass
class OIIVetoes:
    """The [OII]-family veto flags of one hit and their measurements."""

    veto_doublet: bool = False
    veto_foreground: bool = False
    veto_interloper: bool = False
    detail: dict[str, object] = field(default_factory=dict)


def oii_vetoes(
    fit: DoubletFit, wave: np.ndarray, r: np.ndarray, w: np.ndarray, z_lens: float, config: OIIConfig | None = None
) -> OIIVetoes:
    """Apply the [OII]-family per-line vetoes to a fitted hit (see the module docstring).

    Parameters
    ----------
    fit : DoubletFit
        The hit's doublet fit.
    wave : numpy.ndarray
        (P,) wavelengths [Angstrom].
    r, w : numpy.ndarray
        (P,) residual and search weights of the spectrum (:func:`prepare`).
    z_lens : float
        Foreground redshift (NaN: ``veto_foreground`` never fires).
    config : OIIConfig, optional
        Thresholds.
    """
    cfg = config or OIIConfig()
    out = OIIVetoes()
    if not fit.ok:
        return out
    dpx_kms = C_KMS * np.log(10.0) * _dlog(wave)
    dchi = fit.delta_chi2
    narrow = bool(np.isfinite(fit.single_sigma_kms) and fit.single_sigma_kms < cfg.narrow_sigma_px * dpx_kms)
    if np.isfinite(dchi):
        out.veto_doublet = bool(dchi <= -cfg.doublet_delta_chi2 or (narrow and dchi < cfg.doublet_delta_chi2))
    near_line = np.nan
    if np.isfinite(z_lens):
        from lenscat.spectra.masks import galaxy_lines

        fg = np.array(list(galaxy_lines(full_range=True).values())) * (1.0 + z_lens)
        comps = np.array([OII_MEAN * (1.0 + fit.z)])
        if np.isfinite(fit.single_wavelength):
            comps = np.append(comps, fit.single_wavelength)
        near_line = float(np.min(np.abs(comps[:, None] / fg[None, :] - 1.0)) * C_KMS)
        out.veto_foreground = bool(
            fit.z < float(min_z_source(z_lens, cfg.min_dv_kms)) or near_line < cfg.foreground_clear_kms
        )
    # the candidate as one line, measured like its partners (same template, same width): the ratios
    # compare like with like, whatever the doublet fit did
    sig = float(np.clip(fit.single_sigma_kms if np.isfinite(fit.single_sigma_kms) else fit.sigma_kms, dpx_kms, 500.0))
    lam = float(fit.single_wavelength) if np.isfinite(fit.single_wavelength) else float(fit.wavelength)
    own, _own_err = _line_measure(wave, r, w, [(lam, 1.0)], sig, min_coverage=0.0)
    flag, det = interloper_tests(wave, r, w, lam, own, sig, partner_snr=cfg.partner_snr)
    # a resolved doublet (preferred to one line by the margin) is no single line of an interloper
    resolved = bool(np.isfinite(dchi) and dchi >= cfg.doublet_delta_chi2)
    out.veto_interloper = bool(flag and not resolved)
    out.detail = {
        "delta_chi2": dchi,
        "foreground_line_kms": near_line,
        "single_sigma_kms": fit.single_sigma_kms,
        "narrow": narrow,
        "interloper": det,
    }
    return out


# --- injection ------------------------------------------------------------------------------------------
@dataclass
class OIIParams:
    """Parameters of injected [OII] sources (parallel arrays, one entry per spectrum).

    Attributes
    ----------
    z_source : numpy.ndarray
        Source redshift.
    snr : numpy.ndarray
        Target matched S/N of the doublet (:func:`matched_snr` of its profile); NaN: use ``line_flux``.
    line_flux : numpy.ndarray
        Total doublet flux [1e-17 erg/s/cm^2] (filled in by :func:`inject_oii` from ``snr``).
    sigma_kms : numpy.ndarray
        Gaussian sigma of every line [km/s].
    ratio : numpy.ndarray
        ``F3729 / F3727``.
    hbeta_ratio, oiii_ratio : numpy.ndarray
        Hbeta / [OII] and [OIII] 5007 / [OII] flux ratios (0: no companions).
    """

    z_source: np.ndarray
    snr: np.ndarray
    line_flux: np.ndarray
    sigma_kms: np.ndarray
    ratio: np.ndarray
    hbeta_ratio: np.ndarray
    oiii_ratio: np.ndarray

    def __len__(self) -> int:
        return int(np.asarray(self.z_source).size)


def draw_oii_params(
    rng: np.random.Generator,
    n: int,
    z_lens: np.ndarray | float,
    *,
    snr_range: tuple[float, float] = (4.0, 15.0),
    sigma_kms_range: tuple[float, float] = (50.0, 150.0),
    ratio_range: tuple[float, float] = (0.5, 1.5),
    wave_range: tuple[float, float] | np.ndarray = (3650.0, 10300.0),
    min_dv_kms: float = 8000.0,
    companions: bool = True,
    avoid_kms: float = 1200.0,
) -> OIIParams:
    """Draw ``n`` background [OII] sources behind galaxies at ``z_lens``.

    The source redshift is uniform between ``z_l + (1 + z_l) min_dv_kms / c`` (a little beyond the
    search's own 6,000 km/s) and where the doublet leaves ``wave_range``; draws whose doublet falls
    within ``avoid_kms`` of a foreground line or a bright sky line are redrawn (as the Lyman-alpha
    protocol keeps injected lines clear of the galaxy's own lines). Matched S/N uniform in
    ``snr_range``; sigma uniform in ``sigma_kms_range`` (observed, instrument included); ratio
    uniform in ``ratio_range``; with ``companions``, Hbeta / [OII] log-uniform in 0.25-0.6 and
    [OIII] 5007 / [OII] log-uniform in 0.15-1.5 (star-forming galaxies at z ~ 0.5-1).

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator (fix its seed for reproducible draws).
    n : int
        Number of sources.
    z_lens : float or numpy.ndarray
        Foreground redshift(s) (NaN: treated as 0).
    snr_range, sigma_kms_range, ratio_range : tuple of float
        Ranges of the matched S/N, sigma [km/s] and ``F3729 / F3727``.
    wave_range : tuple of float or numpy.ndarray
        Observed range the doublet must fall in [Angstrom]: one (lo, hi) or (n, 2), per spectrum
        (its covered range).
    min_dv_kms : float
        Minimum velocity behind the galaxy [km/s].
    companions : bool
        Add Hbeta and [OIII].
    avoid_kms : float
        Clearance from foreground and sky lines [km/s].
    """
    from lenscat.spectra.masks import galaxy_lines, sky_line_centres

    if n == 0:
        e = np.zeros(0)
        return OIIParams(z_source=e, snr=e, line_flux=e, sigma_kms=e, ratio=e, hbeta_ratio=e, oiii_ratio=e)
    zl = np.broadcast_to(np.asarray(z_lens, dtype=np.float64), (n,)).copy()
    zl = np.where(np.isfinite(zl), zl, 0.0)
    wr = np.broadcast_to(np.asarray(wave_range, dtype=np.float64), (n, 2))
    fg = np.array(list(galaxy_lines(full_range=True).values()))
    sky = sky_line_centres(True)
    zs = np.empty(n)
    for i in range(n):
        lo = zl[i] + (1 + zl[i]) * min_dv_kms / C_KMS
        lo = max(lo, wr[i, 0] / OII_3727 - 1.0)
        hi = wr[i, 1] / OII_3729 - 1.0
        for _ in range(200):
            z = float(rng.uniform(lo, hi))
            lam = OII_MEAN * (1 + z)
            near_fg = np.any(np.abs(lam - fg * (1 + zl[i])) <= lam * avoid_kms / C_KMS)
            near_sky = np.any(np.abs(lam - sky) <= lam * avoid_kms / C_KMS)
            if not (near_fg or near_sky):
                break
        zs[i] = z
    snr = rng.uniform(*snr_range, size=n)
    sig = rng.uniform(*sigma_kms_range, size=n)
    ratio = rng.uniform(*ratio_range, size=n)
    if companions:
        hb = np.exp(rng.uniform(np.log(0.25), np.log(0.6), size=n))
        o3 = np.exp(rng.uniform(np.log(0.15), np.log(1.5), size=n))
    else:
        hb = np.zeros(n)
        o3 = np.zeros(n)
    return OIIParams(
        z_source=zs, snr=snr, line_flux=np.full(n, np.nan), sigma_kms=sig, ratio=ratio, hbeta_ratio=hb, oiii_ratio=o3
    )


def oii_source_profile(
    wave: np.ndarray,
    z: float,
    line_flux: float,
    sigma_kms: float,
    ratio: float,
    hbeta_ratio: float = 0.0,
    oiii_ratio: float = 0.0,
) -> np.ndarray:
    """Doublet plus Hbeta and [OIII] 4959, 5007 (5007/4959 = 2.98) of one source [1e-17 erg/s/cm^2/A]."""
    prof = doublet_profile(wave, z, line_flux, sigma_kms, ratio)
    if hbeta_ratio > 0:
        prof = prof + _gauss(wave, HBETA * (1 + z), hbeta_ratio * line_flux, sigma_kms)
    if oiii_ratio > 0:
        prof = prof + _gauss(wave, OIII_5007 * (1 + z), oiii_ratio * line_flux, sigma_kms)
        prof = prof + _gauss(wave, OIII_4959 * (1 + z), oiii_ratio * line_flux / OIII_RATIO, sigma_kms)
    return prof


def inject_oii(wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray, params: OIIParams) -> tuple[np.ndarray, OIIParams]:
    """Add the sources of ``params`` to copies of spectra (one source per row).

    Where ``params.snr`` is finite the doublet flux is scaled so that its matched S/N
    ``sqrt(sum ivar p^2)`` on that row equals it (rows with no coverage get flux 0); otherwise
    ``params.line_flux`` is used. The noise (``ivar``) is left as observed.

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) wavelengths [Angstrom].
    flux : numpy.ndarray
        (N, P) flux density [1e-17 erg/s/cm^2/Angstrom].
    ivar : numpy.ndarray
        (N, P) inverse variance.
    params : OIIParams
        N sources.

    Returns
    -------
    tuple
        ``(flux_with_sources, params)`` with ``params.line_flux`` filled in [1e-17 erg/s/cm^2].
    """
    wave = np.asarray(wave, dtype=np.float64)
    f = np.array(np.atleast_2d(flux), dtype=np.float64)
    iv = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    n = f.shape[0]
    if len(params) != n:
        raise ValueError(f"{len(params)} sources for {n} spectra")
    fl = np.array(params.line_flux, dtype=np.float64, copy=True)
    for i in range(n):
        unit = doublet_profile(wave, params.z_source[i], 1.0, params.sigma_kms[i], params.ratio[i])
        if np.isfinite(params.snr[i]):
            s1 = float(matched_snr(unit, iv[i]))
            fl[i] = params.snr[i] / s1 if s1 > 0 else 0.0
        f[i] += oii_source_profile(
            wave,
            params.z_source[i],
            fl[i],
            params.sigma_kms[i],
            params.ratio[i],
            params.hbeta_ratio[i],
            params.oiii_ratio[i],
        )
    out = OIIParams(
        z_source=np.asarray(params.z_source),
        snr=np.asarray(params.snr),
        line_flux=fl,
        sigma_kms=np.asarray(params.sigma_kms),
        ratio=np.asarray(params.ratio),
        hbeta_ratio=np.asarray(params.hbeta_ratio),
        oiii_ratio=np.asarray(params.oiii_ratio),
    )
    return f.astype(np.float32), out
