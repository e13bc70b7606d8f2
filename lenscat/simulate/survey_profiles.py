"""Building blocks of the simulated objects: light profiles, geometry, cosmology and galaxy parameters.

Sersic and Gaussian components, interpolated patterns, ellipticities and sky projections, the kpc per
arcsec of the simulation's cosmology, and the draws of a luminous red galaxy's parameters, its photo-z
and its truth record; the object kinds that use them are :mod:`lenscat.simulate.survey_objects`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from lenscat.simulate.survey_render import (
    PIXEL_SCALE,
    LightComp,
    grz_flux,
)


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
