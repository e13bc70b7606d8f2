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

   computed for all pixels at once as correlations along the pixel axis (FFT, two workers);
5. a kernel counts at a pixel only where at least ``min_coverage`` (70 %) of the pixels within
   +-2 sigma are unmasked and inside the window (the S/N of a partly covered kernel is still
   unit-normal under noise, but line-like residuals pile up at mask edges);
6. hits are the local maxima (within +-``merge_px`` = 3 px, one per peak) of the S/N map, maximum
   over kernels, with ``S/N >= threshold`` (6). :func:`scan_batch` finds candidates on the map
   without the coverage cut (cheaper) and then recomputes every kernel exactly at each candidate,
   keeping the best kernel that passes the cut; :func:`snr_map` and :func:`snr_max` apply the cut
   to the whole map.

Flux densities are in 1e-17 erg/s/cm^2/Angstrom, line fluxes in 1e-17 erg/s/cm^2, wavelengths in
vacuum Angstrom.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
from scipy.ndimage import maximum_filter1d

from lenscat.spectra.continuum import galaxy_line_masks_fast, robust_sigma_rows
from lenscat.spectra.grid import C_KMS, WINDOW
from lenscat.spectra.masks import sky_line_mask

__all__ = ["Hits", "MatchedFilterConfig", "scan_batch", "snr_map", "snr_max"]


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
        Rows processed together (bounds memory to a few x chunk x pixels floats).
    workers : int
        Threads for the FFTs.
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


@dataclass(frozen=True)
class _Bank:
    """Kernel transforms for one FFT length."""

    nfft: int
    k_hat: np.ndarray  # (K, nfft//2+1) real: transform of k
    k2_hat: np.ndarray  # (K, nfft//2+1) real: transform of k**2
    half_cov: tuple[int, ...]  # coverage half-widths [px]
    need: tuple[int, ...]  # minimum good pixels within +-half_cov
    kernels: tuple[np.ndarray, ...]  # the kernels in pixel space (2h+1 taps, unit peak)


_BANKS: dict[tuple[int, tuple[float, ...], float, float], _Bank] = {}


def _bank(p: int, cfg: MatchedFilterConfig) -> _Bank:
    key = (p, tuple(cfg.sigmas_px), cfg.truncate, cfg.coverage_nsigma)
    bank = _BANKS.get(key)
    if bank is not None:
        return bank
    hmax = max(int(np.ceil(cfg.truncate * s)) for s in cfg.sigmas_px)
    nfft = scipy.fft.next_fast_len(p + hmax + 1, real=True)
    ks, k2s, kern = [], [], []
    for s in cfg.sigmas_px:
        h = int(np.ceil(cfg.truncate * s))
        x = np.arange(-h, h + 1)
        k = np.exp(-0.5 * (x / s) ** 2)
        kc = np.zeros(nfft)
        kc[x % nfft] = k  # centred on pixel 0, wrapped: symmetric, so the transform is real
        k2c = np.zeros(nfft)
        k2c[x % nfft] = k * k
        kern.append(k)
        ks.append(scipy.fft.rfft(kc).real)
        k2s.append(scipy.fft.rfft(k2c).real)
    half = tuple(max(1, int(round(cfg.coverage_nsigma * s))) for s in cfg.sigmas_px)
    need = tuple(int(np.ceil(cfg.min_coverage * (2 * h + 1) - 1e-9)) for h in half)
    bank = _Bank(nfft=nfft, k_hat=np.asarray(ks, dtype=np.float32),
                 k2_hat=np.asarray(k2s, dtype=np.float32), half_cov=half, need=need,
                 kernels=tuple(kern))
    _BANKS[key] = bank
    return bank


def _prepare(flux: np.ndarray, ivar: np.ndarray, continuum: np.ndarray, z: np.ndarray,
             wave: np.ndarray, cfg: MatchedFilterConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residuals, weights (rescaled) and the good-pixel mask of one chunk (float32)."""
    f = np.asarray(flux, dtype=np.float32)
    iv = np.asarray(ivar, dtype=np.float32)
    c = np.asarray(continuum, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        r = f - c
        good = np.isfinite(r) & np.isfinite(iv) & (iv > 0)
    good &= ~galaxy_line_masks_fast(wave, z, half_width_kms=cfg.galaxy_half_width_kms,
                                    extended=cfg.galaxy_extended)
    if cfg.sky_half_width_kms > 0:
        good &= ~sky_line_mask(wave, half_width_kms=cfg.sky_half_width_kms)[None, :]
    good &= (good.sum(axis=1) >= cfg.min_good_pixels)[:, None]
    r = np.where(good, r, np.float32(0.0))
    w = np.where(good, iv, np.float32(0.0))
    if cfg.rescale_ivar:
        s = robust_sigma_rows(r * np.sqrt(w), good)
        ok = np.isfinite(s) & (s > 0)
        scale = np.where(ok, 1.0 / np.where(ok, s, 1.0) ** 2, 0.0).astype(np.float32)
        w *= scale[:, None]
        good &= ok[:, None]
    return r, w, good


#: S/N given to pixels where a kernel is not counted (coverage too low): below any real value
_BAD = np.float32(-3e38)
#: ``sum(w k^2)`` below this fraction of its row maximum is floored there (FFT round-off guard)
_DEN_FLOOR = np.float32(1e-4)


def _check(flux: np.ndarray, ivar: np.ndarray, continuum: np.ndarray, z: np.ndarray,
           wave: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    wv = WINDOW.wave if wave is None else np.asarray(wave, dtype=np.float64)
    f = np.atleast_2d(flux)
    n, p = f.shape
    iv = np.atleast_2d(ivar)
    c = np.atleast_2d(continuum)
    z1 = np.atleast_1d(np.asarray(z, dtype=np.float64))
    if iv.shape != (n, p) or c.shape != (n, p) or z1.shape != (n,) or wv.shape != (p,):
        raise ValueError(f"shape mismatch: flux {f.shape}, ivar {iv.shape}, "
                         f"continuum {c.shape}, z {z1.shape}, wave {wv.shape}")
    return f, iv, c, z1, wv


@dataclass
class _Chunk:
    """One chunk's searchable rows: global row indices, residuals, weights, good mask, S/N map."""

    rows: np.ndarray
    r: np.ndarray
    w: np.ndarray
    good: np.ndarray
    snr: np.ndarray


def _iter_maps(flux: np.ndarray, ivar: np.ndarray, continuum: np.ndarray, z: np.ndarray,
               wave: np.ndarray, cfg: MatchedFilterConfig, *, coverage: bool) -> Iterator[_Chunk]:
    """Yield the best-kernel S/N map of each chunk (searchable rows only).

    With ``coverage`` a kernel counts at a pixel only where it passes the coverage cut (``_BAD``
    elsewhere); without it every kernel counts (the fast map :func:`scan_batch` finds candidates
    in, before checking coverage exactly at the candidates).
    """
    n, p = flux.shape
    if n == 0 or p == 0:
        return
    bank = _bank(p, cfg)
    hpad = max(bank.half_cov) + 1
    step = max(1, cfg.chunk)
    for start in range(0, n, step):
        sl = slice(start, min(start + step, n))
        r, w, good = _prepare(flux[sl], ivar[sl], continuum[sl], z[sl], wave, cfg)
        rows = np.flatnonzero(good.any(axis=1))
        if rows.size == 0:
            continue
        if rows.size < good.shape[0]:
            r, w, good = r[rows], w[rows], good[rows]
        m = rows.size
        rw_hat = scipy.fft.rfft(r * w, n=bank.nfft, axis=1, workers=cfg.workers)
        w_hat = scipy.fft.rfft(w, n=bank.nfft, axis=1, workers=cfg.workers)
        if coverage:
            # padded cumulative count of good pixels: the count in [i-h, i+h] is a slice difference
            cs = np.zeros((m, p + 2 * hpad), dtype=np.int16)
            np.cumsum(good, axis=1, dtype=np.int16, out=cs[:, hpad:hpad + p])
            cs[:, hpad + p:] = cs[:, hpad + p - 1:hpad + p]
        best = np.full((m, p), _BAD, dtype=np.float32)
        for j in range(len(cfg.sigmas_px)):
            num = scipy.fft.irfft(rw_hat * bank.k_hat[j], n=bank.nfft, axis=1, workers=cfg.workers)[:, :p]
            den = scipy.fft.irfft(w_hat * bank.k2_hat[j], n=bank.nfft, axis=1, workers=cfg.workers)[:, :p]
            # den is a sum of non-negative terms; FFT round-off leaves ~1e-7 noise where the kernel
            # sees no data: floor it relative to the row's maximum
            floor = np.maximum(_DEN_FLOOR * den.max(axis=1, keepdims=True), np.float32(1e-30))
            np.maximum(den, floor, out=den)
            np.sqrt(den, out=den)
            np.divide(num, den, out=num)  # S/N = sum(r w k) / sqrt(sum(w k^2))
            if coverage:
                h = bank.half_cov[j]
                count = cs[:, hpad + h:hpad + h + p] - cs[:, hpad - h - 1:hpad - h - 1 + p]
                num += (count < bank.need[j]) * _BAD
            np.maximum(best, num, out=best)
        yield _Chunk(rows=start + rows, r=r, w=w, good=good, snr=best)


def snr_map(flux: np.ndarray, ivar: np.ndarray, continuum: np.ndarray, z: np.ndarray, *,
            wave: np.ndarray | None = None, config: MatchedFilterConfig | None = None) -> np.ndarray:
    """Per-pixel matched-filter S/N, maximum over the kernels that pass the coverage cut.

    Parameters are those of :func:`scan_batch`.

    Returns
    -------
    numpy.ndarray
        (N, P) float32; -inf where no kernel is counted (masked, or spectrum not searchable).
    """
    cfg = config or MatchedFilterConfig()
    f, iv, c, z1, wv = _check(flux, ivar, continuum, z, wave)
    out = np.full(f.shape, -np.inf, dtype=np.float32)
    for ch in _iter_maps(f, iv, c, z1, wv, cfg, coverage=True):
        out[ch.rows] = np.where(ch.snr <= _BAD, np.float32(-np.inf), ch.snr)
    return out


def _peaks(s: np.ndarray, cfg: MatchedFilterConfig) -> tuple[np.ndarray, np.ndarray]:
    """(row, pixel) of the local maxima (within +-merge_px) of an S/N map with S/N >= threshold."""
    cand = np.flatnonzero((s >= cfg.threshold).any(axis=1))
    if cand.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    sc = s[cand]
    size = 2 * max(int(cfg.merge_px), 0) + 1
    peak = (sc >= cfg.threshold) & (sc == maximum_filter1d(sc, size=size, axis=1, mode="constant", cval=float(_BAD)))
    rr, pp = np.nonzero(peak)
    return cand[rr].astype(np.int64), pp.astype(np.int64)


def _refine(ch: _Chunk, rr: np.ndarray, pp: np.ndarray, bank: _Bank, cfg: MatchedFilterConfig
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact per-kernel S/N, amplitude and coverage at candidate pixels (direct sums, float64).

    Returns the best covered kernel's index (-1 if none), S/N (-inf if none) and amplitude.
    """
    p = ch.r.shape[1]
    hmax = max(len(k) // 2 for k in bank.kernels)
    rw = np.zeros((rr.size, p + 2 * hmax))
    w = np.zeros_like(rw)
    g = np.zeros(rw.shape, dtype=bool)
    rw[:, hmax:hmax + p] = ch.r[rr].astype(np.float64) * ch.w[rr]
    w[:, hmax:hmax + p] = ch.w[rr]
    g[:, hmax:hmax + p] = ch.good[rr]
    cols = pp[:, None] + hmax + np.arange(-hmax, hmax + 1)[None, :]  # window around each candidate
    rw_win = np.take_along_axis(rw, cols, axis=1)
    w_win = np.take_along_axis(w, cols, axis=1)
    g_win = np.take_along_axis(g, cols, axis=1)
    best_k = np.full(rr.size, -1, dtype=np.int64)
    best_s = np.full(rr.size, -np.inf)
    best_a = np.zeros(rr.size)
    for j, k in enumerate(bank.kernels):
        h = len(k) // 2
        kf = np.zeros(2 * hmax + 1)
        kf[hmax - h:hmax + h + 1] = k
        num = rw_win @ kf
        den = w_win @ (kf * kf)
        hc = bank.half_cov[j]
        cnt = g_win[:, hmax - hc:hmax + hc + 1].sum(axis=1)
        ok = (cnt >= bank.need[j]) & (den > 0)
        dsafe = np.where(ok, den, 1.0)
        sj = np.where(ok, num / np.sqrt(dsafe), -np.inf)
        upd = sj > best_s
        best_k = np.where(upd, j, best_k)
        best_s = np.where(upd, sj, best_s)
        best_a = np.where(upd, num / dsafe, best_a)
    return best_k, best_s, best_a


def scan_batch(flux: np.ndarray, ivar: np.ndarray, continuum: np.ndarray, z: np.ndarray, *,
               wave: np.ndarray | None = None, config: MatchedFilterConfig | None = None) -> Hits:
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
    f, iv, c, z1, wv = _check(flux, ivar, continuum, z, wave)
    if f.shape[1] == 0:
        return Hits()
    bank = _bank(f.shape[1], cfg)
    dlam_all = np.gradient(wv) if wv.size > 1 else np.ones_like(wv)
    sig_all = np.asarray(cfg.sigmas_px, dtype=np.float64)
    parts: list[Hits] = []
    for ch in _iter_maps(f, iv, c, z1, wv, cfg, coverage=False):
        rr, pp = _peaks(ch.snr, cfg)
        if rr.size == 0:
            continue
        k, sn, amp = _refine(ch, rr, pp, bank, cfg)
        keep = (k >= 0) & (sn >= cfg.threshold)
        rr, pp, k, sn, amp = rr[keep], pp[keep], k[keep], sn[keep], amp[keep]
        # equal maxima within merge_px (plateaus) would give two hits: keep the first of each run
        if rr.size > 1:
            first = np.ones(rr.size, dtype=bool)
            first[1:] = ~((rr[1:] == rr[:-1]) & (pp[1:] - pp[:-1] <= cfg.merge_px))
            rr, pp, k, sn, amp = rr[first], pp[first], k[first], sn[first], amp[first]
        if rr.size == 0:
            continue
        sig_px = sig_all[k]
        lam = wv[pp]
        dlam = dlam_all[pp]  # Angstrom per pixel at the peak
        parts.append(Hits(
            row=ch.rows[rr].astype(np.int64),
            pixel=pp,
            wavelength=lam,
            snr=sn,
            amplitude=amp,
            line_flux=amp * sig_px * dlam * np.sqrt(2.0 * np.pi),
            sigma_kms=sig_px * C_KMS * dlam / lam,
        ))
    return Hits.concatenate(parts)


def snr_max(flux: np.ndarray, ivar: np.ndarray, continuum: np.ndarray, z: np.ndarray, *,
            wave: np.ndarray | None = None, config: MatchedFilterConfig | None = None) -> np.ndarray:
    """Maximum matched-filter S/N of each spectrum (for ROC-style evaluation).

    The maximum of :func:`snr_map` (coverage cut applied), so ``snr_max >= t`` is what a hit at
    threshold ``t`` needs. Parameters are those of :func:`scan_batch` (``threshold`` unused).

    Returns
    -------
    numpy.ndarray
        (N,) float64; NaN where no pixel could be searched (all masked, too few good pixels).
    """
    cfg = config or MatchedFilterConfig()
    f, iv, c, z1, wv = _check(flux, ivar, continuum, z, wave)
    out = np.full(f.shape[0], np.nan)
    for ch in _iter_maps(f, iv, c, z1, wv, cfg, coverage=True):
        m = ch.snr.max(axis=1).astype(np.float64)
        out[ch.rows] = np.where(m > float(_BAD) / 2, m, np.nan)
    return out
