"""Loading classifier versions: verified checkpoints, the registry loaders of ``linear``, ``radial`` and
image classifiers, score functions and the ids a version trained on."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from lenscat.classifiers.versions import DERIVED_ARCHITECTURES
from lenscat.errors import LenscatError
from lenscat.registry.checkpoints import verify_checkpoint, verify_file
from lenscat.registry.loaders import ANY_ARCHITECTURE, load_model, register_loader
from lenscat.registry.versions import ModelVersion


def _check_checkpoint(path: str, sha256: str) -> None:
    """A registered classifier checkpoint is where it was stored and unchanged
    (:func:`lenscat.registry.checkpoints.verify_file`)."""
    verify_file(path, sha256, what="its registered classifier version")


@lru_cache(maxsize=4)
def load_checkpoint(path: str, sha256: str) -> dict[str, Any]:
    """The state dict of a registered ``torch.save`` checkpoint (``linear``, ``radial``, ``anomaly``), verified first.

    Parameters
    ----------
    path, sha256
        The version's ``checkpoint_path`` and ``checkpoint_sha256``.

    Returns
    -------
    dict
        The loaded state (cached per process: four checkpoints).

    Raises
    ------
    CheckpointError
        The file is missing or its hash differs from the registered one.
    """
    import torch

    _check_checkpoint(path, sha256)
    return dict(torch.load(path, map_location="cpu", weights_only=True))


def training_ids(model: ModelVersion) -> np.ndarray:
    """Source ids the classifier saw in training or validation (left out of evaluation)."""
    if model.architecture in DERIVED_ARCHITECTURES:
        return derived_module(model).training_ids(model)
    if model.architecture in ("linear", "radial"):
        ck = load_checkpoint(str(model.checkpoint_path), str(model.checkpoint_sha256))
        return np.concatenate([ck["train_ids"].numpy(), ck["val_ids"].numpy()]).astype(np.int64)
    from lenscat.models.supervised import load_classifier

    _, meta = load_classifier(str(verify_checkpoint(model)))
    hp = meta.get("hparams", meta)
    return np.asarray(list(hp.get("train_ids", [])) + list(hp.get("val_ids", [])), dtype=np.int64)


def score_function(model: ModelVersion, device: str | None = None) -> Any:
    """A callable inputs -> scores for the classifier version (loaded once per process).

    Through :func:`lenscat.registry.loaders.load_model`: the checkpoint is verified first, and
    ``device`` defaults to ``LENSCAT_DEVICE`` (else CUDA when available).
    """
    if model.architecture in DERIVED_ARCHITECTURES:
        raise LenscatError(
            f"classifier {model.label} ({model.architecture}) is computed from stored rows, not from inputs"
        )
    return load_model(model, device)


@register_loader("classifier", "linear")
def _load_linear(model: ModelVersion, device: str | None) -> Any:
    """Registry loader of linear probes: scores from embeddings."""
    from lenscat.models.linear import predict_linear

    ck = load_checkpoint(str(model.checkpoint_path), str(model.checkpoint_sha256))
    w, b = ck["weight"].numpy(), float(ck["bias"])
    return lambda x: predict_linear(w, b, x)


@register_loader("classifier", "radial")
def _load_radial(model: ModelVersion, device: str | None) -> Any:
    """Registry loader of radial-profile classifiers: scores from cutouts."""
    from lenscat.models.radial import fit_from_state, predict_radial

    fit = fit_from_state(load_checkpoint(str(model.checkpoint_path), str(model.checkpoint_sha256)))
    return lambda x: predict_radial(fit, x)


@register_loader("classifier", ANY_ARCHITECTURE)
def _load_image_classifier(model: ModelVersion, device: str | None) -> Any:
    """Registry loader of image classifiers (``cnn``, ``finetune``, ...): scores from cutouts on ``device``."""
    from lenscat.models.supervised import score_images

    net = _load_image_model(str(model.checkpoint_path), str(model.checkpoint_sha256))
    return lambda x: score_images(net, x, device=device)


def derived_module(model: ModelVersion) -> Any:
    """The module (:mod:`lenscat.classifiers.ensemble` or :mod:`lenscat.embeddings.anomaly`) that scores a derived
    classifier."""
    if model.architecture == "ensemble":
        from lenscat.classifiers import ensemble

        return ensemble
    from lenscat.embeddings import anomaly

    return anomaly


@lru_cache(maxsize=2)
def _load_image_model(path: str, sha256: str) -> Any:
    from lenscat.models.supervised import load_classifier

    _check_checkpoint(path, sha256)
    net, _ = load_classifier(path)
    return net
