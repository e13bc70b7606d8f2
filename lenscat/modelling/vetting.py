"""Model-based vetting: is a lens model physical, and does the image show arcs where it puts them?

Rules (reason in ``vet_flags``, numbers in ``vet_detail``; thresholds in :class:`VetRules`):

* ``theta_e_below_psf``: θ_E under half the PSF FWHM (an Einstein radius the seeing cannot resolve);
* ``theta_e_beyond_cutout``: θ_E beyond the window the network reads (less a PSF FWHM);
* ``axis_ratio_low``: mass axis ratio q < 0.2;
* ``shear_high``: external shear |γ| > 0.3;
* ``source_outside_caustic``: the source lies more than 2σ outside the radius of multiple imaging,
  ``|β - centre| - 2σ_β > f θ_E`` (``f`` = 1.2: an SIS multiply images sources within θ_E; ellipticity
  and shear stretch the caustics by up to ~20 % in the population modelled), so no counter-image;
* ``uncertain``: σ(θ_E) > 0.5 θ_E, or σ of the source position above θ_E;
* ``no_arc_at_images``: after subtracting the lens light (the z band scaled by the lens's g/z and
  r/z flux ratios within its centre: the red deflector cancels, blue lensed light stays), the g + r
  residual in the pixels the model maps onto its source (within ``source_radius`` in the source
  plane, lenstronomy ray-shooting of SIE + shear) has a summed S/N below ``min_arc_snr``;
* ``arc_light_elsewhere``: the rest of the annulus ``[0.5 θ_E, 1.5 θ_E + 0.5″]`` holds significant
  residual light (S/N >= ``min_arc_snr``) whose mean per pixel exceeds ``elsewhere_ratio`` times
  that at the predicted images.

* ``low_lens_probability``: the network's calibrated probability that the cutout is a lens at all
  (versions trained with non-lens impostors; ``lens_probability`` in ``vet_detail``) is below
  ``min_lens_probability``, the threshold chosen at training to lose at most 1 % of held-out
  simulated lenses (:mod:`lenscat.modelling.training`; with the other rules' ~1 % on the independent
  simulator, 2 % in all: docs/benchmarks.md).

The PSF: ``psf_fwhm`` of :func:`vet` is the cutout's own FWHM (g and r mean, e.g. the survey's
per-source ``psf_fwhm_<band>``) when known, else :attr:`VetRules.psf_fwhm` (1.3″). It sets the
resolution limit of ``theta_e_below_psf``, the margin of ``theta_e_beyond_cutout`` and the
blurring margin (0.385 FWHM, 0.5″ at 1.3″) of the arc annulus.

``arc_mag``/``arc_band`` are the AB magnitude of the positive g-band residual flux at the predicted
images (NULL when not positive): the lensed light the exposure hint of a proposal starts from (a
lower bound: the scaled z band also removes the arc's own z light times the lens's g/z ratio).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np

from lenscat.modelling.types import PARAMS

ZERO_POINT = 22.5
ANNULUS_PSF_MARGIN = 0.385
"""The arc annulus reaches this many PSF FWHM beyond 1.5 θ_E (blurred arc light; 0.5″ at 1.3″)."""
_I = {p: k for k, p in enumerate(PARAMS)}


@dataclass(frozen=True)
class VetRules:
    """Thresholds of the vetting rules (the defaults are those measured in docs/benchmarks.md)."""

    psf_fwhm: float = 1.3
    pixel_scale: float = 0.262
    min_q: float = 0.2
    max_shear: float = 0.3
    caustic_factor: float = 1.2
    max_rel_theta_err: float = 0.5
    source_radius: float = 0.5
    min_arc_snr: float = 3.0
    elsewhere_ratio: float = 1.5
    arc_band: str = "g"
    min_lens_probability: float | None = None


@dataclass
class Verdict:
    """Flags, the numbers behind them and the arc photometry of one model."""

    flags: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    arc_mag: float | None = None
    arc_band: str | None = None


@lru_cache(maxsize=1)
def _sie_shear() -> Any:
    """lenstronomy's SIE + SHEAR lens model (built once per process)."""
    from lenstronomy.LensModel.lens_model import LensModel

    return LensModel(["SIE", "SHEAR"])


def _coords(n: int, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Sky-frame coordinates [arcsec] of an n x n window in FITS orientation (east left)."""
    i, j = np.mgrid[0:n, 0:n]
    return -(j - n // 2) * s, (i - n // 2) * s


def physical_flags(mu: np.ndarray, sigma: np.ndarray, crop: int, rules: VetRules) -> tuple[list[str], dict[str, Any]]:
    """The flags of the model parameters alone (no image), with their numbers."""
    th, sth = float(mu[_I["theta_e"]]), float(sigma[_I["theta_e"]])
    e = math.hypot(mu[_I["e1"]], mu[_I["e2"]])
    q = (1 - min(e, 0.999)) / (1 + min(e, 0.999))
    g = math.hypot(mu[_I["gamma1"]], mu[_I["gamma2"]])
    bx = float(mu[_I["source_x"]] - mu[_I["center_x"]])
    by = float(mu[_I["source_y"]] - mu[_I["center_y"]])
    beta = math.hypot(bx, by)
    s_beta = math.hypot(float(sigma[_I["source_x"]]), float(sigma[_I["source_y"]])) / math.sqrt(2.0)
    half = crop / 2 * rules.pixel_scale
    flags = []
    if th < 0.5 * rules.psf_fwhm:
        flags.append("theta_e_below_psf")
    if th > half - rules.psf_fwhm:
        flags.append("theta_e_beyond_cutout")
    if q < rules.min_q:
        flags.append("axis_ratio_low")
    if g > rules.max_shear:
        flags.append("shear_high")
    if beta - 2.0 * s_beta > rules.caustic_factor * th:
        flags.append("source_outside_caustic")
    if sth > rules.max_rel_theta_err * max(th, 1e-6) or s_beta > max(th, 1e-6):
        flags.append("uncertain")
    detail = {
        "theta_e": round(th, 4),
        "theta_e_err": round(sth, 4),
        "q": round(q, 4),
        "gamma_ext": round(g, 4),
        "source_offset": round(beta, 4),
        "source_offset_err": round(s_beta, 4),
        "psf_fwhm": rules.psf_fwhm,
        "window_half_arcsec": round(half, 3),
    }
    return flags, detail


def _subtract_lens_light(img: np.ndarray, central: np.ndarray, ref: int) -> np.ndarray:
    """Each band minus the reference (reddest) band scaled by the lens's colour in ``central`` pixels.

    The deflector is red and the lensed source blue: ``res_b = img_b - k_b img_ref`` with ``k_b`` the
    flux ratio of band ``b`` to the reference band within the central aperture removes the lens light
    whatever its shape, while an arc keeps most of its light in the bluer bands (a full Einstein
    ring as well, which an azimuthal-median subtraction would remove).
    """
    out = np.zeros_like(img, dtype=np.float64)
    f_ref = float(img[ref][central].sum())
    for b in range(img.shape[0]):
        if b == ref:
            continue
        k = float(img[b][central].sum()) / f_ref if f_ref > 0 else 0.0
        out[b] = img[b] - max(k, 0.0) * img[ref]
    return out


def _noise(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-band noise from 1.4826 x the MAD of the pixels in ``mask``."""
    vals = img[:, mask]
    med = np.median(vals, axis=1, keepdims=True)
    return np.maximum(1.4826 * np.median(np.abs(vals - med), axis=1), 1e-12)


def arc_check(
    image: np.ndarray, mu: np.ndarray, rules: VetRules, bands: tuple[str, ...] = ("g", "r", "z")
) -> tuple[list[str], dict[str, Any], float | None]:
    """The image-based flags: lensed light where the model puts its images, and the arc magnitude.

    Parameters
    ----------
    image : ndarray, shape (3, n, n)
        The window in nanomaggies, FITS orientation (the network's input before the stretch).
    mu : ndarray, shape (9,)
        The model (sky frame).
    rules : VetRules
    bands : tuple of str
        Band names of the channels.

    Returns
    -------
    flags, detail, arc_mag
    """
    n = image.shape[-1]
    x, y = _coords(n, rules.pixel_scale)
    th = max(float(mu[_I["theta_e"]]), rules.pixel_scale)
    cx, cy = float(mu[_I["center_x"]]), float(mu[_I["center_y"]])
    r = np.hypot(x - cx, y - cy)
    img = np.nan_to_num(np.asarray(image, dtype=np.float64))
    ref = bands.index("z") if "z" in bands else len(bands) - 1
    res = _subtract_lens_light(img, r <= max(0.5, 0.3 * th), ref)
    sig = _noise(res, r > min(th * 1.5 + 1.5, 0.45 * n * rules.pixel_scale))
    e1, e2 = float(np.clip(mu[_I["e1"]], -0.9, 0.9)), float(np.clip(mu[_I["e2"]], -0.9, 0.9))
    kw = [
        {"theta_E": th, "e1": e1, "e2": e2, "center_x": cx, "center_y": cy},
        {"gamma1": float(mu[_I["gamma1"]]), "gamma2": float(mu[_I["gamma2"]]), "ra_0": cx, "dec_0": cy},
    ]
    bx, by = _sie_shear().ray_shooting(x.ravel(), y.ravel(), kw)
    d = np.hypot(bx - mu[_I["source_x"]], by - mu[_I["source_y"]]).reshape(x.shape)
    annulus = (r >= 0.5 * th) & (r <= 1.5 * th + ANNULUS_PSF_MARGIN * rules.psf_fwhm)
    at_images = annulus & (d <= rules.source_radius)
    elsewhere = annulus & ~at_images
    ig, ir = bands.index("g") if "g" in bands else 0, bands.index("r") if "r" in bands else 1
    snr_map = res[ig] / sig[ig] + res[ir] / sig[ir]
    n_in, n_out = int(at_images.sum()), int(elsewhere.sum())
    snr_in = float(snr_map[at_images].sum() / math.sqrt(2.0 * n_in)) if n_in else 0.0
    mean_in = float(snr_map[at_images].mean()) if n_in else 0.0
    mean_out = float(snr_map[elsewhere].mean()) if n_out else 0.0
    flags = []
    if snr_in < rules.min_arc_snr:
        flags.append("no_arc_at_images")
    snr_out = float(snr_map[elsewhere].sum() / math.sqrt(2.0 * n_out)) if n_out else 0.0
    if n_out and snr_out >= rules.min_arc_snr and mean_out > rules.elsewhere_ratio * max(mean_in, 0.0):
        flags.append("arc_light_elsewhere")
    band = rules.arc_band if rules.arc_band in bands else bands[0]
    flux = float(res[bands.index(band)][at_images].sum()) if n_in else 0.0
    arc_mag = ZERO_POINT - 2.5 * math.log10(flux) if flux > 0 else None
    detail = {
        "arc_snr": round(snr_in, 3),
        "arc_pixels": n_in,
        "residual_at_images": round(mean_in, 3),
        "residual_elsewhere": round(mean_out, 3),
        "snr_elsewhere": round(snr_out, 3),
        "arc_flux_nmgy": round(flux, 5),
    }
    return flags, detail, arc_mag


def vet(
    image: np.ndarray,
    mu: np.ndarray,
    sigma: np.ndarray,
    *,
    rules: VetRules | None = None,
    bands: tuple[str, ...] = ("g", "r", "z"),
    lens_probability: float | None = None,
    psf_fwhm: float | None = None,
) -> Verdict:
    """Vet one model against the rules and its window (see the module docstring).

    Parameters
    ----------
    image : ndarray, shape (3, n, n)
        The window in nanomaggies, FITS orientation.
    mu, sigma : ndarray, shape (9,)
        The model and its calibrated 1σ (sky frame).
    rules : VetRules, optional
    bands : tuple of str
    lens_probability : float, optional
        The network's calibrated lens probability (None: a version without the head; no flag).
    psf_fwhm : float, optional
        The cutout's PSF FWHM [arcsec] (None or not finite and positive: ``rules.psf_fwhm``).
    """
    rules = rules or VetRules()
    own_psf = psf_fwhm is not None and math.isfinite(psf_fwhm) and psf_fwhm > 0
    if own_psf and psf_fwhm is not None:
        rules = replace(rules, psf_fwhm=float(psf_fwhm))
    crop = int(np.asarray(image).shape[-1])
    flags, detail = physical_flags(mu, sigma, crop, rules)
    aflags, adetail, arc_mag = arc_check(image, mu, rules, bands)
    detail["psf_fwhm_source"] = "cutout" if own_psf else "default"
    if lens_probability is not None:
        detail["lens_probability"] = round(float(lens_probability), 4)
        if rules.min_lens_probability is not None:
            detail["lens_probability_threshold"] = round(float(rules.min_lens_probability), 4)
            if lens_probability < rules.min_lens_probability:
                aflags.append("low_lens_probability")
    return Verdict(
        flags + aflags,
        {**detail, **adetail},
        None if arc_mag is None else round(arc_mag, 3),
        None if arc_mag is None else (rules.arc_band if rules.arc_band in bands else bands[0]),
    )
