"""Random scenes for :mod:`lenscat.simulate.survey`: lenses and the usual lens impostors, DECaLS-like.

Every draw comes from the object's own ``numpy.random.Generator``; :func:`draw_scene` returns a
:class:`lenscat.simulate.survey_render.Scene` (lenstronomy light profiles, mass model, observing
conditions) with its truth record. Sizes use a flat LambdaCDM cosmology (H0=70, Om=0.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

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


@lru_cache(maxsize=1)
def _kpc_table() -> tuple[np.ndarray, np.ndarray]:
    from astropy.cosmology import FlatLambdaCDM

    z = np.linspace(0.01, 4.0, 400)
    kpc = FlatLambdaCDM(H0=70.0, Om0=0.3).kpc_proper_per_arcmin(z).value / 60.0
    return z, np.asarray(kpc)


def kpc_per_arcsec(z: float) -> float:
    """Proper kpc per arcsec at redshift ``z`` (flat LambdaCDM, H0=70, Om=0.3)."""
    zz, kpc = _kpc_table()
    return float(np.interp(z, zz, kpc))


def _ellipticity(phi: float, q: float) -> tuple[float, float]:
    from lenstronomy.Util.param_util import phi_q2_ellipticity

    e1, e2 = phi_q2_ellipticity(phi, q)
    return float(e1), float(e2)


def _sersic(
    x: float,
    y: float,
    r_eff: float,
    n: float,
    q: float,
    phi: float,
    flux: np.ndarray,
    *,
    central: bool,
    main: bool = True,
    plane: str = "image",
) -> LightComp:
    e1, e2 = _ellipticity(phi, q)
    kw = {"R_sersic": r_eff, "n_sersic": n, "e1": e1, "e2": e2, "center_x": x, "center_y": y}
    if plane == "source":
        return LightComp("SERSIC_ELLIPSE", kw, flux, plane="source", x=x, y=y, extent=2.5 * r_eff)
    if main:
        return LightComp(
            "SERSIC_ELLIPSE",
            kw,
            flux,
            x=x,
            y=y,
            extent=min(max(2.0 * r_eff + 1.0, 1.5), 5.0),
            ss=3,
            wings=True,
            cusp=n >= 1.5,
            central=central,
        )
    return LightComp(
        "SERSIC_ELLIPSE",
        kw,
        flux,
        x=x,
        y=y,
        extent=min(5.0 * r_eff + 0.8, 8.0),
        ss=3 if r_eff < 1.0 else 2,
        cusp=n >= 2.5,
        central=central,
    )


def _gaussian(
    x: float, y: float, sigma: float, flux: np.ndarray, *, plane: str = "image", central: bool = False
) -> LightComp:
    kw = {"sigma": sigma, "center_x": x, "center_y": y}
    return LightComp("GAUSSIAN", kw, flux, plane=plane, x=x, y=y, extent=4.0 * sigma + 0.3, ss=3, central=central)


def _interpol(image: np.ndarray, scale: float, x: float, y: float, flux: np.ndarray, *, central: bool) -> LightComp:
    half = (image.shape[0] // 2) * scale
    kw = {"image": image, "center_x": x, "center_y": y, "phi_G": 0.0, "scale": scale}
    return LightComp("INTERPOL", kw, flux, x=x, y=y, extent=half, ss=2 if half <= 5.0 else 1, central=central)


def _pattern_grid(half: float, scale: float, phi: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Sky-aligned grid -> galaxy-frame (u along the major axis, v de-projected minor axis)."""
    m = int(math.ceil(half / scale))
    ax = np.arange(-m, m + 1) * scale
    x, y = np.meshgrid(ax, ax)
    u = x * math.cos(phi) + y * math.sin(phi)
    v = (-x * math.sin(phi) + y * math.cos(phi)) / q
    return u, v


def _to_sky(u: np.ndarray, v: np.ndarray, phi: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    vy = v * q
    return u * math.cos(phi) - vy * math.sin(phi), u * math.sin(phi) + vy * math.cos(phi)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _disk_q(rng: np.random.Generator, lo_cos: float = 0.15) -> float:
    cos_i = rng.uniform(lo_cos, 1.0)
    q0 = 0.15  # intrinsic thickness
    return float(math.sqrt(cos_i**2 * (1 - q0**2) + q0**2))


def _offset(rng: np.random.Generator) -> tuple[float, float]:
    """Sub-pixel position of the catalogued object (cutouts are centred on catalogue RA, Dec)."""
    return float(rng.uniform(-0.5, 0.5) * PIXEL_SCALE), float(rng.uniform(-0.5, 0.5) * PIXEL_SCALE)


# --- galaxy building blocks ---------------------------------------------------------------------


def _lrg_params(rng: np.random.Generator, z: float) -> dict[str, float]:
    """Luminous red galaxy at redshift z: r mag, colours, size, shape (before any adjustment)."""
    r_eff = float(np.clip(rng.lognormal(math.log(5.5), 0.3) / kpc_per_arcsec(z), 0.4, 2.5))
    return {
        "r": 19.5 + 5.5 * math.log10(z / 0.5) + rng.normal(0, 0.45),
        "g_r": float(np.clip(1.25 + 0.9 * (z - 0.2) + rng.normal(0, 0.06), 0.9, 1.9)),
        "r_z": float(np.clip(0.8 + 0.45 * (z - 0.2) + rng.normal(0, 0.05), 0.6, 1.2)),
        "r_eff": r_eff,
        "n": rng.uniform(3.0, 5.0),
        "q": float(np.clip(rng.normal(0.78, 0.12), 0.5, 0.97)),
        "phi": rng.uniform(0, math.pi),
    }


def _red_type(rng: np.random.Generator, r_eff: float) -> str:
    if r_eff < 0.35:
        return "REX"
    return "DEV" if rng.uniform() < 0.6 else "SER"


def _galaxy(
    rng: np.random.Generator, x: float, y: float, r: float, z: float, style: str, ebv: float, *, central: bool
) -> tuple[list[LightComp], dict[str, Any]]:
    """A generic galaxy: ``'red'`` (one n=3-5 Sersic), ``'disk'`` (bulge + disk) or ``'blue'``."""
    if style == "red":
        p = _lrg_params(rng, z)
        flux = grz_flux(r, p["g_r"], p["r_z"], ebv)
        comp = _sersic(x, y, p["r_eff"], p["n"], p["q"], p["phi"], flux, central=central)
        return [comp], {"r_eff": p["r_eff"], "n": p["n"], "type": _red_type(rng, p["r_eff"]), "phi": p["phi"]}
    if style == "disk":
        r_disk = float(np.clip(1.68 * rng.lognormal(math.log(3.0), 0.3) / kpc_per_arcsec(z), 0.5, 4.0))
        bt = rng.uniform(0.05, 0.5)
        phi, q = rng.uniform(0, math.pi), _disk_q(rng)
        disk_gr, disk_rz = rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.7)
        n_disk = rng.uniform(0.8, 1.3)
        r_b = max(rng.uniform(0.15, 0.35) * r_disk, 0.2)
        f_tot = grz_flux(r, disk_gr + 0.3 * bt, disk_rz + 0.2 * bt, ebv)
        f_bulge = grz_flux(r - 2.5 * math.log10(bt), 1.1, 0.8, ebv)
        f_bulge = np.minimum(f_bulge, 0.8 * f_tot)
        comps = [
            _sersic(x, y, r_disk, n_disk, q, phi, f_tot - f_bulge, central=central),
            _sersic(x, y, r_b, rng.uniform(3.0, 4.5), rng.uniform(0.7, 0.95), phi, f_bulge, central=central),
        ]
        return comps, {"r_eff": r_disk, "n": n_disk, "type": "EXP" if rng.uniform() < 0.6 else "SER", "phi": phi}
    r_eff = _log_uniform(rng, 0.2, 0.8)
    n = rng.uniform(0.6, 1.5)
    flux = grz_flux(r, rng.uniform(0.1, 0.6), rng.uniform(0.0, 0.5), ebv)
    phi = rng.uniform(0, math.pi)
    comp = _sersic(x, y, r_eff, n, rng.uniform(0.3, 0.9), phi, flux, central=central, main=central)
    return [comp], {"r_eff": r_eff, "n": n, "type": "REX" if r_eff < 0.35 else "EXP", "phi": phi}


def _photo_z(rng: np.random.Generator, z: float) -> float:
    return float(max(z + rng.normal(0, 0.03 * (1 + z)), 0.01))


def _base_truth(z: float, r_eff: float, n: float, source_type: str, rng: np.random.Generator) -> dict[str, Any]:
    return {"z_true": z, "z_phot_mean": _photo_z(rng, z), "r_eff": r_eff, "sersic_n": n, "source_type": source_type}


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
