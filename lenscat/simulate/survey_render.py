"""Rendering engine of :mod:`lenscat.simulate.survey`: lenstronomy light and lens models -> grz cutouts.

A scene is a list of light components (lenstronomy light profiles in the image plane, or in the
source plane behind a lenstronomy ``EPL`` + ``SHEAR`` mass model) plus point sources. Each
component is evaluated once, at unit total flux, on an adaptively supersampled pixel grid (1x over
the whole stamp for profiles with extended wings, 2-3x in a box around the component, 9x in the
central pixels of cuspy Sersic profiles); the three bands are then linear combinations of these
maps, convolved with each band's Moffat PSF (``scipy.signal.fftconvolve``), saturated where a
single DECam exposure would be, and given sky + source Poisson noise. Images are in nanomaggies
(AB zero point 22.5) on 0.262 arcsec pixels, like Legacy Surveys coadds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.ndimage import map_coordinates
from scipy.signal import fftconvolve

PIXEL_SCALE = 0.262  # arcsec per pixel (Legacy Surveys coadds)
BANDS = ("g", "r", "z")
ZERO_POINT = 22.5  # AB magnitude of 1 nanomaggy
DEPTH5 = np.array([24.0, 23.4, 22.5])  # median 5-sigma point-source depth, DECaLS DR9-like
DEPTH_SCATTER = 0.2  # mag, object-to-object scatter of the depth
FWHM_MEDIAN = np.array([1.5, 1.3, 1.2])  # arcsec, median seeing per band
EXTINCTION = np.array([3.214, 2.165, 1.211])  # A_band / E(B-V), Legacy Surveys DR9 coefficients
# DECam zero points (e-/s for a magnitude-ZP source; lenstronomy's DES ObservationConfig) and
# DECaLS-like total coadd exposure times: electrons per nanomaggy, for the source Poisson noise.
DECAM_ZP = np.array([26.58, 26.78, 26.48])
COADD_EXPTIME = np.array([300.0, 250.0, 300.0])
ELECTRONS_PER_NMGY = 10 ** (0.4 * (DECAM_ZP - ZERO_POINT)) * COADD_EXPTIME
PSF_SIZE = 41  # pixels (10.7 arcsec) for the convolution kernel
SS_CORE = 9  # supersampling in the central pixels of cuspy profiles
CORE_HALF = 3  # pixels
BRIGHT_POINT_FLUX = 40.0  # nanomaggies (r < 18.5): point sources rendered without kernel truncation


@dataclass
class LightComp:
    """One lenstronomy light profile with its grz flux.

    Attributes
    ----------
    model
        lenstronomy light profile name (``SERSIC_ELLIPSE``, ``GAUSSIAN``, ``INTERPOL`` ...).
    kwargs
        Profile keyword arguments without ``amp`` (the map is normalised to unit total flux).
    flux
        Total flux in g, r, z [nanomaggies]; for a lensed component the unlensed flux (rescaled
        by :func:`render_scene` when the scene fixes the lensed magnitude).
    plane
        ``'image'`` or ``'source'`` (lensed by the scene's mass model).
    x, y
        Centre [arcsec] relative to the stamp centre.
    extent
        Half-size [arcsec] of the supersampled box around the centre.
    ss
        Supersampling factor inside that box.
    wings
        Also evaluate the whole stamp at 1x (extended profiles).
    cusp
        Supersample the central pixels by 9x (Sersic n >~ 2).
    central
        Part of the catalogue object at the stamp centre (counts towards mag_g/r/z).
    """

    model: str
    kwargs: dict[str, Any]
    flux: np.ndarray
    plane: str = "image"
    x: float = 0.0
    y: float = 0.0
    extent: float = 3.0
    ss: int = 3
    wings: bool = False
    cusp: bool = False
    central: bool = False


@dataclass
class PointComp:
    """A point source (star) at (x, y) arcsec with grz flux [nanomaggies]."""

    x: float
    y: float
    flux: np.ndarray
    central: bool = False


@dataclass
class LensSpec:
    """lenstronomy ``EPL`` + ``SHEAR`` keyword lists and the target lensed r magnitude."""

    kwargs: list[dict[str, float]]
    theta_e: float
    arc_mag_r: float


@dataclass
class Scene:
    """Everything needed to render one cutout."""

    comps: list[LightComp]
    points: list[PointComp]
    fwhm: np.ndarray  # (3,) arcsec
    beta: float  # Moffat index
    depth5: np.ndarray  # (3,) mag
    saturation: np.ndarray  # (3,) nanomaggies per pixel
    lens: LensSpec | None = None
    truth: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rendered:
    """Result of :func:`render_scene`."""

    images: np.ndarray  # (3, H, W) float32 nanomaggies
    sky_sigma: np.ndarray  # (3,) nanomaggies per pixel
    source_flux: np.ndarray  # (3,) unlensed flux of all lensed components (0 if none)
    magnification: float  # total magnification of the lensed components (NaN if none)
    saturated: bool


def mag_to_flux(mag: np.ndarray | float) -> np.ndarray:
    """AB magnitude -> nanomaggies."""
    return np.asarray(10 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - ZERO_POINT)))


def flux_to_mag(flux: np.ndarray | float) -> np.ndarray:
    """Nanomaggies -> AB magnitude (NaN for non-positive flux)."""
    f = np.asarray(flux, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f > 0, ZERO_POINT - 2.5 * np.log10(np.where(f > 0, f, 1.0)), np.nan)


def grz_flux(r: float, g_r: float, r_z: float, ebv: float) -> np.ndarray:
    """Observed grz flux [nanomaggies] of an r-band magnitude and colours, reddened by ``ebv``."""
    mags = np.array([r + g_r, r, r - r_z]) + EXTINCTION * ebv
    return mag_to_flux(mags)


# --- lenstronomy objects (cached per process; INTERPOL instances are never shared) -----------


@lru_cache(maxsize=32)
def _light_model(model: str) -> Any:
    from lenstronomy.LightModel.light_model import LightModel

    return LightModel([model])


@lru_cache(maxsize=4)
def _lens_model() -> Any:
    from lenstronomy.LensModel.lens_model import LensModel

    return LensModel(["EPL", "SHEAR"])


def _fresh_or_cached(model: str) -> Any:
    if model == "INTERPOL":  # lenstronomy caches the interpolator inside the profile instance
        from lenstronomy.LightModel.light_model import LightModel

        return LightModel([model])
    return _light_model(model)


# --- grids --------------------------------------------------------------------------------------


def _centre(stamp: int) -> int:
    return stamp // 2


@lru_cache(maxsize=8)
def _full_grid(stamp: int) -> tuple[np.ndarray, np.ndarray]:
    c = _centre(stamp)
    ax = (np.arange(stamp) - c) * PIXEL_SCALE
    x, y = np.meshgrid(ax, ax)
    x.flags.writeable = False
    y.flags.writeable = False
    return x.ravel(), y.ravel()


def _box(x: float, y: float, half: int, stamp: int) -> tuple[int, int, int, int] | None:
    c = _centre(stamp)
    jc = int(round(c + x / PIXEL_SCALE))
    ic = int(round(c + y / PIXEL_SCALE))
    i0, i1 = max(ic - half, 0), min(ic + half + 1, stamp)
    j0, j1 = max(jc - half, 0), min(jc + half + 1, stamp)
    if i0 >= i1 or j0 >= j1:
        return None
    return i0, i1, j0, j1


def _subgrid(box: tuple[int, int, int, int], s: int, stamp: int) -> tuple[np.ndarray, np.ndarray]:
    i0, i1, j0, j1 = box
    c = _centre(stamp)
    offs = (np.arange(s) + 0.5) / s - 0.5
    xs = ((np.arange(j0, j1)[:, None] + offs[None, :]).ravel() - c) * PIXEL_SCALE
    ys = ((np.arange(i0, i1)[:, None] + offs[None, :]).ravel() - c) * PIXEL_SCALE
    x, y = np.meshgrid(xs, ys)
    return x.ravel(), y.ravel()


def _bin(values: np.ndarray, box: tuple[int, int, int, int], s: int) -> np.ndarray:
    i0, i1, j0, j1 = box
    h, w = i1 - i0, j1 - j0
    return values.reshape(h, s, w, s).mean(axis=(1, 3))


# --- component maps -----------------------------------------------------------------------------


def _image_plane_map(comp: LightComp, stamp: int) -> np.ndarray:
    """Unit-total-flux map (flux per pixel) of an image-plane component."""
    lm = _fresh_or_cached(comp.model)
    kw = [dict(comp.kwargs, amp=1.0)]
    total = float(lm.total_flux(kw)[0])
    area = PIXEL_SCALE**2
    out = np.zeros((stamp, stamp))
    if comp.wings:
        x, y = _full_grid(stamp)
        out[:] = lm.surface_brightness(x, y, kw).reshape(stamp, stamp)
    half = max(int(math.ceil(comp.extent / PIXEL_SCALE)), 1)
    box = _box(comp.x, comp.y, half, stamp)
    if box is not None:
        x, y = _subgrid(box, comp.ss, stamp)
        out[box[0] : box[1], box[2] : box[3]] = _bin(lm.surface_brightness(x, y, kw), box, comp.ss)
    if comp.cusp:
        core = _box(comp.x, comp.y, CORE_HALF, stamp)
        if core is not None:
            x, y = _subgrid(core, SS_CORE, stamp)
            out[core[0] : core[1], core[2] : core[3]] = _bin(lm.surface_brightness(x, y, kw), core, SS_CORE)
    return out * (area / total)


def _lensed_maps(lens: LensSpec, comps: list[LightComp], stamp: int) -> list[np.ndarray]:
    """Unit-source-flux image-plane maps of lensed components (their sums are magnifications).

    The lens equation is solved exactly (lenstronomy ``ray_shooting``) on a 2x grid over a box
    that holds all images; source-plane positions at the 4x rendering grid are interpolated
    linearly from it (the deflection field is smooth on 0.13 arcsec scales), except within 0.5
    arcsec of the lens centre, where the deflection of a power-law mass is not smooth and rays
    are shot exactly (at 9x in the central 7x7 pixels).
    """
    lens_model = _lens_model()
    lx, ly = lens.kwargs[0]["center_x"], lens.kwargs[0]["center_y"]
    reach = max(math.hypot(c.x - lx, c.y - ly) + c.extent for c in comps)
    half = int(math.ceil((1.4 * lens.theta_e + reach + 0.8) / PIXEL_SCALE))
    box = _box(lx, ly, half, stamp)
    if box is None:
        return [np.zeros((stamp, stamp)) for _ in comps]
    i0, i1, j0, j1 = box
    coarse_box = (i0 - 1, i1 + 1, j0 - 1, j1 + 1)
    sc, sf = 2, 4
    cx, cy = _subgrid(coarse_box, sc, stamp)
    bx, by = _shoot(lens_model, cx, cy, lens.kwargs)
    shape_c = ((i1 - i0 + 2) * sc, (j1 - j0 + 2) * sc)
    bx = bx.reshape(shape_c)
    by = by.reshape(shape_c)
    fx, fy = _subgrid(box, sf, stamp)
    c = _centre(stamp)
    # fractional coarse-grid index of each fine position
    col = ((fx / PIXEL_SCALE + c) - (j0 - 1) + 0.5) * sc - 0.5
    row = ((fy / PIXEL_SCALE + c) - (i0 - 1) + 0.5) * sc - 0.5
    coords = np.vstack([row, col])
    sx = map_coordinates(bx, coords, order=1, mode="nearest")
    sy = map_coordinates(by, coords, order=1, mode="nearest")
    near = np.hypot(fx - lx, fy - ly) < 0.5
    if near.any():
        sx[near], sy[near] = _shoot(lens_model, fx[near], fy[near], lens.kwargs)
    # the lens centre, where the mapping is steepest: exact rays at 9x
    core = _box(lx, ly, CORE_HALF, stamp)
    if core is not None:
        kx, ky = _subgrid(core, SS_CORE, stamp)
        kx, ky = _shoot(lens_model, kx, ky, lens.kwargs)
    area = PIXEL_SCALE**2
    maps = []
    for comp in comps:
        lm = _fresh_or_cached(comp.model)
        kw = [dict(comp.kwargs, amp=1.0)]
        total = float(lm.total_flux(kw)[0])
        out = np.zeros((stamp, stamp))
        out[i0:i1, j0:j1] = _bin(lm.surface_brightness(sx, sy, kw), box, sf)
        if core is not None:
            out[core[0] : core[1], core[2] : core[3]] = _bin(lm.surface_brightness(kx, ky, kw), core, SS_CORE)
        maps.append(out * (area / total))
    return maps


def _shoot(
    lens_model: Any, x: np.ndarray, y: np.ndarray, kwargs: list[dict[str, float]]
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ray shooting; a ray through the singular centre is sent far away (zero flux)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        bx, by = lens_model.ray_shooting(x, y, kwargs)
    bad = ~(np.isfinite(bx) & np.isfinite(by))
    if bad.any():
        bx = np.where(bad, 1e6, bx)
        by = np.where(bad, 1e6, by)
    return np.asarray(bx), np.asarray(by)


# --- PSF, saturation, noise ---------------------------------------------------------------------


def moffat_alpha(fwhm: float, beta: float) -> float:
    """Moffat core width alpha [arcsec] for a FWHM [arcsec] and index beta."""
    return fwhm / (2.0 * math.sqrt(2 ** (1.0 / beta) - 1.0))


def _moffat_pixels(x: np.ndarray, y: np.ndarray, fwhm: float, beta: float) -> np.ndarray:
    """Moffat surface brightness (lenstronomy's ``Moffat`` profile) at unit total flux [1/arcsec^2]."""
    from lenstronomy.LightModel.Profiles.moffat import Moffat

    alpha = moffat_alpha(fwhm, beta)
    norm = (beta - 1.0) / (math.pi * alpha**2)  # integral of (1 + r^2/alpha^2)^-beta is pi alpha^2/(beta-1)
    return np.asarray(Moffat().function(x, y, norm, alpha, beta))


@lru_cache(maxsize=8)
def _kernel_grid(size: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel offsets [arcsec] of one half-axis (>= 0) and the matrix that bins them to pixels.

    The ``s``-times sub-pixel grid of a ``size``-pixel kernel is symmetric about its centre, so a
    radial profile needs evaluating on one quadrant only: ``w @ q @ w.T`` is the pixel mean of
    ``q`` mirrored to all four (``w[i, k]`` = 1/s for each sub-pixel of pixel i at |offset| k).
    """
    half = size // 2
    offs = (np.arange(s) + 0.5) / s - 0.5
    ax = ((np.arange(-half, half + 1)[:, None] + offs[None, :]).ravel()) * PIXEL_SCALE
    mid = ax.size // 2
    w = np.zeros((size, mid + 1))
    sub = np.arange(ax.size)
    np.add.at(w, (sub // s, np.abs(sub - mid)), 1.0 / s)
    return ax[mid:], w


def psf_kernel(fwhm: float, beta: float, size: int = PSF_SIZE) -> np.ndarray:
    """Unit-sum Moffat PSF kernel (5x pixel-integrated), ``size`` odd.

    The same profile as :func:`_moffat_pixels`, evaluated on one quadrant of the sub-pixel grid
    and binned with a matrix product (ten times faster than the full grid; equal to 2e-16).
    """
    half_axis, w = _kernel_grid(size, 5)
    q = _moffat_pixels(half_axis[:, None], half_axis[None, :], fwhm, beta)  # one quadrant, broadcast
    k = w @ q @ w.T
    return np.asarray(k / k.sum())


def point_image(x: float, y: float, fwhm: float, beta: float, stamp: int) -> np.ndarray:
    """Pixel-integrated Moffat of unit flux centred at (x, y) arcsec over the whole stamp.

    Used for bright point sources, whose wings reach beyond the convolution kernel: 1x sampling
    everywhere, 5x within 10 pixels of the centre.
    """
    gx, gy = _full_grid(stamp)
    out = (_moffat_pixels(gx - x, gy - y, fwhm, beta) * PIXEL_SCALE**2).reshape(stamp, stamp)
    box = _box(x, y, 10, stamp)
    if box is not None:
        sx, sy = _subgrid(box, 5, stamp)
        out[box[0] : box[1], box[2] : box[3]] = (
            _bin(_moffat_pixels(sx - x, sy - y, fwhm, beta), box, 5) * PIXEL_SCALE**2
        )
    return out


def sky_sigma(depth5: np.ndarray, kernels: list[np.ndarray]) -> np.ndarray:
    """Per-pixel sky noise [nanomaggies] giving 5-sigma PSF-photometry depths ``depth5`` [mag].

    PSF-fit flux variance is sigma_pix^2 / sum(psf^2), so sigma_pix = sigma_flux sqrt(sum psf^2).
    """
    sig_flux = mag_to_flux(depth5) / 5.0
    return np.array([sig_flux[b] * math.sqrt(float((k**2).sum())) for b, k in enumerate(kernels)])


def _saturate(img: np.ndarray, level: float) -> bool:
    """Clip pixels above ``level`` and bleed the excess along columns (in place)."""
    over = img > level
    if not over.any():
        return False
    h = img.shape[0]
    for j in np.flatnonzero(over.any(axis=0)):
        rows = np.flatnonzero(over[:, j])
        excess = float((img[rows, j] - level).sum())
        img[rows, j] = level
        extra = int(excess / level)  # pixels the excess charge fills
        top, bottom = rows.min(), rows.max()
        up = extra // 2
        lo, hi = max(top - (extra - up), 0), min(bottom + up + 1, h)
        img[lo:top, j] = np.maximum(img[lo:top, j], level)
        img[bottom + 1 : hi, j] = np.maximum(img[bottom + 1 : hi, j], level)
    return True


def _add_point(img: np.ndarray, x: float, y: float, flux: float) -> None:
    """Add a bilinearly split delta function (flux) at (x, y) arcsec to ``img``."""
    stamp = img.shape[0]
    c = _centre(stamp)
    px, py = c + x / PIXEL_SCALE, c + y / PIXEL_SCALE
    j, i = int(math.floor(px)), int(math.floor(py))
    fx, fy = px - j, py - i
    for di, dj, w in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        ii, jj = i + di, j + dj
        if 0 <= ii < stamp and 0 <= jj < stamp:
            img[ii, jj] += flux * w


# --- the scene ----------------------------------------------------------------------------------


def render_scene(scene: Scene, stamp: int, rng: np.random.Generator | None, *, with_source: bool = True) -> Rendered:
    """Render a :class:`Scene` to a (3, stamp, stamp) float32 cutout in nanomaggies.

    Parameters
    ----------
    scene
        The scene; lensed components are rescaled so the total lensed r flux matches
        ``scene.lens.arc_mag_r``.
    stamp
        Cutout side [pixels].
    rng
        Noise generator; ``None`` renders the noiseless model.
    with_source
        False leaves the lensed components out (e.g. to get the lens light alone).
    """
    model = np.zeros((3, stamp, stamp))
    source_flux = np.zeros(3)
    magnification = math.nan
    lensed = [c for c in scene.comps if c.plane == "source"]
    if lensed and scene.lens is not None:
        maps = _lensed_maps(scene.lens, lensed, stamp)
        mus = np.array([m.sum() for m in maps])
        base = np.array([c.flux for c in lensed])  # (k, 3)
        lensed_r = float((base[:, 1] * mus).sum())
        scale = float(mag_to_flux(scene.lens.arc_mag_r)) / lensed_r if lensed_r > 0 else 1.0
        source_flux = base.sum(axis=0) * scale
        magnification = lensed_r / float(base[:, 1].sum())
        if with_source:
            for comp, m in zip(lensed, maps, strict=True):
                model += (comp.flux * scale)[:, None, None] * m[None]
    for comp in scene.comps:
        if comp.plane != "image":
            continue
        m = _image_plane_map(comp, stamp)
        model += comp.flux[:, None, None] * m[None]
    bright = [p for p in scene.points if p.flux[1] > BRIGHT_POINT_FLUX]
    for p in scene.points:
        if p.flux[1] <= BRIGHT_POINT_FLUX:
            for b in range(3):
                _add_point(model[b], p.x, p.y, float(p.flux[b]))
    kernels = [psf_kernel(float(scene.fwhm[b]), scene.beta) for b in range(3)]
    saturated = False
    for b in range(3):
        model[b] = fftconvolve(model[b], kernels[b], mode="same")
        for p in bright:
            model[b] += p.flux[b] * point_image(p.x, p.y, float(scene.fwhm[b]), scene.beta, stamp)
        saturated |= _saturate(model[b], float(scene.saturation[b]))
    sigma = sky_sigma(scene.depth5, kernels)
    if rng is not None:
        var = sigma[:, None, None] ** 2 + np.clip(model, 0.0, None) / ELECTRONS_PER_NMGY[:, None, None]
        model += rng.standard_normal(model.shape) * np.sqrt(var)
    return Rendered(
        images=model.astype(np.float32),
        sky_sigma=sigma,
        source_flux=source_flux,
        magnification=magnification,
        saturated=saturated,
    )
