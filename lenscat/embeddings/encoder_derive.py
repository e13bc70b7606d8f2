"""Encoder versions derived without training (:func:`derive_encoder`, :func:`encoder_from_classifier`).

Another ``views`` or ``readout`` of an encoder's weights, or an image classifier's penultimate layer
registered as an encoder; the new version's ``parent_model_id`` points at what it was made from.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.embeddings.embed import verified_checkpoint
from lenscat.errors import InputFileError, LenscatError
from lenscat.registry.checkpoints import verify_checkpoint
from lenscat.registry.versions import ModelVersion, check_name, get_model, register_model, store_checkpoint


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
    src = verify_checkpoint(clf)
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
