"""Network input of :class:`~lenscat.models.specnet.SpecResNet`: spectra on the search window to 3 channels.

:func:`prepare_inputs` turns flux, inverse variance, continuum and redshift into the network's
input; which pixels to mask besides the bad ones (the foreground galaxy's lines, bright sky lines)
is the caller's knowledge, passed in as ``pixel_mask`` (the spectra domain's
:func:`lenscat.spectra.masks.specnet_pixel_mask`), so that models/ imports no domain module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lenscat.errors import LenscatError

__all__ = [
    "N_INPUT_CHANNELS",
    "WINDOW_DLOG",
    "WINDOW_K0",
    "WINDOW_N",
    "PixelMask",
    "prepare_inputs",
    "window_wave",
]

#: input channels of :func:`prepare_inputs`
N_INPUT_CHANNELS = 3
#: the search window the networks are trained on, as a log10 grid (``log10(lambda) = (k0 + i) * dlog``,
#: 3800-5000 A, 1,193 pixels); kept here so that models/ depends on no domain module, and tested to
#: equal :data:`lenscat.spectra.grid.WINDOW`
WINDOW_K0 = 35798
WINDOW_N = 1193
WINDOW_DLOG = 1e-4


def window_wave() -> np.ndarray:
    """Pixel centres of the search window [Angstrom] (the default grid of :func:`prepare_inputs`)."""
    return np.asarray(10.0 ** ((WINDOW_K0 + np.arange(WINDOW_N)) * WINDOW_DLOG))


#: MAD -> sigma for a Gaussian
_MAD_TO_SIGMA = 1.4826
#: rows handled at a time by :func:`prepare_inputs` (bounds the line-mask temporaries)
_PREP_CHUNK = 1024

#: ``pixel_mask(wave, z)``: ``wave`` (P,) [Angstrom] and ``z`` (n,) foreground redshifts (NaN:
#: unknown) to an (n, P) boolean array, True where a pixel is to be masked
PixelMask = Callable[[np.ndarray, np.ndarray], np.ndarray]


def prepare_inputs(
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    z: np.ndarray,
    *,
    wave: np.ndarray | None = None,
    clip: float = 10.0,
    pixel_mask: PixelMask | None = None,
) -> np.ndarray:
    """Network input from spectra on a common grid.

    Channels, with ``r = flux - continuum`` and *good* pixels those with ``ivar > 0``, finite
    values and outside ``pixel_mask`` (the detector's is
    :func:`lenscat.spectra.masks.specnet_pixel_mask`: the foreground galaxy's [NeV] 3347, 3427,
    [OII] 3727, [NeIII] 3869 at ``z``, +-600 km/s, as Li et al. mask them, and the bright sky lines
    of the window, Hg I 4047, 4358, +-150 km/s):

    0. S/N residual ``r * sqrt(ivar)``, clipped to +-``clip``;
    1. flux residual ``r / s`` with ``s`` the spectrum's robust scatter (1.4826 x the median
       absolute deviation of ``r`` over good pixels), clipped to +-``clip`` -- independent of
       how well ``ivar`` is calibrated;
    2. the good-pixel mask (1 good, 0 masked).

    Channels 0 and 1 are 0 at masked pixels.

    Parameters
    ----------
    flux, ivar, continuum : numpy.ndarray, shape (N, P) or (P,)
        Flux density and continuum [1e-17 erg/s/cm^2/A] and inverse variance, on ``wave``.
    z : numpy.ndarray, shape (N,) or float
        Foreground redshift (NaN: unknown, no galaxy lines masked).
    wave : numpy.ndarray, shape (P,), optional
        Pixel centres [Angstrom]; default the search window :func:`window_wave`
        (:data:`~lenscat.spectra.grid.WINDOW`).
    clip : float
        Clipping of the residual channels (in S/N or scatter units).
    pixel_mask : callable, optional
        :data:`PixelMask`: ``pixel_mask(wave, z)`` gives the (n, P) pixels to mask for n spectra
        (called on chunks of at most 1,024 rows); None masks only the bad pixels.

    Returns
    -------
    numpy.ndarray, shape (N, 3, P), float32
    """
    f = np.atleast_2d(np.asarray(flux, dtype=np.float32))
    iv = np.atleast_2d(np.asarray(ivar, dtype=np.float32))
    c = np.atleast_2d(np.asarray(continuum, dtype=np.float32))
    zz = np.atleast_1d(np.asarray(z, dtype=np.float64)).reshape(-1)
    w = window_wave() if wave is None else np.asarray(wave, dtype=np.float64)
    n, p = f.shape
    if iv.shape != (n, p) or c.shape != (n, p):
        raise LenscatError(f"flux {f.shape}, ivar {iv.shape} and continuum {c.shape} differ")
    if w.shape != (p,):
        raise LenscatError(f"{p} pixels but {w.shape[0] if w.ndim else 0} wavelengths")
    if len(zz) != n:
        raise LenscatError(f"{len(zz)} redshifts for {n} spectra")
    out = np.zeros((n, N_INPUT_CHANNELS, p), dtype=np.float32)
    for s in range(0, n, _PREP_CHUNK):
        sl = slice(s, min(n, s + _PREP_CHUNK))
        fi, ii, ci = f[sl], iv[sl], c[sl]
        with np.errstate(invalid="ignore"):
            r = fi - ci
            good = (ii > 0) & np.isfinite(r) & np.isfinite(ii)
        if pixel_mask is not None:
            good &= ~np.asarray(pixel_mask(w, zz[sl]), dtype=bool)
        r = np.where(good, r, np.float32(0.0))
        snr = r * np.sqrt(np.where(good, ii, np.float32(0.0)))
        out[sl, 0] = np.clip(snr, -clip, clip)
        scale = _MAD_TO_SIGMA * _masked_mad(r, good)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, np.inf)[:, None]
        out[sl, 1] = np.where(good, np.clip(r / scale, -clip, clip), np.float32(0.0))
        out[sl, 2] = good
    return out


def _masked_median(a: np.ndarray, good: np.ndarray, low: float, high: float) -> np.ndarray:
    """Row medians of ``a`` over ``good``: masked entries alternate ``low`` / ``high`` (below and
    above every good value), which leaves the median in place (to half a rank when a row has an
    odd number of masked pixels) at the cost of a plain, partition-based median."""
    # alternate by masked rank, not by column, so that any mask pattern balances
    rank = np.cumsum(~good, axis=1) % 2
    filled = np.where(good, a, np.where(rank == 0, np.float32(low), np.float32(high)))
    med = np.median(filled, axis=1)
    return np.where(good.any(axis=1), med, np.nan)


def _masked_mad(a: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Row median absolute deviations of ``a`` over ``good`` (NaN for a row with none)."""
    big = float(np.finfo(np.float32).max)
    med = _masked_median(a, good, -big, big)
    dev = np.abs(a - np.nan_to_num(med)[:, None].astype(np.float32))
    return _masked_median(dev, good, -1.0, big)


def _get(data: Any, key: str) -> Any:
    if isinstance(data, Mapping):
        return data.get(key)
    return getattr(data, key, None)


def _training_arrays(
    data: Any, what: str, wave: np.ndarray | None, pixel_mask: PixelMask | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, labels, line_pixel) from a mapping / SyntheticSet-like object."""
    labels = _get(data, "labels")
    if labels is None:
        raise LenscatError(f"{what}: no 'labels'")
    y = np.asarray(labels).reshape(-1).astype(np.float32)
    if not np.all((y == 0) | (y == 1)):
        raise LenscatError(f"{what}: labels must be 0 or 1")
    x = _get(data, "inputs")
    if x is None:
        missing = [k for k in ("flux", "ivar", "continuum", "z") if _get(data, k) is None]
        if missing:
            raise LenscatError(f"{what}: needs 'inputs' or flux, ivar, continuum, z (missing {', '.join(missing)})")
        w = _get(data, "wave") if wave is None else wave
        x = prepare_inputs(
            _get(data, "flux"),
            _get(data, "ivar"),
            _get(data, "continuum"),
            _get(data, "z"),
            wave=w,
            pixel_mask=pixel_mask,
        )
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3 or len(x) != len(y):
        raise LenscatError(f"{what}: inputs {x.shape} for {len(y)} labels")
    lp = _get(data, "line_pixel")
    line_pixel = np.full(len(y), -1, np.int64) if lp is None else np.asarray(lp, dtype=np.int64).reshape(-1)
    if len(line_pixel) != len(y):
        raise LenscatError(f"{what}: {len(line_pixel)} line pixels for {len(y)} labels")
    return x, y, line_pixel
