"""The image classifiers trained on cutouts: ``cnn`` (the few-label recipe) and ``finetune``."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from lenscat.classifiers.inputs import catalogue_images
from lenscat.classifiers.train_radial import train_radial_classifier
from lenscat.classifiers.training_sets import add_hard_negatives, make_split, register_trained
from lenscat.classifiers.types import TrainResult
from lenscat.embeddings.encoders import DEFAULT_INPUT_SPEC, band_options
from lenscat.errors import InvalidParameter, LenscatError
from lenscat.registry.device import configured_device
from lenscat.registry.versions import check_name, get_model, training_state_dir


def train_image_classifier_version(
    name: str,
    *,
    arch: str = "cnn",
    session: Session,
    encoder: str | None = None,
    surveys: list[str] | None = None,
    ratio: float | None = None,
    val_ratio: float = 10000,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    origins: list[str] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    lens_fraction: float | None = None,
    crop: int | None = None,
    max_steps: int | None = None,
    device: str | None = None,
    seed: int = 0,
    progress: bool = False,
    resume: bool = True,
    recipe: str | None = None,
    patience: int | None = None,
    hard_negatives: list[str] | None = None,
    hard_negative_top: int = 200,
    hard_negative_weight: int = 3,
) -> TrainResult:
    """Train a CNN from scratch with the few-label recipe (``cnn``) or fine-tune an encoder (``finetune``).

    ``cnn`` follows :data:`lenscat.models.supervised_train.FEW_LABEL_RECIPE` (``recipe='cpu'``) or
    :data:`~lenscat.models.supervised_train.GPU_RECIPE` (``'gpu'``; by default when ``device`` is, or
    resolves to, CUDA): every non-lens not held out for validation trains (``ratio`` None; a ratio
    draws that many per lens instead, from at most half the survey, as before), every epoch draws
    each of them once with lenses oversampled to ``lens_fraction`` (25 %) of each batch, the
    validation split is scored after every epoch and the best epoch by average precision is kept
    (stopping after ``patience`` epochs without improvement), and scores average the 8 flips and
    quarter turns. Given options override the recipe's.

    ``recipe='legacy'`` trains ``cnn`` with the settings it had before the recipe, as ``finetune``
    does (for comparisons): ``finetune`` trains the encoder with a head at Stein et al.'s settings
    (ratio 100 from at most half the survey, lenses 5 % of each batch, 3 epochs, the encoder's
    augmentations, one validation pass at the end; ``legacy``: ``resnet-small`` from scratch on the
    96-pixel crop with Stein et al.'s augmentations). Meant for a GPU; runs (slowly) on a CPU.
    ``arch='radial'`` trains :func:`train_radial_classifier` (the image options do not apply). ``max_steps`` caps the
    number of batches. Interrupted (Ctrl-C), it
    raises :class:`~lenscat.errors.Interrupted` after saving its state; the same call resumes
    (``resume=False``: start over).
    """
    from lenscat.models.augment import AugmentConfig
    from lenscat.models.checkpoint import load_encoder
    from lenscat.models.preprocess import Preprocessing
    from lenscat.models.supervised import _resolve_device, save_classifier, score_images
    from lenscat.models.supervised_train import FEW_LABEL_RECIPE, GPU_RECIPE, train_image_classifier

    if arch == "radial":
        return train_radial_classifier(
            name,
            session=session,
            surveys=surveys,
            ratio=ratio,
            val_ratio=val_ratio,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            origins=origins,
            epochs=epochs or 30,
            seed=seed,
            progress=progress,
            hard_negatives=hard_negatives,
            hard_negative_top=hard_negative_top,
            hard_negative_weight=hard_negative_weight,
        )
    if arch not in ("finetune", "cnn"):
        raise LenscatError(f"unknown image classifier {arch!r}; expected cnn, finetune or radial")
    if recipe not in (None, "cpu", "gpu", "legacy"):
        raise LenscatError(f"unknown CNN recipe {recipe!r}; expected cpu, gpu or legacy")
    check_name(name)
    enc = get_model("encoder", encoder, session=session) if encoder else None
    if arch == "finetune" and (enc is None or not enc.checkpoint_path or enc.origin == "external"):
        raise InvalidParameter(
            ("arch", "encoder"),
            "{arch} finetune needs {encoder} naming a trained or imported encoder (with a checkpoint)",
        )
    device = configured_device(device)  # LENSCAT_DEVICE by default
    rec: dict[str, Any] = {}
    if arch == "cnn" and recipe != "legacy":
        if recipe is None:
            recipe = "gpu" if _resolve_device(device).type == "cuda" else "cpu"
        rec = dict(GPU_RECIPE if recipe == "gpu" else FEW_LABEL_RECIPE)
        epochs, batch_size = epochs or int(rec["epochs"]), batch_size or int(rec["batch_size"])
        lr, lens_fraction = lr or float(rec["lr"]), lens_fraction or float(rec["lens_fraction"])
        patience = patience or int(rec["patience"])
    else:
        ratio = 100 if ratio is None else ratio
        epochs, batch_size, lr, lens_fraction = epochs or 3, batch_size or 64, lr or 1e-3, lens_fraction or 0.05
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
    backbone = None
    spec = dict(DEFAULT_INPUT_SPEC)
    hp_enc: dict[str, Any] = {}
    if arch == "finetune" and enc is not None:
        backbone, hp_enc = load_encoder(str(enc.checkpoint_path))
        spec = dict(enc.input_spec or spec)
    crop = int(crop or hp_enc.get("crop") or rec.get("crop") or spec.get("crop") or 96)  # type: ignore[arg-type]
    images = catalogue_images(split.train_ids, session=session)
    augment: bool | dict[str, Any] = True
    preprocessing: dict[str, Any] | None = None
    band_notes: list[str] = []
    extra: dict[str, Any] = {}
    if enc is not None and isinstance((enc.hparams or {}).get("augment"), dict):
        augment = dict(enc.hparams["augment"])  # fine-tuning: the encoder's own augmentations
    elif arch == "cnn" and not rec:  # the legacy settings: augmentations and stretch follow the survey's bands
        opts, shape = band_options(split.train_ids, images, seed=seed, session=session)
        augment = opts.augment if opts.augment is not None else True
        preprocessing = opts.preprocess(crop) if opts.scales is not None else None
        spec.update(bands=opts.bands, stamp=int(shape[-1]))
        band_notes = opts.notes
    elif arch == "cnn":  # the recipe: channels and stretch follow the survey's bands
        opts, shape = band_options(split.train_ids, images, seed=seed, session=session)
        pre = Preprocessing.from_dict(opts.preprocess(crop) if opts.scales is not None else {"crop": crop})
        preprocessing = {**pre.to_dict(), "views": int(rec["views"])}
        augment = AugmentConfig.few_label().to_dict()
        spec.update(bands=opts.bands, stamp=int(shape[-1]))
        band_notes = [n for n in opts.notes if "augmentations" not in n]
        extra = {
            "arch": str(rec["arch"]),
            "encoder_hparams": dict(rec["encoder_hparams"]),
            "weight_decay": float(rec["weight_decay"]),
            "every_negative": bool(rec["every_negative"]),
            "early_stopping": str(rec["early_stopping"]),
            "patience": int(patience or 1),
            "val_views": int(rec["val_views"]),
            "val_images": catalogue_images(split.val_ids, session=session),
            "val_labels": split.val_y,
        }
    from lenscat.models import trainstate

    tag = hashlib.sha256(
        np.asarray(split.train_ids, dtype=np.int64).tobytes()
        + np.asarray(split.train_y, dtype=np.int8).tobytes()
        + np.asarray(split.val_ids, dtype=np.int64).tobytes()
        + str(enc.checkpoint_sha256 if enc else "").encode()
    ).hexdigest()
    model, train_metrics = train_image_classifier(
        images,
        split.train_y.astype(np.float32),
        backbone=backbone,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lens_fraction=lens_fraction,
        crop=crop,
        preprocessing=preprocessing,
        augment=augment,
        device=device,
        seed=seed,
        progress=progress,
        max_steps=max_steps,
        state_dir=training_state_dir(),
        run_tag=tag,
        resume=resume,
        **extra,
    )
    if train_metrics["interrupted"] and train_metrics["state_path"]:
        raise trainstate.interrupted(
            f"at step {train_metrics['steps']} of {train_metrics['steps_planned']}", train_metrics["state_path"]
        )
    # the kept model on the validation split, with every view it scores with
    val_images = extra["val_images"] if "val_images" in extra else catalogue_images(split.val_ids, session=session)
    val_scores = score_images(model, val_images, device=device)
    from lenscat.classifiers.evaluation import ranking_metrics

    val = ranking_metrics(val_scores, split.val_y)
    train_metrics.pop("val_auc", None)  # per-epoch lists: kept in the report's history, not in the metrics
    history = {k: train_metrics.pop(k) for k in ("val_loss", "val_ap", "val_steps") if k in train_metrics}
    train_metrics.update(
        val_auc=round(float(val["auc"]), 4),
        val_average_precision=round(float(val["average_precision"]), 4),
        val_top_n_hits=int(val["top_n"][0]["true_positives"]) if val["top_n"] else 0,
    )
    hparams: dict[str, Any] = {
        "arch": arch,
        "ratio": ratio,
        "val_ratio": val_ratio,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "lens_fraction": lens_fraction,
        "crop": crop,
        "max_steps": max_steps,
        "seed": seed,
        "origins": origins or [],
        "surveys": surveys or [],
    }
    if hard_negatives:
        hparams.update(
            hard_negatives=list(hard_negatives),
            hard_negative_top=hard_negative_top,
            hard_negative_weight=hard_negative_weight,
        )
    if recipe == "legacy":
        hparams["recipe"] = "legacy"
    if rec:
        hparams.update(
            recipe=recipe,
            backbone=str(rec["arch"]),
            backbone_hparams=dict(rec["encoder_hparams"]),
            weight_decay=rec["weight_decay"],
            augment="few_label",
            views=int(rec["views"]),
            early_stopping=rec["early_stopping"],
            patience=patience,
            every_negative=True,
        )
    metrics = {
        **split.summary(),
        **{k: v for k, v in train_metrics.items() if isinstance(v, (int, float, str)) and k != "state_path"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{arch}.pt"
        save_classifier(
            model, path, hparams={**hparams, "train_ids": split.train_ids.tolist(), "val_ids": split.val_ids.tolist()}
        )
        version, created = register_trained(
            name,
            arch,
            path,
            encoder=enc,
            hparams=hparams,
            split=split,
            metrics=metrics,
            input_spec={"input": "image", **spec},
            session=session,
        )
    if train_metrics["state_path"]:  # registered (the caller commits): nothing is left to resume
        Path(train_metrics["state_path"]).unlink(missing_ok=True)
    return TrainResult(
        version,
        created,
        {
            **metrics,
            "classifier": version.label,
            "encoder": enc.label if enc else None,
            "created": created,
            "notes": [*band_notes, *split.notes],
            "history": history,
        },
    )
