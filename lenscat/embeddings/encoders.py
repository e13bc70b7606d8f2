"""Encoder versions from the catalogue: train (MoCo-v2 on the survey's cutouts), import, or ingest vectors.

Every path ends in a ``lenscat.model_versions`` row of kind ``encoder`` carrying the architecture,
output dimension, checkpoint sha256, hyper-parameters and a hash of the training set, so each
embedding leads back to exactly what made it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.ingest_log import file_sha256
from lenscat.catalogue.surveys import get_survey
from lenscat.db.session import session_scope
from lenscat.embeddings.vectors import upsert_embeddings
from lenscat.errors import InputFileError, LenscatError
from lenscat.images.bands import BandOptions, image_training_options
from lenscat.registry.versions import (
    ModelVersion,
    check_name,
    get_model,
    register_model,
    store_checkpoint,
    training_state_dir,
)

DEFAULT_INPUT_SPEC = {"bands": ["g", "r", "z"], "pixel_scale_arcsec": 0.262, "stamp": 152, "unit": "nanomaggy"}

_STEIN_RECIPE: dict[str, Any] = {
    "epochs": 5,
    "batch_size": 64,
    "lr": 0.06,
    "queue_size": 4096,
    "crop": 96,
    "temperature": 0.2,
    "warmup_steps": 0,
    "zero_init_residual": False,
    "views": 1,
    "readout": "gap",
}
TRAINING_RECIPES: dict[str, dict[str, Any]] = {
    # measured on 2 CPU cores (docs/benchmarks.md, "Science check: more like this lens"): no variant
    # of this recipe (crop, temperature, queue, epochs, lr, batch, width, depth) beat it beyond the
    # spread between splits; about two minutes per 3,000 cutouts. A 50-step linear warm-up of the
    # learning rate lowered the final loss for each of 4 training seeds and lifted the mean probe AUC
    # from 0.845 to 0.861 (the worst seed from 0.752 to 0.792). Residual blocks that start as the
    # identity (zero_init_residual) at twice the learning rate lifted it from 0.864 to 0.882 over five
    # seeds and removed the weak one (worst 0.786 -> 0.862). Embeddings averaged over the 8 turns
    # and flips of the crop (views 8) lifted it from 0.885 to 0.901 over five seeds, every seed gaining.
    # Storing the stage-2 map's annular mean and maximum beside the pooled vector (readout
    # gap+annuli2, 512-d) lifted the probe from a mean of 0.884 to 0.924 over six seeds end to end on
    # the same weights (0.952 on 20,000-cutout surveys); 2 blocks x 45 epochs added 0.009 at 4x the CPU
    # ("Deeper, longer-trained encoders read at stage 2" and the sections after it).
    "resnet-small": {
        "epochs": 15,
        "batch_size": 64,
        "lr": 0.2,
        "queue_size": 1024,
        "crop": 48,
        "temperature": 0.1,
        "warmup_steps": 50,
        "zero_init_residual": True,
        "views": 8,
        "readout": "gap+annuli2",
    },
    # Stein et al.'s setting (96-pixel crop of the 152-pixel cutout), for GPUs
    "resnet18": dict(_STEIN_RECIPE),
    "resnet50": dict(_STEIN_RECIPE),
}
"""Default MoCo-v2 training options per architecture; an explicit argument overrides each one.

``views`` is stored with the encoder and used whenever it embeds: the orientations of the crop
each embedding is averaged over (:attr:`lenscat.models.preprocess.Preprocessing.views`).
``readout`` is what the stored embedding holds (:class:`lenscat.models.resnet.ResNetEncoder`):
``gap`` the pooled output, ``gap+annuli2`` (resnet-small only) that and the stage-2 map's annuli."""


def training_recipe(arch: str, **given: Any) -> dict[str, Any]:
    """The training options of ``arch``'s recipe, with every non-``None`` value of ``given`` on top.

    Raises
    ------
    LenscatError
        Unknown architecture or option.
    """
    if arch not in TRAINING_RECIPES:
        raise LenscatError(f"unknown architecture {arch!r}; expected one of {', '.join(TRAINING_RECIPES)}")
    recipe = dict(TRAINING_RECIPES[arch])
    unknown = sorted(set(given) - set(recipe))
    if unknown:
        raise LenscatError(f"unknown training option(s) {', '.join(unknown)}")
    recipe.update({k: v for k, v in given.items() if v is not None})
    return recipe


class CatalogueImages:
    """Training images of catalogued sources, read on demand from their cutout files.

    Implements the ``__len__`` / ``get(indices)`` / ``ebv(indices)`` protocol of
    :func:`lenscat.models.moco.train_moco`.
    """

    def __init__(self, paths: list[str], formats: list[str], rows: np.ndarray, ebv: np.ndarray):
        self.paths = paths
        self.formats = formats
        self.rows = rows  # (n, 2): file index, row in file
        self._ebv = ebv

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, indices: np.ndarray) -> np.ndarray:
        """(B, bands, H, W) float32 cutouts in the order of ``indices``."""
        from lenscat.images.store import open_store

        idx = np.asarray(indices, dtype=np.int64)
        out: np.ndarray | None = None
        for f in np.unique(self.rows[idx, 0]):
            sel = np.nonzero(self.rows[idx, 0] == f)[0]
            imgs = open_store(self.paths[int(f)], self.formats[int(f)]).get(self.rows[idx[sel], 1])
            if out is None:
                out = np.empty((len(idx), *imgs.shape[1:]), dtype=np.float32)
            out[sel] = imgs
        assert out is not None
        return out

    def ebv(self, indices: np.ndarray) -> np.ndarray:
        """E(B-V) [mag] of the sources (NaN where unknown)."""
        return self._ebv[np.asarray(indices, dtype=np.int64)]


@dataclass
class TrainingSet:
    """The sources an encoder is trained on, and a hash that identifies them."""

    images: CatalogueImages
    sha256: str
    n: int
    surveys: list[str]
    band_options: BandOptions
    pixel_scale_arcsec: float | None
    image_shape: tuple[int, ...]


def training_set(surveys: list[str], *, max_images: int | None, seed: int, session: Session) -> TrainingSet:
    """Sources with cutouts in ``surveys`` (a seeded random subset of at most ``max_images``)."""
    if not surveys:
        raise LenscatError("name at least one survey to train on (--survey)")
    records = [get_survey(s, session=session) for s in surveys]
    sids = [r.survey_id for r in records]
    scales = {r.pixel_scale_arcsec for r in records if r.pixel_scale_arcsec}
    rows = session.execute(
        text(
            """
            SELECT s.source_id, f.path, f.format, f.sha256, s.cutout_row, s.ebv
            FROM lenscat.sources s JOIN lenscat.cutout_files f ON f.file_id = s.cutout_file_id
            WHERE s.survey_id = ANY(:sids) ORDER BY s.source_id
            """
        ),
        {"sids": sids},
    ).all()
    if not rows:
        raise LenscatError(
            f"no sources with cutouts in survey(s) {', '.join(surveys)}: ingest a Stein-layout "
            "HDF5 file (lenscat ingest sources FILE.h5 --survey NAME)"
        )
    rng = np.random.default_rng(seed)
    pick = np.arange(len(rows))
    if max_images is not None and max_images < len(rows):
        pick = np.sort(rng.choice(len(rows), size=max_images, replace=False))
    chosen = [rows[int(i)] for i in pick]
    chosen.sort(key=lambda r: (r.path, r.cutout_row))
    files = sorted({(r.path, r.format, r.sha256) for r in chosen})
    index = {f[0]: i for i, f in enumerate(files)}
    arr = np.array([(index[r.path], int(r.cutout_row)) for r in chosen], dtype=np.int64)
    # NaN where unknown: the reddening augmentation then draws E(B-V) from the survey distribution
    ebv = np.array([np.nan if r.ebv is None else float(r.ebv) for r in chosen], dtype=np.float32)
    desc = {
        "files": [{"sha256": f[2], "path": f[0]} for f in files],
        "rows_sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
        "n": len(chosen),
    }
    sha = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
    images = CatalogueImages([f[0] for f in files], [f[1] for f in files], arr, ebv)
    opts, shape = band_options(np.array([r.source_id for r in chosen]), images, seed=seed, session=session)
    return TrainingSet(images, sha, len(chosen), list(surveys), opts, scales.pop() if len(scales) == 1 else None, shape)


def band_options(
    source_ids: np.ndarray, images: Any, *, seed: int, session: Session
) -> tuple[BandOptions, tuple[int, ...]]:
    """Training options for the cutouts of ``source_ids`` (:func:`~lenscat.images.bands.image_training_options`
    with the channel names of :func:`cutout_bands`), and the shape of one cutout batch ``(1, C, H, W)``."""
    shape = tuple(np.asarray(images.get(np.array([0], dtype=np.int64))).shape)
    names = cutout_bands(source_ids, shape[1], session=session)
    return image_training_options(names, images, seed=seed, shape=shape), shape


def cutout_bands(source_ids: np.ndarray, n_channels: int, *, session: Session) -> list[str]:
    """The band names of the cutout channels of ``source_ids`` ([] when nothing names them).

    A FITS cutout file records its bands; a Stein-layout HDF5 file does not, and then the survey's
    band list names the channels when it has one name per channel (a survey's bands can also be
    just those of its photometry columns): lists of another length than ``n_channels`` are ignored.

    Raises
    ------
    LenscatError
        The sources' cutouts have channels named differently (train one model per band set).
    """
    nb = int(n_channels)
    named = (
        session.execute(
            text(
                """
            SELECT DISTINCT COALESCE(NULLIF(f.bands, '{}'), v.bands) AS bands
            FROM lenscat.sources s JOIN lenscat.surveys v USING (survey_id)
            LEFT JOIN lenscat.cutout_files f ON f.file_id = s.cutout_file_id
            WHERE s.source_id = ANY(:ids)
            """
            ),
            {"ids": [int(i) for i in source_ids]},
        )
        .scalars()
        .all()
    )
    fitting = sorted({tuple(b) for b in named if b and len(b) == nb})
    if len(fitting) > 1:
        raise LenscatError(
            "the training cutouts have channels named differently ("
            + "; ".join(",".join(b) for b in fitting)
            + "): train one model per band set "
            "(restrict it with --survey)"
        )
    return list(fitting[0]) if fitting else []


def train_encoder(
    name: str,
    surveys: list[str],
    *,
    arch: str = "resnet-small",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    max_images: int | None = 20_000,
    max_steps: int | None = None,
    queue_size: int | None = None,
    crop: int | None = None,
    temperature: float | None = None,
    warmup_steps: int | None = None,
    zero_init_residual: bool | None = None,
    views: int | None = None,
    readout: str | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    hparams: dict[str, Any] | None = None,
    resume: bool = True,
) -> tuple[ModelVersion, bool, dict[str, Any]]:
    """Self-supervised MoCo-v2 training of an encoder on a survey's cutouts; registers the version.

    ``epochs``, ``batch_size``, ``lr``, ``queue_size``, ``crop``, ``temperature``, ``warmup_steps``
    (steps of linear learning-rate warm-up before the cosine decay) and ``zero_init_residual`` (each
    residual block starts as the identity: its last BatchNorm scale at zero) and ``views`` (the
    number of orientations of the crop, 1, 4 or 8, every embedding of the version is averaged over;
    stored with the checkpoint, it does not change the training) and ``readout`` (what the stored
    embedding holds: ``'gap'``, the pooled output, or, for ``resnet-small`` only, ``'gap+annuli2'``,
    that and the stage-2 map's annular mean and maximum; it adds no weights and does not change the
    training) left at ``None`` take the architecture's value in :data:`TRAINING_RECIPES` (``resnet-small``: the CPU recipe
    measured in docs/benchmarks.md; ``resnet18``/``resnet50``: Stein et al.'s 96-pixel setting).
    ``crop`` is the side [pixels] of the centre crop the network sees (Stein et al.: 96 of 152;
    smaller crops train faster and concentrate on the central galaxy, where arcs are for
    Einstein radii up to ~3 arcsec). The crop is stored with the checkpoint and applied at inference.
    An interrupted run (Ctrl-C) raises :class:`~lenscat.errors.Interrupted` after saving its state
    in :func:`training_state_dir`; the same call resumes it (``resume=False``: start over).
    Returns (version, created, metrics). Sessions are short: the training itself holds none.
    """
    from lenscat.models import trainstate
    from lenscat.models.checkpoint import save_encoder
    from lenscat.models.inference import best_device
    from lenscat.models.moco import train_moco

    check_name(name)
    r = training_recipe(
        arch,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        queue_size=queue_size,
        crop=crop,
        temperature=temperature,
        warmup_steps=warmup_steps,
        zero_init_residual=zero_init_residual,
        views=views,
        readout=readout,
    )
    if r["readout"] != "gap" and arch != "resnet-small":
        raise LenscatError(f"readout {r['readout']!r} applies to resnet-small only, not {arch!r}")
    epochs, batch_size, lr, crop = int(r["epochs"]), int(r["batch_size"]), float(r["lr"]), int(r["crop"])
    queue_size, temperature = int(r["queue_size"]), float(r["temperature"])
    with session_scope() as s:
        ts = training_set(surveys, max_images=max_images, seed=seed, session=s)
    dev = device or best_device()
    bands = ts.band_options
    arch_hp = {
        **bands.encoder_hparams,
        "zero_init_residual": bool(r["zero_init_residual"]),
        **({"readout": str(r["readout"])} if arch == "resnet-small" else {}),
        **(hparams or {}),
    }
    moco_hp = {
        "queue_size": queue_size,
        "temperature": temperature,
        "warmup_steps": int(r["warmup_steps"]),
        "preprocess": {**bands.preprocess(crop), "views": int(r["views"])},
        **({"augment": bands.augment} if bands.augment is not None else {}),
    }
    result = train_moco(
        ts.images,
        arch=arch,
        hparams={**arch_hp, **moco_hp},
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        device=dev,
        seed=seed,
        progress=progress,
        max_steps=max_steps,
        state_dir=training_state_dir(),
        run_tag=ts.sha256,
        resume=resume,
    )
    if result.stop_reason == "interrupted":
        raise trainstate.interrupted(f"at step {result.steps} of {result.hparams['steps_planned']}", result.state_path)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "encoder.pt"
        save_encoder(result.encoder, ckpt, arch=arch, hparams=result.encoder_hparams)
        stored, sha = store_checkpoint(ckpt)
    metrics = {
        "final_loss": float(result.history[-1]) if result.history else None,
        "steps": int(result.steps),
        "seconds": round(float(result.elapsed_s), 2),
        "device": dev,
        "images_per_s": round(float(result.images_per_s), 1),
        "n_train": ts.n,
        "resumed_from_step": int(result.resumed_from_step),
        "band_setup": bands.notes,
    }
    spec = {
        **DEFAULT_INPUT_SPEC,
        "bands": bands.bands,
        "stamp": int(ts.image_shape[-1]),
        "crop": int(crop),
        "views": int(r["views"]),
    }
    if ts.pixel_scale_arcsec:
        spec["pixel_scale_arcsec"] = float(ts.pixel_scale_arcsec)
    with session_scope() as s:
        model, created = register_model(
            "encoder",
            name,
            architecture=arch,
            output_dim=int(result.encoder.feature_dim),
            checkpoint_path=stored,
            checkpoint_sha256=sha,
            origin="trained",
            hparams={**result.hparams, "training": "moco-v2", "surveys": surveys, "max_images": max_images},
            input_spec=spec,
            training_set_sha256=ts.sha256,
            metrics=metrics,
            session=s,
        )
    if result.state_path is not None:  # the version is registered: nothing is left to resume
        result.state_path.unlink(missing_ok=True)
    return model, created, metrics


def import_encoder(
    path: str | Path,
    name: str,
    *,
    arch: str = "resnet50",
    session: Session,
    description: str | None = None,
    views: int = 1,
) -> tuple[ModelVersion, bool]:
    """Register a torchvision ResNet-50 state dict (e.g. Stein et al.'s MoCo release) as an encoder.

    ``views`` (1, 4 or 8): the orientations of the crop each of its embeddings is averaged over
    (:attr:`lenscat.models.preprocess.Preprocessing.views`; 1, as the weights were published).
    """
    from dataclasses import replace

    from lenscat.models.checkpoint import import_torchvision_resnet50, save_encoder

    check_name(name)
    src = Path(path).expanduser().resolve()
    if arch != "resnet50":
        raise LenscatError(f"import supports torchvision ResNet-50 state dicts (--arch resnet50), not {arch!r}")
    encoder, meta = import_torchvision_resnet50(src)
    encoder.preprocessing = replace(encoder.preprocessing, views=views)
    src_sha = file_sha256(src)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "encoder.pt"
        hp = dict(meta.get("hparams", {})) if isinstance(meta, dict) else {}
        save_encoder(encoder, ckpt, arch=arch, hparams=hp)
        stored, sha = store_checkpoint(ckpt)
    return register_model(
        "encoder",
        name,
        architecture=arch,
        output_dim=int(encoder.feature_dim),
        checkpoint_path=stored,
        checkpoint_sha256=sha,
        origin="imported",
        hparams={
            "source_checkpoint": str(src),
            "source_checkpoint_sha256": src_sha,
            **(
                {k: v for k, v in meta.items() if isinstance(v, str | int | float | bool)}
                if isinstance(meta, dict)
                else {}
            ),
        },
        input_spec={**DEFAULT_INPUT_SPEC, "views": encoder.preprocessing.views},
        description=description,
        session=session,
    )


def derive_encoder(
    source: str,
    *,
    views: int | None = None,
    readout: str | None = None,
    name: str | None = None,
    session: Session,
    description: str | None = None,
) -> tuple[ModelVersion, ModelVersion, bool]:
    """Register an encoder version's weights with another ``views`` or ``readout``, without training.

    The new version (of ``name``, default the source's own name) holds the same weights, hyper-
    parameters, training-set hash and metrics; its checkpoint differs only in
    :attr:`~lenscat.models.preprocess.Preprocessing.views` (the orientations each embedding is
    averaged over) and/or the ``readout`` (``'gap'`` or, for ``resnet-small``, ``'gap+annuli2'``:
    what the stored embedding holds, hence its dimension), and ``parent_model_id`` points at the
    source. Idempotent: the same request gives the same checkpoint, hence the same version (asking
    for the source's own settings under its own name returns the source).

    Returns
    -------
    (source, derived, created)

    Raises
    ------
    LenscatError
        Unknown encoder, one that holds precomputed vectors only, neither option given, a bad
        ``views``, or a readout the architecture does not have.
    InputFileError
        The source checkpoint is missing or was changed.
    """
    from dataclasses import replace

    import torch

    from lenscat.embeddings.embed import verified_checkpoint
    from lenscat.models.checkpoint import load_encoder, save_encoder
    from lenscat.models.resnet import build_encoder

    if views is None and readout is None:
        raise LenscatError("nothing to derive: give another views and/or readout")
    src = get_model("encoder", source, session=session)
    from lenscat.models.features import FEATURES_ARCH

    if src.architecture == FEATURES_ARCH:  # a classifier's penultimate layer: derived again from it
        if readout is not None:
            raise LenscatError(
                f"encoder {src.label} holds a classifier's penultimate layer: it has no readout to choose (only views)"
            )
        if src.parent_model_id is None:
            raise LenscatError(f"encoder {src.label} does not record the classifier it was read from")
        clf = get_model("classifier", src.parent_model_id, session=session)
        _, derived, created = encoder_from_classifier(
            clf.label, name=name or src.name, views=views, description=description, session=session
        )
        return src, derived, created
    encoder, meta = load_encoder(verified_checkpoint(src))
    if views is not None:
        encoder.preprocessing = replace(encoder.preprocessing, views=views)
    arch, hp = meta["arch"], dict(meta["hparams"])
    if readout is not None and readout != hp.get("readout", "gap"):
        if arch != "resnet-small":
            raise LenscatError(f"readout {readout!r} applies to resnet-small encoders only; {src.label} is a {arch}")
        hp["readout"] = readout
    with torch.device("meta"):
        dim = int(build_encoder(arch, **hp).feature_dim)
    target = check_name(name or src.name)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "encoder.pt"
        save_encoder(encoder, ckpt, arch=arch, hparams=hp, extra=meta["extra"])
        stored, sha = store_checkpoint(ckpt)
    if target == src.name and sha == src.checkpoint_sha256:
        return src, src, False
    metrics = session.execute(
        text("SELECT metrics FROM lenscat.model_versions WHERE model_id = :m"), {"m": src.model_id}
    ).scalar_one()
    new_views = int(encoder.preprocessing.views)
    changes = [f"embeddings averaged over {new_views} view(s)"] if views is not None else []
    changes += [f"readout {readout}"] if readout is not None else []
    derived, created = register_model(
        "encoder",
        target,
        architecture=src.architecture,
        output_dim=dim,
        checkpoint_path=stored,
        checkpoint_sha256=sha,
        origin=src.origin,
        hparams={**src.hparams, **({"readout": hp["readout"]} if "readout" in hp else {}), "derived_from": src.label},
        input_spec={**src.input_spec, "views": new_views},
        training_set_sha256=src.training_set_sha256,
        parent_model_id=src.model_id,
        metrics=dict(metrics or {}),
        description=description or f"{src.label} with {' and '.join(changes)}",
        session=session,
    )
    return src, derived, created


def encoder_from_classifier(
    classifier: str,
    *,
    name: str | None = None,
    views: int | None = None,
    description: str | None = None,
    session: Session,
) -> tuple[ModelVersion, ModelVersion, bool]:
    """Register an image classifier's penultimate layer as an encoder version.

    The encoder (``name``, default ``f"{classifier name}-features"``; architecture
    ``classifier-features``) embeds a cutout as the L2-normalised output of the classifier's
    backbone (the input of its linear head) on the crop the classifier sees, averaged over the
    orientations it averages its score over (``views``: another 1, 4 or 8 instead). Its checkpoint
    (:mod:`lenscat.models.features`) holds the classifier's network and preprocessing; its parent
    is the classifier version, whose training-set hash it keeps. Nothing is trained or copied from
    the database; the embeddings are made as for any encoder (an embed job, or reprocessing).
    Idempotent: the same classifier version (and ``views``) gives the same checkpoint, hence the
    same encoder version.

    Parameters
    ----------
    classifier : str
        Classifier name (latest version) or ``NAME@VERSION``: an image classifier (``cnn``,
        ``finetune``, ...), not a linear probe on embeddings.
    name : str, optional
        Encoder name; a new checkpoint under an existing name becomes its next version.
    views : int, optional
        Orientations of the crop each embedding averages (1, 4 or 8; default the classifier's).
    description : str, optional
        Free text stored with the version.
    session : Session
        Database session; the caller commits.

    Returns
    -------
    (classifier, encoder, created)

    Raises
    ------
    LenscatError
        Unknown classifier, or one without an image network (a linear probe), or a bad ``views``.
    InputFileError
        The classifier's checkpoint is missing or was changed.
    """
    from lenscat.models.features import FEATURES_ARCH, save_features

    clf = get_model("classifier", classifier, session=session)
    if clf.architecture == "linear":
        enc = (
            get_model("encoder", clf.parent_model_id, session=session).label
            if clf.parent_model_id is not None
            else "its encoder"
        )
        raise LenscatError(
            f"classifier {clf.label} is a linear probe on the embeddings of {enc}: it has no image "
            f"network whose penultimate layer could be stored (use {enc} itself, or an image "
            "classifier such as cnn or finetune)"
        )
    if not clf.checkpoint_path or not clf.checkpoint_sha256:
        raise LenscatError(
            f"classifier {clf.label} ({clf.architecture}) has no image network of its own to read "
            "features from (derive from an image classifier, e.g. one of its members)"
        )
    src = Path(clf.checkpoint_path)
    if not src.is_file():
        raise InputFileError(f"{src}: checkpoint of classifier {clf.label} is missing")
    if file_sha256(src) != clf.checkpoint_sha256:
        raise InputFileError(
            f"{src}: checkpoint of classifier {clf.label} does not match its sha256; the file was changed"
        )
    target = check_name(name or f"{clf.name}-features")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "features.pt"
        try:
            _, dim = save_features(src, ckpt, views=views)
        except InputFileError as exc:  # a checkpoint that is not an image classifier's
            raise LenscatError(
                f"classifier {clf.label} ({clf.architecture}) has no image network of its own to "
                f"read features from: {' '.join(str(exc).split())}"
            ) from None
        stored, sha = store_checkpoint(ckpt)
    from lenscat.models.features import load_features

    encoder, _ = load_features(stored)
    pre = encoder.preprocessing
    spec = {
        **{k: v for k, v in (clf.input_spec or {}).items() if k != "input"},
        "crop": int(pre.crop),
        "views": int(pre.views),
    }
    model, created = register_model(
        "encoder",
        target,
        architecture=FEATURES_ARCH,
        output_dim=int(dim),
        checkpoint_path=stored,
        checkpoint_sha256=sha,
        origin="trained",
        hparams={
            "readout": "penultimate",
            "classifier": clf.label,
            "classifier_architecture": clf.architecture,
            "classifier_sha256": clf.checkpoint_sha256,
            "backbone_arch": getattr(encoder.backbone, "arch", None),
            "derived_from": clf.label,
        },
        input_spec=spec,
        training_set_sha256=clf.training_set_sha256,
        parent_model_id=clf.model_id,
        description=description
        or f"penultimate layer ({dim}-d) of classifier {clf.label}"
        + (f", averaged over {int(pre.views)} view(s)" if int(pre.views) > 1 else ""),
        session=session,
    )
    return clf, model, created


VECTOR_DATASETS = ("embeddings", "embedding", "representations", "features", "vectors")


def read_vectors(path: Path, id_col: str = "objid", dataset: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids as str, vectors) from .npz / .h5 (ids + vectors) or .npy with a sibling ids file."""
    if not path.is_file():
        raise InputFileError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.keys())
                vname = dataset or next((n for n in VECTOR_DATASETS if n in names), None)
                if vname is None or vname not in names:
                    raise InputFileError(
                        f"{path}: no vectors array (looked for {', '.join(VECTOR_DATASETS)}); "
                        f"arrays: {', '.join(names)}"
                    )
                if id_col not in names:
                    raise InputFileError(f"{path}: no id array {id_col!r}; arrays: {', '.join(names)}")
                return z[id_col].astype(str), np.asarray(z[vname])
        if suffix in (".h5", ".hdf5", ".hdf"):
            import h5py

            with h5py.File(path, "r") as fh:
                names = list(fh.keys())
                vname = dataset or next((n for n in VECTOR_DATASETS if n in names), None)
                if vname is None or vname not in names:
                    raise InputFileError(f"{path}: no vectors dataset (looked for {', '.join(VECTOR_DATASETS)})")
                if id_col not in names:
                    raise InputFileError(f"{path}: no id dataset {id_col!r}; datasets: {', '.join(names)}")
                ids = fh[id_col][...]
                ids = np.char.decode(ids, "utf-8") if ids.dtype.kind == "S" else ids.astype(str)
                return np.asarray(ids, dtype=str), np.asarray(fh[vname][...])
        if suffix == ".npy":
            ids_path = path.with_name(path.stem + f".{id_col}.txt")
            if not ids_path.is_file():
                raise InputFileError(
                    f"{path}: a bare .npy needs its ids, one per line, in {ids_path.name} "
                    "(or use .npz/.h5 with an id array)"
                )
            vec = np.load(path, allow_pickle=False)
            ids = np.array(ids_path.read_text().split(), dtype=str)
            return ids, vec
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path}: cannot read vectors: {exc}") from exc
    raise InputFileError(f"{path}: unsupported vectors file (use .npz, .h5 or .npy)")


@dataclass
class VectorIngest:
    """Summary of an ingest of precomputed embeddings."""

    encoder: str
    n_rows: int
    n_loaded: int
    rejects: list[tuple[int, str, str]]  # (row, objid, reason)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (first rejects only)."""
        return {
            "encoder": self.encoder,
            "n_rows": self.n_rows,
            "n_loaded": self.n_loaded,
            "n_rejected": len(self.rejects),
            "rejects": [{"row": r, "objid": o, "reason": why} for r, o, why in self.rejects[:20]],
        }


def ingest_vectors(
    path: str | Path,
    encoder: str,
    survey: str,
    *,
    id_col: str = "objid",
    dataset: str | None = None,
    session: Session,
    batch: int = 50_000,
) -> VectorIngest:
    """Load precomputed vectors keyed by survey object id as an encoder's embeddings.

    An existing encoder (``NAME`` or ``NAME@V``) with the same dimension receives them; an unknown
    name is registered as an ``external`` encoder whose "checkpoint" is the vectors file.
    Rows whose id is not in the survey, duplicated, or non-finite are rejected with their reason;
    the rest load in one transaction (the caller commits).
    """
    p = Path(path).expanduser().resolve()
    ids, vec = read_vectors(p, id_col, dataset)
    if vec.ndim != 2 or len(vec) != len(ids):
        raise InputFileError(f"{p}: vectors must be (n, dim) with one id each; got {vec.shape} and {len(ids)} ids")
    survey_row = get_survey(survey, session=session)
    try:
        model = get_model("encoder", encoder, session=session)
        if model.output_dim != vec.shape[1]:
            raise LenscatError(
                f"encoder {model.label} makes {model.output_dim}-d vectors; {p} has "
                f"{vec.shape[1]}-d: use another --encoder name"
            )
    except LenscatError as exc:
        if "no encoder" not in str(exc):
            raise
        model, _ = register_model(
            "encoder",
            encoder.partition("@")[0],
            architecture="external",
            output_dim=int(vec.shape[1]),
            checkpoint_path=p,
            checkpoint_sha256=file_sha256(p),
            origin="external",
            hparams={"vectors_file": str(p), "id_col": id_col},
            session=session,
        )
    rejects: list[tuple[int, str, str]] = []
    ok = np.isfinite(vec).all(axis=1) & (np.abs(vec).sum(axis=1) > 0)
    for i in np.nonzero(~ok)[0][:100_000]:
        rejects.append((int(i) + 1, str(ids[i]), "vector has NaN/inf or is all zeros"))
    _, first = np.unique(ids, return_index=True)
    dup = np.ones(len(ids), dtype=bool)
    dup[first] = False
    for i in np.nonzero(dup & ok)[0]:
        rejects.append((int(i) + 1, str(ids[i]), "duplicate id in the file (first occurrence kept)"))
    keep = ok & ~dup
    lookup: dict[str, int] = dict(
        session.execute(
            text("SELECT objid, source_id FROM lenscat.sources WHERE survey_id = :sv AND objid = ANY(:ids)"),
            {"sv": survey_row.survey_id, "ids": ids[keep].tolist()},
        ).all()
    )
    sid = np.array([lookup.get(str(x), -1) for x in ids], dtype=np.int64)
    for i in np.nonzero(keep & (sid < 0))[0]:
        rejects.append((int(i) + 1, str(ids[i]), f"objid not in survey {survey}"))
    keep &= sid >= 0
    rows = np.nonzero(keep)[0]
    n = 0
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        n += upsert_embeddings(model, sid[part], vec[part], session=session)
    rejects.sort()
    return VectorIngest(model.label, len(ids), n, rejects)
