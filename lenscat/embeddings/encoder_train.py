"""Self-supervised MoCo-v2 training of an encoder on the survey's cutouts (:func:`train_encoder`).

The training options per architecture (:data:`TRAINING_RECIPES`, :func:`training_recipe`), the
training set drawn from the catalogue (:func:`training_set`) and the training run that registers the
encoder version.
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

from lenscat.catalogue.surveys import get_survey
from lenscat.db.session import session_scope
from lenscat.embeddings.encoders import DEFAULT_INPUT_SPEC, CatalogueImages, band_options
from lenscat.errors import InvalidParameter, LenscatError, MissingPrerequisite, Step
from lenscat.images.bands import BandOptions
from lenscat.registry.device import select_device
from lenscat.registry.versions import ModelVersion, check_name, register_model, store_checkpoint, training_state_dir

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
        raise InvalidParameter("surveys", "name at least one survey to train on ({surveys})")
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
        raise MissingPrerequisite(
            f"no sources with cutouts in survey(s) {', '.join(surveys)}: {{step}}",
            Step(
                ("ingest", "sources"),
                ((None, "FILE.h5"), ("survey", surveys[0] if len(surveys) == 1 else "NAME")),
                "ingest a Stein-layout HDF5 file of cutouts into the survey",
            ),
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
    training) left at ``None`` take the architecture's value in :data:`TRAINING_RECIPES` (``resnet-small``: the CPU
    recipe measured in docs/benchmarks.md; ``resnet18``/``resnet50``: Stein et al.'s 96-pixel setting).
    ``crop`` is the side [pixels] of the centre crop the network sees (Stein et al.: 96 of 152;
    smaller crops train faster and concentrate on the central galaxy, where arcs are for
    Einstein radii up to ~3 arcsec). The crop is stored with the checkpoint and applied at inference.
    An interrupted run (Ctrl-C) raises :class:`~lenscat.errors.Interrupted` after saving its state
    in :func:`training_state_dir`; the same call resumes it (``resume=False``: start over).
    Returns (version, created, metrics). Sessions are short: the training itself holds none.
    """
    from lenscat.models import trainstate
    from lenscat.models.checkpoint import save_encoder
    from lenscat.models.moco_train import train_moco

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
    dev = select_device(device)  # LENSCAT_DEVICE by default, else CUDA when available
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
