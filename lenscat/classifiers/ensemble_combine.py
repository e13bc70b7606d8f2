"""The arithmetic of ensembles: rank percentiles, logit features, the stacking fit, and the combined score.

Pure numpy on the members' scores; the storage, training and score-job hooks are in
:mod:`lenscat.classifiers.ensemble`.
"""

from __future__ import annotations

import numpy as np

from lenscat.classifiers.types import Ensemble

LOGIT_EPS = 1e-6
"""Scores are clipped to [eps, 1 - eps] before the logit transform of stacking."""


def rank_percentiles(scores: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Rank percentile in [0, 1] of each score against a member's stored score quantiles.

    Linear interpolation between the quantiles (``np.interp``); a run of equal quantiles (many
    identical scores, e.g. a saturated sigmoid) maps to the middle of its run (a mid-rank), scores
    outside the quantiles' range to the end values.

    Parameters
    ----------
    scores : ndarray, shape (n,)
        Member scores.
    quantiles : ndarray, shape (q,)
        The member's score quantiles at probabilities ``linspace(0, 1, q)``.

    Returns
    -------
    ndarray, shape (n,)
        Percentiles (float64).
    """
    q = np.asarray(quantiles, dtype=np.float64)
    grid = np.linspace(0.0, 1.0, len(q))
    uq, inv = np.unique(q, return_inverse=True)
    mid = np.bincount(inv, weights=grid) / np.bincount(inv)
    if len(uq) == 1:
        return np.full(len(scores), 0.5)
    return np.interp(np.asarray(scores, dtype=np.float64), uq, mid)


def logit_features(scores: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of scores clipped to [:data:`LOGIT_EPS`, 1 - :data:`LOGIT_EPS`]."""
    p = np.clip(np.asarray(scores, dtype=np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-2, iterations: int = 100) -> tuple[np.ndarray, float]:
    """Class-balanced, L2-penalised logistic regression by Newton's method (IRLS).

    Each class carries half the total weight (lenses are rare), and the weights (not the intercept)
    are penalised by ``l2``, so perfectly separable members still give finite coefficients.

    Parameters
    ----------
    x : ndarray, shape (n, d)
        Features (the members' logits).
    y : ndarray, shape (n,)
        1 = lens, 0 = not.
    l2 : float
        Penalty on the coefficients.
    iterations : int
        Most Newton steps.

    Returns
    -------
    (ndarray, float)
        Coefficients (d,) and intercept.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = x.shape
    n_pos = max(float(y.sum()), 1.0)
    n_neg = max(float(n - y.sum()), 1.0)
    w = np.where(y > 0, 0.5 / n_pos, 0.5 / n_neg)
    a = np.c_[x, np.ones(n)]
    beta = np.zeros(d + 1)
    pen = np.r_[np.full(d, l2), 0.0]
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ beta, -500, 500)))
        grad = a.T @ (w * (p - y)) + pen * beta
        hess = (a * (w * p * (1 - p))[:, None]).T @ a + np.diag(pen) + 1e-12 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return beta[:d], float(beta[d])


def combine(ens: Ensemble, member_scores: np.ndarray) -> np.ndarray:
    """The ensemble's scores from its members' scores.

    Parameters
    ----------
    ens : Ensemble
        The loaded checkpoint.
    member_scores : ndarray, shape (n, n_members)
        Column j holds member j's scores (checkpoint order).

    Returns
    -------
    ndarray, shape (n,)
        Scores in [0, 1]: the mean rank percentile (``rank``) or the stacked probability (``stack``).
    """
    s = np.asarray(member_scores, dtype=np.float64)
    if ens.method == "rank":
        assert ens.quantiles is not None
        return np.mean([rank_percentiles(s[:, j], ens.quantiles[j]) for j in range(s.shape[1])], axis=0)
    assert ens.coef is not None
    z = logit_features(s) @ ens.coef + ens.intercept
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
