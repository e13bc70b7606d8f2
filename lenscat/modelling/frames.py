"""Frames: simulator truth (pixel axes) -> the sky frame of stored lens models.

Both simulators and the injections place lenstronomy's ``x`` along the array's columns and ``y``
along its rows, with position angles measured from +x towards +y. Cutouts are in FITS
orientation, north up and east left: rows grow towards the North and columns towards the
**West**. The sky frame of ``lenscat.lens_models`` has ``x`` East and ``y`` North, so

* positions: ``x_sky = -x_pix``, ``y_sky = y_pix``;
* angles: ``φ_sky = π - φ_pix`` (a mirror of the x axis), hence ``e1`` and ``γ1`` keep their sign and
  ``e2`` and ``γ2`` change it.
"""

from __future__ import annotations

import math

import numpy as np

from lenscat.modelling.types import PARAMS

# sign of each of PARAMS from the pixel frame to the sky frame (the map is its own inverse)
SKY_SIGN = np.array([1.0, 1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0])


def ellipticity(q: float, phi: float) -> tuple[float, float]:
    """lenstronomy's ``(e1, e2) = (1-q)/(1+q) (cos 2φ, sin 2φ)``."""
    e = (1.0 - q) / (1.0 + q)
    return e * math.cos(2.0 * phi), e * math.sin(2.0 * phi)


def sky_from_pixel(values: np.ndarray) -> np.ndarray:
    """Parameters in :data:`~lenscat.modelling.types.PARAMS` order, pixel frame -> sky frame.

    Works on one row (9,) or many (N, 9); the map is an involution (sky -> pixel is the same).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.shape[-1] != len(PARAMS):
        raise ValueError(f"expected {len(PARAMS)} parameters in the last axis, got shape {v.shape}")
    return v * SKY_SIGN


def pixel_row(
    theta_e: float,
    q: float,
    phi: float,
    gamma1: float,
    gamma2: float,
    center_x: float,
    center_y: float,
    source_x: float,
    source_y: float,
) -> np.ndarray:
    """The nine parameters in the pixel frame from the simulators' truth (q, φ instead of e1, e2)."""
    e1, e2 = ellipticity(q, phi)
    return np.array([theta_e, e1, e2, gamma1, gamma2, center_x, center_y, source_x, source_y], dtype=np.float64)
