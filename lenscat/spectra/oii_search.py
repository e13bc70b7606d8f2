"""The doublet matched filter of the [OII] family (:func:`search`) and its hits (:class:`OIIHits`).

The steps (residual, masks, per-block noise rescaling, FFT cross-correlation with a bank of
doublet kernels, coverage, redshift range, local maxima) are described in :mod:`lenscat.spectra.oii`
(section "Search").
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import maximum_filter1d

from lenscat.spectra.oii import _SQRT2PI, OII_MEAN, OIIConfig, _dlog, _doublet_kernel, min_z_source, prepare

__all__ = ["WORKERS", "OIIHits", "search"]

#: threads searching blocks of ``OIIConfig.chunk`` spectra in parallel (not a setting of the version:
#: the hits do not depend on it)
WORKERS = 2


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
    step = max(1, int(cfg.chunk))

    def block(s0: int) -> tuple[list[Any], ...]:
        """Hits and best S/N of rows s0 .. s0 + step (writes ``out_best`` for those rows only)."""
        rows_l: list[int] = []
        pix_l: list[int] = []
        snr_l: list[float] = []
        sig_l: list[float] = []
        rat_l: list[float] = []
        amp_l: list[float] = []
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
            np.copyto(num, np.float32(-np.inf), where=~use)
            better = num > smap
            np.copyto(smap, num, where=better)
            np.copyto(kidx, np.int8(j), where=better)
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
        return rows_l, pix_l, snr_l, sig_l, rat_l, amp_l

    starts = list(range(0, n, step))
    workers = max(1, min(WORKERS, len(starts)))
    if workers == 1:
        parts = [block(s0) for s0 in starts]
    else:  # scipy's transforms and numpy's loops release the GIL
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(block, starts))
    rows_l, pix_l, snr_l, sig_l, rat_l, amp_l = ([x for part in parts for x in part[k]] for k in range(6))
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
