"""Classifier architectures 'ensemble' and 'anomaly': documented in the column comments, no new tables.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

Design notes
------------
* An ``ensemble`` classifier version (:mod:`lenscat.classifiers.ensemble`) combines other classifier versions'
  stored scores (rank-percentile average or stacking); its checkpoint is a small JSON file naming
  the members (model ids, checkpoint and training-set sha256), so the provenance lives where every
  other classifier's does, and ``parent_model_id`` stays NULL (there are several members).
* An ``anomaly`` classifier version (:mod:`lenscat.embeddings.anomaly`) scores a source's isolation in an
  encoder's embedding space (mean cosine distance to its k nearest neighbours, divided by 2);
  ``parent_model_id`` is the encoder, its checkpoint keeps the reference set's source ids.
* Both write ``lenscat.scores`` rows through the normal score job, so the score column's meaning
  widens ("higher = more lens-like, or more unusual"); only comments change here.
"""

from __future__ import annotations

from alembic import op

from lenscat.migrations.comments import comment_sql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

NEW: dict[tuple[str, str], dict[str, str]] = {
    ("lenscat.model_versions", "TABLE"): {
        "architecture": "Architecture, e.g. 'resnet50', 'resnet-small', 'external' for encoders; 'linear', "
        "'finetune', 'cnn', 'radial' (radial colour-profile baseline), 'ensemble' (a combination of other "
        "classifier versions' scores) or 'anomaly' (isolation in an encoder's embedding space) for "
        "classifiers (no unit).",
        "parent_model_id": "Model this one builds on (a classifier's or anomaly score's encoder), if any; NULL for "
        "an ensemble, whose members are named in its checkpoint and hparams.",
    },
    ("lenscat.scores", "TABLE"): {
        "": "Classifier scores: one per (classifier version, source); higher = more lens-like (for an 'anomaly' "
        "version: more isolated in embedding space).",
        "score": "Score in [0, 1] (dimensionless): a probability-like lens score; the mean rank percentile of the "
        "members for a 'rank' ensemble; the mean cosine distance to the k nearest neighbours / 2 for "
        "an 'anomaly' version.",
    },
    ("public.classifiers", "VIEW"): {
        "architecture": "'linear' (on embeddings), 'finetune', 'cnn' or 'radial' (on images), 'ensemble' (combines the "
        "member versions listed in hparams.members) or 'anomaly' (kNN isolation in the encoder's "
        "embedding space).",
        "encoder": "Encoder name@version the classifier reads (NULL for a CNN from scratch and for an ensemble).",
    },
    ("public.scores", "VIEW"): {
        "score": "Score in [0, 1] (dimensionless); higher = more lens-like, or more unusual for an 'anomaly' "
        "classifier.",
    },
}

OLD: dict[tuple[str, str], dict[str, str]] = {
    ("lenscat.model_versions", "TABLE"): {
        "architecture": "Architecture, e.g. 'resnet50', 'resnet-small', 'external' (no unit).",
        "parent_model_id": "Model this one builds on (a classifier's encoder), if any.",
    },
    ("lenscat.scores", "TABLE"): {
        "": "Classifier scores: one per (classifier version, source); higher = more lens-like.",
        "score": "Probability-like lens score in [0, 1] (dimensionless).",
    },
    ("public.classifiers", "VIEW"): {
        "architecture": "'linear' (on embeddings), 'finetune' or 'cnn' (on images).",
        "encoder": "Encoder name@version the classifier reads (NULL for a CNN from scratch).",
    },
    ("public.scores", "VIEW"): {
        "score": "Lens score in [0, 1] (dimensionless).",
    },
}


def _apply(comments: dict[tuple[str, str], dict[str, str]]) -> None:
    for (obj, kind), cols in comments.items():
        for stmt in comment_sql(obj, cols, kind=kind):
            op.execute(stmt)


def upgrade() -> None:
    _apply(NEW)


def downgrade() -> None:
    _apply(OLD)
