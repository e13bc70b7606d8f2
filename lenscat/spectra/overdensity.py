"""Survey-wide wavelength overdensity of matched-filter hits.

Hits pile up at wavelengths of airglow and template residuals; :func:`wavelength_overdensity` flags
the bins whose hit count is improbable under a uniform rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from lenscat.spectra.grid import WINDOW, LogGrid

__all__ = ["FlaggedBins", "wavelength_overdensity"]


@dataclass
class FlaggedBins:
    """Wavelength bins with an improbable number of hits (parallel arrays, one entry per bin).

    Attributes
    ----------
    wave_lo, wave_hi : numpy.ndarray
        Bin edges [Angstrom].
    count : numpy.ndarray
        int64, hits in the bin.
    expected : numpy.ndarray
        Hits expected under the uniform rate.
    p_value : numpy.ndarray
        Binomial tail probability P(X >= count) of the bin (before the trials correction).
    """

    wave_lo: np.ndarray = field(default_factory=lambda: np.zeros(0))
    wave_hi: np.ndarray = field(default_factory=lambda: np.zeros(0))
    count: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    expected: np.ndarray = field(default_factory=lambda: np.zeros(0))
    p_value: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return int(self.count.size)


def wavelength_overdensity(
    wavelengths: np.ndarray,
    n_spectra: int,
    *,
    grid: LogGrid = WINDOW,
    bin_px: int = 2,
    p_threshold: float = 1e-3,
    max_iter: int = 20,
) -> tuple[np.ndarray, FlaggedBins]:
    """Flag hits in wavelength bins holding far more hits than a uniform rate gives.

    Hits (all spectra of a survey) are binned in ``bin_px``-pixel bins of ``grid``, at every
    1-pixel phase of the binning (so a spike on a bin edge is not split). The uniform rate per bin
    is the mean count of the unflagged bins (iterated until stable), and a bin is flagged when the
    binomial tail probability of its count (``n_spectra`` trials, per-spectrum probability
    ``rate / n_spectra``) times the number of bins tested is below ``p_threshold``
    (a Bonferroni-corrected family-wise false-flag probability). Such pile-ups come from airglow,
    sky-subtraction and template residuals rather than from lensed sources.

    Parameters
    ----------
    wavelengths : numpy.ndarray
        (H,) hit wavelengths [Angstrom].
    n_spectra : int
        Spectra searched to get them.
    grid : LogGrid
        The search grid.
    bin_px : int
        Bin width [pixels].
    p_threshold : float
        Family-wise false-flag probability.
    max_iter : int
        Iterations of the rate estimate.

    Returns
    -------
    tuple
        ``(flagged, bins)``: (H,) bool, True for hits in a flagged bin (hits off the grid are never
        flagged), and the :class:`FlaggedBins` (sorted by wavelength).
    """
    lam = np.asarray(wavelengths, dtype=np.float64).ravel()
    flagged = np.zeros(lam.size, dtype=bool)
    bin_px = max(int(bin_px), 1)
    n_spec = max(int(n_spectra), 1)
    if lam.size == 0:
        return flagged, FlaggedBins()
    with np.errstate(divide="ignore", invalid="ignore"):
        pix = np.rint(np.log10(lam) / grid.dlog - grid.k0)
    on = np.isfinite(pix) & (pix >= 0) & (pix < grid.n)
    pix_i = np.where(on, pix, 0).astype(np.int64)
    edges = grid.edges
    n_phase = bin_px
    n_bins_total = sum(int(np.ceil((grid.n + ph) / bin_px)) for ph in range(n_phase))
    alpha = p_threshold / max(n_bins_total, 1)
    lo_l: list[float] = []
    hi_l: list[float] = []
    cnt_l: list[int] = []
    exp_l: list[float] = []
    p_l: list[float] = []
    for ph in range(n_phase):
        nb = int(np.ceil((grid.n + ph) / bin_px))
        b = (pix_i + ph) // bin_px
        counts = np.bincount(b[on], minlength=nb)
        bad = np.zeros(nb, dtype=bool)
        pv = np.ones(nb)
        for _ in range(max(max_iter, 1)):
            mu = float(counts[~bad].mean()) if (~bad).any() else 0.0
            prob = min(mu / n_spec, 1.0)
            pv = stats.binom.sf(counts - 1, n_spec, prob) if prob > 0 else np.where(counts > 0, 0.0, 1.0)
            new = pv < alpha
            if np.array_equal(new, bad):
                break
            bad = new
        flagged |= on & bad[b]
        for j in np.flatnonzero(bad):
            p0 = int(max(int(j) * bin_px - ph, 0))
            p1 = int(min((int(j) + 1) * bin_px - ph, grid.n))
            lo_l.append(float(edges[p0]))
            hi_l.append(float(edges[p1]))
            cnt_l.append(int(counts[j]))
            exp_l.append(mu)
            p_l.append(float(pv[j]))
    order = np.argsort(np.asarray(lo_l, dtype=np.float64), kind="stable")
    table = FlaggedBins(
        wave_lo=np.asarray(lo_l, dtype=np.float64)[order],
        wave_hi=np.asarray(hi_l, dtype=np.float64)[order],
        count=np.asarray(cnt_l, dtype=np.int64)[order],
        expected=np.asarray(exp_l, dtype=np.float64)[order],
        p_value=np.asarray(p_l, dtype=np.float64)[order],
    )
    return flagged, table
