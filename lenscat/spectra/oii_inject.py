"""Injection of background [OII] doublets for injection-recovery evaluation (:func:`draw_oii_params`,
:func:`inject_oii`).

Doublets (with Hbeta and [OIII] at realistic ratios) scaled to a drawn matched S/N
``sqrt(sum ivar p^2)`` of the doublet profile ``p``; see :mod:`lenscat.spectra.oii` for the family.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lenscat.spectra.grid import C_KMS
from lenscat.spectra.oii import (
    HBETA,
    OII_3727,
    OII_3729,
    OII_MEAN,
    OIII_4959,
    OIII_5007,
    OIII_RATIO,
    _gauss,
    doublet_profile,
)
from lenscat.spectra.synth import matched_snr  # one answer to "the optimal S/N of a known line"

__all__ = ["OIIParams", "draw_oii_params", "inject_oii"]


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
