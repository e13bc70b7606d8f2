"""The classic matched-filter search for a background emission line, vectorised over batches.

This module owns the residual line search of BELLS / BELLS GALLERY (Bolton et al. 2004, AJ 127,
1860; Bolton et al. 2006; Shu et al. 2016, ApJ 824, 86) on spectra packed on the common window
(:data:`lenscat.spectra.grid.WINDOW`):

1. residual ``r = flux - continuum`` (pipeline model or :func:`lenscat.spectra.continuum.fit_continua`);
2. weights ``w = ivar``, set to 0 at masked pixels (``ivar == 0`` or non-finite), at the foreground
   galaxy's emission lines (the *extended* list of :func:`lenscat.spectra.masks.galaxy_lines`:
   Li et al. 2018's [NeV], [OII], [NeIII] plus the Balmer lines, HeII and [OIII] inside 3300-5100 A
   rest, +-600 km/s, because residuals of the galaxy's own Balmer/[OIII] lines are the commonest
   false hits) and at the bright sky lines of :data:`lenscat.spectra.masks.WINDOW_SKY_LINES`
   (+-150 km/s);
3. ``w`` rescaled per spectrum by the residual spread: divided by ``s**2`` with
   ``s = median(|r| sqrt(w)) / 0.6745`` over good pixels (the robust standard deviation of the
   normalised residuals; for Gaussian residuals it makes their variance 1);
4. a bank of unit-peak Gaussian kernels ``k(x) = exp(-x**2 / (2 sigma**2))`` with sigma in pixels
   (default 1.0, 1.6, 2.5, 4.0 px = 69, 110, 173, 276 km/s; log-spaced so that a Gaussian line of
   any width in 1-4 px keeps >= 98.7 % of its optimal S/N, from Lya's narrowest, resolution-limited
   lines to broad ones); for each kernel and pixel the optimal amplitude and its S/N are

   ``A = sum(r w k) / sum(w k**2)``,  ``S/N = sum(r w k) / sqrt(sum(w k**2))``,

   computed for all pixels at once as correlations along the pixel axis: per block of 128 spectra
   one real FFT of ``r w`` and of ``w`` (zero-padded to 1,280 px), one complex product per kernel and
   one batched inverse FFT (torch's MKL/pocketfft transforms, single-threaded inside a block; the
   blocks run on ``workers`` threads, which release the GIL in the transforms and numpy's loops).
   The sums are taken with the unscaled ``w`` and the S/N multiplied by ``1 / s`` afterwards (both
   sums scale with ``w``);
5. a kernel counts at a pixel only where at least ``min_coverage`` (70 %) of the pixels within
   +-2 sigma are unmasked and inside the window (the S/N of a partly covered kernel is still
   unit-normal under noise, but line-like residuals pile up at mask edges);
6. hits are the local maxima (within +-``merge_px`` = 3 px, one per peak) of the S/N map, maximum
   over kernels, with ``S/N >= threshold`` (6). :func:`scan_batch` finds candidates on the map
   without the coverage cut (cheaper; only in spectra whose maximum reaches the threshold) and then
   recomputes every kernel exactly at each candidate, keeping the best kernel that passes the cut;
   :func:`snr_map` and :func:`snr_max` apply the cut to the whole map (:func:`snr_max` checks it
   only where a kernel's maximum lies, and searches again over the covered pixels of the few
   kernels whose maximum is uncovered and could still be the spectrum's best: the same result).
   :func:`scan_batch_with_max` gives the hits and the best S/N of each spectrum from one pass.

Flux densities are in 1e-17 erg/s/cm^2/Angstrom, line fluxes in 1e-17 erg/s/cm^2, wavelengths in
vacuum Angstrom.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from lenscat.spectra.grid import C_KMS
from lenscat.spectra.masks import sky_line_mask
from lenscat.spectra.matched_filter_kernels import (
    _BAD,
    _Bank,
    _bank,
    _check,
    _coverage_counts,
    _covered_max,
    _kernel_max,
    _kernel_snr,
    _peaks,
    _prepare,
    _Prepared,
    _refine,
    _torch_single_thread,
)

__all__ = ["Hits", "MatchedFilterConfig", "scan_batch", "scan_batch_with_max", "snr_map", "snr_max"]


@dataclass(frozen=True)
class MatchedFilterConfig:
    """Settings of the matched-filter search.

    Attributes
    ----------
    threshold : float
        Minimum S/N of a hit.
    sigmas_px : tuple of float
        Gaussian kernel widths [pixels of the log grid; x 69 km/s on BOSS pixels].
    truncate : float
        Kernels are cut at +-``truncate`` sigma.
    min_coverage : float
        Minimum fraction of unmasked pixels within +-``coverage_nsigma`` sigma of the kernel centre.
    coverage_nsigma : float
        Half-width of the coverage window [kernel sigma] (at least 1 px).
    merge_px : int
        Peaks closer than this many pixels are one hit (the highest).
    galaxy_half_width_kms : float
        Half-width of the foreground-galaxy line masks [km/s].
    galaxy_extended : bool
        Mask the extended galaxy line list (True) or only Li et al. (2018)'s five lines.
    sky_half_width_kms : float
        Half-width of the bright-sky-line masks [km/s]; 0 disables them.
    rescale_ivar : bool
        Rescale ``ivar`` per spectrum by the robust residual spread.
    min_good_pixels : int
        Spectra with fewer unmasked pixels are not searched (no hits, NaN ``snr_max``).
    chunk : int
        Rows processed together at most (blocks are ``min(chunk, 128)`` rows; memory is a few x
        workers x block x pixels floats).
    workers : int
        Threads searching blocks in parallel (torch's own intra-op threads are held at 1 meanwhile).
    """

    threshold: float = 6.0
    sigmas_px: tuple[float, ...] = (1.0, 1.6, 2.5, 4.0)
    truncate: float = 4.0
    min_coverage: float = 0.7
    coverage_nsigma: float = 2.0
    merge_px: int = 3
    galaxy_half_width_kms: float = 600.0
    galaxy_extended: bool = True
    sky_half_width_kms: float = 150.0
    rescale_ivar: bool = True
    min_good_pixels: int = 100
    chunk: int = 1024
    workers: int = 2


@dataclass
class Hits:
    """Matched-filter hits as parallel arrays (one entry per hit).

    Attributes
    ----------
    row : numpy.ndarray
        int64, index of the spectrum within the batch.
    pixel : numpy.ndarray
        int64, pixel of the peak on the search grid.
    wavelength : numpy.ndarray
        Wavelength of that pixel [Angstrom, vacuum].
    snr : numpy.ndarray
        Matched-filter S/N of the best kernel.
    amplitude : numpy.ndarray
        Peak flux density of the best-fitting Gaussian [1e-17 erg/s/cm^2/Angstrom].
    line_flux : numpy.ndarray
        Integrated line flux ``amplitude * sigma_lambda * sqrt(2 pi)`` [1e-17 erg/s/cm^2].
    sigma_kms : numpy.ndarray
        Gaussian sigma of the best kernel [km/s].
    """

    row: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pixel: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    wavelength: np.ndarray = field(default_factory=lambda: np.zeros(0))
    snr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    amplitude: np.ndarray = field(default_factory=lambda: np.zeros(0))
    line_flux: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sigma_kms: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return int(self.row.size)

    @classmethod
    def concatenate(cls, parts: list[Hits], row_offsets: list[int] | None = None) -> Hits:
        """Join hit lists; ``row_offsets`` (one per part) is added to each part's ``row``."""
        if not parts:
            return cls()
        offs = row_offsets if row_offsets is not None else [0] * len(parts)
        return cls(
            row=np.concatenate([h.row + o for h, o in zip(parts, offs, strict=True)]),
            pixel=np.concatenate([h.pixel for h in parts]),
            wavelength=np.concatenate([h.wavelength for h in parts]),
            snr=np.concatenate([h.snr for h in parts]),
            amplitude=np.concatenate([h.amplitude for h in parts]),
            line_flux=np.concatenate([h.line_flux for h in parts]),
            sigma_kms=np.concatenate([h.sigma_kms for h in parts]),
        )


#: rows searched together by one thread (their arrays stay in a core's L2 cache)
_BLOCK = 128


@dataclass
class _BlockResult:
    """What one block gives: hits (rows within the block), per-row best S/N, the S/N map."""

    hits: Hits | None = None
    best: np.ndarray | None = None  # (B,) float64, NaN where nothing could be searched
    snr: np.ndarray | None = None  # (B, P) float32 coverage-cut map, -inf where no kernel counts


def _block_hits(
    pr: _Prepared,
    snr: np.ndarray,
    top: np.ndarray,
    root: np.ndarray,
    wave: np.ndarray,
    bank: _Bank,
    cfg: MatchedFilterConfig,
) -> Hits:
    """Hits of one block from its unscaled per-kernel S/N ``snr`` (K, B, P) and their row maxima ``top``."""
    rowmax = top.max(axis=0) * root
    cand = np.flatnonzero(pr.ok & (rowmax >= cfg.threshold))
    if cand.size == 0:
        return Hits()
    fast = snr[:, cand].max(axis=0) * root[cand, None]  # best kernel, no coverage cut
    rr, pp = _peaks(fast, cfg)
    if rr.size == 0:
        return Hits()
    r, good = pr.r[cand], pr.good[cand]
    w = pr.w[cand] * pr.scale[cand, None]
    k, sn, amp = _refine(r, w, good, rr, pp, bank)
    keep = (k >= 0) & (sn >= cfg.threshold)
    rr, pp, k, sn, amp = rr[keep], pp[keep], k[keep], sn[keep], amp[keep]
    # equal maxima within merge_px (plateaus) would give two hits: keep the first of each run
    if rr.size > 1:
        first = np.ones(rr.size, dtype=bool)
        first[1:] = ~((rr[1:] == rr[:-1]) & (pp[1:] - pp[:-1] <= cfg.merge_px))
        rr, pp, k, sn, amp = rr[first], pp[first], k[first], sn[first], amp[first]
    if rr.size == 0:
        return Hits()
    sig_px = np.asarray(cfg.sigmas_px, dtype=np.float64)[k]
    lam = wave[pp]
    dlam = (np.gradient(wave) if wave.size > 1 else np.ones_like(wave))[pp]  # Angstrom per pixel
    return Hits(
        row=cand[rr].astype(np.int64),
        pixel=pp,
        wavelength=lam,
        snr=sn,
        amplitude=amp,
        line_flux=amp * sig_px * dlam * np.sqrt(2.0 * np.pi),
        sigma_kms=sig_px * C_KMS * dlam / lam,
    )


def _search_block(
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    z: np.ndarray,
    wave: np.ndarray,
    sky_cols: np.ndarray,
    bank: _Bank,
    cfg: MatchedFilterConfig,
    *,
    hits: bool,
    best: bool,
    full_map: bool,
) -> _BlockResult:
    pr = _prepare(flux, ivar, continuum, z, wave, sky_cols, cfg, bank.nfft)
    n, p = pr.r.shape
    out = _BlockResult()
    if not pr.ok.any():
        out.hits = Hits() if hits else None
        out.best = np.full(n, np.nan) if best else None
        out.snr = np.full((n, p), -np.inf, dtype=np.float32) if full_map else None
        return out
    snr = _kernel_snr(pr, bank)
    root = np.sqrt(pr.scale)
    if hits or best:
        arg, top = _kernel_max(snr)
        if hits:
            out.hits = _block_hits(pr, snr, top, root, wave, bank, cfg)
        if best:
            m = _covered_max(snr, arg, top, pr.good, bank)
            out.best = np.where(pr.ok & (m > _BAD / 2), m * root, np.nan).astype(np.float64)
    if full_map:
        smap = np.full((n, p), -np.inf, dtype=np.float32)
        for j in range(snr.shape[0]):
            counted = _coverage_counts(pr.good, bank.half_cov[j]) >= bank.need[j]
            np.maximum(smap, np.where(counted, snr[j], np.float32(-np.inf)), out=smap)
        smap *= np.where(pr.ok, root, np.float32(1.0))[:, None]
        smap[~pr.ok] = -np.inf
        out.snr = smap
    return out


def _search(
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    z: np.ndarray,
    wave: np.ndarray | None,
    cfg: MatchedFilterConfig,
    *,
    hits: bool,
    best: bool,
    full_map: bool,
) -> tuple[list[tuple[int, _BlockResult]], int, int]:
    """Search every block of rows (``cfg.workers`` threads); returns [(first row, result)], N, P."""
    f, iv, c, z1, wv = _check(flux, ivar, continuum, z, wave)
    n, p = f.shape
    if n == 0 or p == 0:
        return [], n, p
    bank = _bank(p, cfg)
    sky_cols = (
        np.flatnonzero(sky_line_mask(wv, half_width_kms=cfg.sky_half_width_kms))
        if cfg.sky_half_width_kms > 0
        else np.zeros(0, dtype=np.int64)
    )
    step = max(1, min(int(cfg.chunk), _BLOCK))
    starts = list(range(0, n, step))

    def one(s: int) -> tuple[int, _BlockResult]:
        e = min(s + step, n)
        return s, _search_block(
            f[s:e], iv[s:e], c[s:e], z1[s:e], wv, sky_cols, bank, cfg, hits=hits, best=best, full_map=full_map
        )

    workers = max(1, min(int(cfg.workers), len(starts)))
    with _torch_single_thread():
        if workers == 1:
            results = [one(s) for s in starts]
        else:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(one, starts))
    return results, n, p


def snr_map(
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    z: np.ndarray,
    *,
    wave: np.ndarray | None = None,
    config: MatchedFilterConfig | None = None,
) -> np.ndarray:
    """Per-pixel matched-filter S/N, maximum over the kernels that pass the coverage cut.

    Parameters are those of :func:`scan_batch`.

    Returns
    -------
    numpy.ndarray
        (N, P) float32; -inf where no kernel is counted (masked, or spectrum not searchable).
    """
    cfg = config or MatchedFilterConfig()
    results, n, p = _search(flux, ivar, continuum, z, wave, cfg, hits=False, best=False, full_map=True)
    out = np.full((n, p), -np.inf, dtype=np.float32)
    for s, res in results:
        assert res.snr is not None
        out[s : s + len(res.snr)] = res.snr
    return out


def scan_batch_with_max(
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    z: np.ndarray,
    *,
    wave: np.ndarray | None = None,
    config: MatchedFilterConfig | None = None,
) -> tuple[Hits, np.ndarray]:
    """:func:`scan_batch` and :func:`snr_max` of the same batch in one pass (the transforms once).

    Parameters are those of :func:`scan_batch`.

    Returns
    -------
    hits : Hits
        As :func:`scan_batch`.
    best : numpy.ndarray
        (N,) float64, as :func:`snr_max`.
    """
    cfg = config or MatchedFilterConfig()
    results, n, _ = _search(flux, ivar, continuum, z, wave, cfg, hits=True, best=True, full_map=False)
    best = np.full(n, np.nan)
    parts, offs = [], []
    for s, res in results:
        assert res.hits is not None and res.best is not None
        best[s : s + len(res.best)] = res.best
        if len(res.hits):
            parts.append(res.hits)
            offs.append(s)
    return Hits.concatenate(parts, offs), best


def scan_batch(
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    z: np.ndarray,
    *,
    wave: np.ndarray | None = None,
    config: MatchedFilterConfig | None = None,
) -> Hits:
    """Matched-filter hits in a batch of spectra on one grid.

    Candidates are the local maxima (+-``merge_px``) of the S/N map above ``threshold``; at each,
    the S/N and amplitude of every kernel are recomputed exactly and the best kernel passing the
    coverage cut is kept; candidates with no such kernel above ``threshold`` are dropped.

    Parameters
    ----------
    flux : numpy.ndarray
        (N, P) flux density [1e-17 erg/s/cm^2/Angstrom].
    ivar : numpy.ndarray
        (N, P) inverse variance of ``flux``; 0 = masked.
    continuum : numpy.ndarray
        (N, P) continuum model [1e-17 erg/s/cm^2/Angstrom].
    z : numpy.ndarray
        (N,) foreground-galaxy redshifts (NaN: galaxy lines not masked).
    wave : numpy.ndarray, optional
        (P,) pixel wavelengths [Angstrom]; default :data:`lenscat.spectra.grid.WINDOW` (the kernel
        widths are in pixels, so a log-uniform grid is assumed).
    config : MatchedFilterConfig, optional
        Search settings (default :class:`MatchedFilterConfig()`).

    Returns
    -------
    Hits
        One entry per hit, sorted by row then pixel.
    """
    cfg = config or MatchedFilterConfig()
    results, _, _ = _search(flux, ivar, continuum, z, wave, cfg, hits=True, best=False, full_map=False)
    parts, offs = [], []
    for s, res in results:
        if res.hits is not None and len(res.hits):
            parts.append(res.hits)
            offs.append(s)
    return Hits.concatenate(parts, offs)


def snr_max(
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    z: np.ndarray,
    *,
    wave: np.ndarray | None = None,
    config: MatchedFilterConfig | None = None,
) -> np.ndarray:
    """Maximum matched-filter S/N of each spectrum (for ROC-style evaluation).

    The maximum of :func:`snr_map` (coverage cut applied), so ``snr_max >= t`` is what a hit at
    threshold ``t`` needs. Parameters are those of :func:`scan_batch` (``threshold`` unused).

    Returns
    -------
    numpy.ndarray
        (N,) float64; NaN where no pixel could be searched (all masked, too few good pixels).
    """
    cfg = config or MatchedFilterConfig()
    results, n, _ = _search(flux, ivar, continuum, z, wave, cfg, hits=False, best=True, full_map=False)
    out = np.full(n, np.nan)
    for s, res in results:
        assert res.best is not None
        out[s : s + len(res.best)] = res.best
    return out
