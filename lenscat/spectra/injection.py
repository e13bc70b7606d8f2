"""Synthetic lines injected into copies of real spectrum files (to test a search end to end).

Lyman-alpha-like lines (:func:`inject_line_file`) or background [OII] sources (:func:`inject_oii_file`).

The copy keeps every HDU of the original; only the flux gets the line (the pipeline noise and
model stay as observed), and the fiber number (or DESI TARGETID) changes so that the copy is a
new spectrum, not an update of the original.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.io import fits

from lenscat.errors import InputFileError


def inject_line_file(
    src: str | Path,
    dest: str | Path,
    *,
    wavelength: float,
    line_flux: float,
    fwhm_kms: float = 300.0,
    skew: float = 2.0,
    fiber: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a copy of an SDSS/BOSS ``spec-PLATE-MJD-FIBER.fits`` file with a Lyman-alpha-like line added.

    Parameters
    ----------
    src, dest
        Original and copy.
    wavelength
        Peak (mode) of the line, observed vacuum [Angstrom].
    line_flux
        Integrated line flux [1e-17 erg/s/cm^2].
    fwhm_kms
        Line FWHM [km/s].
    skew
        Skew-normal shape (> 0: red tail, as Lyman alpha).
    fiber
        Fiber number of the copy (default: the original's + 500, wrapped to 1-1000).
    """
    from lenscat.spectra.synth import lya_profile

    def add(wave: np.ndarray) -> np.ndarray:
        if not wave[0] <= wavelength <= wave[-1]:
            raise InputFileError(f"{src}: {wavelength} A is outside the spectrum ({wave[0]:.0f}-{wave[-1]:.0f} A)")
        return np.asarray(lya_profile(wave, wavelength, line_flux, fwhm_kms, skew))

    return _inject_file(src, dest, add, fiber=fiber, overwrite=overwrite)


def inject_oii_file(
    src: str | Path,
    dest: str | Path,
    *,
    z_source: float,
    line_flux: float,
    fwhm_kms: float = 190.0,
    ratio: float = 1.0,
    hbeta_ratio: float = 0.4,
    oiii_ratio: float = 0.5,
    fiber: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a copy of an SDSS/BOSS ``spec-PLATE-MJD-FIBER.fits`` file with a background [OII] source added.

    The [OII] 3726,3729 doublet (two Gaussians, vacuum 3727.092 / 3729.875 A at ``1 + z_source``)
    and, where the spectrum covers them, Hbeta and [OIII] 4959, 5007 at the same redshift
    (:func:`lenscat.spectra.oii.oii_source_profile`).

    Parameters
    ----------
    src, dest
        Original and copy.
    z_source
        Source redshift (the doublet must fall inside the spectrum).
    line_flux
        Total flux of both doublet components [1e-17 erg/s/cm^2].
    fwhm_kms
        FWHM of every line [km/s].
    ratio
        ``F3729 / F3727``.
    hbeta_ratio, oiii_ratio
        Hbeta / [OII] and [OIII] 5007 / [OII] flux ratios (0: none).
    fiber
        Fiber number of the copy (default: the original's + 500, wrapped to 1-1000).
    overwrite
        Replace an existing ``dest``.
    """
    from lenscat.spectra.oii import OII_3727, OII_3729
    from lenscat.spectra.oii_inject import oii_source_profile

    sigma = fwhm_kms / (2.0 * np.sqrt(2.0 * np.log(2.0)))

    def add(wave: np.ndarray) -> np.ndarray:
        lo, hi = OII_3727 * (1 + z_source), OII_3729 * (1 + z_source)
        if not (wave[0] <= lo and hi <= wave[-1]):
            raise InputFileError(
                f"{src}: [OII] at z = {z_source:g} ({lo:.0f} A) is outside the spectrum "
                f"({wave[0]:.0f}-{wave[-1]:.0f} A)"
            )
        return oii_source_profile(wave, z_source, line_flux, sigma, ratio, hbeta_ratio, oiii_ratio)

    return _inject_file(src, dest, add, fiber=fiber, overwrite=overwrite)


def _inject_file(
    src: str | Path,
    dest: str | Path,
    profile: Callable[[np.ndarray], np.ndarray],
    *,
    fiber: int | None,
    overwrite: bool,
) -> Path:
    """Copy ``src`` to ``dest`` with ``profile(wave)`` added to the coadd flux and a new fiber number."""
    from lenscat.spectra.readers import detect_format

    src, dest = Path(src), Path(dest)
    if detect_format(src) != "sdss-spec":
        raise InputFileError(f"{src}: only spec-PLATE-MJD-FIBER files can be injected into")
    if dest.exists() and not overwrite:
        raise InputFileError(f"{dest}: exists (choose another destination, or overwrite it)")
    with fits.open(src) as h:
        names = [x.name.upper() for x in h]
        coadd = h[names.index("COADD")].data
        cols = {c.lower(): c for c in coadd.columns.names}
        wave = 10.0 ** np.asarray(coadd[cols["loglam"]], dtype=np.float64)
        coadd[cols["flux"]] += profile(wave).astype(np.float32)
        for hname in ("SPECOBJ", "SPALL"):
            if hname in names:
                tab = h[names.index(hname)].data
                fcol = {c.lower(): c for c in tab.columns.names}.get("fiberid")
                if fcol is not None:
                    old = int(tab[fcol][0])
                    tab[fcol][0] = fiber if fiber is not None else (old + 499) % 1000 + 1
        dest.parent.mkdir(parents=True, exist_ok=True)
        h.writeto(dest, overwrite=overwrite)
    return dest
