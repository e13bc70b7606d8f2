"""Populations of :mod:`lenscat.simulate.alt`: observing conditions, lenses, impostors and the field.

:func:`draw_scene` draws everything random about one cutout except its noise (the per-kind
priors are listed in :mod:`lenscat.simulate.alt`'s docstring) as a
:class:`~lenscat.simulate.alt_render.Scene` for :func:`~lenscat.simulate.alt_render.render_scene`.
Written independently of :mod:`lenscat.simulate.survey_objects`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lenscat.simulate.alt_render import (
    ARTEFACT_RATE,
    DEPTH5,
    E_PER_S_NMGY,
    EXTINCTION,
    FWHM_RANGE,
    MARGIN,
    N_EXP,
    PIXEL_SCALE,
    ZERO_POINT,
    Comp,
    Lens,
    Profile,
    Scene,
    arc,
    gaussian,
    ring,
    sersic,
    spikes,
    spiral,
)

__all__ = ["KINDS", "NONLENS_FRACTIONS", "draw_scene"]

KINDS = ("lens", "elliptical", "blue_companion", "spiral", "ring", "close_pair", "merger", "star", "disk")
NONLENS_FRACTIONS: dict[str, float] = {
    "elliptical": 0.45,
    "blue_companion": 0.12,
    "spiral": 0.10,
    "ring": 0.08,
    "close_pair": 0.07,
    "merger": 0.06,
    "star": 0.06,
    "disk": 0.06,
}


def _flux(r: float, g_r: float, r_z: float) -> np.ndarray:
    """g, r, z fluxes [nanomaggy] of r magnitude ``r`` and colours g-r, r-z."""
    return 10 ** (-0.4 * (np.array([r + g_r, r, r - r_z]) - ZERO_POINT))


def _conditions(scene: Scene, rng: np.random.Generator) -> None:
    seeing = rng.uniform(0, 1)
    frac = np.clip(seeing + rng.normal(0, 0.08, 3), 0, 1)
    scene.fwhm = FWHM_RANGE[:, 0] + frac * (FWHM_RANGE[:, 1] - FWHM_RANGE[:, 0])
    scene.wing_ratio = float(rng.uniform(2.2, 3.2))
    scene.psf_e = float(rng.uniform(0, 0.08))
    scene.psf_angle = float(rng.uniform(0, math.pi))
    scene.depth5 = DEPTH5 + rng.uniform(-0.3, 0.3, 3)
    scene.e_per_nmgy = E_PER_S_NMGY * rng.uniform(150, 400) * N_EXP / 3
    scene.gain = float(rng.uniform(3.5, 4.5))
    u = rng.uniform()
    scene.artefact = 0 if u >= ARTEFACT_RATE else (1 if u < 0.6 * ARTEFACT_RATE else 2)


def _red_galaxy(
    rng: np.random.Generator, ebv: float, r: float | None = None, x: float = 0.0, y: float = 0.0, central: bool = True
) -> tuple[list[Comp], dict[str, Any]]:
    """A luminous red galaxy: de Vaucouleurs bulge + faint exponential halo."""
    if r is None:
        r = float(rng.uniform(17.5, 21.0))
    z = float(np.clip(0.12 + 0.14 * (r - 17.5) + rng.normal(0, 0.05), 0.08, 0.9))
    g_r = float(np.clip(1.2 + 0.6 * (z - 0.08) / 0.8 + rng.normal(0, 0.08), 1.2, 1.9))
    r_z = float(np.clip(0.7 + 0.45 * (z - 0.08) / 0.8 + rng.normal(0, 0.06), 0.7, 1.2))
    r_eff = float(np.clip(10 ** (0.05 - 0.18 * (r - 19) + rng.normal(0, 0.12)), 0.4, 3.0))
    q = float(rng.uniform(0.55, 1.0))
    phi = float(rng.uniform(0, math.pi))
    total = _flux(r, g_r, r_z) * 10 ** (-0.4 * EXTINCTION * ebv)
    f_halo = float(rng.uniform(0.08, 0.18))
    h_scale = r_eff * rng.uniform(2.0, 3.0) / 1.678
    comps = [
        Comp(sersic(4.0, r_eff, q, phi), total * (1 - f_halo), x, y, min(10 * r_eff + 3, 20.0), sub=2, central=central),
        Comp(
            sersic(1.0, 1.678 * h_scale, min(1.0, q + 0.15), phi),
            total * f_halo,
            x,
            y,
            min(8 * h_scale + 2, 20.0),
            central=central,
        ),
    ]
    info = {"z": z, "r_eff": r_eff, "q": q, "phi": phi, "r": r}
    return comps, info


def _blue_colours(rng: np.random.Generator) -> tuple[float, float]:
    return float(rng.uniform(-0.2, 0.6)), float(rng.uniform(-0.1, 0.4))


def _knots(rng: np.random.Generator, xy: np.ndarray, flux: np.ndarray, sizes: tuple[float, float]) -> list[Comp]:
    """Gaussian star-forming knots at positions ``xy`` (k, 2) sharing ``flux`` with scattered weights."""
    w = rng.dirichlet(np.full(len(xy), 2.0))
    return [
        Comp(gaussian(float(rng.uniform(*sizes))), flux * wk, float(p[0]), float(p[1]), 0.8, sub=2)
        for p, wk in zip(xy, w, strict=True)
    ]


def _draw_lens(scene: Scene, rng: np.random.Generator, ebv: float) -> None:
    theta_e = float(rng.uniform(0.9, 2.6))
    r_lens = float(np.clip(21.0 - 1.6 * (theta_e - 0.9) + rng.normal(0, 0.4), 17.5, 21.0))
    x0, y0 = rng.uniform(-0.15, 0.15, 2)
    comps, info = _red_galaxy(rng, ebv, r_lens, float(x0), float(y0))
    scene.comps += comps
    q = float(np.clip(info["q"] + rng.normal(0, 0.08), 0.5, 1.0))
    phi = float(info["phi"] + rng.normal(0, 0.15))
    g_abs, g_ang = rng.uniform(0, 0.08), rng.uniform(0, math.pi)
    if rng.uniform() < 0.7:  # inside the caustics: arcs, rings, quads
        b_r = theta_e * 0.35 * math.sqrt(rng.uniform())
    else:  # outside: mostly doubles
        b_r = theta_e * rng.uniform(0.35, 0.8)
    b_a = rng.uniform(0, 2 * math.pi)
    g_r, r_z = _blue_colours(rng)
    scale = float(rng.uniform(0.08, 0.3))
    q_s, phi_s = float(rng.uniform(0.4, 1.0)), float(rng.uniform(0, math.pi))
    n_clumps = int(rng.integers(2, 7))
    f_clumps = float(rng.uniform(0.25, 0.6))
    dims = 10 ** (-0.4 * EXTINCTION * ebv)
    disk_flux = _flux(22.5, g_r, r_z) * dims * (1 - f_clumps)  # unit r flux, rescaled when rendered
    parts: list[tuple[Profile, np.ndarray]] = [(sersic(1.0, 1.678 * scale, q_s, phi_s), disk_flux)]
    w = rng.dirichlet(np.full(n_clumps, 2.0))
    for k in range(n_clumps):
        cx, cy = rng.normal(0, 1.2 * scale, 2)
        blue = float(rng.uniform(0.1, 0.4))
        parts.append(
            (
                _shifted(gaussian(float(rng.uniform(0.02, 0.07))), float(cx), float(cy)),
                _flux(22.5, g_r - blue, r_z - 0.5 * blue) * dims * f_clumps * w[k],
            )
        )
    z_s = float(max(info["z"] + 0.4, rng.uniform(0.9, 3.0)))
    scene.lens = Lens(
        theta_e,
        q,
        phi,
        float(g_abs * math.cos(2 * g_ang)),
        float(g_abs * math.sin(2 * g_ang)),
        float(x0),
        float(y0),
        float(b_r * math.cos(b_a)),
        float(b_r * math.sin(b_a)),
        parts,
        float(rng.uniform(19.5, 22.5)),
    )
    scene.truth.update(
        theta_e=theta_e,
        z_lens=info["z"],
        z_source=z_s,
        lens_q=q,
        lens_phi=phi,
        lens_gamma=2.0,
        gamma1=scene.lens.gamma1,
        gamma2=scene.lens.gamma2,
        n_sources=1,
        n_clumps=n_clumps,
        source_scale=scale,
        beta=b_r,
        z_true=info["z"],
        r_eff=info["r_eff"],
        sersic_n=4.0,
        source_type="DEV",
    )


def _shifted(f: Profile, x: float, y: float) -> Profile:
    def g(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        return f(dx - x, dy - y)

    return g


def _draw_central(kind: str, scene: Scene, rng: np.random.Generator, ebv: float) -> None:
    dims = 10 ** (-0.4 * EXTINCTION * ebv)
    t = scene.truth
    x0, y0 = (float(v) for v in rng.uniform(-0.15, 0.15, 2))
    if kind == "lens":
        _draw_lens(scene, rng, ebv)
    elif kind in ("elliptical", "blue_companion", "close_pair"):
        comps, info = _red_galaxy(rng, ebv, x=x0, y=y0)
        scene.comps += comps
        t.update(z_true=info["z"], r_eff=info["r_eff"], sersic_n=4.0, source_type="DEV")
        if kind == "blue_companion":
            # an unlensed blue streak: often curved around the host like an arc, never with a counter-image
            d = float(rng.uniform(1.0, 3.2))
            ang = float(rng.uniform(0, 2 * math.pi))
            mx, my = x0 + d * math.cos(ang), y0 + d * math.sin(ang)
            rc = float(rng.uniform(1.0, 4.0))
            # the curvature centre: towards the host (tangential, lens-like) or anywhere
            c_ang = ang + math.pi if rng.uniform() < 0.5 else float(rng.uniform(0, 2 * math.pi))
            cx, cy = mx + rc * math.cos(c_ang), my + rc * math.sin(c_ang)
            half = float(rng.uniform(12, 45)) * math.pi / 180 * max(1.0, 2.0 / rc)
            g_r, r_z = _blue_colours(rng)
            flux = _flux(float(rng.uniform(20.0, 22.5)), g_r, r_z) * dims
            f_knots = float(rng.uniform(0, 0.4))
            scene.comps.append(
                Comp(
                    arc(rc, float(rng.uniform(0.08, 0.3)), c_ang + math.pi, half),
                    flux * (1 - f_knots),
                    cx,
                    cy,
                    rc + 1.5,
                    sub=2,
                    normalise=True,
                )
            )
            if f_knots > 0:
                k = int(rng.integers(1, 4))
                a = c_ang + math.pi + rng.uniform(-half, half, k)
                xy = np.stack([cx + rc * np.cos(a), cy + rc * np.sin(a)], axis=1)
                scene.comps += _knots(rng, xy, flux * f_knots, (0.04, 0.12))
        elif kind == "close_pair":
            sep, ang = float(rng.uniform(1.5, 5.0)), float(rng.uniform(0, 2 * math.pi))
            px, py = x0 + sep * math.cos(ang), y0 + sep * math.sin(ang)
            if rng.uniform() < 0.6:
                comps2, _ = _red_galaxy(rng, ebv, x=px, y=py, central=False)
                scene.comps += comps2
            else:
                scene.comps += _blue_disk(rng, ebv, px, py, float(rng.uniform(19.5, 22.0)), central=False)
    elif kind == "spiral":
        r = float(rng.uniform(17.5, 21.0))
        scale = float(np.clip(10 ** (0.0 - 0.15 * (r - 19) + rng.normal(0, 0.1)), 0.35, 2.5))
        q, phi = float(rng.uniform(0.4, 1.0)), float(rng.uniform(0, math.pi))
        g_r, r_z = float(rng.uniform(0.3, 0.8)), float(rng.uniform(0.2, 0.6))
        total = _flux(r, g_r, r_z) * dims
        f_b, f_k = float(rng.uniform(0.1, 0.3)), float(rng.uniform(0.1, 0.3))
        pitch, phase = float(rng.uniform(12, 30)) * math.pi / 180, float(rng.uniform(0, math.pi))
        scene.comps.append(
            Comp(
                sersic(4.0, 0.4 * scale, min(1.0, q + 0.2), phi),
                _flux(22.5, 1.2, 0.7) * total[1] * f_b,
                x0,
                y0,
                5 * scale + 1,
                sub=2,
                central=True,
            )
        )
        scene.comps.append(
            Comp(
                spiral(scale, q, phi, pitch, phase),
                total * (1 - f_b - f_k),
                x0,
                y0,
                7 * scale + 1,
                sub=2,
                normalise=True,
                central=True,
            )
        )
        k = int(rng.integers(3, 11))
        rk = scale * rng.uniform(0.8, 3.0, k)
        ak = phase + np.log(rk / scale) / math.tan(pitch) + math.pi * rng.integers(0, 2, k) + rng.normal(0, 0.1, k)
        u, v = rk * np.cos(ak), rk * np.sin(ak) * q
        c, s = math.cos(phi), math.sin(phi)
        xy = np.stack([x0 + u * c - v * s, y0 + u * s + v * c], axis=1)
        scene.comps += _knots(rng, xy, _flux(22.5, g_r - 0.3, r_z - 0.2) * total[1] * f_k, (0.05, 0.15))
        scene.truth.update(z_true=float(rng.uniform(0.05, 0.5)), r_eff=1.678 * scale, sersic_n=1.0, source_type="EXP")
    elif kind == "ring":
        r = float(rng.uniform(18.5, 21.5))
        radius, width = float(rng.uniform(1.0, 3.0)), float(rng.uniform(0.1, 0.35))
        q, phi = float(rng.uniform(0.5, 1.0)), float(rng.uniform(0, math.pi))
        g_r, r_z = float(rng.uniform(0.0, 0.6)), float(rng.uniform(0.0, 0.5))
        total = _flux(r, g_r, r_z) * dims
        f_n, f_k = float(rng.uniform(0.3, 0.6)), float(rng.uniform(0.15, 0.4))
        r_n = float(rng.uniform(0.2, 0.6))
        scene.comps.append(
            Comp(
                sersic(float(rng.choice([1.0, 2.5, 4.0])), r_n, min(1.0, q + 0.2), phi),
                _flux(22.5, float(rng.uniform(0.6, 1.2)), 0.5) * total[1] * f_n,
                x0,
                y0,
                8 * r_n + 2,
                sub=2,
                central=True,
            )
        )
        scene.comps.append(
            Comp(
                ring(radius, width, q, phi),
                total * (1 - f_n - f_k),
                x0,
                y0,
                radius + 5 * width + 1,
                sub=2,
                normalise=True,
                central=True,
            )
        )
        k = int(rng.integers(4, 11))
        a = rng.uniform(0, 2 * math.pi, k)
        u, v = radius / math.sqrt(q) * np.cos(a), radius * math.sqrt(q) * np.sin(a)
        c, s = math.cos(phi), math.sin(phi)
        xy = np.stack([x0 + u * c - v * s, y0 + u * s + v * c], axis=1)
        scene.comps += _knots(rng, xy, _flux(22.5, g_r - 0.2, r_z - 0.1) * total[1] * f_k, (0.04, 0.12))
        scene.truth.update(z_true=float(rng.uniform(0.05, 0.4)), r_eff=radius, sersic_n=1.0, source_type="EXP")
    elif kind == "merger":
        r = float(rng.uniform(17.5, 20.5))
        sep, ang = float(rng.uniform(0.6, 2.5)), float(rng.uniform(0, 2 * math.pi))
        comps, info = _red_galaxy(rng, ebv, r=r, x=x0, y=y0)
        scene.comps += comps
        px, py = x0 + sep * math.cos(ang), y0 + sep * math.sin(ang)
        r2 = r + float(rng.uniform(0.3, 1.5))
        if rng.uniform() < 0.5:
            comps2, _ = _red_galaxy(rng, ebv, r=r2, x=px, y=py, central=False)
            scene.comps += comps2
        else:
            scene.comps += _blue_disk(rng, ebv, px, py, r2, central=False)
        for _ in range(int(rng.integers(1, 3))):
            rc = float(rng.uniform(1.5, 5.0))
            c_ang = float(rng.uniform(0, 2 * math.pi))
            cx = x0 + 0.5 * sep * math.cos(ang) + rc * math.cos(c_ang)
            cy = y0 + 0.5 * sep * math.sin(ang) + rc * math.sin(c_ang)
            tail = arc(rc, float(rng.uniform(0.3, 0.8)), c_ang + math.pi, float(rng.uniform(0.4, 1.0)))
            tail_flux = (
                _flux(r + float(rng.uniform(1.5, 3.0)), float(rng.uniform(0.5, 1.2)), float(rng.uniform(0.3, 0.8)))
                * dims
            )
            scene.comps.append(Comp(tail, tail_flux, cx, cy, rc + 3, normalise=True))
        scene.truth.update(z_true=info["z"], r_eff=info["r_eff"], sersic_n=4.0, source_type="DEV")
    elif kind == "star":
        r = float(rng.uniform(14.5, 19.5))
        flux = _flux(r, float(rng.uniform(0.3, 1.5)), float(rng.uniform(0.1, 0.8))) * dims
        scene.points.append((flux, x0, y0, True))
        if r < 18.0:
            frac = float(rng.uniform(0.01, 0.03))
            scene.comps.append(
                Comp(
                    spikes(float(rng.uniform(4, 12)), 0.06, float(rng.uniform(0, math.pi / 2))),
                    flux * frac,
                    x0,
                    y0,
                    12.5,
                    normalise=True,
                )
            )
        scene.truth.update(z_true=math.nan, r_eff=0.0, sersic_n=math.nan, source_type="PSF", z_phot_mean=-99.0)
    elif kind == "disk":
        r = float(rng.uniform(17.5, 21.0))
        r_eff = float(rng.uniform(1.0, 3.0))
        q, phi = float(rng.uniform(0.08, 0.25)), float(rng.uniform(0, math.pi))
        total = _flux(r, float(rng.uniform(0.6, 1.2)), float(rng.uniform(0.4, 0.8))) * dims
        f_b = float(rng.uniform(0, 0.3))
        scene.comps.append(
            Comp(sersic(1.0, r_eff, q, phi), total * (1 - f_b), x0, y0, 6 * r_eff + 1, sub=2, central=True)
        )
        if f_b > 0:
            scene.comps.append(
                Comp(sersic(4.0, 0.15 * r_eff + 0.2, 0.6, phi), total * f_b, x0, y0, 4.0, sub=2, central=True)
            )
        scene.truth.update(z_true=float(rng.uniform(0.05, 0.5)), r_eff=r_eff, sersic_n=1.0, source_type="EXP")
    else:
        raise ValueError(f"unknown kind {kind!r}")


def _blue_disk(rng: np.random.Generator, ebv: float, x: float, y: float, r: float, central: bool) -> list[Comp]:
    g_r, r_z = float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.1, 0.6))
    r_eff = float(np.clip(10 ** (-0.1 - 0.15 * (r - 20) + rng.normal(0, 0.1)), 0.2, 2.0))
    return [
        Comp(
            sersic(1.0, r_eff, float(rng.uniform(0.3, 1.0)), float(rng.uniform(0, math.pi))),
            _flux(r, g_r, r_z) * 10 ** (-0.4 * EXTINCTION * ebv),
            x,
            y,
            6 * r_eff + 1,
            central=central,
        )
    ]


def _draw_field(scene: Scene, rng: np.random.Generator, ebv: float, stamp: int, red_host: bool) -> None:
    """Field galaxies (11 per arcmin^2, 19 < r < 24.5, N(<m) ~ 10^(0.32 m)), stars (1.2 per arcmin^2,
    16 < r < 23), satellites of red hosts (Poisson mean 0.8 at 3.5-9 arcsec) and a bright star in 4%.
    """
    half = (stamp / 2 + MARGIN) * PIXEL_SCALE
    area = (2 * half / 60) ** 2
    dims = 10 ** (-0.4 * EXTINCTION * ebv)
    pos: list[tuple[float, float]] = []

    def place(rmin: float) -> tuple[float, float]:
        while True:
            x, y = rng.uniform(-half, half, 2)
            if math.hypot(x, y) >= rmin:
                return float(x), float(y)

    def mags(k: int, lo: float, hi: float, slope: float) -> np.ndarray:
        a, b = 10 ** (slope * lo), 10 ** (slope * hi)
        return np.log10(a + rng.uniform(0, 1, k) * (b - a)) / slope

    for r in mags(int(rng.poisson(11 * area)), 19.0, 24.5, 0.32):
        x, y = place(3.0)
        if rng.uniform() < 0.6:
            scene.comps += _blue_disk(rng, ebv, x, y, float(r), central=False)
        else:
            re = float(np.clip(10 ** (-0.2 - 0.15 * (r - 20) + rng.normal(0, 0.1)), 0.15, 1.5))
            scene.comps.append(
                Comp(
                    sersic(4.0, re, float(rng.uniform(0.5, 1)), float(rng.uniform(0, math.pi))),
                    _flux(float(r), float(rng.uniform(1.0, 1.8)), float(rng.uniform(0.5, 1.0))) * dims,
                    x,
                    y,
                    8 * re + 1,
                )
            )
        pos.append((x, y))
    if red_host:
        for _ in range(int(rng.poisson(0.8))):
            d, a = float(rng.uniform(3.5, 9.0)), float(rng.uniform(0, 2 * math.pi))
            comps, _ = _red_galaxy(
                rng, ebv, r=float(rng.uniform(20.0, 23.0)), x=d * math.cos(a), y=d * math.sin(a), central=False
            )
            scene.comps += comps
            pos.append((d * math.cos(a), d * math.sin(a)))
    for r in mags(int(rng.poisson(1.2 * area)), 16.0, 23.0, 0.12):
        x, y = place(3.0)
        scene.points.append(
            (_flux(float(r), float(rng.uniform(0.3, 1.5)), float(rng.uniform(0.1, 0.8))) * dims, x, y, False)
        )
        pos.append((x, y))
    if rng.uniform() < 0.04:
        x, y = place(6.0)
        flux = _flux(float(rng.uniform(15.0, 17.0)), float(rng.uniform(0.3, 1.5)), float(rng.uniform(0.1, 0.8))) * dims
        scene.points.append((flux, x, y, False))
        scene.comps.append(
            Comp(
                spikes(float(rng.uniform(5, 12)), 0.06, float(rng.uniform(0, math.pi / 2))),
                flux * 0.02,
                x,
                y,
                12.5,
                normalise=True,
            )
        )
        pos.append((x, y))
    lim = stamp / 2 * PIXEL_SCALE
    inside = [math.hypot(x, y) for x, y in pos if abs(x) < lim and abs(y) < lim]
    scene.truth["n_neighbours"] = len(inside)
    scene.truth["nearest_neighbour"] = min(inside) if inside else math.nan


def draw_scene(kind: str, rng: np.random.Generator, ebv: float, stamp: int) -> Scene:
    """Draw the conditions, the central object of ``kind`` and its field (all randomness but the noise)."""
    scene = Scene()
    _conditions(scene, rng)
    scene.truth.update(
        z_phot_mean=math.nan,
        theta_e=math.nan,
        z_lens=math.nan,
        z_source=math.nan,
        lens_q=math.nan,
        lens_phi=math.nan,
        lens_gamma=math.nan,
        gamma1=math.nan,
        gamma2=math.nan,
        n_sources=0,
        n_clumps=0,
        source_scale=math.nan,
        beta=math.nan,
    )
    _draw_central(kind, scene, rng, ebv)
    if "z_phot_mean" in scene.truth and not math.isfinite(scene.truth["z_phot_mean"]):
        z = scene.truth["z_true"]
        scene.truth["z_phot_mean"] = float(max(0.01, z + rng.normal(0, 0.03 * (1 + z))))
    _draw_field(scene, rng, ebv, stamp, kind in ("lens", "elliptical", "blue_companion", "close_pair", "merger"))
    return scene
