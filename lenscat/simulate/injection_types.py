"""Settings, constants and results of an injection run (:mod:`lenscat.simulate.injection`).

:class:`HostSelection` (which galaxies may host an injected lens) and :class:`InjectionSummary` (what a
run did), with the physical constants and defaults the host selection, the renderer and the file
writer share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np

from lenscat.errors import LenscatError

__all__ = ["HostSelection", "InjectionSummary"]

GENERATOR = "lenscat.simulate.injection"


ENTROPY = 0x1D7EC7  # mixed with the seed for the per-object streams


ZERO_POINT = 22.5  # AB magnitude of 1 nanomaggy


DEFAULT_PIXEL_SCALE = 0.262  # arcsec


DEFAULT_PSF_FWHM = 1.3  # arcsec, every band, when the catalogue does not say


MOFFAT_BETA = 3.5


SUPERSAMPLE = 4


KNOWN_LENS_RADIUS = 5 * u.arcsec


SUPPORTED_BANDS = ("g", "r", "i", "z")


APERTURE_ARCSEC = 1.5  # radius of the central-colour aperture


SIZE_RADIUS_ARCSEC = 5.0  # the half-light radius is measured within this radius


# ------------------------------------------------------------------------------------ results
@dataclass
class HostSelection:
    """Host galaxies chosen by :func:`~lenscat.simulate.injection_hosts.select_hosts`.

    Attributes
    ----------
    source_ids
        Host source ids, in the (seeded) order they will be used.
    n_sources
        Sources of the survey with a cutout.
    n_excluded_known
        Of those, left out as labelled lenses or within 5 arcsec of a known lens.
    n_candidates
        Left after the catalogue cuts (magnitude, colour, not a point source).
    n_examined
        Candidates whose cutouts were measured.
    n_eligible
        Examined candidates passing every cut (at least ``len(source_ids)``).
    measured
        Host measurements: ``mag_r, g_r, r_z`` [mag] and ``r_half`` [arcsec], each from the
        catalogue where it has the value, else from the cutout, aligned with ``source_ids``.
    """

    source_ids: np.ndarray
    n_sources: int = 0
    n_excluded_known: int = 0
    n_candidates: int = 0
    n_examined: int = 0
    n_eligible: int = 0
    measured: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class InjectionSummary:
    """What :func:`~lenscat.simulate.injection.inject_survey` did."""

    survey: str
    parent: str
    path: Path
    n: int
    n_sources: int
    n_excluded_known: int
    n_candidates: int
    n_eligible: int
    theta_e_range: tuple[float, float]
    arc_snr_range: tuple[float, float]
    magnification_range: tuple[float, float]
    n_labels_written: int
    n_labels_removed: int
    rendered: bool
    resumed_rows: int
    ingest: dict[str, Any]
    psf_fwhm: dict[str, float]
    pixel_scale_arcsec: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# ------------------------------------------------------------------------------------ hosts
def _check_range(name: str, value: Sequence[float], lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = (float(value[0]), float(value[1]))
    except (TypeError, ValueError, IndexError):
        raise LenscatError(f"{name} must be a (min, max) pair, got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise LenscatError(f"{name} must be finite, got {a:g}, {b:g}")
    if a > b:
        raise LenscatError(f"{name} range is inverted: min {a:g} > max {b:g}")
    if a < lo or b > hi:
        raise LenscatError(f"{name} must lie within [{lo:g}, {hi:g}], got {a:g}, {b:g}")
    return a, b
