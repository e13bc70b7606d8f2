"""Rendering engine of :mod:`lenscat.simulate.alt`: profiles, SIE lensing, double-Gaussian PSF, CCD noise.

Written independently of :mod:`lenscat.simulate.survey_render` / :mod:`lenscat.simulate.survey_objects` (no
lenstronomy, no shared code): every profile, the lens model, the PSF and the noise are plain numpy.
A scene is a list of :class:`Comp` light components in the image plane, point sources, and for a
lens an SIE + shear deflector with a clumpy source behind it. Light is painted at unit flux into a
(3, C, C) canvas (the stamp plus a 16-pixel margin, so light from just outside falls in),
supersampled 2x where profiles are sharp, each band scaled by the component's g, r, z flux; the
canvas is convolved per band in Fourier space with the analytic transfer function of the
double-Gaussian PSF (point sources enter as phase ramps, so they sit at exact sub-pixel
positions), cropped, and given CCD noise in electrons.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.fft

__all__ = [
    "BANDS",
    "PIXEL_SCALE",
    "ZERO_POINT",
    "DEPTH5",
    "EXTINCTION",
    "Comp",
    "Scene",
    "Lens",
    "Rendered",
    "render_scene",
    "sie_deflection",
    "psf_core_sigma",
    "psf_image",
    "psf_otf",
    "psf_sum_sq",
    "sky_sigma_for_depth",
    "flux_to_mag",
]

PIXEL_SCALE = 0.262  # arcsec per pixel
BANDS = ("g", "r", "z")
ZERO_POINT = 22.5  # AB magnitude of 1 nanomaggy
DEPTH5 = np.array([24.0, 23.4, 22.5])  # nominal 5-sigma point-source depth; each stamp +- 0.3 mag
FWHM_RANGE = np.array([[1.25, 1.7], [1.1, 1.5], [1.0, 1.4]])  # arcsec, per band
EXTINCTION = np.array([3.214, 2.165, 1.211])  # A_band / E(B-V) (DECam, as the Legacy Surveys use)
E_PER_S_NMGY = np.array([30.0, 36.0, 23.0])  # electrons per second per nanomaggy (DECam-like)
READ_NOISE = 7.0  # electrons per exposure
N_EXP = 3  # exposures per coadd
WING_FRACTION = 0.1  # flux in the PSF's wide Gaussian
MARGIN = 16  # pixels of canvas beyond the stamp on each side
ARTEFACT_RATE = 0.015  # stamps with a cosmic ray or a dead column


Profile = Callable[[np.ndarray, np.ndarray], np.ndarray]


def flux_to_mag(flux: np.ndarray) -> np.ndarray:
    """AB magnitudes of fluxes in nanomaggies (NaN where the flux is not positive)."""
    f = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f > 0, ZERO_POINT - 2.5 * np.log10(np.where(f > 0, f, 1.0)), np.nan)


# --- profiles (arcsec offsets in, surface brightness per arcsec^2 at unit total flux out) -------


def _rot(dx: np.ndarray, dy: np.ndarray, q: float, phi: float) -> np.ndarray:
    """Circularised radius sqrt(q u^2 + v^2 / q), u along the major axis at angle ``phi``."""
    c, s = math.cos(phi), math.sin(phi)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    return np.sqrt(q * u * u + v * v / q)


def _sersic_b(n: float) -> float:
    """b_n of Ciotti & Bertin (1999): half the light within R_eff."""
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n * n)


def sersic(n: float, r_eff: float, q: float, phi: float) -> Profile:
    """Elliptical Sersic profile with circularised half-light radius ``r_eff`` [arcsec], unit flux."""
    b = _sersic_b(n)
    norm = 2 * math.pi * n * r_eff**2 * math.exp(b) * b ** (-2 * n) * math.gamma(2 * n)
    soft = (0.03 * r_eff) ** 2  # keeps the n=4 cusp finite

    def f(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        r = np.sqrt(_rot(dx, dy, q, phi) ** 2 + soft)
        return np.exp(-b * ((r / r_eff) ** (1 / n) - 1)) / norm

    return f


def gaussian(sigma: float, q: float = 1.0, phi: float = 0.0) -> Profile:
    """Elliptical Gaussian with circularised ``sigma`` [arcsec], unit flux."""

    def f(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        r = _rot(dx, dy, q, phi)
        return np.exp(-0.5 * (r / sigma) ** 2) / (2 * math.pi * sigma**2)

    return f


def ring(radius: float, width: float, q: float, phi: float) -> Profile:
    """Gaussian ring of (circularised) ``radius`` and ``width`` [arcsec] (normalised numerically)."""

    def f(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * ((_rot(dx, dy, q, phi) - radius) / width) ** 2)

    return f


def spiral(scale: float, q: float, phi: float, pitch: float, phase: float) -> Profile:
    """Exponential disk whose light is concentrated into two logarithmic arms (normalised numerically)."""
    c, s = math.cos(phi), math.sin(phi)
    tan_p = math.tan(pitch)

    def f(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        u = dx * c + dy * s
        v = (-dx * s + dy * c) / q  # deprojected
        r = np.hypot(u, v) + 1e-3
        arm = 0.5 * (1 + np.cos(2 * (np.arctan2(v, u) - phase) - 2 * np.log(r / scale) / tan_p))
        return np.exp(-r / scale) * (0.2 + arm**3)

    return f


def arc(radius: float, width: float, centre_angle: float, half_extent: float) -> Profile:
    """A curved streak: a Gaussian-profile segment of a circle of ``radius`` centred on the origin.

    The segment is centred on ``centre_angle`` and fades beyond ``half_extent`` [rad] (normalised
    numerically).
    """

    def f(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        rho = np.hypot(dx, dy)
        d_ang = np.angle(np.exp(1j * (np.arctan2(dy, dx) - centre_angle)))
        return np.exp(-0.5 * ((rho - radius) / width) ** 2 - (d_ang / half_extent) ** 4)

    return f


def spikes(length: float, width: float, angle: float) -> Profile:
    """Four diffraction-like spikes (a cross of thin power-law lines) for bright stars."""
    c, s = math.cos(angle), math.sin(angle)

    def f(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        u = np.abs(dx * c + dy * s)
        v = np.abs(-dx * s + dy * c)
        one = np.exp(-0.5 * (v / width) ** 2) / (u + 0.4) ** 1.5 * (u < length)
        two = np.exp(-0.5 * (u / width) ** 2) / (v + 0.4) ** 1.5 * (v < length)
        return one + two

    return f


# --- lens model ---------------------------------------------------------------------------------


def sie_deflection(
    x: np.ndarray, y: np.ndarray, theta_e: float, q: float, phi: float, gamma1: float = 0.0, gamma2: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Deflection [arcsec] of a singular isothermal ellipsoid plus external shear.

    Closed form of Kormann, Schneider & Bartelmann (1994) as written by Keeton (2001) with zero
    core: in the frame of the major axis, psi = sqrt(q^2 x^2 + y^2) and
    alpha_x = b q / e arctan(e x / psi), alpha_y = b q / e arctanh(e y / psi), e = sqrt(1 - q^2),
    whose convergence is kappa = b q / (2 psi). With b = theta_e / sqrt(q) the mean convergence
    inside the ellipse of circularised radius ``theta_e`` is 1, so ``theta_e`` is the
    circularised Einstein radius (and q -> 1 gives the SIS, |alpha| = theta_e).

    Parameters
    ----------
    x, y
        Image-plane positions relative to the lens centre [arcsec].
    theta_e
        Einstein radius [arcsec].
    q
        Mass axis ratio (0 < q <= 1).
    phi
        Position angle of the major axis, from +x towards +y [rad].
    gamma1, gamma2
        External shear components.

    Returns
    -------
    alpha_x, alpha_y : numpy.ndarray
    """
    c, s = math.cos(phi), math.sin(phi)
    u = x * c + y * s
    v = -x * s + y * c
    if 1 - q < 1e-5:
        r = np.hypot(u, v) + 1e-12
        au, av = theta_e * u / r, theta_e * v / r
    else:
        e = math.sqrt(1 - q * q)
        psi = np.sqrt(q * q * u * u + v * v) + 1e-12
        pref = theta_e * math.sqrt(q) / e
        au = pref * np.arctan(e * u / psi)
        av = pref * np.arctanh(np.clip(e * v / psi, -1 + 1e-12, 1 - 1e-12))
    ax = au * c - av * s + gamma1 * x + gamma2 * y
    ay = au * s + av * c + gamma2 * x - gamma1 * y
    return ax, ay


# --- PSF and noise ------------------------------------------------------------------------------


def _mixture_fwhm_over_sigma(wing_ratio: float) -> float:
    """FWHM / core sigma of 0.9 N(sigma) + 0.1 N(wing_ratio sigma) (circular, by bisection)."""
    w1, w2 = 1 - WING_FRACTION, WING_FRACTION

    def prof(r: float) -> float:
        return w1 * math.exp(-0.5 * r * r) + w2 / wing_ratio**2 * math.exp(-0.5 * (r / wing_ratio) ** 2)

    half = 0.5 * prof(0.0)
    lo, hi = 0.0, 10.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if prof(mid) > half else (lo, mid)
    return 2 * lo


def psf_core_sigma(fwhm: float, wing_ratio: float) -> float:
    """Core Gaussian sigma [arcsec] that gives the double Gaussian a (circularised) ``fwhm``."""
    return fwhm / _mixture_fwhm_over_sigma(wing_ratio)


def _psf_covs(fwhm: float, wing_ratio: float, e: float, angle: float) -> list[tuple[float, np.ndarray]]:
    """(weight, 2x2 covariance in pixels^2) of the core and wing Gaussians."""
    sig = psf_core_sigma(fwhm, wing_ratio) / PIXEL_SCALE
    qa = 1 - e
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    base = rot @ np.diag([1 / qa, qa]) @ rot.T  # det 1: the circularised sigma is kept
    return [(1 - WING_FRACTION, sig**2 * base), (WING_FRACTION, (sig * wing_ratio) ** 2 * base)]


def psf_otf(fwhm: float, wing_ratio: float, e: float, angle: float, shape: tuple[int, int]) -> np.ndarray:
    """Optical transfer function of the double-Gaussian PSF on an ``rfft2`` grid of ``shape``."""
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    otf = np.zeros((shape[0], shape[1] // 2 + 1))
    for w, cov in _psf_covs(fwhm, wing_ratio, e, angle):
        otf += w * np.exp(-2 * math.pi**2 * (cov[0, 0] * kx * kx + 2 * cov[0, 1] * kx * ky + cov[1, 1] * ky * ky))
    return otf


def psf_image(fwhm: float, wing_ratio: float, e: float, angle: float, size: int = 51, sub: int = 5) -> np.ndarray:
    """The PSF in real space, pixel-integrated (``sub``-fold), centred on pixel ``size // 2``."""
    offs = (np.arange(size * sub) + 0.5) / sub - 0.5 - size // 2
    x, y = np.meshgrid(offs, offs)
    img = np.zeros_like(x)
    for w, cov in _psf_covs(fwhm, wing_ratio, e, angle):
        inv = np.linalg.inv(cov)
        img += (
            w
            * np.exp(-0.5 * (inv[0, 0] * x * x + 2 * inv[0, 1] * x * y + inv[1, 1] * y * y))
            / (2 * math.pi * math.sqrt(np.linalg.det(cov)))
        )
    return img.reshape(size, sub, size, sub).mean(axis=(1, 3))


def psf_sum_sq(fwhm: float, wing_ratio: float, e: float, angle: float) -> float:
    """Sum of the squared (unit-sum) PSF over pixels, analytic: 1 / noise-equivalent area."""
    covs = _psf_covs(fwhm, wing_ratio, e, angle)
    return sum(wi * wj / (2 * math.pi * math.sqrt(np.linalg.det(ci + cj))) for wi, ci in covs for wj, cj in covs)


def sky_sigma_for_depth(depth5: float, sum_sq: float) -> float:
    """Per-pixel noise [nanomaggy] for which a point source of magnitude ``depth5`` has S/N 5.

    Optimal (PSF-weighted) photometry on background-limited pixels: S/N = F sqrt(sum p^2) / sigma.
    """
    return 10 ** (-0.4 * (depth5 - ZERO_POINT)) * math.sqrt(sum_sq) / 5.0


# --- scenes -------------------------------------------------------------------------------------


@dataclass
class Comp:
    """A light component in the image plane: unit-flux ``profile`` scaled by ``flux`` (g, r, z)."""

    profile: Profile
    flux: np.ndarray
    x: float
    y: float
    radius: float  # arcsec: the profile is painted within this box half-size
    sub: int = 1
    normalise: bool = False  # divide by the painted sum (profiles without an analytic norm)
    central: bool = False


@dataclass
class Lens:
    """SIE + shear deflector and the clumpy source behind it."""

    theta_e: float
    q: float
    phi: float
    gamma1: float
    gamma2: float
    x: float
    y: float
    beta_x: float  # source position relative to the lens centre [arcsec]
    beta_y: float
    parts: list[tuple[Profile, np.ndarray]]  # source-plane profiles (about the source centre), flux
    lensed_r: float  # total lensed r magnitude wanted


@dataclass
class Scene:
    """Everything drawn for one cutout (before rendering)."""

    comps: list[Comp] = field(default_factory=list)
    points: list[tuple[np.ndarray, float, float, bool]] = field(default_factory=list)  # flux, x, y, central
    lens: Lens | None = None
    fwhm: np.ndarray = field(default_factory=lambda: np.zeros(3))
    wing_ratio: float = 2.5
    psf_e: float = 0.0
    psf_angle: float = 0.0
    depth5: np.ndarray = field(default_factory=lambda: np.zeros(3))
    e_per_nmgy: np.ndarray = field(default_factory=lambda: np.zeros(3))
    gain: float = 4.0
    artefact: int = 0  # 0 none, 1 cosmic ray, 2 dead column
    truth: dict[str, Any] = field(default_factory=dict)


# --- rendering ----------------------------------------------------------------------------------


@dataclass
class Rendered:
    """A rendered cutout and what was measured while rendering it."""

    images: np.ndarray  # (3, stamp, stamp) float32 nanomaggies
    sky_sigma: np.ndarray  # per band, nanomaggy
    source_flux: np.ndarray  # unlensed flux of the lensed source (g, r, z; zeros for non-lenses)
    magnification: float
    arc_snr: float
    central_flux: np.ndarray


def _grid(
    canvas: int, x: float, y: float, radius: float, sub: int
) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    """Canvas slices of the box of half-size ``radius`` about (x, y) and the (sub-sampled) offsets in arcsec."""
    c = canvas // 2
    px, py, rp = c + x / PIXEL_SCALE, c + y / PIXEL_SCALE, radius / PIXEL_SCALE
    x0, x1 = max(int(math.floor(px - rp)), 0), min(int(math.ceil(px + rp)) + 1, canvas)
    y0, y1 = max(int(math.floor(py - rp)), 0), min(int(math.ceil(py + rp)) + 1, canvas)
    if x0 >= x1 or y0 >= y1:
        return None
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    xs = ((np.arange(x0, x1)[:, None] + offs).ravel() - px) * PIXEL_SCALE
    ys = ((np.arange(y0, y1)[:, None] + offs).ravel() - py) * PIXEL_SCALE
    return slice(y0, y1), slice(x0, x1), xs, ys


def _bin(val: np.ndarray, sub: int) -> np.ndarray:
    if sub == 1:
        return val * PIXEL_SCALE**2
    ny, nx = val.shape[0] // sub, val.shape[1] // sub
    return val.reshape(ny, sub, nx, sub).mean(axis=(1, 3)) * PIXEL_SCALE**2


def _paint(canvas: np.ndarray, comp: Comp) -> None:
    g = _grid(canvas.shape[-1], comp.x, comp.y, comp.radius, comp.sub)
    if g is None:
        return
    sy, sx, xs, ys = g
    val = _bin(comp.profile(xs[None, :], ys[:, None]), comp.sub)
    if comp.normalise:
        total = val.sum()
        if total <= 0:
            return
        val = val / total
    canvas[:, sy, sx] += comp.flux[:, None, None] * val


def _lensed(canvas: np.ndarray, lens: Lens) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Paint the lensed source; returns its unlensed flux, the magnification and the lensed map (3, ...)."""
    radius = lens.theta_e + math.hypot(lens.beta_x, lens.beta_y) + 2.0
    g = _grid(canvas.shape[-1], lens.x, lens.y, radius, 2)
    if g is None:
        return np.zeros(3), math.nan, None
    sy, sx, xs, ys = g
    tx, ty = np.meshgrid(xs, ys)
    ax, ay = sie_deflection(tx, ty, lens.theta_e, lens.q, lens.phi, lens.gamma1, lens.gamma2)
    bx, by = tx - ax - lens.beta_x, ty - ay - lens.beta_y
    lensed = np.zeros((3, sy.stop - sy.start, sx.stop - sx.start))
    unlensed = np.zeros(3)
    for prof, flux in lens.parts:
        lensed += flux[:, None, None] * _bin(prof(bx, by), 2)[None]
        unlensed += flux
    mu = float(lensed[1].sum() / unlensed[1])
    scale = 10 ** (-0.4 * (lens.lensed_r - ZERO_POINT)) / lensed[1].sum()
    lensed *= scale
    canvas[:, sy, sx] += lensed
    full = np.zeros_like(canvas)
    full[:, sy, sx] = lensed
    return unlensed * scale, mu, full


def _convolve(canvas: np.ndarray, otf: np.ndarray, points: list[tuple[np.ndarray, float, float, bool]]) -> np.ndarray:
    """Convolve each band of ``canvas`` (b, n, n) with its transfer function ``otf`` (b, n, n // 2 + 1).

    Point sources enter as phase ramps, i.e. at exact sub-pixel positions.
    """
    n = canvas.shape[-1]
    ft = scipy.fft.rfft2(canvas, axes=(-2, -1))
    if points:
        ky = np.fft.fftfreq(n)
        kx = np.fft.rfftfreq(n)
        c = n // 2
        for flux, x, y, _ in points:
            ramp = (
                np.exp(-2j * math.pi * ky * (c + y / PIXEL_SCALE))[:, None]
                * np.exp(-2j * math.pi * kx * (c + x / PIXEL_SCALE))[None, :]
            )
            ft += flux[:, None, None] * ramp[None]
    return scipy.fft.irfft2(ft * otf, s=(n, n), axes=(-2, -1))


def render_scene(scene: Scene, stamp: int, rng: np.random.Generator | None, with_source: bool = True) -> Rendered:
    """Paint, convolve, crop and (with ``rng``) add noise and artefacts; see the module docstring."""
    n = stamp + 2 * MARGIN
    canvas = np.zeros((3, n, n))
    for comp in scene.comps:
        _paint(canvas, comp)
    src_flux, mu, arc_snr = np.zeros(3), math.nan, math.nan
    lensed_map = None
    if scene.lens is not None and with_source:
        src_flux, mu, lensed_map = _lensed(canvas, scene.lens)
    crop = (slice(None), slice(MARGIN, MARGIN + stamp), slice(MARGIN, MARGIN + stamp))
    otf = np.stack([psf_otf(scene.fwhm[b], scene.wing_ratio, scene.psf_e, scene.psf_angle, (n, n)) for b in range(3)])
    model = _convolve(canvas, otf, scene.points)[crop]
    sigma = np.array(
        [
            sky_sigma_for_depth(
                scene.depth5[b], psf_sum_sq(scene.fwhm[b], scene.wing_ratio, scene.psf_e, scene.psf_angle)
            )
            for b in range(3)
        ]
    )
    if lensed_map is not None:
        arc_img = _convolve(lensed_map[1:2], otf[1:2], [])[0, MARGIN : MARGIN + stamp, MARGIN : MARGIN + stamp]
        var = sigma[1] ** 2 + np.clip(model[1], 0, None) / scene.e_per_nmgy[1]
        m = arc_img > np.sqrt(var)
        arc_snr = float(arc_img[m].sum() / math.sqrt(var[m].sum())) if m.any() else 0.0
    central = sum((c.flux for c in scene.comps if c.central), np.zeros(3))
    central = central + sum((p[0] for p in scene.points if p[3]), np.zeros(3))
    if rng is None:
        images = model
    else:
        images = _noise(model, sigma, scene, rng)
    return Rendered(images.astype(np.float32), sigma, src_flux, mu, arc_snr, central)


def _noise(model: np.ndarray, sigma: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Electrons: Poisson(source + sky) + read noise, quantised to ADU by the gain, back to nanomaggies.

    The sky level per pixel is what, with the read noise of :data:`N_EXP` exposures, gives the
    per-pixel noise ``sigma`` of the stamp's depth.
    """
    c = scene.e_per_nmgy[:, None, None]
    rn2 = N_EXP * READ_NOISE**2
    sky = np.maximum((sigma[:, None, None] * c) ** 2 - rn2, 1.0)
    electrons = rng.poisson(np.clip(model, 0, None) * c + sky).astype(float) - sky
    electrons += rng.normal(0.0, math.sqrt(rn2), model.shape)
    if scene.artefact == 1:  # cosmic ray: a sharp, unconvolved track in one band
        b = int(rng.integers(0, 3))
        s = model.shape[-1]
        length, ang = int(rng.integers(3, 20)), rng.uniform(0, math.pi)
        x0, y0 = rng.uniform(0, s, 2)
        t = np.arange(length)
        xs = np.clip((x0 + t * math.cos(ang)).astype(int), 0, s - 1)
        ys = np.clip((y0 + t * math.sin(ang)).astype(int), 0, s - 1)
        electrons[b, ys, xs] += rng.uniform(30, 300) * math.sqrt(sky[b, 0, 0])
    elif scene.artefact == 2:  # dead column in one band
        b = int(rng.integers(0, 3))
        electrons[b, :, int(rng.integers(0, model.shape[-1]))] = 0.0
    adu = np.round(electrons / scene.gain)
    return adu * scene.gain / c
