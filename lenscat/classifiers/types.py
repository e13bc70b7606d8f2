"""Classifier dataclasses: a training split, a training result, a planned score job, a loaded ensemble."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lenscat.errors import Step
from lenscat.registry.versions import ModelVersion


def score_step(classifier: str) -> Step:
    """The step that scores the sources with a classifier (``lenscat classifier score --name C``)."""
    return Step(("classifier", "score"), (("name", classifier),), f"score the sources with classifier {classifier}")


@dataclass
class TrainingSplit:
    """Source ids and labels of the training and validation sets."""

    train_ids: np.ndarray
    train_y: np.ndarray
    val_ids: np.ndarray
    val_y: np.ndarray
    pool_size: int
    notes: list[str] = field(default_factory=list)
    n_hard: int = 0
    hard_weight: int = 1

    def sha256(self, salt: str) -> str:
        """Hash of (salt, sorted ids and labels of both sets): the training-set identity."""
        h = hashlib.sha256(salt.encode())
        for ids, y in ((self.train_ids, self.train_y), (self.val_ids, self.val_y)):
            o = np.argsort(ids)
            h.update(ids[o].astype("<i8").tobytes())
            h.update(y[o].astype("<i1").tobytes())
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        """Counts and ratios."""
        tp, vp = int(self.train_y.sum()), int(self.val_y.sum())
        return {
            "train_lenses": tp,
            "train_nonlenses": len(self.train_y) - tp,
            "train_ratio": round((len(self.train_y) - tp) / max(tp, 1), 1),
            "val_lenses": vp,
            "val_nonlenses": len(self.val_y) - vp,
            "val_ratio": round((len(self.val_y) - vp) / max(vp, 1), 1),
            "negative_pool": self.pool_size,
            **({"hard_negatives": self.n_hard, "hard_negative_weight": self.hard_weight} if self.n_hard else {}),
        }


@dataclass
class TrainResult:
    """A registered classifier version and its training report."""

    model: ModelVersion
    created: bool
    report: dict[str, Any]


@dataclass
class PlannedScoreJob:
    """A planned ``score`` job."""

    job_id: int
    model: ModelVersion
    n_items: int
    n_chunks: int


@dataclass(frozen=True)
class Ensemble:
    """A loaded ensemble checkpoint."""

    method: str
    members: list[dict[str, Any]]
    quantiles: np.ndarray | None
    coef: np.ndarray | None
    intercept: float
    fit_ids: np.ndarray
    seen_ids: np.ndarray

    @property
    def member_ids(self) -> list[int]:
        """Model ids of the members, in checkpoint order."""
        return [int(m["model_id"]) for m in self.members]
