"""The radial colour-profile baseline: 12 annuli x 3 bands of surface brightness, logistic regression.

A lens is a red galaxy with blue light at one to a few arcsec from its centre; a profile of the
surface brightness in circular annuli, band by band, carries most of that (the arcs' radius and
colour) in a few dozen numbers. :class:`RadialProfile` turns nanomaggy cutouts ``(N, C, H, W)``
into ``n_annuli * C`` features (36 for g, r, z):

1. NaN / +-inf -> 0; radii from the cutout centre ``((H - 1) / 2, (W - 1) / 2)`` in pixels.
2. ``n_annuli`` equal-width annuli from 0 to ``r_max_arcsec`` (default 12 out to 6 arcsec, i.e.
   0.5 arcsec = 1.9 px wide at the DECaLS scale of 0.262 arcsec/px; the pixel scale is a
   parameter): the mean of each band in each annulus (a surface brightness, nanomaggies/px).
3. Normalised by the mean over bands and pixels of the whole aperture (so a common flux factor,
   i.e. the object's brightness, drops out; colours remain as band-to-band ratios), then
   ``asinh(value / softening)``: logarithmic above ``softening``, linear (and defined for the
   negative means of noise) below it. Band differences of the features are log colours.

:func:`train_radial` standardises the features over the training set and fits the L-BFGS logistic
regression of :mod:`lenscat.models.linear`, keeping the epoch with the most validation lenses in the
top N; :func:`predict_radial` scores cutouts with a fit or a checkpoint's :func:`radial_state`.
Nothing here knows about the database.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lenscat.errors import LenscatError
from lenscat.models.data import ArraySource, ImageSource
from lenscat.models.options import dataclass_kwargs

__all__ = ["RadialFit", "RadialProfile", "predict_radial", "radial_features", "radial_state", "train_radial"]

DEFAULT_PIXEL_SCALE = 0.262
"""DECaLS pixel scale, arcsec/px."""


@dataclass(frozen=True)
class RadialProfile:
    """Definition of the radial colour-profile features (module docstring).

    Parameters
    ----------
    n_annuli : int
        Equal-width annuli from the centre out to ``r_max_arcsec``.
    r_max_arcsec : float
        Outer radius of the last annulus, arcsec.
    pixel_scale : float
        Arcsec per pixel of the cutouts.
    softening : float
        Softening of the ``asinh`` stretch of the normalised surface brightness.
    """

    n_annuli: int = 12
    r_max_arcsec: float = 6.0
    pixel_scale: float = DEFAULT_PIXEL_SCALE
    softening: float = 0.01

    def __post_init__(self) -> None:
        if int(self.n_annuli) != self.n_annuli or self.n_annuli < 1:
            raise LenscatError(f"n_annuli must be a positive integer, got {self.n_annuli!r}")
        for what in ("r_max_arcsec", "pixel_scale", "softening"):
            v = float(getattr(self, what))
            if not (math.isfinite(v) and v > 0):
                raise LenscatError(f"{what} must be positive, got {getattr(self, what)!r}")
            object.__setattr__(self, what, v)
        object.__setattr__(self, "n_annuli", int(self.n_annuli))

    @property
    def r_max_px(self) -> float:
        """Outer radius in pixels."""
        return self.r_max_arcsec / self.pixel_scale

    def edges_px(self) -> np.ndarray:
        """Annulus boundaries in pixels, ``(n_annuli + 1,)`` from 0 to :attr:`r_max_px`."""
        return np.linspace(0.0, self.r_max_px, self.n_annuli + 1)

    def n_features(self, bands: int) -> int:
        """Features per cutout of ``bands`` channels."""
        return self.n_annuli * int(bands)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; inverse of :meth:`from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | RadialProfile | None) -> RadialProfile:
        """Build from :meth:`to_dict` output (``None``: defaults)."""
        if data is None:
            return cls()
        if isinstance(data, RadialProfile):
            return data
        return cls(**dataclass_kwargs(cls, data, "radial profile"))

    def _annulus_matrix(self, h: int, w: int) -> tuple[slice, slice, np.ndarray]:
        """Window around the centre and the (pixels, annuli) averaging matrix over it."""
        half = int(math.ceil(self.r_max_px)) + 1
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        r0, r1 = max(0, int(math.floor(cy - half))), min(h, int(math.ceil(cy + half)) + 1)
        c0, c1 = max(0, int(math.floor(cx - half))), min(w, int(math.ceil(cx + half)) + 1)
        yy, xx = np.mgrid[r0:r1, c0:c1]
        r = np.hypot(yy - cy, xx - cx).ravel()
        which = np.floor(r / (self.r_max_px / self.n_annuli)).astype(np.int64)
        m = np.zeros((len(r), self.n_annuli), dtype=np.float64)
        inside = which < self.n_annuli
        m[np.flatnonzero(inside), which[inside]] = 1.0
        counts = m.sum(axis=0)
        if (counts == 0).any():
            empty = int(np.flatnonzero(counts == 0)[0])
            raise LenscatError(
                f"annulus {empty} of the radial profile holds no pixel of a {h}x{w} cutout "
                f"({self.n_annuli} annuli out to {self.r_max_px:.3g} px): use fewer annuli"
            )
        if r1 - r0 < 2 * self.r_max_px or c1 - c0 < 2 * self.r_max_px:
            raise LenscatError(
                f"cutouts of {h}x{w} px are smaller than the radial profile's "
                f"{2 * self.r_max_arcsec:g} arcsec ({2 * self.r_max_px:.3g} px) aperture"
            )
        return slice(r0, r1), slice(c0, c1), m / counts


def radial_features(images: np.ndarray, profile: RadialProfile | None = None) -> np.ndarray:
    """Radial colour-profile features of nanomaggy cutouts.

    Parameters
    ----------
    images : ndarray, shape (N, C, H, W)
        Cutouts in nanomaggies.
    profile : RadialProfile, optional
        Feature definition (default 12 annuli to 6 arcsec at 0.262 arcsec/px).

    Returns
    -------
    ndarray, shape (N, n_annuli * C), float32
        For each band (outer loop) the annuli from the centre out (inner loop).
    """
    p = profile or RadialProfile()
    x = np.asarray(images)
    if x.ndim != 4:
        raise LenscatError(f"images must be (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    rows, cols, avg = p._annulus_matrix(h, w)
    win = np.nan_to_num(np.asarray(x[:, :, rows, cols], dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    sb = win.reshape(n * c, -1) @ avg  # (N*C, annuli) mean surface brightness
    sb = sb.reshape(n, c, p.n_annuli)
    counts = 1.0 / avg.sum(axis=0)  # pixels per annulus
    total = (sb * counts).sum(axis=(1, 2)) / (counts.sum() * c)  # mean over the aperture and bands
    norm = np.where(total > 0, total, np.maximum(np.abs(total), 1e-12))
    return np.arcsinh(sb / norm[:, None, None] / p.softening).reshape(n, -1).astype(np.float32)


def _features_of(images: ImageSource | np.ndarray, profile: RadialProfile, batch_size: int = 512) -> np.ndarray:
    src = ArraySource(images) if isinstance(images, np.ndarray) else images
    n = len(src)
    parts = [radial_features(src.get(np.arange(i, min(n, i + batch_size))), profile) for i in range(0, n, batch_size)]
    if not parts:
        raise LenscatError("no images to compute radial profiles of")
    return np.concatenate(parts)


@dataclass
class RadialFit:
    """A trained radial colour-profile classifier: the feature definition, the standardisation
    (``mean``, ``std`` over the training set) and the logistic regression on standardised features."""

    profile: RadialProfile
    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: float
    epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Logits of precomputed features ``(N, dim)`` (float64)."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.std
        return np.asarray(z @ np.asarray(self.weight, dtype=np.float64) + float(self.bias))


def train_radial(
    images: ImageSource | np.ndarray,
    labels: np.ndarray,
    *,
    val_images: ImageSource | np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    profile: RadialProfile | Mapping[str, Any] | None = None,
    epochs: int = 30,
    l2: float = 1e-3,
    class_weight: str = "none",
    seed: int = 0,
    progress: bool = False,
) -> RadialFit:
    """Fit the radial colour-profile baseline.

    Parameters
    ----------
    images, labels
        Training cutouts (nanomaggies; array or :class:`~lenscat.models.data.ImageSource`) and
        their 1/0 labels.
    val_images, val_labels
        Validation set that picks the L-BFGS epoch (most lenses in its top N); optional.
    profile
        Feature definition (:class:`RadialProfile` or its dict).
    epochs, l2, class_weight, seed, progress
        As :func:`lenscat.models.linear.train_linear` (on standardised features).

    Returns
    -------
    RadialFit
    """
    from lenscat.models.linear import train_linear

    t0 = time.perf_counter()
    prof = RadialProfile.from_dict(profile)
    f = _features_of(images, prof)
    y = np.asarray(labels, dtype=np.float32).reshape(-1)
    if len(y) != len(f):
        raise LenscatError(f"{len(y)} labels for {len(f)} images")
    mean = f.mean(axis=0).astype(np.float64)
    std = f.std(axis=0).astype(np.float64) + 1e-6
    z = ((f - mean) / std).astype(np.float32)
    zv = yv = None
    if val_images is not None and val_labels is not None and len(val_labels):
        zv = ((_features_of(val_images, prof) - mean) / std).astype(np.float32)
        yv = np.asarray(val_labels, dtype=np.float32).reshape(-1)
    fit = train_linear(
        z,
        y,
        x_val=zv,
        y_val=yv,
        epochs=epochs,
        l2=l2,
        class_weight=class_weight,
        seed=seed,
        progress=progress,
        standardize=False,
    )
    return RadialFit(
        profile=prof,
        mean=mean,
        std=std,
        weight=np.asarray(fit.weight, dtype=np.float64),
        bias=float(fit.bias),
        epoch=fit.epoch,
        history=fit.history,
        seconds=time.perf_counter() - t0,
    )


def radial_state(fit: RadialFit, **extra: Any) -> dict[str, Any]:
    """Checkpoint contents (tensors and plain values: loadable with ``weights_only=True``)."""
    import torch

    return {
        "arch": "radial",
        "profile": fit.profile.to_dict(),
        "mean": torch.from_numpy(np.ascontiguousarray(fit.mean)),
        "std": torch.from_numpy(np.ascontiguousarray(fit.std)),
        "weight": torch.from_numpy(np.ascontiguousarray(fit.weight)),
        "bias": torch.tensor(fit.bias, dtype=torch.float64),
        "epoch": int(fit.epoch),
        **extra,
    }


def fit_from_state(state: Mapping[str, Any]) -> RadialFit:
    """The :class:`RadialFit` of a :func:`radial_state` checkpoint dict."""
    if state.get("arch") != "radial":
        raise LenscatError(f"not a radial-profile checkpoint (arch {state.get('arch')!r})")

    def arr(key: str) -> np.ndarray:
        v = state[key]
        return np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=np.float64)

    return RadialFit(
        profile=RadialProfile.from_dict(state["profile"]),
        mean=arr("mean"),
        std=arr("std"),
        weight=arr("weight"),
        bias=float(state["bias"]),
        epoch=int(state.get("epoch", 0)),
    )


def predict_radial(fit: RadialFit | Mapping[str, Any], images: ImageSource | np.ndarray) -> np.ndarray:
    """Lens probabilities ``(N,)`` float32 of nanomaggy cutouts (``fit`` or a checkpoint dict)."""
    f = fit if isinstance(fit, RadialFit) else fit_from_state(fit)
    feats = _features_of(images, f.profile)
    if feats.shape[1] != len(f.weight):
        raise LenscatError(f"cutouts give {feats.shape[1]} radial features but the classifier takes {len(f.weight)}")
    z = np.clip(f.logits(feats), -80, 80)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
