"""The non-lens object kinds of the simulated survey: ellipticals, disks, spirals, rings, mergers, pairs, blue
companions, stars.

Each builder takes the object's random stream and E(B-V) and returns its light components, point
sources, no lens and its truth record; :data:`lenscat.simulate.survey_objects.BUILDERS` maps the kinds
to them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lenscat.simulate.survey_profiles import (
    _base_truth,
    _disk_q,
    _galaxy,
    _gaussian,
    _interpol,
    _log_uniform,
    _lrg_params,
    _offset,
    _pattern_grid,
    _red_type,
    _sersic,
    _to_sky,
    kpc_per_arcsec,
)
from lenscat.simulate.survey_render import (
    LightComp,
    PointComp,
    grz_flux,
)


def _elliptical(rng: np.random.Generator, ebv: float) -> tuple[list[LightComp], list[PointComp], None, dict[str, Any]]:
    x0, y0 = _offset(rng)
    z = float(np.clip(rng.normal(0.45, 0.17), 0.1, 0.8))
    p = _lrg_params(rng, z)
    r = float(np.clip(p["r"], 16.5, 21.5))
    comps = [_sersic(x0, y0, p["r_eff"], p["n"], p["q"], p["phi"], grz_flux(r, p["g_r"], p["r_z"], ebv), central=True)]
    return comps, [], None, _base_truth(z, p["r_eff"], p["n"], _red_type(rng, p["r_eff"]), rng)


def _disk(rng: np.random.Generator, ebv: float) -> tuple[list[LightComp], list[PointComp], None, dict[str, Any]]:
    x0, y0 = _offset(rng)
    z = rng.uniform(0.05, 0.5)
    r = float(np.clip(17.5 + 5 * math.log10(z / 0.15) + rng.normal(0, 0.6), 16.5, 21.5))
    comps, info = _galaxy(rng, x0, y0, r, z, "disk", ebv, central=True)
    return comps, [], None, _base_truth(z, info["r_eff"], info["n"], info["type"], rng)


def _spiral(rng: np.random.Generator, ebv: float) -> tuple[list[LightComp], list[PointComp], None, dict[str, Any]]:
    """Bulge + exponential disk + logarithmic-spiral arms (INTERPOL) + star-forming knots."""
    x0, y0 = _offset(rng)
    z = rng.uniform(0.03, 0.3)
    r = float(np.clip(17.0 + 5 * math.log10(z / 0.12) + rng.normal(0, 0.5), 16.0, 20.5))
    r_d = float(np.clip(rng.lognormal(math.log(3.5), 0.3) / kpc_per_arcsec(z), 0.6, 2.7))  # scale length
    phi, q = rng.uniform(0, math.pi), _disk_q(rng, 0.35)
    bt = rng.uniform(0.05, 0.3)
    f_arm, f_knot = rng.uniform(0.25, 0.4), rng.uniform(0.05, 0.15)
    f_disk = 1.0 - bt - f_arm - f_knot
    gr_disk, rz_disk = rng.uniform(0.55, 0.85), rng.uniform(0.3, 0.6)
    gr_arm, gr_knot = rng.uniform(0.25, 0.55), rng.uniform(0.0, 0.35)

    def part(frac: float, g_r: float, r_z: float) -> np.ndarray:
        return grz_flux(r - 2.5 * math.log10(frac), g_r, r_z, ebv)

    comps = [
        _sersic(x0, y0, 1.68 * r_d, 1.0, q, phi, part(f_disk, gr_disk, rz_disk), central=True),
        _sersic(
            x0,
            y0,
            max(0.3 * r_d, 0.2),
            rng.uniform(2.5, 4.0),
            rng.uniform(0.75, 0.95),
            phi,
            part(bt, 1.1, 0.8),
            central=True,
        ),
    ]
    m_arms = int(rng.choice([2, 3, 4], p=[0.7, 0.2, 0.1]))
    pitch = math.radians(rng.uniform(12.0, 30.0))
    sharp = rng.uniform(2.0, 5.0)
    phase = rng.uniform(0, 2 * math.pi)
    half = min(4.5 * r_d, 11.0)
    scale = float(np.clip(r_d / 8.0, 0.08, 0.15))
    u, v = _pattern_grid(half, scale, phi, q)
    rr = np.hypot(u, v) + 1e-6
    th = np.arctan2(v, u)
    arms = ((1 + np.cos(m_arms * (th - np.log(rr / r_d) / math.tan(pitch)) + phase)) / 2) ** sharp
    pattern = arms * np.exp(-rr / r_d) * (1 - np.exp(-((rr / (0.7 * r_d)) ** 2))) * (rr < half)
    comps.append(_interpol(pattern, scale, x0, y0, part(f_arm, gr_arm, rz_disk - 0.15), central=True))
    n_knots = int(rng.integers(6, 21))
    weights = rng.dirichlet(np.ones(n_knots))
    for w in weights:
        rk = rng.uniform(0.6, 3.0) * r_d
        arm = rng.integers(m_arms)
        tk = (2 * math.pi * arm - phase) / m_arms + math.log(rk / r_d) / math.tan(pitch) + rng.normal(0, 0.1)
        kx, ky = _to_sky(np.array(rk * math.cos(tk)), np.array(rk * math.sin(tk)), phi, q)
        comps.append(
            _gaussian(
                x0 + float(kx),
                y0 + float(ky),
                rng.uniform(0.06, 0.15),
                part(f_knot * float(w), gr_knot, rz_disk - 0.25),
                central=True,
            )
        )
    return comps, [], None, _base_truth(z, 1.68 * r_d, 1.0, "EXP" if rng.uniform() < 0.5 else "SER", rng)


def _ring(rng: np.random.Generator, ebv: float) -> tuple[list[LightComp], list[PointComp], None, dict[str, Any]]:
    """Red core inside a clumpy blue ring of Einstein-ring size (INTERPOL Gaussian ring)."""
    x0, y0 = _offset(rng)
    z = rng.uniform(0.05, 0.4)
    r = rng.uniform(16.5, 20.5)
    f_ring = rng.uniform(0.45, 0.75)
    r_core = _log_uniform(rng, 0.3, 0.8)
    n_core = rng.uniform(2.5, 4.0)
    core_flux = grz_flux(r - 2.5 * math.log10(1 - f_ring), rng.uniform(1.0, 1.5), rng.uniform(0.6, 0.9), ebv)
    comps = [_sersic(x0, y0, r_core, n_core, rng.uniform(0.7, 0.95), rng.uniform(0, math.pi), core_flux, central=True)]
    radius, width = rng.uniform(1.8, 4.5), rng.uniform(0.15, 0.35)
    q, phi = rng.uniform(0.55, 1.0), rng.uniform(0, math.pi)
    scale = float(min(0.1, width / 2))
    u, v = _pattern_grid(radius / q + 4 * width, scale, phi, q)
    th = np.arctan2(v, u)
    mod = np.ones_like(th)
    for k in (1, 2, 3):
        mod += rng.uniform(0.0, 0.4) * np.cos(k * th + rng.uniform(0, 2 * math.pi))
    pattern = np.exp(-0.5 * ((np.hypot(u, v) - radius) / width) ** 2) * np.clip(mod, 0.05, None)
    g_r, r_z = rng.uniform(0.1, 0.6), rng.uniform(0.0, 0.5)
    ring_flux = grz_flux(r - 2.5 * math.log10(f_ring), g_r, r_z, ebv)
    n_knots = int(rng.integers(0, 7))
    knot_share = 0.2 if n_knots else 0.0
    comps.append(_interpol(pattern, scale, x0, y0, ring_flux * (1 - knot_share), central=True))
    for _ in range(n_knots):
        t = rng.uniform(0, 2 * math.pi)
        kx, ky = _to_sky(np.array(radius * math.cos(t)), np.array(radius * math.sin(t)), phi, q)
        comps.append(
            _gaussian(
                x0 + float(kx), y0 + float(ky), rng.uniform(0.08, 0.2), ring_flux * knot_share / n_knots, central=True
            )
        )
    return comps, [], None, _base_truth(z, r_core, n_core, "SER" if rng.uniform() < 0.6 else "EXP", rng)


def _tidal_tail(rng: np.random.Generator, cx: float, cy: float, flux: np.ndarray) -> LightComp:
    """A curved stream: a Gaussian-profile arc of a circle (INTERPOL)."""
    radius = rng.uniform(2.0, 5.0)
    width = rng.uniform(0.3, 0.8)
    span = math.radians(rng.uniform(60.0, 150.0))
    start = rng.uniform(0, 2 * math.pi)
    scale = 0.15
    half = radius + 3 * width
    u, v = _pattern_grid(half, scale, 0.0, 1.0)
    th = np.mod(np.arctan2(v, u) - start, 2 * math.pi)
    along = np.clip(1 - th / span, 0.0, 1.0) * (th < span)  # fades along the stream
    pattern = np.exp(-0.5 * ((np.hypot(u, v) - radius) / width) ** 2) * along
    # centre the circle so that the stream starts at the merger
    ox, oy = cx - radius * math.cos(start), cy - radius * math.sin(start)
    return _interpol(pattern, scale, ox, oy, flux, central=False)


def _pair(
    rng: np.random.Generator, ebv: float, merger: bool
) -> tuple[list[LightComp], list[PointComp], None, dict[str, Any]]:
    x0, y0 = _offset(rng)
    z = rng.uniform(0.05, 0.6)
    style_a = "red" if rng.uniform() < (0.5 if merger else 0.6) else "disk"
    r_a = rng.uniform(17.0, 20.5)
    comps, info = _galaxy(rng, x0, y0, r_a, z, style_a, ebv, central=True)
    sep, ang = rng.uniform(1.0, 4.0), rng.uniform(0, 2 * math.pi)
    bx, by = x0 + sep * math.cos(ang), y0 + sep * math.sin(ang)
    if merger:
        r_b, z_b = r_a + rng.uniform(0.0, 1.5), z
    else:  # chance projection: independent redshift
        r_b, z_b = r_a + rng.uniform(-0.5, 2.5), float(np.clip(z + rng.normal(0, 0.2), 0.05, 1.0))
    style_b = str(rng.choice(["red", "disk", "blue"]))
    comps_b, _ = _galaxy(rng, bx, by, r_b, z_b, style_b, ebv, central=False)
    comps += comps_b
    if merger and rng.uniform() < 0.65:
        total = sum((c.flux for c in comps if c.central), np.zeros(3))
        for _ in range(int(rng.integers(1, 3))):
            comps.append(_tidal_tail(rng, 0.5 * (x0 + bx), 0.5 * (y0 + by), total * rng.uniform(0.05, 0.15)))
    return comps, [], None, _base_truth(z, info["r_eff"], info["n"], info["type"], rng)


def _merger(rng: np.random.Generator, ebv: float) -> tuple[list[LightComp], list[PointComp], None, dict[str, Any]]:
    return _pair(rng, ebv, merger=True)


def _close_pair(rng: np.random.Generator, ebv: float) -> tuple[list[LightComp], list[PointComp], None, dict[str, Any]]:
    return _pair(rng, ebv, merger=False)


def _blue_companion(
    rng: np.random.Generator, ebv: float
) -> tuple[list[LightComp], list[PointComp], None, dict[str, Any]]:
    """A red galaxy with 1-2 small, often tangentially elongated blue galaxies 1.5-4.5 arcsec away."""
    comps, _, _, truth = _elliptical(rng, ebv)
    x0, y0 = comps[0].x, comps[0].y
    for _ in range(1 if rng.uniform() < 0.7 else 2):
        sep, ang = rng.uniform(1.5, 4.5), rng.uniform(0, 2 * math.pi)
        orient = ang + math.pi / 2 if rng.uniform() < 0.6 else rng.uniform(0, math.pi)
        flux = grz_flux(rng.uniform(20.5, 23.0), rng.uniform(0.0, 0.5), rng.uniform(-0.1, 0.4), ebv)
        comps.append(
            _sersic(
                x0 + sep * math.cos(ang),
                y0 + sep * math.sin(ang),
                rng.uniform(0.15, 0.5),
                rng.uniform(0.5, 1.5),
                rng.uniform(0.25, 0.7),
                orient % math.pi,
                flux,
                central=False,
                main=False,
            )
        )
    return comps, [], None, truth


def _star_colours(rng: np.random.Generator) -> tuple[float, float]:
    g_r = rng.uniform(0.2, 1.5)
    return g_r, float(0.1 + 0.75 * g_r + rng.normal(0, 0.1))  # rough stellar locus


def _star(rng: np.random.Generator, ebv: float) -> tuple[list[LightComp], list[PointComp], None, dict[str, Any]]:
    x0, y0 = _offset(rng)
    r = rng.uniform(13.0, 16.0) if rng.uniform() < 0.4 else rng.uniform(16.0, 21.0)
    g_r, r_z = _star_colours(rng)
    truth = {"z_true": math.nan, "z_phot_mean": -99.0, "r_eff": math.nan, "sersic_n": math.nan, "source_type": "PSF"}
    return [], [PointComp(x0, y0, grz_flux(r, g_r, r_z, ebv), central=True)], None, truth
