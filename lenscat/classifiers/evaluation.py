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

Higher score means more lens-like throughout. Everything here is plain numpy (plus matplotlib for
:func:`plot_evaluation`) and works on millions of scores in well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lenscat.errors import LenscatError

__all__ = ["format_metrics", "plot_evaluation", "ranking_metrics", "recall_curve"]

#: Number of false positives allowed by ``tpr10``.
_TPR10_FALSE_POSITIVES = 10


# --------------------------------------------------------------------------------------------
# input checking


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


# --------------------------------------------------------------------------------------------
# the metrics


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


def _tpr_at_false_positives(pos: np.ndarray, neg: np.ndarray, k: int) -> float:
    """Fraction of positives strictly above the (k+1)-th highest negative (1.0 if <= k negatives)."""
    if neg.shape[0] <= k:
        return 1.0
    threshold = np.partition(neg, neg.shape[0] - k - 1)[neg.shape[0] - k - 1]
    return int(np.count_nonzero(pos > threshold)) / pos.shape[0]


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


def _roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, starting at (0, 0)."""
    order = _ranking_order(scores)
    s = scores[order]
    y = labels[order]
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    n_pos = tp[-1]
    n_neg = fp[-1]
    fpr = np.concatenate([[0.0], fp / n_neg])
    tpr = np.concatenate([[0.0], tp / n_pos])
    return fpr, tpr


# --------------------------------------------------------------------------------------------
# reporting


def format_metrics(name: str, metrics: Mapping[str, Any]) -> str:
    """A short multi-line, human-readable summary of :func:`ranking_metrics` output.

    Parameters
    ----------
    name : str
        The model's name, for the first line.
    metrics : mapping
        A dict returned by :func:`ranking_metrics`.

    Returns
    -------
    str
        Lines without a trailing newline, e.g.::

            resnet: 200,000 images, 20 lenses (1 lens per 10,000 images)
              AUC 0.9990  TPR0 0.250  TPR10 0.600  average precision 0.412
              top    20: 12 lenses, precision 0.600, recall 0.600
    """
    ratio = metrics["n"] / metrics["n_pos"]
    per = f"{ratio:,.0f}" if ratio >= 100 else f"{ratio:.3g}"
    lines = [
        f"{name}: {metrics['n']:,} images, {metrics['n_pos']:,} lenses (1 lens per {per} images)",
        f"  AUC {metrics['auc']:.4f}  TPR0 {metrics['tpr0']:.3f}  TPR10 {metrics['tpr10']:.3f}"
        f"  average precision {metrics['average_precision']:.3f}",
    ]
    rows: Sequence[Mapping[str, Any]] = metrics.get("top_n", [])
    width = max((len(str(r["n"])) for r in rows), default=1)
    for r in rows:
        lines.append(
            f"  top {r['n']:>{width}}: {r['true_positives']} lenses, "
            f"precision {r['precision']:.3f}, recall {r['recall']:.3f}"
        )
    return "\n".join(lines)


def _log_sample(n: int, points: int = 2000) -> np.ndarray:
    """About ``points`` log-spaced indices into ``range(n)`` (always including 0 and n - 1)."""
    if n <= points:
        return np.arange(n)
    idx = np.unique(np.geomspace(1, n, points).astype(np.int64) - 1)
    return np.unique(np.concatenate([idx, [0, n - 1]]))


def plot_evaluation(
    curves: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    out_dir: str | Path,
    *,
    prefix: str = "evaluation",
) -> list[Path]:
    """Draw recall/precision, score-histogram and ROC plots for one or more models.

    Parameters
    ----------
    curves : mapping of str to (scores, labels)
        Each model's name and its scores (higher = more lens-like) and labels (1 = lens). The
        models may be evaluated on different image sets.
    out_dir : str or Path
        Directory for the PNG files; created if missing.
    prefix : str, optional
        File-name prefix, default ``"evaluation"``.

    Returns
    -------
    list of Path
        The files written, in this order:

        ``{prefix}_recall_precision.png``
            Recall (left) and precision (right) against the number of top-ranked images
            inspected, log x-axis, one line per model; dotted lines show a random ranking.
        ``{prefix}_scores.png``
            Per model, histograms of the scores of lenses and non-lenses, log y-axis.
        ``{prefix}_roc.png``
            True- against false-positive rate, log x-axis (zero false positives drawn at the
            left edge, half the smallest non-zero rate), with a random ranking for reference.

    Raises
    ------
    LenscatError
        If ``curves`` is empty or any model's input is bad (see :func:`ranking_metrics`).
    """
    if not curves:
        raise LenscatError("plot_evaluation needs at least one model's (scores, labels)")
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, pair in curves.items():
        try:
            scores, labels = pair
        except (TypeError, ValueError):
            raise LenscatError(f"model {name!r}: expected a (scores, labels) pair") from None
        try:
            data[name] = _as_arrays(scores, labels)
        except LenscatError as exc:
            raise LenscatError(f"model {name!r}: {exc}") from None

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    colours = [f"C{i % 10}" for i in range(len(data))]

    # 1. recall and precision against the number of images inspected
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax_r, ax_p = fig.subplots(1, 2, sharex=True)
    for (name, (s, y)), colour in zip(data.items(), colours, strict=True):
        n_insp, rec, prec = recall_curve(s, y)
        keep = _log_sample(n_insp.shape[0])
        n_pos = int(np.count_nonzero(y))
        ax_r.plot(n_insp[keep], rec[keep], color=colour, label=f"{name} ({n_pos} lenses)")
        ax_p.plot(n_insp[keep], prec[keep], color=colour, label=name)
        prevalence = n_pos / s.shape[0]
        ax_r.plot(n_insp[keep], n_insp[keep] / s.shape[0], color=colour, ls=":", lw=1)
        ax_p.axhline(prevalence, color=colour, ls=":", lw=1)
    ax_r.set_xscale("log")
    ax_r.set_xlabel("number of top-ranked images inspected")
    ax_p.set_xlabel("number of top-ranked images inspected")
    ax_r.set_ylabel("recall (fraction of all lenses found)")
    ax_p.set_ylabel("precision (fraction of inspected images that are lenses)")
    ax_r.set_ylim(0, 1.02)
    ax_p.set_ylim(0, 1.02)
    ax_r.set_title("Recall vs images inspected")
    ax_p.set_title("Precision vs images inspected")
    ax_r.legend(loc="upper left", fontsize="small", title="dotted: random ranking")
    ax_p.legend(loc="upper right", fontsize="small")
    for ax in (ax_r, ax_p):
        ax.grid(True, which="both", alpha=0.3)
    path = out / f"{prefix}_recall_precision.png"
    fig.savefig(path, dpi=120)
    written.append(path)

    # 2. score distributions of lenses and non-lenses
    n_models = len(data)
    ncols = min(n_models, 3)
    nrows = math.ceil(n_models / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, (s, y)) in zip(axes, data.items(), strict=False):
        finite = s[np.isfinite(s)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        clipped = np.clip(s, lo, hi)  # ±inf go into the outermost bins
        bins = np.linspace(lo, hi, 51)
        ax.hist(clipped[~y], bins=bins, color="0.5", alpha=0.7, label=f"non-lenses ({int(np.count_nonzero(~y))})")
        ax.hist(
            clipped[y], bins=bins, color="C3", histtype="step", lw=1.8, label=f"lenses ({int(np.count_nonzero(y))})"
        )
        ax.set_yscale("log")
        ax.set_xlabel("classifier score (higher = more lens-like)")
        ax.set_ylabel("number of images per bin")
        ax.set_title(name)
        ax.legend(fontsize="small")
    for ax in axes[n_models:]:
        ax.set_visible(False)
    fig.suptitle("Score distributions of lenses and non-lenses")
    path = out / f"{prefix}_scores.png"
    fig.savefig(path, dpi=120)
    written.append(path)

    # 3. ROC with a logarithmic false-positive axis
    fig = Figure(figsize=(6.5, 5), layout="constrained")
    ax = fig.subplots()
    rocs = {name: _roc_points(s, y) for name, (s, y) in data.items()}
    # Points at zero false positives (the tpr0 regime) are drawn at the left edge of the axis.
    left = min(1.0 / int(np.count_nonzero(~y)) for _, y in data.values()) / 2
    for (name, (fpr, tpr)), colour in zip(rocs.items(), colours, strict=True):
        s, y = data[name]
        label = f"{name} (AUC {_auc(s, y):.3f}, TPR0 {_tpr_at_false_positives(s[y], s[~y], 0):.2f})"
        # Straight segments between thresholds: exact steps for untied scores, and the
        # diagonal (counted 1/2 by the AUC) across a tie between lenses and non-lenses.
        ax.plot(np.maximum(fpr, left), tpr, color=colour, label=label)
    grid = np.geomspace(left, 1, 200)
    ax.plot(grid, grid, color="0.4", ls=":", lw=1, label="random ranking")
    ax.set_xscale("log")
    ax.set_xlim(left, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false-positive rate (fraction of non-lenses above threshold)")
    ax.set_ylabel("true-positive rate (fraction of lenses above threshold)")
    ax.set_title("ROC curve (left edge: no false positives)")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    path = out / f"{prefix}_roc.png"
    fig.savefig(path, dpi=120)
    written.append(path)
    return written
