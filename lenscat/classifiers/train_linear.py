"""The ``linear`` classifier: Stein et al.'s linear probe on an encoder's stored embeddings."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from lenscat.classifiers.training_sets import make_split, register_trained
from lenscat.classifiers.types import TrainingSplit, TrainResult
from lenscat.embeddings.vectors import read_embeddings
from lenscat.errors import LenscatError
from lenscat.registry.versions import ModelVersion, check_name, get_model


def _vectors_for(
    encoder: ModelVersion, ids: np.ndarray, session: Session, vectors: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Embeddings of ``ids`` in that order: read from the database, or looked up in ``vectors``
    ((sorted source ids, matrix) already in memory)."""
    if len(ids) == 0:
        return np.zeros((0, int(encoder.output_dim or 0)), dtype=np.float32)
    got, vec = vectors if vectors is not None else read_embeddings(encoder, source_ids=ids, session=session)
    pos = np.searchsorted(got, ids)
    if len(got) == 0 or (pos >= len(got)).any() or (got[np.minimum(pos, len(got) - 1)] != ids).any():
        raise LenscatError(f"some training sources lost their {encoder.label} embedding while training")
    return vec[pos]


def train_linear_classifier(
    name: str,
    encoder: str,
    *,
    session: Session,
    surveys: list[str] | None = None,
    ratio: float = 4000,
    val_ratio: float = 10000,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    origins: list[str] | None = None,
    epochs: int = 30,
    l2: float = 1e-4,
    loss: str = "bce",
    focal_gamma: float = 2.0,
    class_weight: str = "none",
    top_n: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> TrainResult:
    """Train the linear probe on stored embeddings and register it as the next version of ``name``.

    The same labels, embeddings and options give the same checkpoint, so re-running registers
    nothing new (``created`` False).
    """
    check_name(name)
    enc = get_model("encoder", encoder, session=session)
    split = make_split(
        session=session,
        surveys=surveys,
        encoder=enc,
        ratio=ratio,
        val_ratio=val_ratio,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        origins=origins,
        seed=seed,
    )
    hparams = {
        "ratio": ratio,
        "val_ratio": val_ratio,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "origins": origins or [],
        "surveys": surveys or [],
    }
    return fit_linear_version(
        name,
        enc,
        split,
        session=session,
        hparams=hparams,
        epochs=epochs,
        l2=l2,
        loss=loss,
        focal_gamma=focal_gamma,
        class_weight=class_weight,
        top_n=top_n,
        seed=seed,
        progress=progress,
    )


def fit_linear_version(
    name: str,
    enc: ModelVersion,
    split: TrainingSplit,
    *,
    session: Session,
    hparams: dict[str, Any],
    vectors: tuple[np.ndarray, np.ndarray] | None = None,
    epochs: int = 30,
    l2: float = 1e-4,
    loss: str = "bce",
    focal_gamma: float = 2.0,
    class_weight: str = "none",
    top_n: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> TrainResult:
    """Train the linear probe on an explicit training split and register it as the next version of ``name``.

    Parameters
    ----------
    name, enc
        Classifier name; encoder version whose embeddings it learns on (its ``parent_model_id``).
    split
        Training and validation ids and labels; an empty validation set keeps the last epoch.
    hparams
        How the split was made (ratios, origins, ...), stored with the training options.
    vectors
        (sorted source ids, matrix) of the encoder's embeddings already in memory; by default the
        training vectors are read from the database.
    epochs, l2, loss, focal_gamma, class_weight, top_n, seed, progress
        As :func:`lenscat.models.linear.train_linear`.

    Returns
    -------
    TrainResult
        The version (``created`` False when the same checkpoint was already registered) and a report.
    """
    import torch

    from lenscat.models.linear import state_dict, train_linear

    t0 = time.perf_counter()
    x = _vectors_for(enc, split.train_ids, session, vectors)
    xv = _vectors_for(enc, split.val_ids, session, vectors)
    t_read = time.perf_counter() - t0
    fit = train_linear(
        x,
        split.train_y,
        x_val=xv,
        y_val=split.val_y,
        epochs=epochs,
        l2=l2,
        loss=loss,
        focal_gamma=focal_gamma,
        class_weight=class_weight,
        top_n=top_n,
        seed=seed,
        progress=progress,
    )
    hparams = {
        **hparams,
        "epochs": epochs,
        "l2": l2,
        "loss": loss,
        "focal_gamma": focal_gamma,
        "class_weight": class_weight,
        "top_n": top_n,
        "seed": seed,
        "optimizer": "lbfgs",
    }
    last = fit.history[fit.epoch - 1] if fit.epoch else {}
    metrics = {
        **split.summary(),
        "epoch_kept": fit.epoch,
        "seconds": round(fit.seconds, 3),
        "read_seconds": round(t_read, 3),
        **{k: v for k, v in last.items() if k != "epoch"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "linear.pt"
        torch.save(
            state_dict(
                fit,
                encoder_id=enc.model_id,
                train_ids=torch.from_numpy(split.train_ids),
                val_ids=torch.from_numpy(split.val_ids),
            ),
            path,
        )
        model, created = register_trained(
            name,
            "linear",
            path,
            encoder=enc,
            hparams=hparams,
            split=split,
            metrics=metrics,
            input_spec={"input": "embedding", "encoder": enc.label, "dim": int(x.shape[1])},
            session=session,
        )
    return TrainResult(
        model,
        created,
        {
            **metrics,
            "classifier": model.label,
            "encoder": enc.label,
            "created": created,
            "notes": split.notes,
            "history": fit.history,
        },
    )
