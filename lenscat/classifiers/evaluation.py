"""Evaluate a lens classifier's ranking at realistic class imbalance.

Lenses are rare: roughly one galaxy in 10^4 is a strong lens, so what matters is how many real
lenses sit at the very top of a ranked list that a person will inspect, not the overall accuracy.
These metrics follow the lens-finding literature:

* ``auc``: the area under the ROC curve (Metcalf et al. 2019, the Strong Gravitational Lens
  Finding Challenge);
* ``tpr0`` and ``tpr10``: the highest true-positive rate reachable with zero, or at most ten, false
  positives (Metcalf et al. 2019), which reward a clean top of the list;
* precision and recall among the top ``N`` images inspected (Stein et al. 2022, who inspected the
  top-ranked cutouts of DECaLS by eye), and the average precision.

Higher score means more lens-like throughout. The generic helpers (input checks, AUC, average
precision) live in :mod:`lenscat.models.metrics`. Everything here is plain numpy (plus matplotlib for
:func:`~lenscat.classifiers.evaluation_plot.plot_evaluation`) and works on millions of scores in well under a second.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from lenscat.errors import LenscatError
from lenscat.models.metrics import _as_arrays, _auc, _average_precision, _ranking_order

__all__ = ["ranking_metrics", "recall_curve"]

#: Number of false positives allowed by ``tpr10``.
_TPR10_FALSE_POSITIVES = 10


# --------------------------------------------------------------------------------------------
# the metrics


def _tpr_at_false_positives(pos: np.ndarray, neg: np.ndarray, k: int) -> float:
    """Fraction of positives strictly above the (k+1)-th highest negative (1.0 if <= k negatives)."""
    if neg.shape[0] <= k:
        return 1.0
    threshold = np.partition(neg, neg.shape[0] - k - 1)[neg.shape[0] - k - 1]
    return int(np.count_nonzero(pos > threshold)) / pos.shape[0]


def _default_top_n(n: int, n_pos: int) -> list[int]:
    one_percent = max(1, n // 100)
    return sorted({m for m in (n_pos, one_percent, 100, 1000) if m <= n})


def ranking_metrics(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    top_n: Iterable[int] | None = None,
) -> dict[str, Any]:
    """Summarise how well a classifier ranks lenses above non-lenses.

    Parameters
    ----------
    scores : array_like of float, shape (n,)
        Classifier scores; higher means more lens-like. NaN is not allowed; ``±inf`` is.
    labels : array_like of bool or {0, 1}, shape (n,)
        The truth: ``True``/``1`` for a lens.
    top_n : iterable of int, optional
        Numbers of top-ranked images to report precision and recall for. Each must satisfy
        ``1 <= N <= n``; duplicates are dropped and the list is sorted. The default is the number
        of lenses, 1 % of ``n`` (rounded down, at least 1), 100 and 1000, keeping those ``<= n``.

    Returns
    -------
    dict
        A JSON-serialisable dict of plain Python numbers:

        ``n``, ``n_pos``, ``n_neg`` : int
            Images, lenses and non-lenses.
        ``imbalance`` : float
            ``n_neg / n_pos``.
        ``auc`` : float
            ROC AUC, the Mann-Whitney statistic with average ranks for ties (a lens tied with a
            non-lens counts 1/2).
        ``tpr0`` : float
            Fraction of lenses scoring strictly above every non-lens: the true-positive rate
            reachable with no false positive. A lens tied with the best non-lens does not count.
        ``tpr10`` : float
            Fraction of lenses scoring strictly above the 11th-highest non-lens score (at most
            ten false positives); 1.0 when there are ten non-lenses or fewer.
        ``average_precision`` : float
            For each lens, the precision among the images scoring at least as high as it,
            averaged over the lenses (tied scores form one threshold).
        ``top_n`` : list of dict
            One ``{"n": N, "true_positives": tp, "precision": tp / N, "recall": tp / n_pos}``
            per ``N``. The top ``N`` are the first ``N`` images in descending score order; tied
            scores are broken by original index (the lower index ranks higher), so the result is
            deterministic but may depend on the input order when ties straddle the cut.

    Raises
    ------
    LenscatError
        If the arrays differ in length or are not one-dimensional, a score is NaN, a label is
        not boolean/0/1, there are no lenses or no non-lenses, or an ``N`` is out of range.

    Examples
    --------
    >>> m = ranking_metrics([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0], top_n=[1, 2])
    >>> m["auc"], m["tpr0"], m["top_n"][0]["precision"]
    (0.75, 0.5, 1.0)
    """
    s, y = _as_arrays(scores, labels)
    n = int(s.shape[0])
    n_pos = int(np.count_nonzero(y))
    n_neg = n - n_pos
    if top_n is None:
        ns = _default_top_n(n, n_pos)
    else:
        ns = []
        for m in top_n:
            if isinstance(m, bool) or int(m) != m:
                raise LenscatError(f"top_n values must be whole numbers, got {m!r}")
            if not 1 <= int(m) <= n:
                raise LenscatError(f"top_n value {int(m)} is out of range: need 1 <= N <= {n}")
            ns.append(int(m))
        ns = sorted(set(ns))

    pos, neg = s[y], s[~y]
    cum_tp = np.cumsum(y[_ranking_order(s)])
    rows = []
    for m in ns:
        tp = int(cum_tp[m - 1])
        rows.append({"n": m, "true_positives": tp, "precision": tp / m, "recall": tp / n_pos})
    return {
        "n": n,
        "n_pos": n_pos,
        "n_neg": n_neg,
        "imbalance": n_neg / n_pos,
        "auc": float(_auc(s, y)),
        "tpr0": float(_tpr_at_false_positives(pos, neg, 0)),
        "tpr10": float(_tpr_at_false_positives(pos, neg, _TPR10_FALSE_POSITIVES)),
        "average_precision": float(_average_precision(s, y)),
        "top_n": rows,
    }


def recall_curve(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    n_max: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recall and precision against the number of top-ranked images inspected.

    Parameters
    ----------
    scores : array_like of float, shape (n,)
        Classifier scores; higher means more lens-like.
    labels : array_like of bool or {0, 1}, shape (n,)
        ``True``/``1`` for a lens. At least one lens is needed; non-lenses are optional.
    n_max : int, optional
        Largest number of images inspected; default (and upper limit) ``n``. Larger values are
        clipped to ``n``.

    Returns
    -------
    n_inspected : ndarray of int64, shape (n_max,)
        ``1, 2, ..., n_max``.
    recall : ndarray of float64, shape (n_max,)
        Fraction of all lenses among the top ``N``.
    precision : ndarray of float64, shape (n_max,)
        Fraction of the top ``N`` that are lenses.

    Notes
    -----
    The ranking is the one of :func:`ranking_metrics`: descending score, ties broken by original
    index (lower index first).

    Raises
    ------
    LenscatError
        On bad input (see :func:`ranking_metrics`) or ``n_max < 1``.
    """
    s, y = _as_arrays(scores, labels, need_negatives=False)
    n = int(s.shape[0])
    if n_max is None:
        n_max = n
    if isinstance(n_max, bool) or int(n_max) != n_max or n_max < 1:
        raise LenscatError(f"n_max must be a whole number >= 1, got {n_max!r}")
    n_max = min(int(n_max), n)
    cum_tp = np.cumsum(y[_ranking_order(s)][:n_max], dtype=np.int64)
    n_inspected = np.arange(1, n_max + 1, dtype=np.int64)
    recall = cum_tp / float(np.count_nonzero(y))
    precision = cum_tp / n_inspected
    return n_inspected, recall, precision


# --------------------------------------------------------------------------------------------
# reporting
