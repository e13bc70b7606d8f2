"""A loaded lensmodel version: cutouts in, calibrated sky-frame parameters out.

The checkpoint (``torch.save`` of a dict, written by :func:`write_checkpoint`) holds the ensemble's
members, the preprocessing, and the calibration factors by which each parameter's predicted σ is
multiplied (fitted on held-out simulations so that 68 % of truths fall within 1σ). The registry
loader of kind ``lensmodel`` (:data:`ARCHITECTURE`) returns a :class:`Modeller`, verified against the
version's sha256 by :func:`lenscat.registry.loaders.load_model`.

:meth:`Modeller.refine` refines the network's predictions by fitting a forward model to the cutouts
(:mod:`lenscat.models.lensfit`); the checkpoint's ``refine_calibration`` (written at training by
:func:`refinement_calibration`, on the same held-out split) scales the refined σ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenscat.errors import LenscatError
from lenscat.registry.device import select_device
from lenscat.registry.loaders import register_loader
from lenscat.registry.versions import ModelVersion

ARCHITECTURE = "lensmodel-cnn"
FORMAT = "lenscat-lensmodel-v1"


@dataclass
class Modeller:
    """Members, preprocessing and calibration of one version."""

    members: list[Any]
    preprocessing: Any
    calibration: np.ndarray
    device: str = "cpu"
    residual: bool = False
    lens_probability: dict[str, Any] | None = None
    """``temperature`` and vetting ``threshold`` of the lens logit (checkpoints with a lens head), else None."""
    refine_calibration: np.ndarray | None = None
    """Factors of the refined σ (:meth:`refine`), fitted on held-out training-simulator lenses; None in
    checkpoints written before the refinement existed."""

    @property
    def crop(self) -> int:
        """Side of the window the network reads [pixels]."""
        return int(self.preprocessing.crop)

    def predict(self, images: np.ndarray, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Means and calibrated 1σ (N, 9), sky frame, of cutouts (N, 3, H, W) in nanomaggies.

        Raises
        ------
        LenscatError
            The cutouts are not 3-band or are smaller than the window.
        """
        from lenscat.models.lensmodel import predict

        x = np.asarray(images)
        if x.ndim != 4 or x.shape[1] != 3:
            raise LenscatError(f"lens models need (N, 3, H, W) g, r, z cutouts, got shape {x.shape}")
        pre = network_input(x, self.preprocessing, self.residual)
        mu, sig = predict(self.members, pre, batch_size=batch_size, device=self.device)
        return mu, sig * self.calibration[None, :]

    def predict_with_lens_probability(
        self, images: np.ndarray, *, batch_size: int = 256
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`predict` plus the calibrated probability (N,) that each cutout is a lens.

        The probability is None for versions without a lens head (trained on lenses only).
        """
        from lenscat.models.lensmodel import lens_probability, predict_with_logit

        x = np.asarray(images)
        if x.ndim != 4 or x.shape[1] != 3:
            raise LenscatError(f"lens models need (N, 3, H, W) g, r, z cutouts, got shape {x.shape}")
        pre = network_input(x, self.preprocessing, self.residual)
        mu, sig, logit = predict_with_logit(self.members, pre, batch_size=batch_size, device=self.device)
        p = None
        if logit is not None and self.lens_probability is not None:
            p = lens_probability(logit, float(self.lens_probability["temperature"]))
        return mu, sig * self.calibration[None, :], p

    def refine(self, images: np.ndarray, mu: np.ndarray, sigma: np.ndarray, *, options: Any = None) -> Refined:
        """Forward-model refinement (:func:`lenscat.models.lensfit.refine`) of predictions ``mu``, ``sigma``.

        Refined σ are multiplied by :attr:`refine_calibration`; cutouts whose fit was rejected keep
        the network's values and say why in :attr:`Refined.reasons`.

        Raises
        ------
        LenscatError
            The version has no refinement calibration, or the cutouts do not fit the window.
        """
        from lenscat.models.lensfit import refine

        if self.refine_calibration is None:
            raise LenscatError(
                "this lensmodel version has no refinement calibration (trained before it existed): "
                "retrain it, or model without --refine"
            )
        try:
            res = refine(np.asarray(images), mu, sigma, options)
        except ValueError as exc:
            raise LenscatError(str(exc)) from exc
        sig = np.where(res.ok[:, None], res.sigma * self.refine_calibration[None, :], sigma)
        return Refined(res.params, sig, res.ok, res.reason)


@dataclass
class Refined:
    """Refined means and calibrated 1σ (N, 9), whether each cutout's fit was kept, and why not."""

    mu: np.ndarray
    sigma: np.ndarray
    refined: np.ndarray
    reasons: list[str]


def refinement_factors(modeller: Modeller, images: np.ndarray, targets: np.ndarray, options: Any = None) -> np.ndarray:
    """σ factors of the refinement from held-out lenses of the training simulator (68 % coverage).

    Only accepted fits count; with fewer than 10 of them the factors are 1 (too few to calibrate).
    """
    from lenscat.models.lensfit import refine
    from lenscat.models.lensmodel import coverage_scale

    mu, sig = modeller.predict(images)
    res = refine(np.asarray(images), mu, sig, options)
    if res.ok.sum() < 10:
        return np.ones(mu.shape[1])
    return coverage_scale((np.asarray(targets)[res.ok] - res.params[res.ok]) / res.sigma[res.ok])


def refinement_calibration(fit: dict[str, Any], data: Any, seed: int, n_max: int = 256) -> list[float]:
    """:func:`refinement_factors` on (up to ``n_max`` of) the lenses of the calibration split of training.

    ``fit`` is :func:`lenscat.modelling.training.fit_and_calibrate`'s result, ``data`` its LensSet;
    the split is the one it used (80 / 10 / 10 with ``seed``).
    """
    from lenscat.modelling.training_set import split
    from lenscat.models.lensmodel_train import members_from
    from lenscat.models.preprocess import Preprocessing

    ca = split(len(data), (0.8, 0.1, 0.1), seed)[2]
    ca = ca[np.isin(np.asarray(data.kinds, dtype=object)[ca], ["lens", "injection"])][:n_max]
    m = Modeller(
        members_from(fit["state"]),
        Preprocessing.from_dict(fit["preprocessing"]),
        np.asarray(fit["calibration"]),
        residual=bool(fit["residual_channels"]),
    )
    return [float(v) for v in refinement_factors(m, data.images[ca], data.targets[ca])]


def input_preprocessing(crop: int, residual: bool) -> Any:
    """The stretch of the network's input: the classifiers' arcsinh of g, r, z (and of the two
    lens-subtracted bands, at the g and r noise scales, with ``residual``)."""
    from lenscat.models.preprocess import DECALS_SKY_NOISE, Preprocessing

    scales = DECALS_SKY_NOISE + DECALS_SKY_NOISE[:2] if residual else DECALS_SKY_NOISE
    return Preprocessing(crop=crop, scales=scales)


def network_input(images: np.ndarray, preprocessing: Any, residual: bool) -> np.ndarray:
    """Cutouts (N, 3, H, W) in nanomaggies -> the network's stretched window (N, 3 or 5, crop, crop)."""
    from lenscat.models.lensmodel import add_residual_channels

    return np.asarray(preprocessing.apply_numpy(add_residual_channels(images) if residual else images))


def write_checkpoint(
    path: Path, state: dict[str, Any], preprocessing: dict[str, Any], calibration: np.ndarray, residual: bool = False
) -> None:
    """Save members (``lenscat.models.lensmodel_train.state_of``), preprocessing and calibration."""
    import torch

    torch.save(
        {
            "format": FORMAT,
            **state,
            "preprocessing": preprocessing,
            "calibration": [float(v) for v in calibration],
            "residual_channels": bool(residual),
        },
        path,
    )


def read_checkpoint(path: str | Path, device: str | None = None) -> Modeller:
    """A :class:`Modeller` from a checkpoint file (not verified: :func:`load` verifies)."""
    import torch

    from lenscat.models.lensmodel_train import members_from
    from lenscat.models.preprocess import Preprocessing

    ck = torch.load(path, map_location="cpu", weights_only=True)
    if ck.get("format") != FORMAT:
        raise LenscatError(f"{path}: not a lensmodel checkpoint (format {ck.get('format')!r})")
    members = members_from(ck)
    dev = device or "cpu"
    for m in members:
        m.to(dev)
    pre = Preprocessing.from_dict(ck["preprocessing"])
    return Modeller(
        members,
        pre,
        np.asarray(ck["calibration"]),
        dev,
        bool(ck.get("residual_channels", False)),
        ck.get("lens_probability"),
        None if ck.get("refine_calibration") is None else np.asarray(ck["refine_calibration"], dtype=np.float64),
    )


@register_loader("lensmodel", ARCHITECTURE)
def _load(model: ModelVersion, device: str | None) -> Modeller:
    """Registry loader of lensmodel versions."""
    if not model.checkpoint_path:
        raise LenscatError(f"lensmodel {model.label} has no checkpoint")
    return read_checkpoint(model.checkpoint_path, select_device(device))
