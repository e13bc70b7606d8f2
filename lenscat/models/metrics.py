"""Ranking metrics of binary scores, in plain NumPy: ROC AUC, average precision, completeness at a false-positive rate.

The one home of the metric helpers the models' training loops report (validation AUC, average
precision, completeness at a false-positive rate); :mod:`lenscat.classifiers.evaluation` builds
its lens-finding summary (:func:`~lenscat.classifiers.evaluation.ranking_metrics`) on them. Higher
score means more positive throughout.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from lenscat.errors import LenscatError

__all__ = ["average_precision", "completeness_at_fpr", "roc_auc"]


def _as_arrays(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    need_negatives: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(scores as float64, labels as bool)``, or raise :class:`LenscatError`."""
    try:
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LenscatError(f"scores must be numbers: {exc}") from None
    raw = np.asarray(labels)
    if s.ndim != 1:
        raise LenscatError(f"scores must be a one-dimensional array, got shape {s.shape}")
    if raw.ndim != 1:
        raise LenscatError(f"labels must be a one-dimensional array, got shape {raw.shape}")
    if s.shape[0] != raw.shape[0]:
        raise LenscatError(f"scores and labels differ in length: {s.shape[0]} scores, {raw.shape[0]} labels")
    n_nan = int(np.count_nonzero(np.isnan(s)))
    if n_nan:
        first = int(np.flatnonzero(np.isnan(s))[0])
        raise LenscatError(
            f"scores contain {n_nan} NaN value(s) (first at index {first}); drop or fix those images before evaluating"
        )
    if raw.dtype == np.bool_:
        y = raw
    elif np.issubdtype(raw.dtype, np.number):
        ok = (raw == 0) | (raw == 1)
        if not np.all(ok):
            bad = raw[~ok][0]
            raise LenscatError(f"labels must be booleans or 0/1 (1 = lens), found the value {bad!r}")
        y = raw == 1
    else:
        raise LenscatError(f"labels must be booleans or 0/1 (1 = lens), not {raw.dtype} values")
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0:
        raise LenscatError(
            f"labels contain no positives (lenses) among {s.shape[0]} images: ranking metrics are undefined"
        )
    if need_negatives and n_pos == s.shape[0]:
        raise LenscatError(
            f"labels contain no negatives (non-lenses) among {s.shape[0]} images: ranking metrics are undefined"
        )
    return s, y


def _ranking_order(scores: np.ndarray) -> np.ndarray:
    """Indices in descending score order; ties keep their original order (lower index first)."""
    # A stable sort of the negated scores keeps tied elements in index order.
    return np.argsort(-scores, kind="stable")


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic, ties between a lens and a non-lens counting 1/2."""
    # Average ranks (1-based) for tied scores: a group of c equal values occupying ranks
    # start+1 .. start+c gets the rank start + (c + 1) / 2.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    avg_rank = starts + (counts + 1) / 2.0
    n_pos = int(np.count_nonzero(labels))
    n_neg = labels.shape[0] - n_pos
    rank_sum = float(np.sum(avg_rank[inverse.ravel()][labels]))
    u = rank_sum - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN with one class only."""
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.all() or not y.any():
        return float("nan")
    return _auc(s, y)


def _average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision with tied scores treated as one threshold.

    For every lens, the precision among all images scoring at least as high as it, averaged over
    the lenses: ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, the same
    convention as scikit-learn's ``average_precision_score``.
    """
    order = _ranking_order(scores)
    s = scores[order]
    y = labels[order]
    tp = np.cumsum(y)
    # The last index of every run of equal scores: the cut-off for that threshold.
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    tp_at = tp[last]
    precision = tp_at / (last + 1.0)
    new_tp = np.diff(tp_at, prepend=0)
    return float(np.sum(new_tp * precision) / tp[-1])


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of ``scores`` for binary ``labels`` (NaN with one class only).

    Tied scores form one threshold (:func:`_average_precision`); the scores are checked as
    :func:`~lenscat.classifiers.evaluation.ranking_metrics` checks them.
    """
    y = np.asarray(labels).reshape(-1)
    if y.sum() == 0 or y.sum() == len(y):
        return float("nan")
    s, yb = _as_arrays(np.asarray(scores, dtype=np.float64), y.astype(bool))
    return float(_average_precision(s, yb))


def completeness_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float = 1e-3) -> tuple[float, float]:
    """Completeness (true-positive rate) at the threshold keeping the false-positive rate <= fpr.

    The threshold is the ``floor(fpr * n_neg) + 1``-th highest negative score; positives
    strictly above it count.

    Returns
    -------
    completeness, threshold : float
        NaN when a class is missing.
    """
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    neg = np.sort(s[~y])[::-1]
    if y.sum() == 0 or len(neg) == 0:
        return float("nan"), float("nan")
    k = int(math.floor(fpr * len(neg)))
    thr = float(neg[min(k, len(neg) - 1)])
    return float(np.mean(s[y] > thr)), thr
