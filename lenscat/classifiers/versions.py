"""Classifier versions: the architectures, the version list, and a version's provenance.

Four trained architectures, each a versioned ``classifier`` row of ``lenscat.model_versions``:

* ``linear`` -- logistic regression on an encoder's stored embeddings (Stein et al. 2022's linear
  probe; :mod:`lenscat.models.linear`); ``parent_model_id`` is the encoder version.
* ``finetune`` -- the encoder and a linear head trained together on the cutouts (head learning
  rate 10x the backbone's, lenses oversampled to ~5% of each batch, Stein's augmentations).
* ``cnn`` -- a CNN from scratch on the cutouts with the few-label recipe
  (:data:`lenscat.models.supervised_train.FEW_LABEL_RECIPE`): every negative, lenses oversampled to a
  quarter of each batch with augmentations, early stopping on the validation split, 8-view scores.
  The default of ``lenscat classifier train``.
* ``radial`` -- the radial colour-profile baseline (:mod:`lenscat.models.radial`): 12 annuli x 3
  bands of normalised surface brightness and logistic regression, scored on the cutouts.

Training sets follow Stein et al.: the positives are the labelled lenses, the negatives are drawn
at random from the survey (excluding sources within 25 arcsec of any known lens) at a chosen
lens:non-lens ratio (1:4000 worked best for them; ``cnn`` and ``radial`` take every negative), and
a validation split at a realistic ratio picks the epoch. Injected lenses (label origin
``injection``) train only. The training and validation source ids are kept in the checkpoint, so
evaluation can leave them out and the training-set hash can be recomputed.

The training sets are made in :mod:`lenscat.classifiers.training_sets`, the four architectures train
in :mod:`~lenscat.classifiers.train_linear`, :mod:`~lenscat.classifiers.train_image` and
:mod:`~lenscat.classifiers.train_radial`, load through :mod:`~lenscat.classifiers.loaders` and score
in chunks in :mod:`~lenscat.classifiers.scoring`.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.registry.versions import ModelVersion, get_model

ARCHITECTURES = ("linear", "finetune", "cnn", "radial")
DERIVED_ARCHITECTURES = ("ensemble", "anomaly")
"""Classifier versions whose scores are computed from other stored rows (members' scores,
embeddings) by :mod:`lenscat.classifiers.ensemble` and :mod:`lenscat.embeddings.anomaly`."""


CLASSIFIER_LIST_COLUMNS = (
    "classifier_id",
    "classifier",
    "version",
    "architecture",
    "encoder",
    "training_set_sha256",
    "n_scores",
    "created_at",
    "members",
)


def list_classifiers(*, session: Session) -> list[list[Any]]:
    """Every classifier version (rows of :data:`CLASSIFIER_LIST_COLUMNS`): encoder, training-set hash,
    number of scores and, for an ensemble, its members' labels (comma-separated)."""
    rows = session.execute(
        text(
            "SELECT c.classifier_id, c.classifier, c.version, c.architecture, c.encoder, c.training_set_sha256, "
            "(SELECT count(*) FROM lenscat.scores x WHERE x.model_id = c.classifier_id) AS n_scores, c.created_at, "
            "(SELECT string_agg(m ->> 'label', ',') FROM jsonb_array_elements(CASE WHEN c.architecture = 'ensemble' "
            "THEN c.hparams -> 'members' ELSE '[]'::jsonb END) m) AS members "
            "FROM public.classifiers c ORDER BY c.classifier, c.version"
        )
    ).all()
    return [list(r) for r in rows]


def classifier_lineage(model: ModelVersion, *, session: Session) -> dict[str, Any]:
    """The provenance chain of a classifier version: itself, its encoder, their training sets."""
    out: dict[str, Any] = {
        "classifier": model.label,
        "architecture": model.architecture,
        "checkpoint_sha256": model.checkpoint_sha256,
        "training_set_sha256": model.training_set_sha256,
        "hparams": model.hparams,
    }
    if model.parent_model_id:
        enc = get_model("encoder", int(model.parent_model_id), session=session)
        out["encoder"] = {
            "encoder": enc.label,
            "architecture": enc.architecture,
            "checkpoint_sha256": enc.checkpoint_sha256,
            "training_set_sha256": enc.training_set_sha256,
            "hparams": enc.hparams,
        }
    return out


def hparams_json(model: ModelVersion) -> str:
    """Hyper-parameters as sorted JSON (for display)."""
    return json.dumps(model.hparams, sort_keys=True)
