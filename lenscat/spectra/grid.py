"""The grids spectra are packed onto: BOSS coadd pixels, 3800-5000 A (WINDOW) and 3600-10400 A (FULL).

:data:`WINDOW` (the Lyman-alpha search window) and :data:`VETO` are exact column slices of
:data:`FULL` (same ``dlog``, integer offsets; :func:`column_slice`).

SDSS and BOSS coadds sample ``log10(lambda) = 1e-4 * k`` for integer ``k`` (69 km/s per pixel), so
their pixels drop into the window without interpolation. DESI's linear 0.8 Angstrom grids are
resampled flux-conservingly, with the inverse variance propagated and a window pixel masked when any
native pixel under it is masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lenscat.errors import LenscatError

#: rest wavelength of Lyman alpha [Angstrom, vacuum]
LYA = 1215.67
#: speed of light [km/s]
C_KMS = 299_792.458


@dataclass(frozen=True)
class LogGrid:
    """Pixels at ``log10(lambda / Angstrom) = (k0 + i) * dlog`` for ``i = 0 .. n - 1``."""

    k0: int
    n: int
    dlog: float = 1e-4

    @classmethod
    def window(cls, lo: float = 3800.0, hi: float = 5000.0, dlog: float = 1e-4) -> LogGrid:
        """The grid from the pixel nearest ``lo`` to the pixel nearest ``hi`` [Angstrom]."""
        k0 = int(np.rint(np.log10(lo) / dlog))
        k1 = int(np.rint(np.log10(hi) / dlog))
        return cls(k0=k0, n=k1 - k0 + 1, dlog=dlog)

    @property
    def loglam(self) -> np.ndarray:
        """log10 of the pixel wavelengths."""
        return (self.k0 + np.arange(self.n)) * self.dlog

    @property
    def wave(self) -> np.ndarray:
        """Pixel centre wavelengths [Angstrom]."""
        return np.asarray(10.0**self.loglam)

    @property
    def edges(self) -> np.ndarray:
        """Pixel edges [Angstrom] (n + 1 values)."""
        return np.asarray(10.0 ** ((self.k0 - 0.5 + np.arange(self.n + 1)) * self.dlog))

    @property
    def velocity_per_pixel(self) -> float:
        """Pixel width [km/s]."""
        return float(C_KMS * np.log(10.0) * self.dlog)

    def z_lya(self) -> np.ndarray:
        """Lyman-alpha redshift at each pixel."""
        return self.wave / LYA - 1.0


#: the default search window (1,193 px; Lyman alpha there means 2.13 < z_s < 3.11)
WINDOW = LogGrid.window()
#: the red range the [OII]-interloper veto reads: where Hbeta, [OIII] 5007 and Halpha of an [OII]
#: line in WINDOW would fall (x1.3042, x1.3432, x1.7607)
VETO = LogGrid.window(4900.0, 8850.0)
#: the whole SDSS/BOSS/DESI range, 3600-10400 A (4,608 px): the full-range rows of the packed store
#: ([OII] background emitters, per-hit follow-up). WINDOW and VETO are column slices of it.
FULL = LogGrid.window(3600.0, 10400.0)


def column_slice(outer: LogGrid, inner: LogGrid) -> slice:
    """The columns of ``outer`` that are the pixels of ``inner`` (same ``dlog``, inner inside outer).

    Raises
    ------
    LenscatError
        When ``inner`` is not an exact column slice of ``outer``.
    """
    start = inner.k0 - outer.k0
    if inner.dlog != outer.dlog or start < 0 or start + inner.n > outer.n:
        raise LenscatError(f"grid {inner} is not a column slice of {outer}")
    return slice(start, start + inner.n)


assert column_slice(FULL, WINDOW) == slice(WINDOW.k0 - FULL.k0, WINDOW.k0 - FULL.k0 + WINDOW.n)
assert column_slice(FULL, VETO).stop <= FULL.n


def _edges_from_centres(wave: np.ndarray) -> np.ndarray:
    mid = 0.5 * (wave[1:] + wave[:-1])
    return np.concatenate([[wave[0] - (mid[0] - wave[0])], mid, [wave[-1] + (wave[-1] - mid[-1])]])


def to_grid(
    wave: np.ndarray, *arrays: np.ndarray | None, ivar: np.ndarray, grid: LogGrid = WINDOW
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Put a spectrum's arrays on ``grid``; returns (ivar, [array, ...]) on the grid, float32.

    Pixels of ``grid`` outside the spectrum's coverage get ``ivar = 0`` and value 0.

    If ``wave`` already samples the same log10 grid (SDSS/BOSS), pixels are copied. Otherwise each
    array is averaged over the overlap of native and grid pixels (flux-conserving), the variance of
    that mean is propagated from ``ivar``, and a grid pixel touching a masked native pixel is masked.

    Parameters
    ----------
    wave : numpy.ndarray
        Native pixel wavelengths [Angstrom], increasing.
    *arrays : numpy.ndarray or None
        Arrays on ``wave`` (flux, model, sky...); None passes through as None.
    ivar : numpy.ndarray
        Inverse variance on ``wave``; 0 = masked.
    grid : LogGrid
        Target grid.
    """
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1 or wave.size < 2 or np.any(np.diff(wave) <= 0):
        raise LenscatError("spectrum wavelengths must be a 1-D increasing array")
    ivar = np.asarray(ivar, dtype=np.float64)
    out_ivar = np.zeros(grid.n, dtype=np.float32)
    outs: list[np.ndarray | None] = [None if a is None else np.zeros(grid.n, dtype=np.float32) for a in arrays]
    k = np.log10(wave) / grid.dlog - grid.k0
    kr = np.rint(k)
    if np.all(np.abs(k - kr) < 1e-2) and np.all(np.diff(kr) == 1):  # float32 loglam: ~1e-3 px off
        src = np.arange(wave.size)
        dst = kr.astype(np.int64)
        ok = (dst >= 0) & (dst < grid.n)
        src, dst = src[ok], dst[ok]
        good = np.isfinite(ivar[src]) & (ivar[src] > 0)
        out_ivar[dst[good]] = ivar[src[good]]
        for a, o in zip(arrays, outs, strict=True):
            if a is not None and o is not None:
                v = np.asarray(a, dtype=np.float64)[src]
                o[dst] = np.where(np.isfinite(v), v, 0.0)
        return out_ivar, outs
    # general case: integrate piecewise-constant native pixels over each grid pixel (cumulative sums)
    ne = _edges_from_centres(wave)
    ge = grid.edges
    inside = (ge[:-1] >= ne[0]) & (ge[1:] <= ne[-1])
    dl = np.diff(ne)
    bad = ~(np.isfinite(ivar) & (ivar > 0))
    var = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, ivar))
    width = np.diff(ge)

    def integral(density: np.ndarray) -> np.ndarray:
        cum = np.concatenate([[0.0], np.cumsum(density * dl)])
        at = np.interp(ge, ne, cum)
        return np.diff(at)

    for a, o in zip(arrays, outs, strict=True):
        if a is not None and o is not None:
            v = np.asarray(a, dtype=np.float64)
            o[:] = np.where(inside, integral(np.where(np.isfinite(v), v, 0.0)) / width, 0.0)
    # variance of the mean: sum over native pixels of (overlap / width)^2 var, exactly: the two end
    # pixels overlap partly, the ones between fully (a cumulative sum of dl^2 var)
    last = wave.size - 1
    ia = np.clip(np.searchsorted(ne, ge[:-1], side="right") - 1, 0, last)
    ib = np.clip(np.searchsorted(ne, ge[1:], side="right") - 1, 0, last)
    c2 = np.concatenate([[0.0], np.cumsum(dl * dl * var)])
    same = ia == ib
    left = np.where(same, ge[1:] - ge[:-1], ne[ia + 1] - ge[:-1])
    right = np.where(same, 0.0, ge[1:] - ne[ib])
    middle = np.where(same, 0.0, c2[ib] - c2[np.minimum(ia + 1, ib)])
    vv = (left**2 * var[ia] + right**2 * var[ib] + middle) / width**2
    touched_bad = integral(bad.astype(np.float64)) > 0
    ok = inside & ~touched_bad & (vv > 0)
    out_ivar[ok] = 1.0 / vv[ok]
    return out_ivar, outs
