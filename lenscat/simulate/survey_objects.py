"""Random scenes for :mod:`lenscat.simulate.survey`: lenses and the usual lens impostors, DECaLS-like.

Every draw comes from the object's own ``numpy.random.Generator``; :func:`draw_scene` returns a
:class:`lenscat.simulate.survey_render.Scene` (lenstronomy light profiles, mass model, observing
conditions) with its truth record. Sizes use a flat LambdaCDM cosmology (H0=70, Om=0.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from lenscat.simulate.survey_nonlens import (
    _blue_companion,
    _close_pair,
    _disk,
    _elliptical,
    _merger,
    _ring,
    _spiral,
    _star,
    _star_colours,
)
from lenscat.simulate.survey_profiles import (
    _base_truth,
    _ellipticity,
    _gaussian,
    _log_uniform,
    _lrg_params,
    _offset,
    _sersic,
)
from lenscat.simulate.survey_render import (
    DEPTH5,
    DEPTH_SCATTER,
    FWHM_MEDIAN,
    PIXEL_SCALE,
    LensSpec,
    LightComp,
    PointComp,
    Scene,
    grz_flux,
)

KINDS = ("lens", "elliptical", "disk", "spiral", "ring", "merger", "close_pair", "blue_companion", "star")
# Share of each kind among the NON-lenses (see lenscat.simulate.survey's docstring for the reasoning).
NONLENS_FRACTIONS: dict[str, float] = {
    "elliptical": 0.42,
    "disk": 0.08,
    "spiral": 0.12,
    "ring": 0.05,
    "merger": 0.07,
    "close_pair": 0.08,
    "blue_companion": 0.10,
    "star": 0.08,
}
FIELD_DENSITY = 8.0  # field objects per arcmin^2 down to r = 24 (Legacy Surveys DR9-like)
FIELD_MIN_SEP = 4.0  # arcsec: closer objects are the companions of the pair/merger kinds
THETA_E_RANGE = (0.8, 3.0)  # arcsec

Builder = Callable[
    [np.random.Generator, float], tuple[list[LightComp], list[PointComp], LensSpec | None, dict[str, Any]]
]


# --- galaxy building blocks ---------------------------------------------------------------------


# --- kinds --------------------------------------------------------------------------------------


def _theta_e(rng: np.random.Generator) -> float:
    """Einstein radius: log-normal (median 1.5 arcsec, 0.35 in ln), truncated to 0.8-3 arcsec."""
    while True:
        t = float(rng.lognormal(math.log(1.5), 0.35))
        if THETA_E_RANGE[0] <= t <= THETA_E_RANGE[1]:
            return t


def _lens(rng: np.random.Generator, ebv: float) -> tuple[list[LightComp], list[PointComp], LensSpec, dict[str, Any]]:
    x0, y0 = _offset(rng)
    z_l = float(np.clip(rng.normal(0.5, 0.15), 0.2, 0.8))
    theta_e = _theta_e(rng)
    p = _lrg_params(rng, z_l)
    r = float(
        np.clip(19.5 + 5.5 * math.log10(z_l / 0.5) - 3.0 * math.log10(theta_e / 1.5) + rng.normal(0, 0.35), 18.0, 21.5)
    )
    comps = [_sersic(x0, y0, p["r_eff"], p["n"], p["q"], p["phi"], grz_flux(r, p["g_r"], p["r_z"], ebv), central=True)]
    # mass: EPL (slope ~ isothermal) aligned with the light, plus external shear
    q_m = float(np.clip(p["q"] + rng.normal(0, 0.05), 0.45, 0.98))
    phi_m = float((p["phi"] + rng.normal(0, math.radians(10))) % math.pi)
    slope = float(np.clip(rng.normal(2.0, 0.06), 1.85, 2.15))
    e1, e2 = _ellipticity(phi_m, q_m)
    g_abs = float(min(rng.rayleigh(0.035), 0.1))
    g_ang = rng.uniform(0, math.pi)
    gamma1, gamma2 = g_abs * math.cos(2 * g_ang), g_abs * math.sin(2 * g_ang)
    kwargs_lens = [
        {"theta_E": theta_e, "gamma": slope, "e1": e1, "e2": e2, "center_x": x0, "center_y": y0},
        {"gamma1": gamma1, "gamma2": gamma2, "ra_0": x0, "dec_0": y0},
    ]
    z_s = float(np.clip(z_l + 0.4 + rng.lognormal(math.log(0.9), 0.5), z_l + 0.3, 4.0))
    n_sources = int(rng.choice([1, 2, 3], p=[0.8, 0.17, 0.03]))
    # sources: inside/near the caustics (|beta| < 0.8 theta_E) so most show arcs or multiple images
    for k in range(n_sources):
        rad = theta_e * (0.8 * math.sqrt(rng.uniform()) if k == 0 else rng.uniform(0.1, 0.9))
        ang = rng.uniform(0, 2 * math.pi)
        sx, sy = x0 + rad * math.cos(ang), y0 + rad * math.sin(ang)
        rel = 1.0 if k == 0 else rng.uniform(0.2, 0.8)
        g_r, r_z = rng.uniform(0.0, 0.5), rng.uniform(-0.1, 0.4)
        r_e = _log_uniform(rng, 0.08, 0.45)
        f_main = grz_flux(-2.5 * math.log10(rel), g_r, r_z, ebv)
        comps.append(
            _sersic(
                sx,
                sy,
                r_e,
                rng.uniform(0.6, 2.0),
                rng.uniform(0.4, 0.95),
                rng.uniform(0, math.pi),
                f_main,
                central=False,
                plane="source",
            )
        )
        # star-forming clumps, bluer than the host
        for _ in range(int(min(rng.poisson(1.5), 4))):
            cr, ca = 1.2 * r_e * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
            f_clump = grz_flux(-2.5 * math.log10(rel * rng.uniform(0.05, 0.2)), g_r - 0.15, r_z - 0.1, ebv)
            comps.append(
                _gaussian(
                    sx + cr * math.cos(ca), sy + cr * math.sin(ca), rng.uniform(0.05, 0.1), f_clump, plane="source"
                )
            )
    # detectable lenses (see the module docstring): lensed arcs of r = 19.0-21.5 in total
    lens = LensSpec(kwargs=kwargs_lens, theta_e=theta_e, arc_mag_r=float(rng.uniform(19.0, 21.5)))
    truth = _base_truth(z_l, p["r_eff"], p["n"], "DEV" if rng.uniform() < 0.55 else "SER", rng)
    truth.update(
        theta_e=theta_e,
        z_lens=z_l,
        z_source=z_s,
        lens_q=q_m,
        lens_phi=phi_m,
        lens_gamma=slope,
        gamma1=gamma1,
        gamma2=gamma2,
        n_sources=n_sources,
    )
    return comps, [], lens, truth


BUILDERS: dict[str, Builder] = {
    "lens": _lens,
    "elliptical": _elliptical,
    "disk": _disk,
    "spiral": _spiral,
    "ring": _ring,
    "merger": _merger,
    "close_pair": _close_pair,
    "blue_companion": _blue_companion,
    "star": _star,
}


def _field(rng: np.random.Generator, ebv: float, stamp: int) -> tuple[list[LightComp], list[PointComp]]:
    """Faint field galaxies and stars (number counts d log N/dm = 0.4, 18.5 < r < 24), a few bright stars."""
    side = stamp * PIXEL_SCALE
    half = side / 2
    comps: list[LightComp] = []
    points: list[PointComp] = []
    n = int(rng.poisson(FIELD_DENSITY * (side / 60.0) ** 2))
    a, b = 10 ** (0.4 * 18.5), 10 ** (0.4 * 24.0)
    for _ in range(n):
        while True:
            x, y = rng.uniform(-half, half, 2)
            if math.hypot(x, y) > FIELD_MIN_SEP:
                break
        r = float(math.log10(a + rng.uniform() * (b - a)) / 0.4)
        if rng.uniform() < 0.2:
            g_r, r_z = _star_colours(rng)
            points.append(PointComp(float(x), float(y), grz_flux(r, g_r, r_z, ebv)))
        else:
            flux = grz_flux(r, rng.uniform(0.3, 1.7), rng.uniform(0.2, 1.1), ebv)
            comps.append(
                _sersic(
                    float(x),
                    float(y),
                    _log_uniform(rng, 0.15, 1.0),
                    rng.uniform(0.6, 2.5),
                    rng.uniform(0.3, 0.95),
                    rng.uniform(0, math.pi),
                    flux,
                    central=False,
                    main=False,
                )
            )
    if rng.uniform() < 0.06 and half > 8.0:  # a bright star in the field
        while True:
            x, y = rng.uniform(-half, half, 2)
            if math.hypot(x, y) > 8.0:
                break
        g_r, r_z = _star_colours(rng)
        points.append(PointComp(float(x), float(y), grz_flux(rng.uniform(12.5, 16.5), g_r, r_z, ebv)))
    return comps, points


def draw_scene(kind: str, rng: np.random.Generator, ebv: float, stamp: int) -> Scene:
    """Draw observing conditions, the central object of ``kind`` and the field around it.

    The truth record holds the kind's parameters plus ``n_neighbours`` (field objects) and
    ``nearest_neighbour`` [arcsec] (closest other object centre: companion or field; NaN if none).
    """
    fwhm_r = float(np.clip(rng.normal(FWHM_MEDIAN[1], 0.15), 0.9, 2.0))
    fwhm = np.clip(fwhm_r * FWHM_MEDIAN / FWHM_MEDIAN[1] * rng.normal(1.0, 0.04, 3), 0.8, 2.4)
    beta = rng.uniform(2.5, 4.5)
    depth5 = DEPTH5 + rng.normal(0.0, DEPTH_SCATTER, 3)
    saturation = rng.uniform(20.0, 40.0, 3)  # nanomaggies/pixel: full well of one ~90 s DECam exposure
    comps, points, lens, truth = BUILDERS[kind](rng, ebv)
    f_comps, f_points = _field(rng, ebv, stamp)
    cx = [c.x for c in comps if c.central] + [p.x for p in points if p.central]
    cy = [c.y for c in comps if c.central] + [p.y for p in points if p.central]
    x0, y0 = (cx[0], cy[0]) if cx else (0.0, 0.0)
    others = [(c.x, c.y) for c in comps if not c.central and c.plane == "image" and c.model != "INTERPOL"]
    others += [(c.x, c.y) for c in f_comps] + [(p.x, p.y) for p in f_points]
    dists = [math.hypot(x - x0, y - y0) for x, y in others]
    truth["n_neighbours"] = len(f_comps) + len(f_points)
    truth["nearest_neighbour"] = min(dists) if dists else math.nan
    return Scene(
        comps=comps + f_comps,
        points=points + f_points,
        fwhm=fwhm,
        beta=float(beta),
        depth5=depth5,
        saturation=saturation,
        lens=lens,
        truth=truth,
    )
