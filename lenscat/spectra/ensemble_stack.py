"""The logistic stack of the ResNet + matched-filter ensemble (:mod:`lenscat.spectra.detector_ensemble`).

The stacking features of a spectrum (:data:`FEATURES`), an L2-regularised logistic regression on
them (Newton / IRLS) and its threshold at a false-positive rate: plain numpy, no database and no
detector, so the detector module and its registration share one definition.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lenscat.errors import LenscatError

#: features of the logistic stack, in order
FEATURES = ("specnet_logit", "mf_snr_local", "mf_snr_max")
#: half-width of the window around the ResNet's position where the matched-filter S/N is read [pixels]
LOCAL_PX = 4
#: the ResNet's logit is clipped to +- this (float32 probabilities saturate beyond ~17)
LOGIT_CLIP = 16.0

__all__ = ["FEATURES", "LOCAL_PX", "LOGIT_CLIP", "ensemble_features", "fit_logistic", "fit_stack", "score", "sigmoid"]


def ensemble_features(prob: np.ndarray, pixel: np.ndarray, mf_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stacking features (:data:`FEATURES`) of each spectrum, and the matched filter's peak pixel.

    Parameters
    ----------
    prob : numpy.ndarray, shape (N,)
        ResNet line probability.
    pixel : numpy.ndarray, shape (N,)
        ResNet line pixel on the window grid.
    mf_map : numpy.ndarray, shape (N, P)
        Matched-filter S/N map (:func:`lenscat.spectra.matched_filter.snr_map`; -inf where nothing
        is counted).

    Returns
    -------
    features : numpy.ndarray, shape (N, 3), float64
    mf_peak : numpy.ndarray, shape (N,), int64
        Pixel of the matched filter's highest S/N.
    """
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-300, 1.0)
    with np.errstate(divide="ignore"):
        logit = np.log(p) - np.log1p(-np.minimum(p, 1.0 - 1e-16))
    logit = np.clip(np.nan_to_num(logit, nan=-LOGIT_CLIP), -LOGIT_CLIP, LOGIT_CLIP)
    m = np.where(np.isfinite(mf_map), mf_map, 0.0).astype(np.float64)
    n, npix = m.shape
    px = np.clip(np.asarray(pixel, dtype=np.int64), 0, npix - 1)
    idx = np.clip(px[:, None] + np.arange(-LOCAL_PX, LOCAL_PX + 1)[None, :], 0, npix - 1)
    local = np.take_along_axis(m, idx, axis=1).max(axis=1) if n else np.zeros(0)
    peak = np.argmax(m, axis=1) if n else np.zeros(0, dtype=np.int64)
    best = m[np.arange(n), peak] if n else np.zeros(0)
    return np.stack([logit, local, best], axis=1), np.asarray(peak, dtype=np.int64)


def fit_logistic(
    x: np.ndarray, y: np.ndarray, *, l2: float = 1e-3, iterations: int = 100
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """L2-regularised logistic regression on standardised features (Newton / IRLS).

    Returns
    -------
    coef, intercept, mean, scale
        ``score = ((x - mean) / scale) @ coef + intercept`` is the log-odds.
    """
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or len(x) != len(t):
        raise LenscatError(f"features {x.shape} for {len(t)} labels")
    if t.min() == t.max():
        raise LenscatError("the stacking set needs spectra with and without a line")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    a = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(a.shape[1])
    reg = np.full(a.shape[1], l2 * len(x))
    reg[-1] = 0.0
    for _ in range(iterations):
        s = a @ w
        p = 1.0 / (1.0 + np.exp(-s))
        g = a.T @ (p - t) + reg * w
        h = (a * (p * (1 - p))[:, None]).T @ a + np.diag(reg) + 1e-9 * np.eye(a.shape[1])
        step = np.linalg.solve(h, g)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w[:-1], float(w[-1]), mean, scale


def score(features: np.ndarray, ck: dict[str, Any]) -> np.ndarray:
    """Stacked log-odds of each row of ``features`` (N, 3) with the fitted stack ``ck`` (:func:`fit_stack`)."""
    z = (features - np.asarray(ck["mean"])) / np.asarray(ck["scale"])
    return np.asarray(z @ np.asarray(ck["coef"]) + float(ck["intercept"]))


def sigmoid(s: np.ndarray) -> np.ndarray:
    """Probability from log-odds ``s`` (float64; no overflow for large ``|s|``)."""
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(s, dtype=np.float64))))


def fit_stack(features: np.ndarray, labels: np.ndarray, *, fpr: float = 1e-3) -> dict[str, Any]:
    """Fit the logistic stack and its threshold (log-odds) at false-positive rate ``fpr``.

    Returns
    -------
    dict
        ``coef``, ``intercept``, ``mean``, ``scale`` (lists), ``threshold_logodds``, ``fpr``.
    """
    from lenscat.models.metrics import completeness_at_fpr

    coef, b, mean, scale = fit_logistic(features, labels)
    ck: dict[str, Any] = {
        "features": list(FEATURES),
        "coef": coef.tolist(),
        "intercept": b,
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "fpr": fpr,
    }
    _, thr = completeness_at_fpr(np.asarray(labels).astype(bool), score(features, ck), fpr)
    ck["threshold_logodds"] = float(thr)
    return ck
