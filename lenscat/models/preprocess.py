"""From survey cutouts in nanomaggies to network input.

Cutouts arrive as ``(N, C, H, W)`` float arrays in nanomaggies (Stein et al. 2022: 152x152
DECaLS DR9 g, r, z at 0.262 arcsec/pixel). :class:`Preprocessing` does, in this order:

1. **NaN / +-inf -> 0** (masked or saturated pixels become "no flux").
2. **Centre crop** to ``crop`` x ``crop`` pixels (default 96, as Stein et al.): rows/columns
   ``off .. off + crop - 1`` with ``off = (H - crop) // 2`` (28 for 152 -> 96). Inputs already of
   size ``crop`` pass unchanged; smaller inputs are an error.
3. **Per-band stretch**, with ``s_b = scales[b]`` in nanomaggies per pixel:

   * ``'arcsinh'`` (default): ``y = asinh(x / s_b)``. With ``s_b`` at the typical sky noise the
     background is ~N(0, 1), faint structure (arcs) a few units, and bright cores only ~6-8
     (``asinh(1 nmgy / 0.0034) = 6.4``): the range is compressed and values are O(1).
   * ``'linear'``: ``y = x / s_b``.
   * ``'none'``: raw nanomaggies (what Stein et al.'s released MoCo ResNet-50 was trained on;
     use :meth:`Preprocessing.stein`).

4. **Clip** to ``[-clip, clip]`` when ``clip`` is set (default 10: ``asinh`` reaches 10 only at
   ~1.1e4 times the sky noise, i.e. saturated stars and artefacts).

``views`` is not a pixel operation: it says over how many orientations of the crop
:func:`lenscat.models.inference.encode` averages an embedding (1: the crop as it is; 4: its four
90-degree rotations; 8: those and their mirror images, the dihedral group of the square). With 8
the embedding is exactly invariant under those turns and flips of the cutout (when ``H - crop`` is
even, so the crop is centred: 152 -> 96, 96 -> 48), at 8 times the cost.
Training ignores it (the augmentations rotate and flip the views themselves).

Default scales, DECaLS DR9 typical per-pixel sky noise in nanomaggies: g 0.0024, r 0.0034,
z 0.0099 (:data:`DECALS_SKY_NOISE`). Stein et al.'s log-normal fits of the DR9 south noise
distribution have medians of 0.0031, 0.0044 and 0.0118; the stretch is insensitive to this
level of difference.

The NumPy (:meth:`Preprocessing.apply_numpy`) and torch (:meth:`Preprocessing.apply_torch`)
versions agree to float32 rounding; both are deterministic and vectorised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lenscat.errors import LenscatError
from lenscat.models.options import dataclass_kwargs

__all__ = ["DECALS_SKY_NOISE", "STRETCHES", "VIEWS", "Preprocessing", "oriented", "preprocess", "sum_over_views"]

DECALS_SKY_NOISE: tuple[float, float, float] = (0.0024, 0.0034, 0.0099)
"""Typical DECaLS DR9 per-pixel sky noise (nanomaggies) in g, r, z."""

STRETCHES = ("arcsinh", "linear", "none")

VIEWS = (1, 4, 8)
"""Numbers of orientations an embedding may be averaged over (:attr:`Preprocessing.views`)."""


@dataclass(frozen=True)
class Preprocessing:
    """Crop, per-band stretch and clipping that turn nanomaggy cutouts into network input.

    Parameters
    ----------
    crop : int
        Side of the centre crop in pixels (96).
    stretch : {'arcsinh', 'linear', 'none'}
        Range compression (see the module docstring).
    scales : tuple of float
        Per-band softening scale ``s_b`` in nanomaggies; one per input channel.
    clip : float or None
        Clip the stretched values to ``[-clip, clip]``; ``None`` disables.
    views : {1, 4, 8}
        Orientations of the crop an embedding is the mean of (see the module docstring); 1 for
        checkpoints written before the option existed.
    """

    crop: int = 96
    stretch: str = "arcsinh"
    scales: tuple[float, ...] = field(default=DECALS_SKY_NOISE)
    clip: float | None = 10.0
    views: int = 1

    def __post_init__(self) -> None:
        if self.stretch not in STRETCHES:
            raise LenscatError(f"unknown stretch {self.stretch!r}; choose from {', '.join(STRETCHES)}")
        if int(self.crop) != self.crop or self.crop < 1:
            raise LenscatError(f"crop must be a positive integer, got {self.crop!r}")
        scales = tuple(float(s) for s in self.scales)
        if not scales or not all(np.isfinite(s) and s > 0 for s in scales):
            raise LenscatError(f"scales must be positive numbers, got {self.scales!r}")
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "crop", int(self.crop))
        if self.clip is not None:
            if not self.clip > 0:
                raise LenscatError(f"clip must be positive or None, got {self.clip!r}")
            object.__setattr__(self, "clip", float(self.clip))
        if isinstance(self.views, bool) or self.views not in VIEWS:
            raise LenscatError(f"views must be one of {', '.join(map(str, VIEWS))}, got {self.views!r}")
        object.__setattr__(self, "views", int(self.views))

    @classmethod
    def stein(cls) -> Preprocessing:
        """Raw nanomaggies, 96-pixel centre crop: the input of Stein et al.'s released weights."""
        return cls(crop=96, stretch="none", clip=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON- and ``weights_only``-safe); inverse of :meth:`from_dict`."""
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Preprocessing | None) -> Preprocessing:
        """Build from :meth:`to_dict` output (``None`` gives the defaults).

        Raises
        ------
        LenscatError
            Unknown keys or bad values.
        """
        if data is None:
            return cls()
        if isinstance(data, Preprocessing):
            return data
        kw = dataclass_kwargs(cls, data, "preprocessing")
        return cls(**kw)

    def _check(self, shape: tuple[int, ...]) -> int:
        if len(shape) != 4:
            raise LenscatError(f"images must be (N, C, H, W), got shape {tuple(shape)}")
        _, c, h, w = shape
        if self.stretch != "none" and c != len(self.scales):
            raise LenscatError(f"images have {c} bands but the preprocessing has {len(self.scales)} scales")
        if h < self.crop or w < self.crop:
            raise LenscatError(f"images are {h}x{w} pixels, smaller than the {self.crop}-pixel crop")
        return c

    def crop_offsets(self, h: int, w: int) -> tuple[int, int]:
        """Top-left corner ``((h - crop) // 2, (w - crop) // 2)`` of the centre crop."""
        return (h - self.crop) // 2, (w - self.crop) // 2

    def apply_numpy(self, images: np.ndarray) -> np.ndarray:
        """Preprocess a NumPy batch.

        Parameters
        ----------
        images : ndarray, shape (N, C, H, W)
            Nanomaggies, any float dtype.

        Returns
        -------
        ndarray, shape (N, C, crop, crop), float32, C-contiguous
        """
        self._check(images.shape)
        oy, ox = self.crop_offsets(images.shape[2], images.shape[3])
        x = np.array(images[:, :, oy : oy + self.crop, ox : ox + self.crop], dtype=np.float32, copy=True)
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        if self.stretch != "none":
            inv = (1.0 / np.asarray(self.scales, dtype=np.float32)).reshape(1, -1, 1, 1)
            x *= inv
            if self.stretch == "arcsinh":
                np.arcsinh(x, out=x)
        if self.clip is not None:
            np.clip(x, -self.clip, self.clip, out=x)
        return np.ascontiguousarray(x)

    def apply_torch(self, images: Tensor, *, crop: bool = True) -> Tensor:
        """Preprocess a torch batch on its own device (no host synchronisation).

        Parameters
        ----------
        images : Tensor, shape (N, C, H, W)
            Nanomaggies.
        crop : bool
            Apply the centre crop (``False`` when the input is already ``crop`` pixels, e.g. the
            output of the augmentations, which crop themselves).

        Returns
        -------
        Tensor, shape (N, C, crop, crop), float32
        """
        if crop:
            self._check(tuple(images.shape))
            oy, ox = self.crop_offsets(images.shape[2], images.shape[3])
            images = images[:, :, oy : oy + self.crop, ox : ox + self.crop]
        x = torch.nan_to_num(images.float(), nan=0.0, posinf=0.0, neginf=0.0)
        if self.stretch != "none":
            if x.shape[1] != len(self.scales):
                raise LenscatError(
                    f"images have {x.shape[1]} bands but the preprocessing has {len(self.scales)} scales"
                )
            inv = torch.tensor([1.0 / s for s in self.scales], dtype=x.dtype, device=x.device)
            x = x * inv.view(1, -1, 1, 1)
            if self.stretch == "arcsinh":
                x = torch.asinh(x)
        if self.clip is not None:
            x = x.clamp(-self.clip, self.clip)
        return x


def preprocess(images: np.ndarray, config: Preprocessing | None = None) -> np.ndarray:
    """Shorthand for ``(config or Preprocessing()).apply_numpy(images)``."""
    return (config or Preprocessing()).apply_numpy(images)


def oriented(x: Tensor, view: int) -> Tensor:
    """Orientation ``view`` (0-7) of a ``(N, C, H, W)`` batch of square crops.

    Views 0-3 are rotations by ``90 * view`` degrees; 4-7 are the same rotations of the mirror
    image (the last axis reversed). ``oriented(x, 0)`` is ``x`` itself.
    """
    if not 0 <= view < 8:
        raise LenscatError(f"view must be in 0..7, got {view}")
    if view >= 4:
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, view % 4, dims=(2, 3)) if view % 4 else x


def sum_over_views(fn: Callable[[Tensor], Tensor], x: Tensor, views: int, *, channels_last: bool = False) -> Tensor:
    """``sum(fn(oriented(x, v)) for v in range(views))``: what :attr:`Preprocessing.views` averages.

    ``fn`` maps a batch of crops to per-image outputs (unit vectors, logits); ``channels_last``
    gives each oriented batch channels-last memory (CUDA inference).
    """
    total: Tensor | None = None
    for view in range(views):
        xv = oriented(x, view)
        out = fn(xv.contiguous(memory_format=torch.channels_last) if channels_last else xv)
        total = out if total is None else total + out
    if total is None:
        raise LenscatError(f"views must be positive, got {views}")
    return total
