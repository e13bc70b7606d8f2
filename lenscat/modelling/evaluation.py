"""Evaluation of a lens modelling network on data made differently from its training set.

:func:`independent_lens_set` renders lenses with the independent numpy simulator
(:mod:`lenscat.simulate.alt`: SIE + shear by analytic deflection, a clumpy exponential source, a
double-Gaussian PSF, electron noise; nothing shared with the default simulator the network trains
on), with the truth of every parameter in the sky frame. :func:`parameter_metrics` gives per
parameter the bias (median residual), the scatter (standard deviation and 1.4826 x the median
absolute deviation of the residuals) and the coverage of the 68 % and 95 % intervals;
:func:`baseline_predictions` is the simple baseline a network must beat: the training-set median of
every parameter.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lenscat.modelling.frames import pixel_row, sky_from_pixel
from lenscat.modelling.training_set import ENTROPY, LensSet
from lenscat.modelling.types import PARAMS

Z68 = 1.0
Z95 = 1.959963984540054


def _alt_one(task: tuple[int, int, str, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from lenscat.simulate.alt_objects import draw_scene
    from lenscat.simulate.alt_render import render_scene

    seed, index, kind, stamp, crop = task
    rng = np.random.default_rng(np.random.SeedSequence((seed, ENTROPY + 1), spawn_key=(index,)))
    ebv = float(np.clip(rng.lognormal(math.log(0.03), 0.6), 0.0, 0.3))
    scene = draw_scene(kind, rng, ebv, stamp)
    out = render_scene(scene, stamp, rng)
    c, h = stamp // 2, crop // 2
    win = out.images[:, c - h : c - h + crop, c - h : c - h + crop]
    truth = np.full(9, np.nan)
    if scene.lens is not None:
        L = scene.lens
        truth = sky_from_pixel(
            pixel_row(L.theta_e, L.q, L.phi, L.gamma1, L.gamma2, L.x, L.y, L.x + L.beta_x, L.y + L.beta_y)
        )
    return np.ascontiguousarray(win, dtype=np.float32), truth, np.asarray(scene.fwhm), np.asarray(out.sky_sigma)


def independent_lens_set(
    n: int, *, seed: int, kinds: tuple[str, ...] = ("lens",), stamp: int = 64, crop: int = 48
) -> LensSet:
    """``n`` windows rendered by the independent simulator, kinds taken in turn, with sky-frame truth."""
    from lenscat.simulate.alt import KINDS

    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        from lenscat.errors import InvalidParameter

        raise InvalidParameter("kinds", f"unknown kind {bad[0] if bad else ''!r}; choose from {', '.join(KINDS)}")
    tasks = [(seed, i, kinds[i % len(kinds)], stamp, crop) for i in range(n)]
    rows = [_alt_one(t) for t in tasks]
    return LensSet(
        np.stack([r[0] for r in rows]),
        np.stack([r[1] for r in rows]),
        np.array([t[2] for t in tasks], dtype=object),
        np.stack([r[2] for r in rows]),
        np.stack([r[3] for r in rows]),
        {"simulator": "lenscat.simulate.alt", "n": n, "seed": seed, "kinds": list(kinds), "stamp": stamp, "crop": crop},
    )


def parameter_metrics(mu: np.ndarray, sigma: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, float]]:
    """Bias, scatter and interval coverage per parameter.

    Parameters
    ----------
    mu, sigma, truth : ndarray, shape (N, 9)
        Predicted means, calibrated 1σ and true values (sky frame, :data:`PARAMS` order).

    Returns
    -------
    dict
        ``{param: {n, bias, mean_bias, scatter, nmad, cover68, cover95, median_sigma}}``; ``bias`` is the
        median residual (prediction - truth), ``scatter`` its standard deviation, ``nmad`` 1.4826 x the
        median absolute deviation about the median, ``cover68``/``cover95`` the fractions of truths
        within 1σ / 1.96σ.
    """
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(PARAMS):
        r = mu[:, k] - truth[:, k]
        ok = np.isfinite(r) & np.isfinite(sigma[:, k])
        r, s = r[ok], sigma[ok, k]
        if not len(r):
            continue
        med = float(np.median(r))
        out[name] = {
            "n": int(len(r)),
            "bias": med,
            "mean_bias": float(r.mean()),
            "scatter": float(r.std()),
            "nmad": float(1.4826 * np.median(np.abs(r - med))),
            "cover68": float(np.mean(np.abs(r) <= Z68 * s)),
            "cover95": float(np.mean(np.abs(r) <= Z95 * s)),
            "median_sigma": float(np.median(s)),
        }
    return out


def baseline_predictions(train_targets: np.ndarray, n: int) -> np.ndarray:
    """The baseline: the training-set median of each parameter for every object, shape (n, 9)."""
    med = np.nanmedian(np.asarray(train_targets, dtype=np.float64), axis=0)
    return np.tile(med, (n, 1))


def summary_table(
    metrics: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]] | None = None
) -> list[dict[str, Any]]:
    """Rows (one per parameter) for printing: the metrics and, when given, the baseline's scatter."""
    rows = []
    for name, m in metrics.items():
        row: dict[str, Any] = {"param": name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}}
        if baseline is not None and name in baseline:
            row["baseline_scatter"] = round(baseline[name]["scatter"], 4)
        rows.append(row)
    return rows


def evaluate_modeller(
    modeller: Any, *, simulator: str = "independent", n: int = 500, seed: int = 1, min_theta_e: float = 1.0
) -> dict[str, Any]:
    """Bias, scatter and coverage of a loaded version on ``n`` fresh simulated lenses.

    Parameters
    ----------
    modeller
        A :class:`lenscat.modelling.modeller.Modeller`.
    simulator : {'independent', 'default'}
        The independent numpy simulator (data the network was not trained on) or the default
        lenstronomy one (the training distribution, unseen seeds).
    n, seed
        Size and seed of the evaluation set.
    min_theta_e
        Also report the metrics of lenses with true θ_E at or above this [arcsec].

    Returns
    -------
    dict
        ``{"all": metrics, "theta_e_min": metrics, "n", "simulator", "seed"}``.
    """
    from lenscat.errors import InvalidParameter
    from lenscat.modelling.training_set import simulate_lens_set

    if n < 1:
        raise InvalidParameter("n", "{n} must be a positive number of lenses")
    if simulator == "independent":
        data = independent_lens_set(n, seed=seed, crop=modeller.crop)
    elif simulator == "default":
        data = simulate_lens_set(n, seed=seed + 10_000_019, crop=modeller.crop)
    else:
        raise InvalidParameter("simulator", f"unknown simulator {simulator!r}; choose independent or default")
    mu, sig = modeller.predict(data.images)
    big = data.targets[:, 0] >= min_theta_e
    return {
        "simulator": simulator,
        "n": n,
        "seed": seed,
        "all": parameter_metrics(mu, sig, data.targets),
        "theta_e_min": min_theta_e,
        "above_theta_e_min": parameter_metrics(mu[big], sig[big], data.targets[big]),
    }
