"""Reference data shipped with the package: galaxy eigenspectra, line lists, real sky spectra.

All wavelengths returned here are vacuum [Angstrom]. See ``lenscat/data/spectra/README.md`` for origins.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from astropy.io import fits

from lenscat.errors import LenscatError


def data_path(name: str) -> Path:
    """Path of a file in ``lenscat/data/spectra``."""
    p = Path(str(resources.files("lenscat") / "data" / "spectra" / name))
    if not p.is_file():
        raise LenscatError(f"{p}: reference file missing from the lenscat installation")
    return p


@dataclass(frozen=True)
class EigenBasis:
    """Rest-frame galaxy eigenspectra on a log10 grid."""

    loglam: np.ndarray  #: rest-frame log10(lambda / Angstrom) per pixel
    basis: np.ndarray  #: (n_eigen, n_pixel) float64, arbitrary flux units
    name: str

    @property
    def wave(self) -> np.ndarray:
        """Rest-frame wavelength [Angstrom]."""
        return np.asarray(10.0**self.loglam)


@lru_cache(maxsize=4)
def eigen_basis(name: str = "spEigenGal-55740") -> EigenBasis:
    """SDSS galaxy eigenspectra (``spEigenGal-55740``: the BELLS GALLERY continuum basis)."""
    with fits.open(data_path(f"{name}.fits")) as h:
        data = np.asarray(h[0].data, dtype=np.float64)
        c0, c1 = float(h[0].header["COEFF0"]), float(h[0].header["COEFF1"])
    loglam = c0 + c1 * np.arange(data.shape[1])
    return EigenBasis(loglam=loglam, basis=data, name=name)


def air_to_vacuum(wave_air: np.ndarray | float) -> np.ndarray:
    """Air to vacuum wavelength [Angstrom] (Morton 1991 / IAU standard, as in idlspec2d)."""
    w = np.asarray(wave_air, dtype=np.float64)
    s2 = (1e4 / w) ** 2
    n = 1.0 + 5.792105e-2 / (238.0185 - s2) + 1.67917e-3 / (57.362 - s2)
    return np.where(w > 2000.0, w * n, w)


@lru_cache(maxsize=1)
def emission_lines() -> dict[str, float]:
    """Galaxy emission lines: ``longname -> rest vacuum wavelength [Angstrom]``."""
    out: dict[str, float] = {}
    for line in data_path("emission_lines.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, longname, lam, vacuum, _major = (s.strip() for s in line.split(","))
        w = float(lam)
        out[longname] = float(w if vacuum == "True" else air_to_vacuum(w))
    return out


@lru_cache(maxsize=1)
def absorption_lines() -> dict[str, float]:
    """Galaxy absorption lines: ``longname -> rest vacuum wavelength [Angstrom]``."""
    out: dict[str, float] = {}
    for line in data_path("absorption_lines.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = [s.strip() for s in line.split(",")]
        w = float(parts[2])
        out[parts[1]] = float(w if parts[3] == "True" else air_to_vacuum(w))
    return out


@lru_cache(maxsize=1)
def sky_lines() -> np.ndarray:
    """Bright night-sky lines (idlspec2d list, lines marked usable), vacuum [Angstrom]."""
    waves = []
    for line in data_path("idlspec2d_skylines.dat").read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        waves.append(float(s.split()[0]))
    return np.asarray(air_to_vacuum(np.asarray(waves)))


@lru_cache(maxsize=1)
def sky_line_spectrum() -> tuple[np.ndarray, np.ndarray]:
    """DESI sky-line spectrum (lines only, arbitrary units): (vacuum wavelength [Angstrom], flux)."""
    with np.load(data_path("desispec_sky_lines.npz")) as z:
        return np.asarray(z["wave"]), np.asarray(z["flux"], dtype=np.float64)


@lru_cache(maxsize=1)
def sdss_sky_spectra() -> tuple[np.ndarray, np.ndarray]:
    """Four real SDSS sky spectra: (vacuum wavelength [Angstrom], (4, n) sky [1e-17 erg/s/cm^2/A])."""
    with np.load(data_path("sdss_sky_spectra.npz")) as z:
        k0, dlog, sky = int(z["k0"]), float(z["dlog"]), np.asarray(z["sky"], dtype=np.float64)
    return np.asarray(10.0 ** ((k0 + np.arange(sky.shape[1])) * dlog)), sky
