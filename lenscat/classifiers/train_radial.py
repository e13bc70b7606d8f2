"""The ``radial`` classifier: the radial colour-profile baseline (:mod:`lenscat.models.radial`) on cutouts."""

from __future__ import annotations

import tempfile
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.classifiers.inputs import catalogue_images
from lenscat.classifiers.training_sets import add_hard_negatives, make_split, register_trained
from lenscat.classifiers.types import TrainResult
from lenscat.registry.versions import check_name


def train_radial_classifier(
    name: str,
    *,
    session: Session,
    surveys: list[str] | None = None,
    ratio: float | None = None,
    val_ratio: float = 10000,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    origins: list[str] | None = None,
    epochs: int = 30,
    l2: float = 1e-3,
    pixel_scale: float | None = None,
    seed: int = 0,
    progress: bool = False,
    hard_negatives: list[str] | None = None,
    hard_negative_top: int = 200,
    hard_negative_weight: int = 3,
) -> TrainResult:
    """Train the radial colour-profile baseline (:mod:`lenscat.models.radial`) and register it.

    The split is the CNN recipe's (:func:`make_split`; every negative with ``ratio`` None,
    injections training only), so the baseline and the networks learn from the same labels. The
    pixel scale is the cutout files' or else the surveys' ``pixel_scale_arcsec``, else 0.262 arcsec/px.
    The same labels and options give the same checkpoint (``created`` False).
    """
    import torch

    from lenscat.models.radial import RadialProfile, radial_state, train_radial

    check_name(name)
    split = make_split(
        session=session,
        surveys=surveys,
        encoder=None,
        ratio=ratio,
        val_ratio=val_ratio,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        origins=origins,
        seed=seed,
    )
    if hard_negatives:
        split = add_hard_negatives(
            split, hard_negatives, session=session, top=hard_negative_top, weight=hard_negative_weight
        )
    notes = list(split.notes)
    if pixel_scale is None:
        scales = (
            session.execute(
                text(
                    "SELECT DISTINCT q.scale FROM ("
                    "SELECT COALESCE(f.pixel_scale_arcsec, v.pixel_scale_arcsec) AS scale "
                    "FROM lenscat.sources s JOIN lenscat.surveys v USING (survey_id) "
                    "LEFT JOIN lenscat.cutout_files f ON f.file_id = s.cutout_file_id WHERE s.source_id = ANY(:ids)) q "
                    "WHERE q.scale IS NOT NULL ORDER BY 1"
                ),
                {"ids": split.train_ids.tolist()},
            )
            .scalars()
            .all()
        )
        if len(scales) > 1:
            notes.append(f'cutouts at {len(scales)} pixel scales; the radial profile uses {float(scales[0]):g}"/px')
        pixel_scale = float(scales[0]) if scales else 0.262
    profile = RadialProfile(pixel_scale=pixel_scale)
    fit = train_radial(
        catalogue_images(split.train_ids, session=session),
        split.train_y,
        val_images=catalogue_images(split.val_ids, session=session),
        val_labels=split.val_y,
        profile=profile,
        epochs=epochs,
        l2=l2,
        seed=seed,
        progress=progress,
    )
    hparams = {
        "ratio": ratio,
        "val_ratio": val_ratio,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "origins": origins or [],
        "surveys": surveys or [],
        "epochs": epochs,
        "l2": l2,
        "seed": seed,
        "profile": profile.to_dict(),
        "optimizer": "lbfgs",
        **(
            {
                "hard_negatives": list(hard_negatives),
                "hard_negative_top": hard_negative_top,
                "hard_negative_weight": hard_negative_weight,
            }
            if hard_negatives
            else {}
        ),
    }
    last = fit.history[fit.epoch - 1] if fit.epoch else {}
    metrics = {
        **split.summary(),
        "epoch_kept": fit.epoch,
        "seconds": round(fit.seconds, 3),
        "n_features": len(fit.weight),
        **{k: v for k, v in last.items() if k != "epoch"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "radial.pt"
        torch.save(
            radial_state(fit, train_ids=torch.from_numpy(split.train_ids), val_ids=torch.from_numpy(split.val_ids)),
            path,
        )
        model, created = register_trained(
            name,
            "radial",
            path,
            encoder=None,
            hparams=hparams,
            split=split,
            metrics=metrics,
            input_spec={"input": "image", "features": "radial-profile", **profile.to_dict()},
            session=session,
        )
    return TrainResult(
        model,
        created,
        {
            **metrics,
            "classifier": model.label,
            "encoder": None,
            "created": created,
            "notes": notes,
            "history": fit.history,
        },
    )
