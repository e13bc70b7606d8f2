"""Rendering of one injected lens with lenstronomy (:func:`render_injection`).

An SIE plus external shear centred on the host; a source of an elliptical Sersic profile plus 1-5
Gaussian star-forming clumps; ray-shot on a supersampled grid, binned to the survey's pixels,
convolved with the survey's PSF (Moffat or Gaussian) and added to the host's real pixels (see
:mod:`lenscat.simulate.injection`, step 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lenscat.simulate.injection_types import (
    MOFFAT_BETA,
    SUPERSAMPLE,
    ZERO_POINT,
)

__all__ = ["render_injection"]


# ------------------------------------------------------------------------------------ rendering
def _band_mags(r: float, g_r: float, r_z: float, bands: Sequence[str]) -> np.ndarray:
    """AB magnitudes per band from r and two colours (i halfway between r and z)."""
    table = {"g": r + g_r, "r": r, "i": r - 0.5 * r_z, "z": r - r_z}
    return np.array([table[b] for b in bands])


def _psf_kernel(fwhm: float, pixel_scale: float, model: str) -> np.ndarray:
    """Pixel-integrated PSF of unit sum: Moffat (index 3.5) or Gaussian of this FWHM [arcsec]."""
    half = max(3, int(math.ceil(2.5 * fwhm / pixel_scale)))
    s = 5
    ax = (np.arange(-half * s, (half + 1) * s) - (s - 1) / 2.0) / s * pixel_scale
    x, y = np.meshgrid(ax, ax)
    r2 = x**2 + y**2
    if model == "gaussian":
        sig = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        img = np.exp(-0.5 * r2 / sig**2)
    else:
        alpha = fwhm / (2.0 * math.sqrt(2 ** (1.0 / MOFFAT_BETA) - 1.0))
        img = (1.0 + r2 / alpha**2) ** (-MOFFAT_BETA)
    k = img.reshape(2 * half + 1, s, 2 * half + 1, s).sum(axis=(1, 3))
    return k / k.sum()


@dataclass
class _Draw:
    theta_e: float
    q: float
    phi: float
    gamma1: float
    gamma2: float
    src_x: float
    src_y: float
    src_r_eff: float
    src_n: float
    src_q: float
    src_phi: float
    src_mag_r: float
    g_r: float
    r_z: float
    clump_fraction: float
    clumps: list[tuple[float, float, float, float]]  # (x, y, sigma, weight)


def _draw(
    rng: np.random.Generator,
    theta_e: tuple[float, float],
    source_mag: tuple[float, float],
    g_r: tuple[float, float],
    r_z: tuple[float, float],
) -> _Draw:
    te = float(rng.uniform(*theta_e))
    shear = min(float(rng.rayleigh(0.03)), 0.1)
    ang = float(rng.uniform(0, np.pi))
    rad = 0.5 * te * math.sqrt(float(rng.uniform()))
    pa = float(rng.uniform(0, 2 * np.pi))
    r_eff = float(rng.uniform(0.1, 0.5))
    n_clumps = int(rng.integers(1, 6))
    cx, cy = rad * math.cos(pa), rad * math.sin(pa)
    w = rng.dirichlet(np.ones(n_clumps))
    clumps = []
    for k in range(n_clumps):
        cr, ca = 1.5 * r_eff * math.sqrt(float(rng.uniform())), float(rng.uniform(0, 2 * np.pi))
        clumps.append((cx + cr * math.cos(ca), cy + cr * math.sin(ca), float(rng.uniform(0.05, 0.12)), float(w[k])))
    return _Draw(
        theta_e=te,
        q=float(rng.uniform(0.5, 1.0)),
        phi=float(rng.uniform(0, np.pi)),
        gamma1=shear * math.cos(2 * ang),
        gamma2=shear * math.sin(2 * ang),
        src_x=cx,
        src_y=cy,
        src_r_eff=r_eff,
        src_n=float(rng.uniform(0.7, 1.5)),
        src_q=float(rng.uniform(0.5, 1.0)),
        src_phi=float(rng.uniform(0, np.pi)),
        src_mag_r=float(rng.uniform(*source_mag)),
        g_r=float(rng.uniform(*g_r)),
        r_z=float(rng.uniform(*r_z)),
        clump_fraction=float(rng.uniform(0.1, 0.4)),
        clumps=clumps,
    )


def render_injection(
    d: _Draw, shape: tuple[int, int], bands: Sequence[str], pixel_scale: float, kernels: Sequence[np.ndarray]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Lensed source light (bands, H, W) [nanomaggy] of one draw, and its truth.

    The lens is centred on the stamp centre; the source light is ray-shot through SIE + shear on a
    4x supersampled grid (lenstronomy) over the box that can hold it, binned to pixels and
    convolved with each band's kernel.
    """
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.Util.param_util import phi_q2_ellipticity
    from scipy.signal import fftconvolve

    h, w = shape
    s = SUPERSAMPLE
    # the lensed light lies within theta_E + |beta| + ~6 source radii of the lens centre: ray-shoot
    # only that box (a 152-pixel stamp costs ~5x less), then convolve on the whole stamp
    reach = d.theta_e + math.hypot(d.src_x, d.src_y) + 6.0 * d.src_r_eff + 1.0
    half = int(math.ceil(reach / pixel_scale)) + 2
    r0, r1 = max(0, int((h - 1) // 2) - half), min(h, int(h // 2) + half + 1)
    c0, c1 = max(0, int((w - 1) // 2) - half), min(w, int(w // 2) + half + 1)
    bh, bw = r1 - r0, c1 - c0
    ys = ((np.arange(r0 * s, r1 * s) + 0.5) / s - 0.5 - (h - 1) / 2.0) * pixel_scale
    xs = ((np.arange(c0 * s, c1 * s) + 0.5) / s - 0.5 - (w - 1) / 2.0) * pixel_scale
    x, y = np.meshgrid(xs, ys)
    e1, e2 = phi_q2_ellipticity(d.phi, d.q)
    lens = LensModel(["SIE", "SHEAR"])
    kw_lens = [
        {"theta_E": d.theta_e, "e1": e1, "e2": e2, "center_x": 0.0, "center_y": 0.0},
        {"gamma1": d.gamma1, "gamma2": d.gamma2, "ra_0": 0.0, "dec_0": 0.0},
    ]
    bx, by = lens.ray_shooting(x.ravel(), y.ravel(), kw_lens)
    se1, se2 = phi_q2_ellipticity(d.src_phi, d.src_q)
    sersic = LightModel(["SERSIC_ELLIPSE"])
    kw_s = [
        {
            "amp": 1.0,
            "R_sersic": d.src_r_eff,
            "n_sersic": d.src_n,
            "e1": se1,
            "e2": se2,
            "center_x": d.src_x,
            "center_y": d.src_y,
        }
    ]
    body_unit = float(np.sum(sersic.total_flux(kw_s)))
    body = sersic.surface_brightness(bx, by, kw_s).reshape(x.shape) / body_unit
    gauss = LightModel(["GAUSSIAN"] * len(d.clumps))
    kw_c = [{"amp": wt, "sigma": sg, "center_x": cx, "center_y": cy} for cx, cy, sg, wt in d.clumps]
    clumps = gauss.surface_brightness(bx, by, kw_c).reshape(x.shape)
    area = (pixel_scale / s) ** 2  # surface brightness per arcsec^2 -> flux per sub-pixel

    def binned(a: np.ndarray) -> np.ndarray:
        full = np.zeros((h, w))
        full[r0:r1, c0:c1] = a.reshape(bh, s, bw, s).sum(axis=(1, 3)) * area
        return full

    body_px, clump_px = binned(body), binned(clumps)
    body_mags = _band_mags(d.src_mag_r - 2.5 * math.log10(1 - d.clump_fraction), d.g_r, d.r_z, bands)
    clump_mags = _band_mags(d.src_mag_r - 2.5 * math.log10(d.clump_fraction), d.g_r - 0.3, d.r_z - 0.15, bands)
    body_f = 10 ** (-0.4 * (body_mags - ZERO_POINT))
    clump_f = 10 ** (-0.4 * (clump_mags - ZERO_POINT))
    out = np.empty((len(bands), h, w), dtype=np.float64)
    lensed_flux = np.empty(len(bands))
    for b in range(len(bands)):
        plane = body_f[b] * body_px + clump_f[b] * clump_px
        lensed_flux[b] = plane.sum()
        out[b] = fftconvolve(plane, kernels[b], mode="same")
    np.maximum(out, 0.0, out=out)  # FFT round-off below zero
    src_total = body_f + clump_f
    ir = list(bands).index("r")
    truth = {
        "theta_e": d.theta_e,
        "lens_q": d.q,
        "lens_phi": d.phi,
        "gamma1": d.gamma1,
        "gamma2": d.gamma2,
        "source_x": d.src_x,
        "source_y": d.src_y,
        "source_r_eff": d.src_r_eff,
        "source_n": d.src_n,
        "n_clumps": len(d.clumps),
        "clump_fraction": d.clump_fraction,
        **{f"source_mag_{b}": float(ZERO_POINT - 2.5 * math.log10(src_total[j])) for j, b in enumerate(bands)},
        "magnification": float(lensed_flux[ir] / src_total[ir]),
    }
    return out.astype(np.float32), truth


def _arc_snr(arc_r: np.ndarray, sigma_r: float) -> float:
    """S/N of the arc in r: its flux over the host's noise, summed over the pixels above 1 sigma."""
    if not sigma_r > 0:
        return float("nan")
    m = arc_r > sigma_r
    if not m.any():
        return 0.0
    return float(arc_r[m].sum() / (sigma_r * math.sqrt(int(m.sum()))))
