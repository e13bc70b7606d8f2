"""The numerical core of the Lya matched filter: kernel banks, preparation of a block, S/N, peaks.

Private helpers of :mod:`lenscat.spectra.matched_filter` (which holds the settings, the hits and the
public scans): the FFT kernel bank per settings (cached), the residual/weight preparation with the
robust noise rescaling, the per-kernel S/N with its coverage cut, local maxima and their refinement,
and the single-thread torch context the scans run in.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.ndimage import maximum_filter1d

from lenscat.spectra.grid import WINDOW
from lenscat.spectra.masks import galaxy_line_pixels

if TYPE_CHECKING:
    from lenscat.spectra.matched_filter import MatchedFilterConfig

#: S/N given to pixels where a kernel is not counted (coverage too low): below any real value
_BAD = np.float32(-3e38)


#: ``sum(w k^2)`` below this fraction of its row maximum is floored there (FFT round-off guard)
_DEN_FLOOR = np.float32(1e-4)


#: MAD -> sigma for a Gaussian
_MAD_TO_SIGMA = 1.0 / 0.6744897501960817


def _fft_len(m: int) -> int:
    """Smallest ``n >= m`` of the form ``2^a 3^b 5^c`` with ``a >= 5`` (fast for MKL's real FFTs)."""
    n = max(32, -(-m // 32) * 32)
    while True:
        k = n // 32
        for f in (2, 3, 5):
            while k % f == 0:
                k //= f
        if k == 1:
            return n
        n += 32


@dataclass(frozen=True)
class _Bank:
    """Kernel transforms for one FFT length."""

    nfft: int
    kk_hat: torch.Tensor  # (2, K, 1, nfft//2+1) complex64: transforms of k and k**2 (real: symmetric)
    half_cov: tuple[int, ...]  # coverage half-widths [px]
    need: tuple[int, ...]  # minimum good pixels within +-half_cov
    kernels: tuple[np.ndarray, ...]  # the kernels in pixel space (2h+1 taps, unit peak)


_BANKS: dict[tuple[int, tuple[float, ...], float, float, float], _Bank] = {}


def _bank(p: int, cfg: MatchedFilterConfig) -> _Bank:
    key = (p, tuple(cfg.sigmas_px), cfg.truncate, cfg.coverage_nsigma, cfg.min_coverage)
    bank = _BANKS.get(key)
    if bank is not None:
        return bank
    hmax = max(int(np.ceil(cfg.truncate * s)) for s in cfg.sigmas_px)
    nfft = _fft_len(p + hmax + 1)
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
        ks.append(np.fft.rfft(kc).real)
        k2s.append(np.fft.rfft(k2c).real)
    half = tuple(max(1, int(round(cfg.coverage_nsigma * s))) for s in cfg.sigmas_px)
    need = tuple(int(np.ceil(cfg.min_coverage * (2 * h + 1) - 1e-9)) for h in half)
    # stored complex: a complex x complex product is cheaper in torch than complex x real
    kk = np.asarray([ks, k2s], dtype=np.float32)[:, :, None, :].astype(np.complex64)
    bank = _Bank(nfft=nfft, kk_hat=torch.from_numpy(kk), half_cov=half, need=need, kernels=tuple(kern))
    _BANKS[key] = bank
    return bank


_THREADS_LOCK = threading.Lock()


_THREADS_DEPTH = 0


_THREADS_SAVED = 0


@contextmanager
def _torch_single_thread() -> Iterator[None]:
    """Run torch's FFTs single-threaded inside the block (the search threads itself over blocks).

    torch's intra-op thread count is process-wide: the first caller saves and lowers it, the last
    one restores it (nested and concurrent searches are fine).
    """
    global _THREADS_DEPTH, _THREADS_SAVED
    with _THREADS_LOCK:
        if _THREADS_DEPTH == 0:
            _THREADS_SAVED = torch.get_num_threads()
            if _THREADS_SAVED != 1:
                torch.set_num_threads(1)
        _THREADS_DEPTH += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_DEPTH -= 1
            if _THREADS_DEPTH == 0 and _THREADS_SAVED != 1:
                torch.set_num_threads(_THREADS_SAVED)


def _check(
    flux: np.ndarray, ivar: np.ndarray, continuum: np.ndarray, z: np.ndarray, wave: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    wv = WINDOW.wave if wave is None else np.asarray(wave, dtype=np.float64)
    f = np.atleast_2d(flux)
    n, p = f.shape
    iv = np.atleast_2d(ivar)
    c = np.atleast_2d(continuum)
    z1 = np.atleast_1d(np.asarray(z, dtype=np.float64))
    if iv.shape != (n, p) or c.shape != (n, p) or z1.shape != (n,) or wv.shape != (p,):
        raise ValueError(
            f"shape mismatch: flux {f.shape}, ivar {iv.shape}, continuum {c.shape}, z {z1.shape}, wave {wv.shape}"
        )
    return f, iv, c, z1, wv


@dataclass
class _Prepared:
    """One block's residuals, unscaled weights, good-pixel mask, searchable rows and ivar scale."""

    r: np.ndarray  # (B, P) float32, 0 where not good
    w: np.ndarray  # (B, P) float32 ivar, 0 where not good (not yet rescaled): a view of ``padded[1]``
    padded: np.ndarray  # (2, B, nfft) float32: r * w and w, zero beyond P (the FFT input)
    good: np.ndarray  # (B, P) bool
    ok: np.ndarray  # (B,) bool: searchable
    scale: np.ndarray  # (B,) float32: ivar multiplier (1 / s^2), 0 where not searchable


def _prepare(
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    z: np.ndarray,
    wave: np.ndarray,
    sky_cols: np.ndarray,
    cfg: MatchedFilterConfig,
    nfft: int,
) -> _Prepared:
    """Residuals, weights, good-pixel mask and the robust ivar rescaling of one block."""
    f = np.asarray(flux, dtype=np.float32)
    iv = np.asarray(ivar, dtype=np.float32)
    c = np.asarray(continuum, dtype=np.float32)
    n, p = f.shape
    with np.errstate(invalid="ignore", over="ignore"):
        r = f - c
        good = np.isfinite(r)
        good &= iv > 0
        good &= iv < np.inf
    if sky_cols.size:
        good[:, sky_cols] = False
    gal = galaxy_line_pixels(wave, z, half_width_kms=cfg.galaxy_half_width_kms, extended=cfg.galaxy_extended)
    if gal.size:
        good.reshape(-1)[gal] = False
    ng = np.count_nonzero(good, axis=1)
    few = ng < cfg.min_good_pixels
    if few.any():
        good[few] = False
        ng[few] = 0
    bad = ~good
    np.copyto(r, np.float32(0.0), where=bad)  # r is a new array (f - c)
    padded = np.empty((2, n, nfft), dtype=np.float32)  # torch pads an unpadded input slowly
    padded[:, :, p:] = 0.0
    rw, w = padded[0, :, :p], padded[1, :, :p]
    np.copyto(w, iv)
    np.copyto(w, np.float32(0.0), where=bad)
    np.multiply(r, w, out=rw)
    ok = ng > 0
    if cfg.rescale_ivar:
        # s = median over good pixels of |r| sqrt(w) / 0.6745: the masked pixels are exactly 0 in
        # r^2 w and sort first, so the good pixels' order statistics sit nbad places further on
        x2 = r * rw
        x2.sort(axis=1)
        nbad = p - ng
        at = np.arange(n)
        lo = np.sqrt(x2[at, np.clip(nbad + (ng - 1) // 2, 0, p - 1)])
        hi = np.sqrt(x2[at, np.clip(nbad + ng // 2, 0, p - 1)])
        s = 0.5 * (lo.astype(np.float64) + hi) * _MAD_TO_SIGMA
        ok &= np.isfinite(s) & (s > 0)
        scale = np.where(ok, 1.0 / np.where(ok, s, 1.0) ** 2, 0.0).astype(np.float32)
    else:
        scale = ok.astype(np.float32)
    if not ok.all():
        good[~ok] = False
    return _Prepared(r=r, w=w, padded=padded, good=good, ok=ok, scale=scale)


def _kernel_snr(pr: _Prepared, bank: _Bank) -> np.ndarray:
    """(K, B, P) float32 S/N of every kernel at every pixel, for the *unscaled* weights.

    ``num = sum(r w k)`` and ``den = sum(w k^2)`` for all kernels come from one forward transform
    of ``r w`` and of ``w`` and, per kernel, one batched inverse transform of both; the S/N for the
    rescaled weights is this times ``sqrt(scale)`` of the row (both sums scale with ``w``; the floor
    is relative). One kernel at a time keeps the products and inverse transforms at a quarter of
    the size (2 x B x nfft, ~1.3 MB for 128 rows) instead of all four at once: fewer fresh pages and
    cache misses per block, the same numbers (each row's transforms are the same transforms).
    """
    b, p = pr.r.shape
    spec = torch.fft.rfft(torch.from_numpy(pr.padded), dim=2)  # (2, B, nfft//2+1)
    out = np.empty((len(bank.half_cov), b, p), dtype=np.float32)  # contiguous (K, B, P): faster reductions
    for j in range(out.shape[0]):
        sums = torch.fft.irfft(spec * bank.kk_hat[:, j], n=bank.nfft, dim=2)[..., :p].numpy()
        num, den = sums[0], sums[1]
        # den is a sum of non-negative terms; FFT round-off leaves ~1e-7 noise where the kernel sees
        # no data: floor it relative to the row's maximum
        floor = den.max(axis=1, keepdims=True)
        floor *= _DEN_FLOOR
        np.maximum(floor, np.float32(1e-30), out=floor)
        np.maximum(den, floor, out=den)
        np.sqrt(den, out=den)
        np.divide(num, den, out=out[j])
    return out


def _coverage_counts(good: np.ndarray, half: int) -> np.ndarray:
    """(B, P) number of good pixels within +-``half`` of each pixel (outside the grid: not good)."""
    b, p = good.shape
    cs = np.zeros((b, p + 2 * half + 1), dtype=np.int32)
    np.cumsum(good, axis=1, dtype=np.int32, out=cs[:, half + 1 : half + 1 + p])
    cs[:, half + 1 + p :] = cs[:, half + p : half + 1 + p]
    return np.asarray(cs[:, 2 * half + 1 :] - cs[:, :p])


def _kernel_max(snr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per kernel and row: the pixel of the maximum of ``snr`` (K, B, P) and that maximum, (K, B) each."""
    k, b, _ = snr.shape
    arg = snr.argmax(axis=2)
    return arg, snr[np.arange(k)[:, None], np.arange(b)[None, :], arg]


def _covered_max(snr: np.ndarray, arg: np.ndarray, top: np.ndarray, good: np.ndarray, bank: _Bank) -> np.ndarray:
    """(B,) maximum over kernels and pixels of ``snr`` (K, B, P) where the coverage cut passes.

    Exact, but cheap: where a kernel's maximum over all pixels (``top`` at pixel ``arg``, from
    :func:`_kernel_max`) sits at a covered pixel it is that kernel's covered maximum; only kernels
    whose maximum is uncovered *and* above the best covered value so far are searched again over
    their covered pixels (a few rows). ``_BAD`` where no kernel is counted anywhere.
    """
    k, b, p = snr.shape
    hmax = max(bank.half_cov)
    at = np.arange(b)
    gp = np.zeros((b, p + 2 * hmax), dtype=bool)
    gp[:, hmax : hmax + p] = good
    covered = np.empty((k, b), dtype=bool)
    for j, (h, need) in enumerate(zip(bank.half_cov, bank.need, strict=True)):
        cols = arg[j][:, None] + (hmax + np.arange(-h, h + 1))[None, :]
        covered[j] = gp[at[:, None], cols].sum(axis=1) >= need
    best = np.where(covered, top, _BAD).max(axis=0)
    for j in range(k):
        rows = np.flatnonzero(~covered[j] & (top[j] > best))
        if rows.size:
            cnt = _coverage_counts(good[rows], bank.half_cov[j])
            m = np.where(cnt >= bank.need[j], snr[j, rows], _BAD).max(axis=1)
            best[rows] = np.maximum(best[rows], m)
    return np.asarray(best)


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


def _refine(
    r: np.ndarray, w: np.ndarray, good: np.ndarray, rr: np.ndarray, pp: np.ndarray, bank: _Bank
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact per-kernel S/N, amplitude and coverage at candidate pixels (direct sums, float64).

    ``w`` are the rescaled weights. Returns the best covered kernel's index (-1 if none), S/N
    (-inf if none) and amplitude.
    """
    p = r.shape[1]
    hmax = max(len(k) // 2 for k in bank.kernels)
    cols = pp[:, None] + np.arange(-hmax, hmax + 1)[None, :]  # window around each candidate
    inside = (cols >= 0) & (cols < p)  # outside the grid: no data
    at = (rr[:, None], np.clip(cols, 0, p - 1))
    w_win = np.where(inside, w[at].astype(np.float64), 0.0)
    rw_win = np.where(inside, r[at].astype(np.float64) * w_win, 0.0)
    g_win = inside & good[at]
    best_k = np.full(rr.size, -1, dtype=np.int64)
    best_s = np.full(rr.size, -np.inf)
    best_a = np.zeros(rr.size)
    for j, k in enumerate(bank.kernels):
        h = len(k) // 2
        kf = np.zeros(2 * hmax + 1)
        kf[hmax - h : hmax + h + 1] = k
        num = rw_win @ kf
        den = w_win @ (kf * kf)
        hc = bank.half_cov[j]
        cnt = g_win[:, hmax - hc : hmax + hc + 1].sum(axis=1)
        ok = (cnt >= bank.need[j]) & (den > 0)
        dsafe = np.where(ok, den, 1.0)
        sj = np.where(ok, num / np.sqrt(dsafe), -np.inf)
        upd = sj > best_s
        best_k = np.where(upd, j, best_k)
        best_s = np.where(upd, sj, best_s)
        best_a = np.where(upd, num / dsafe, best_a)
    return best_k, best_s, best_a
