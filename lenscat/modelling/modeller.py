"""A loaded lensmodel version: cutouts in, calibrated sky-frame parameters out.

The checkpoint (``torch.save`` of a dict, written by :func:`write_checkpoint`) holds the ensemble's
members, the preprocessing, and the calibration factors by which each parameter's predicted σ is
multiplied (fitted on held-out simulations so that 68 % of truths fall within 1σ). The registry
loader of kind ``lensmodel`` (:data:`ARCHITECTURE`) returns a :class:`Modeller`, verified against the
version's sha256 by :func:`lenscat.registry.loaders.load_model`.
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
    return Modeller(members, pre, np.asarray(ck["calibration"]), dev, bool(ck.get("residual_channels", False)))


@register_loader("lensmodel", ARCHITECTURE)
def _load(model: ModelVersion, device: str | None) -> Modeller:
    """Registry loader of lensmodel versions."""
    if not model.checkpoint_path:
        raise LenscatError(f"lensmodel {model.label} has no checkpoint")
    return read_checkpoint(model.checkpoint_path, select_device(device))
