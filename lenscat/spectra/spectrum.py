"""One observed spectrum as the readers return it, in the survey's own pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: flux unit of every array below (SDSS, BOSS and DESI all use it)
FLUX_UNIT = "1e-17 erg / (s cm2 Angstrom)"


@dataclass
class Spectrum:
    """A 1-D spectrum with its identifiers, native byte order, masked pixels at ``ivar == 0``.

    Attributes
    ----------
    survey : str
        ``'sdss'`` (spec-PLATE-MJD-FIBER, SDSS or BOSS), ``'boss'`` (spPlate rows) or ``'desi'``.
    wave : numpy.ndarray
        Vacuum wavelength of each pixel [Angstrom], float64, increasing.
    flux : numpy.ndarray
        Flux density [1e-17 erg/s/cm^2/Angstrom], float32.
    ivar : numpy.ndarray
        Inverse variance of ``flux`` [(1e-17 erg/s/cm^2/Angstrom)^-2], float32; 0 where the pipeline
        mask flags a pixel (SPPIXMASK / DESI MASK), where flux is not finite, or where there is no data.
    model : numpy.ndarray or None
        Pipeline best-fit model flux (same unit), when the file has one.
    sky : numpy.ndarray or None
        Sky flux subtracted by the pipeline (same unit), when the file has one.
    ra, dec : float or None
        Fiber position [deg, ICRS].
    z, z_err : float or None
        Pipeline redshift of the (foreground) galaxy and its error.
    spec_class, subclass : str or None
        Pipeline classification (``GALAXY``, ``QSO``, ``STAR``) and subclass.
    plate, mjd, fiber : int or None
        SDSS/BOSS identifiers. ``targetid`` : int or None -- DESI identifier.
    path : str
        File the spectrum was read from. ``index`` : int -- its row within that file (0 for one-spectrum files).
    ivar_estimated : bool
        True when the file had no inverse variance and ``ivar`` was estimated from the pixel scatter.
    meta : dict
        Anything else worth keeping (velocity dispersion, redrock chi2, survey/program...).
    """

    survey: str
    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    model: np.ndarray | None = None
    sky: np.ndarray | None = None
    ra: float | None = None
    dec: float | None = None
    z: float | None = None
    z_err: float | None = None
    spec_class: str | None = None
    subclass: str | None = None
    plate: int | None = None
    mjd: int | None = None
    fiber: int | None = None
    targetid: int | None = None
    path: str = ""
    index: int = 0
    ivar_estimated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Natural key of the spectrum within its survey: ``PLATE-MJD-FIBER`` or the DESI TARGETID
        (with survey/program when known, as DESI reuses a TARGETID across programs)."""
        if self.targetid is not None:
            prog = "-".join(str(self.meta[k]) for k in ("survey", "program") if self.meta.get(k))
            return f"{prog}:{self.targetid}" if prog else str(self.targetid)
        return f"{self.plate:04d}-{self.mjd:05d}-{self.fiber:04d}"
