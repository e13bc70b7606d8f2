"""Lens-model dataclasses: one stored model of a source (a row of ``lenscat.lens_models``).

Frame: ``x`` East (ΔRA·cos δ), ``y`` North, arcsec, centred on the source's catalogue position;
position angles φ are measured from +x (East) towards +y (North); ``e1 = (1-q)/(1+q)·cos 2φ``,
``e2 = (1-q)/(1+q)·sin 2φ`` (lenstronomy's components in that frame), ``γ1 = γ·cos 2φ_γ``,
``γ2 = γ·sin 2φ_γ``. Every ``*_err`` is a calibrated 1σ (half-width of the 68 % interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

PARAMS: tuple[str, ...] = (
    "theta_e",
    "e1",
    "e2",
    "gamma1",
    "gamma2",
    "center_x",
    "center_y",
    "source_x",
    "source_y",
)
"""The network's parameters, in the order of its outputs and of the table's columns (the same tuple as
:data:`lenscat.models.lensmodel.PARAMS`, written twice so this module imports no torch; a unit test
checks they are equal)."""

UNITS: dict[str, str] = {
    "theta_e": "arcsec",
    "e1": "",
    "e2": "",
    "gamma1": "",
    "gamma2": "",
    "center_x": "arcsec",
    "center_y": "arcsec",
    "source_x": "arcsec",
    "source_y": "arcsec",
}
"""Units of :data:`PARAMS` (empty: dimensionless)."""


def axis_ratio(e1: float, e2: float) -> float:
    """Axis ratio ``q = (1-e)/(1+e)`` with ``e = |(e1, e2)|`` capped at 0.999 (as the view does)."""
    e = min(math.hypot(e1, e2), 0.999)
    return (1.0 - e) / (1.0 + e)


def pa_east_of_north(c1: float, c2: float) -> float:
    """Astronomer's position angle [deg East of North, 0-180) of a spin-2 pair (e1, e2) or (γ1, γ2).

    φ = ½·atan2(c2, c1) is measured from East towards North; East of North is ``90° - φ``.
    """
    phi = 0.5 * math.degrees(math.atan2(c2, c1))
    return (90.0 - phi) % 180.0


@dataclass(frozen=True)
class LensModel:
    """One row of ``lenscat.lens_models`` with its version's label.

    Attributes are named as the table's columns; angles in the sky frame described in the module.
    """

    model_id: int
    source_id: int
    theta_e: float
    theta_e_err: float
    e1: float
    e1_err: float
    e2: float
    e2_err: float
    gamma1: float
    gamma1_err: float
    gamma2: float
    gamma2_err: float
    center_x: float
    center_x_err: float
    center_y: float
    center_y_err: float
    source_x: float
    source_x_err: float
    source_y: float
    source_y_err: float
    arc_mag: float | None = None
    arc_band: str | None = None
    vet_flags: tuple[str, ...] = ()
    vet_detail: dict[str, Any] = field(default_factory=dict)
    job_id: int | None = None
    created_at: datetime | None = None
    lens_model: str | None = None
    """The version's ``name@version`` (filled when read back)."""

    @property
    def q(self) -> float:
        """Mass axis ratio b/a (0-1]."""
        return axis_ratio(self.e1, self.e2)

    @property
    def pa_deg(self) -> float:
        """Position angle of the mass major axis [deg East of North, 0-180)."""
        return pa_east_of_north(self.e1, self.e2)

    @property
    def gamma_ext(self) -> float:
        """External shear strength."""
        return math.hypot(self.gamma1, self.gamma2)

    @property
    def gamma_pa_deg(self) -> float:
        """Position angle of the external shear [deg East of North, 0-180)."""
        return pa_east_of_north(self.gamma1, self.gamma2)

    @property
    def passed_vetting(self) -> bool:
        """True when no vetting rule flagged the model."""
        return not self.vet_flags

    def value(self, name: str) -> float:
        """A parameter of :data:`PARAMS` by name."""
        if name not in PARAMS:
            raise KeyError(name)
        return float(getattr(self, name))

    def error(self, name: str) -> float:
        """The calibrated 1σ of a parameter of :data:`PARAMS`."""
        if name not in PARAMS:
            raise KeyError(name)
        return float(getattr(self, f"{name}_err"))
