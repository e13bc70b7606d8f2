"""Reports of a classifier evaluation: the metrics as text (:func:`format_metrics`) and the ROC / recall figure
(:func:`plot_evaluation`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lenscat.classifiers.evaluation import _tpr_at_false_positives, recall_curve
from lenscat.errors import LenscatError
from lenscat.models.metrics import _as_arrays, _auc, _ranking_order

__all__ = ["format_metrics", "plot_evaluation"]


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


def format_metrics(name: str, metrics: Mapping[str, Any]) -> str:
    """A short multi-line, human-readable summary of :func:`~lenscat.classifiers.evaluation.ranking_metrics` output.

    Parameters
    ----------
    name : str
        The model's name, for the first line.
    metrics : mapping
        A dict returned by :func:`~lenscat.classifiers.evaluation.ranking_metrics`.

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
        If ``curves`` is empty or any model's input is bad (see
        :func:`~lenscat.classifiers.evaluation.ranking_metrics`).
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
