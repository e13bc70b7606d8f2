"""Synthetic lines injected into copies of real spectrum files (to test a search end to end).

The copy keeps every HDU of the original; only the flux gets the line (the pipeline noise and
model stay as observed), and the fiber number (or DESI TARGETID) changes so that the copy is a
new spectrum, not an update of the original.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from lenscat.errors import InputFileError


def inject_line_file(src: str | Path, dest: str | Path, *, wavelength: float, line_flux: float,
                     fwhm_kms: float = 300.0, skew: float = 2.0, fiber: int | None = None,
                     overwrite: bool = False) -> Path:
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
    from lenscat.spectra.readers import detect_format
    from lenscat.spectra.synth import lya_profile

    src, dest = Path(src), Path(dest)
    if detect_format(src) != "sdss-spec":
        raise InputFileError(f"{src}: only spec-PLATE-MJD-FIBER files can be injected into")
    if dest.exists() and not overwrite:
        raise InputFileError(f"{dest}: exists (pass overwrite=True / --overwrite)")
    with fits.open(src) as h:
        names = [x.name.upper() for x in h]
        coadd = h[names.index("COADD")].data
        cols = {c.lower(): c for c in coadd.columns.names}
        wave = 10.0 ** np.asarray(coadd[cols["loglam"]], dtype=np.float64)
        if not wave[0] <= wavelength <= wave[-1]:
            raise InputFileError(f"{src}: {wavelength} A is outside the spectrum ({wave[0]:.0f}-{wave[-1]:.0f} A)")
        coadd[cols["flux"]] += lya_profile(wave, wavelength, line_flux, fwhm_kms, skew).astype(np.float32)
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
