"""Stein et al. (2022) / Hayat et al. (2021) augmentations as batched torch operations.

:class:`Augmenter` turns a batch of *pre-crop* cutouts in nanomaggies ``(B, C, H, W)`` (152x152
DECaLS g, r, z) into network input ``(B, C, crop, crop)``, drawing every random parameter per
sample from a :class:`torch.Generator` on the batch's device (reproducible, no host
synchronisation, the same code on CPU and CUDA). The steps, in their physical order:

1. **Galactic reddening** (``reddening``): the object's own ``E(B-V)`` (``ebv`` argument; drawn
   from the survey distribution when not given or NaN) is removed and a new one applied:
   ``flux_b *= 10 ** (-0.4 * R_b * (ebv_new - ebv_old))`` with DECam ``R = (3.214, 2.165,
   1.211)`` for g, r, z. ``ebv_new`` ~ Stein et al.'s log-normal fit to DR9
   (``exp(N(ln 0.03338, 0.67306)) + 0.001146``, a skewed, exponential-like distribution with
   median 0.035), capped at ``ebv_max`` = 1.
2. **Flip and rotation**: a random horizontal flip and a random multiple of 90 degrees
   (``flip_rot90``), then optionally an arbitrary angle in [0, 360) (``rotate``, Stein et al.).
3. **Zoom** by ``s`` ~ U(0.9, 1.1) (``scale_range``; ``s > 1`` enlarges, surface brightness
   kept).
4. **Jitter and crop**: the crop centre moves by integers ``dx, dy`` ~ U{-7..7} (``jitter``;
   with ``subpixel`` by real ``dx, dy`` ~ U(-jitter, jitter), bilinear) and a ``crop`` x ``crop``
   window (96) is taken. Steps 2-4 are one bilinear resampling
   (``grid_sample``, reflection at the borders); with no rotation, unit zoom and integer jitter
   it reproduces the pixels exactly.
5. **PSF blur** (``blur``): per sample and band, a Gaussian of sigma
   ``sqrt(max(F_new^2 - F_old^2, 0)) / (2.3548 * 0.262)`` pixels, with ``F_old`` and ``F_new``
   drawn from Stein et al.'s log-normal fits to DR9 PSF FWHM (arcsec; medians 2.40/2.16/2.02 in
   g/r/z): half the samples (per band) are blurred, with median sigma ~1.7-1.8 px; the seeing
   of a blurred image grows by a median 13 % (90th percentile 35 %); capped at
   ``blur_sigma_max`` = 4 px (reached by 0.5 % of draws).
6. **Noise** (``noise``): ``'survey'`` (default, Stein et al.): target and current per-pixel
   noise levels are drawn from log-normal fits to DR9 (medians 0.0031/0.0044/0.0118
   nanomaggies in g/r/z) and Gaussian noise of ``sqrt(max(target^2 - current^2, 0))`` added;
   ``'fixed'``: Gaussian noise of exactly ``noise_sigma`` (default g 0.0024, r 0.0034,
   z 0.0099 nanomaggies per pixel: typical DR9 sky noise); ``'off'``.
   ``noise_jitter`` > 0 (off in Stein et al.'s set) adds Gaussian noise of ``u * noise_jitter``
   times the preprocessing's per-band scale (the sky noise the stretch is set to), ``u`` ~ U(0, 1)
   per sample: survey-agnostic, as it needs no DECaLS noise model.
7. **Flux scale** (``flux_jitter`` > 0; off in Stein et al.'s set): every band of a sample is
   multiplied by one ``exp(N(0, flux_jitter))``, so the network cannot key on the brightness of
   a few oversampled lenses (the arcsinh stretch is not scale-free).
8. The :class:`~lenscat.models.preprocess.Preprocessing` stretch (no second crop).

:meth:`AugmentConfig.few_label` is the set of the few-label CNN recipe: the eight flips and
quarter turns, sub-pixel shifts of up to 3 pixels, flux scale and noise jitter, and no step that
needs DECaLS' reddening, seeing or noise distributions.

Reddening is applied to the cropped window (it is a per-band factor, so this equals applying it
first) and the blur is computed on a window widened by the kernel radius, so each step costs
work on ~96x96 pixels only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lenscat.errors import LenscatError
from lenscat.models.options import dataclass_kwargs
from lenscat.models.preprocess import DECALS_SKY_NOISE, Preprocessing

__all__ = ["DECAM_EXTINCTION", "AugmentConfig", "Augmenter"]

DECAM_EXTINCTION: tuple[float, float, float] = (3.214, 2.165, 1.211)
"""A_b / E(B-V) for DECam g, r, z (Schlafly & Finkbeiner 2011, as used by the Legacy Surveys)."""

PIXEL_SCALE = 0.262
"""DECaLS pixel scale, arcsec."""

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))

# Stein et al. log-normal fits (shape, loc, scale): value = exp(N(ln scale, shape)) + loc.
EBV_LOGNORMAL = (0.67306, 0.001146, 0.03338)
PSF_FWHM_LOGNORMAL = (
    (0.2109966, 0.3008485, 0.3471172),
    (1.0807153, 1.2394326, 1.1928363),
    (1.3153171, 0.9164757, 0.8233702),
)
NOISE_LOGNORMAL = (
    (0.2264926, 0.2431146, 0.1334844),
    (-0.0006735, -0.0023663, -0.0143416),
    (0.0037602, 0.0067417, 0.0260779),
)


@dataclass(frozen=True)
class AugmentConfig:
    """Switches and parameters of :class:`Augmenter` (defaults: Stein et al. 2022).

    Parameters
    ----------
    reddening : bool
        Re-redden with a new ``E(B-V)``.
    extinction : tuple of float
        ``R_b`` per band (DECam g, r, z).
    ebv_max : float
        Upper limit of the drawn ``E(B-V)``.
    flip_rot90 : bool
        Random horizontal flip and multiple of 90 degrees.
    rotate : bool
        Additional arbitrary rotation angle.
    scale_range : tuple of float
        Zoom factor range.
    jitter : int
        Maximum integer shift of the crop centre, pixels.
    blur : bool
        Extra Gaussian PSF blur.
    blur_sigma_max : float
        Cap on the extra blur sigma, pixels.
    noise : {'survey', 'fixed', 'off'}
        Extra Gaussian noise model.
    noise_sigma : tuple of float
        Per-band noise (nanomaggies/pixel) for ``noise='fixed'``.
    subpixel : bool
        Real-valued (bilinear) instead of integer jitter shifts.
    flux_jitter : float
        Log-normal sigma of a per-sample flux factor (0: off).
    noise_jitter : float
        Extra Gaussian noise of up to this many times the preprocessing's per-band scale (0: off).
    """

    reddening: bool = True
    extinction: tuple[float, ...] = DECAM_EXTINCTION
    ebv_max: float = 1.0
    flip_rot90: bool = True
    rotate: bool = True
    scale_range: tuple[float, float] = (0.9, 1.1)
    jitter: int = 7
    blur: bool = True
    blur_sigma_max: float = 4.0
    noise: str = "survey"
    noise_sigma: tuple[float, ...] = DECALS_SKY_NOISE
    subpixel: bool = False
    flux_jitter: float = 0.0
    noise_jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.noise not in ("survey", "fixed", "off"):
            raise LenscatError(f"noise must be 'survey', 'fixed' or 'off', got {self.noise!r}")
        lo, hi = (float(v) for v in self.scale_range)
        if not 0 < lo <= hi:
            raise LenscatError(f"scale_range must be 0 < low <= high, got {self.scale_range!r}")
        if int(self.jitter) != self.jitter or self.jitter < 0:
            raise LenscatError(f"jitter must be a non-negative integer, got {self.jitter!r}")
        if self.blur_sigma_max <= 0:
            raise LenscatError("blur_sigma_max must be positive")
        if not (self.flux_jitter >= 0 and self.noise_jitter >= 0):
            raise LenscatError(
                f"flux_jitter and noise_jitter must be >= 0, got {self.flux_jitter!r}, {self.noise_jitter!r}"
            )
        object.__setattr__(self, "flux_jitter", float(self.flux_jitter))
        object.__setattr__(self, "noise_jitter", float(self.noise_jitter))
        object.__setattr__(self, "scale_range", (lo, hi))
        object.__setattr__(self, "jitter", int(self.jitter))
        object.__setattr__(self, "extinction", tuple(float(v) for v in self.extinction))
        object.__setattr__(self, "noise_sigma", tuple(float(v) for v in self.noise_sigma))

    @classmethod
    def none(cls) -> AugmentConfig:
        """Every augmentation off: a plain centre crop (useful in tests and for evaluation)."""
        return cls(
            reddening=False,
            flip_rot90=False,
            rotate=False,
            scale_range=(1.0, 1.0),
            jitter=0,
            blur=False,
            noise="off",
        )

    @classmethod
    def few_label(cls) -> AugmentConfig:
        """The few-label CNN recipe's augmentations (module docstring): dihedral turns and flips,
        sub-pixel shifts of up to 3 px, flux scale jitter 0.15 (log-normal sigma), noise jitter
        up to 1x the sky-noise scale; no reddening, extra seeing or DECaLS noise model, so they
        fit any survey's bands."""
        return cls(
            reddening=False,
            flip_rot90=True,
            rotate=False,
            scale_range=(1.0, 1.0),
            jitter=3,
            subpixel=True,
            blur=False,
            noise="off",
            flux_jitter=0.15,
            noise_jitter=1.0,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists); inverse of :meth:`from_dict`."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | AugmentConfig | None) -> AugmentConfig:
        """Build from :meth:`to_dict` output (``None``: defaults).

        Raises
        ------
        LenscatError
            Unknown keys or bad values.
        """
        if data is None:
            return cls()
        if isinstance(data, AugmentConfig):
            return data
        kw = dataclass_kwargs(cls, data, "augmentation")
        return cls(**kw)


def _lognormal(n: int, shape: Any, loc: Any, scale: Any, generator: torch.Generator, device: torch.device) -> Tensor:
    """``(n, len(shape))`` draws of ``exp(N(ln scale, shape)) + loc`` (scalars give ``(n,)``)."""
    s = torch.as_tensor(shape, dtype=torch.float32, device=device)
    lo = torch.as_tensor(loc, dtype=torch.float32, device=device)
    sc = torch.as_tensor(scale, dtype=torch.float32, device=device)
    z = torch.randn((n, *s.shape), generator=generator, device=device)
    return torch.exp(torch.log(sc) + s * z) + lo


class Augmenter:
    """Batched, seeded Stein et al. augmentations followed by the preprocessing stretch.

    Parameters
    ----------
    config : AugmentConfig or dict or None
        Which augmentations and their parameters (``None``: Stein et al. defaults).
    preprocessing : Preprocessing or None
        Output size (``crop``) and the stretch applied at the end (``None``: defaults).

    Examples
    --------
    >>> aug = Augmenter()
    >>> g = torch.Generator().manual_seed(0)
    >>> views = aug(torch.rand(8, 3, 152, 152) * 0.01, generator=g)   # (8, 3, 96, 96)
    """

    def __init__(
        self,
        config: AugmentConfig | Mapping[str, Any] | None = None,
        preprocessing: Preprocessing | Mapping[str, Any] | None = None,
    ) -> None:
        self.config = AugmentConfig.from_dict(config)
        self.preprocessing = Preprocessing.from_dict(preprocessing)
        c = self.config
        self.blur_radius = int(math.ceil(3.0 * c.blur_sigma_max)) if c.blur else 0

    def _check_bands(self, nb: int) -> None:
        c = self.config
        if c.reddening and len(c.extinction) != nb:
            raise LenscatError(f"images have {nb} bands but {len(c.extinction)} extinction coefficients are set")
        if c.noise == "fixed" and len(c.noise_sigma) != nb:
            raise LenscatError(f"images have {nb} bands but noise_sigma has {len(c.noise_sigma)}")
        if (c.blur or c.noise == "survey") and nb != 3:
            raise LenscatError(
                f"the survey blur/noise models are for g, r, z; images have {nb} bands "
                "(use blur=False and noise='fixed' or 'off')"
            )

    def __call__(
        self, images: Tensor, ebv: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Augment a batch.

        Parameters
        ----------
        images : Tensor, shape (B, C, H, W)
            Nanomaggies (NaN/inf are treated as 0). Not modified.
        ebv : Tensor, shape (B,), optional
            Each object's own ``E(B-V)``; NaN entries (and ``None``) mean unknown.
        generator : torch.Generator, optional
            On ``images.device``; a fresh unseeded one when omitted.

        Returns
        -------
        Tensor, shape (B, C, crop, crop), float32, on ``images.device``
        """
        if images.ndim != 4:
            raise LenscatError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        b, nb, h, w = images.shape
        self._check_bands(nb)
        dev = images.device
        if generator is None:
            generator = torch.Generator(device=dev)
            generator.seed()
        c = self.config
        crop = self.preprocessing.crop
        x = torch.nan_to_num(images.float(), nan=0.0, posinf=0.0, neginf=0.0)

        # -- random parameters, always drawn in the same order --------------------------------
        def uniform(*shape: int) -> Tensor:
            return torch.rand(shape, generator=generator, device=dev)

        k90 = torch.floor(uniform(b) * 4) if c.flip_rot90 else torch.zeros(b, device=dev)
        flip = (uniform(b) < 0.5) if c.flip_rot90 else torch.zeros(b, dtype=torch.bool, device=dev)
        phi = uniform(b) * (2 * math.pi) if c.rotate else torch.zeros(b, device=dev)
        lo, hi = c.scale_range
        zoom = lo + (hi - lo) * uniform(b)
        if c.jitter and c.subpixel:
            jit = (uniform(b, 2) * 2.0 - 1.0) * c.jitter
        elif c.jitter:
            jit = torch.floor(uniform(b, 2) * (2 * c.jitter + 1)) - c.jitter
        else:
            jit = torch.zeros(b, 2, device=dev)

        # -- flip, rotation, zoom, jitter and crop as one resampling --------------------------
        r = self.blur_radius
        p = crop + 2 * r
        # exact cos/sin for multiples of 90 degrees, composed with the arbitrary angle
        cos90 = torch.tensor([1.0, 0.0, -1.0, 0.0], device=dev)[k90.long()]
        sin90 = torch.tensor([0.0, 1.0, 0.0, -1.0], device=dev)[k90.long()]
        cphi, sphi = torch.cos(phi), torch.sin(phi)
        cos_t = torch.where(phi == 0, cos90, cos90 * cphi - sin90 * sphi)
        sin_t = torch.where(phi == 0, sin90, sin90 * cphi + cos90 * sphi)
        fx = torch.where(flip, -1.0, 1.0)
        inv = 1.0 / zoom
        # input offset = R(theta) @ diag(fx, 1) @ output offset / zoom
        a11, a12 = cos_t * fx * inv, -sin_t * inv
        a21, a22 = sin_t * fx * inv, cos_t * inv
        oy, ox = self.preprocessing.crop_offsets(h, w)
        cy, cx = oy + (crop - 1) / 2.0, ox + (crop - 1) / 2.0
        t = torch.arange(p, device=dev, dtype=torch.float32) - (p - 1) / 2.0
        u = t.view(1, 1, p)  # column offset
        v = t.view(1, p, 1)  # row offset

        def col(a: Tensor) -> Tensor:
            return a.view(b, 1, 1)

        xs = cx + col(jit[:, 0]) + col(a11) * u + col(a12) * v
        ys = cy + col(jit[:, 1]) + col(a21) * u + col(a22) * v
        grid = torch.stack((xs * (2.0 / (w - 1)) - 1.0, ys * (2.0 / (h - 1)) - 1.0), dim=-1)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)

        # -- PSF blur on the widened window, 'valid' convolution back to crop x crop ----------
        if c.blur:
            fw = _lognormal(b, *PSF_FWHM_LOGNORMAL, generator, dev)
            fw_new = _lognormal(b, *PSF_FWHM_LOGNORMAL, generator, dev)
            extra = torch.sqrt(torch.clamp(fw_new**2 - fw**2, min=0.0))
            sigma = (extra * (FWHM_TO_SIGMA / PIXEL_SCALE)).clamp(1e-3, c.blur_sigma_max)
            tk = torch.arange(-r, r + 1, device=dev, dtype=torch.float32)
            ker = torch.exp(-0.5 * (tk.view(1, 1, -1) / sigma.unsqueeze(-1)) ** 2)
            ker = (ker / ker.sum(-1, keepdim=True)).reshape(b * nb, 1, 2 * r + 1)
            y = x.reshape(1, b * nb, p, p)
            y = F.conv2d(y, ker.view(b * nb, 1, 1, -1), groups=b * nb)
            y = F.conv2d(y, ker.view(b * nb, 1, -1, 1), groups=b * nb)
            x = y.view(b, nb, crop, crop)

        # -- reddening --------------------------------------------------------------------------
        if c.reddening:
            drawn_old = _lognormal(b, *EBV_LOGNORMAL, generator, dev)
            ebv_new = _lognormal(b, *EBV_LOGNORMAL, generator, dev).clamp(0.0, c.ebv_max)
            if ebv is None:
                ebv_old = drawn_old.clamp(0.0, c.ebv_max)
            else:
                e = torch.as_tensor(ebv, device=dev, dtype=torch.float32).reshape(b)
                ebv_old = torch.where(torch.isfinite(e), e, drawn_old.clamp(0.0, c.ebv_max))
            rb = torch.tensor(c.extinction, device=dev, dtype=torch.float32)
            factor = torch.pow(10.0, -0.4 * rb.view(1, -1) * (ebv_new - ebv_old).view(-1, 1))
            x = x * factor.view(b, nb, 1, 1)

        # -- noise ------------------------------------------------------------------------------
        if c.noise != "off":
            if c.noise == "survey":
                now = _lognormal(b, *NOISE_LOGNORMAL, generator, dev).clamp(min=0.0)
                target = _lognormal(b, *NOISE_LOGNORMAL, generator, dev).clamp(min=0.0)
                add = torch.sqrt(torch.clamp(target**2 - now**2, min=0.0))
            else:
                add = torch.tensor(c.noise_sigma, device=dev, dtype=torch.float32).expand(b, nb)
            noise = torch.randn(x.shape, generator=generator, device=dev)
            x = x + noise * add.reshape(b, nb, 1, 1)
        if c.noise_jitter > 0:
            scales = self.preprocessing.scales
            if len(scales) != nb:
                raise LenscatError(f"images have {nb} bands but the preprocessing has {len(scales)} scales")
            level = uniform(b) * c.noise_jitter
            sd = torch.tensor(scales, device=dev, dtype=torch.float32).view(1, nb) * level.view(b, 1)
            x = x + torch.randn(x.shape, generator=generator, device=dev) * sd.reshape(b, nb, 1, 1)

        # -- flux scale ----------------------------------------------------------------------------
        if c.flux_jitter > 0:
            factor = torch.exp(torch.randn(b, generator=generator, device=dev) * c.flux_jitter)
            x = x * factor.view(b, 1, 1, 1)

        return self.preprocessing.apply_torch(x, crop=False)
