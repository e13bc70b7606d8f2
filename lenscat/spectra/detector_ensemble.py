"""An ensemble of the ResNet and the matched filter for background Lyα lines (issue 31, item 3).

The two detectors see a line differently: the ResNet (:mod:`lenscat.spectra.detector_specnet`) has
learnt profile shapes and the structure of real residuals; the matched filter
(:mod:`lenscat.spectra.detector_mf`) is the optimal statistic for a Gaussian line in Gaussian noise.
The ensemble stacks them with a logistic regression on three features of each spectrum:

* ``specnet_logit`` -- the ResNet's spectrum logit (clipped to +-16);
* ``mf_snr_local`` -- the highest matched-filter S/N within +-:data:`LOCAL_PX` pixels of the
  ResNet's line position (0 where nothing could be searched);
* ``mf_snr_max`` -- the spectrum's highest matched-filter S/N (0 likewise).

The regression is fitted on a synthetic validation set (:func:`lenscat.spectra.training_inputs.build_inputs`,
real residuals for most spectra when a store is given) and its threshold set at a false-positive rate
of 10^-3 on that set's negatives; completeness is then measured on an independent set for the
ensemble and both members alike. A version is a ``detector`` model version of architecture
``ensemble`` whose checkpoint is a small JSON file (coefficients, threshold and the members' version
rows, so workers need no database to load it) and whose hyper-parameters name the members by model id
and checkpoint sha256.

A candidate is placed at the ResNet's position, or at the matched filter's peak when that is more than
1 S/N unit above the filter's S/N near the ResNet's position (the line the filter sees is elsewhere).
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError
from lenscat.registry.versions import ModelVersion, register_model, store_checkpoint
from lenscat.spectra.detectors import Candidates, Detector, SpectrumBatch, register_detector
from lenscat.spectra.grid import WINDOW

ENSEMBLE = "ensemble"
FORMAT = "lenscat-spectral-ensemble/1"
#: features of the logistic stack, in order
FEATURES = ("specnet_logit", "mf_snr_local", "mf_snr_max")
#: half-width of the window around the ResNet's position where the matched-filter S/N is read [pixels]
LOCAL_PX = 4
#: the ResNet's logit is clipped to +- this (float32 probabilities saturate beyond ~17)
LOGIT_CLIP = 16.0

__all__ = [
    "ENSEMBLE",
    "FEATURES",
    "SpectralEnsemble",
    "ensemble_features",
    "fit_logistic",
    "fit_stack",
    "register_ensemble",
]


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


def _score(features: np.ndarray, ck: dict[str, Any]) -> np.ndarray:
    z = (features - np.asarray(ck["mean"])) / np.asarray(ck["scale"])
    return np.asarray(z @ np.asarray(ck["coef"]) + float(ck["intercept"]))


def _sigmoid(s: np.ndarray) -> np.ndarray:
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
    _, thr = completeness_at_fpr(np.asarray(labels).astype(bool), _score(features, ck), fpr)
    ck["threshold_logodds"] = float(thr)
    return ck


def _member_row(m: ModelVersion) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(m), default=str))


@register_detector
class SpectralEnsemble(Detector):
    """Logistic stack of a ResNet version and a matched-filter version (see the module docstring)."""

    architecture = ENSEMBLE
    family = "lya"

    def __init__(self, model: ModelVersion, device: str | None = None) -> None:
        super().__init__(model, device)
        from lenscat.spectra.detector_mf import MATCHED_FILTER, MatchedFilterDetector
        from lenscat.spectra.detector_specnet import SPECNET, SpecNetDetector, check_checkpoint

        path = check_checkpoint(model)
        try:
            ck = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise LenscatError(f"{path}: unreadable ensemble checkpoint ({exc})") from None
        if not isinstance(ck, dict) or ck.get("format") != FORMAT:
            raise LenscatError(f"{path}: not a spectral ensemble checkpoint ({FORMAT})")
        self.ck = ck
        members = {m["architecture"]: ModelVersion(**m) for m in ck["members"]}
        if set(members) != {MATCHED_FILTER, SPECNET}:
            raise LenscatError(f"{path}: an ensemble needs one matched-filter and one specnet member")
        self.mf = MatchedFilterDetector(members[MATCHED_FILTER], device)
        self.net = SpecNetDetector(members[SPECNET], device)
        self.threshold_logodds = float(ck["threshold_logodds"])

    def features(self, batch: SpectrumBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(features (N, 3), ResNet probability, ResNet pixel, matched-filter peak pixel) of a batch."""
        from lenscat.spectra.matched_filter import snr_map

        rows = batch.rows
        prob, pixel = self.net.scores(batch)
        m = snr_map(rows.flux, rows.ivar, rows.continuum, rows.z, wave=WINDOW.wave, config=self.mf.config)
        feat, peak = ensemble_features(prob, pixel, m)
        return feat, prob, pixel, peak

    def detect(self, batch: SpectrumBatch) -> Candidates:
        """A candidate per spectrum whose stacked log-odds pass the threshold."""
        feat, prob, pixel, peak = self.features(batch)
        score = _score(feat, self.ck)
        sel = np.flatnonzero(score >= self.threshold_logodds)
        at_mf = feat[:, 2] > feat[:, 1] + 1.0
        px = np.where(at_mf, peak, pixel)
        return Candidates(
            row=sel.astype(np.int64),
            pixel=px[sel].astype(np.int64),
            snr=np.where(at_mf, feat[:, 2], feat[:, 1])[sel],
            prob=_sigmoid(score)[sel],
            best=_sigmoid(score),
            extra={
                "specnet_prob": prob[sel].astype(np.float64),
                "mf_snr_local": feat[sel, 1],
                "mf_snr_max": feat[sel, 2],
            },
        )


def _set_scores(net: Any, mf_config: Any, inputs: Any, spectra: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, ResNet prob, MF snr max) of a synthetic set."""
    from lenscat.models.specnet_inference import predict
    from lenscat.spectra.matched_filter import snr_map

    prob, pixel = predict(net, inputs.inputs)
    m = snr_map(spectra.flux, spectra.ivar, spectra.continuum, spectra.z, wave=WINDOW.wave, config=mf_config)
    feat, _ = ensemble_features(prob, pixel, m)
    return feat, np.asarray(prob), feat[:, 2]


def register_ensemble(
    name: str,
    members: list[ModelVersion],
    *,
    session: Session,
    n_fit: int = 20_000,
    seed: int = 1000,
    residual_pack: str | None = None,
    residual_fraction: float = 0.8,
    priors: str = "matched",
    progress: bool = True,
) -> tuple[ModelVersion, dict[str, Any]]:
    """Fit the ResNet + matched-filter stack on synthetic spectra and register it as a detector version.

    Parameters
    ----------
    name
        Detector name.
    members
        One ``matched-filter`` and one ``specnet`` detector version.
    n_fit
        Synthetic spectra of the fitting set (seed ``seed``) and of the independent evaluation set
        (seed ``seed + 1``).
    residual_pack, residual_fraction
        Real residuals from this spectrum store for that fraction of the spectra
        (:func:`lenscat.spectra.training_inputs.real_residuals`).
    priors
        Line priors of the synthetic sets.

    Returns
    -------
    (ModelVersion, dict)
        The version and, on the evaluation set, completeness at a false-positive rate of 10^-3
        (over all lines and lines of matched S/N >= 8) of the ensemble and of each member, and the
        false-positive rate of the ensemble at its fitted threshold.
    """
    from lenscat.models.metrics import completeness_at_fpr, roc_auc
    from lenscat.models.specnet import load_specnet
    from lenscat.spectra.detector_mf import MATCHED_FILTER, VERSION_KEYS
    from lenscat.spectra.detector_specnet import SPECNET, check_checkpoint
    from lenscat.spectra.matched_filter import MatchedFilterConfig
    from lenscat.spectra.training import SNR_BRIGHT
    from lenscat.spectra.training_inputs import build_inputs, real_residuals

    by_arch = {m.architecture: m for m in members}
    if len(members) != 2 or set(by_arch) != {MATCHED_FILTER, SPECNET}:
        got = ", ".join(f"{m.label} ({m.architecture})" for m in members) or "none"
        raise LenscatError(f"an ensemble needs one matched-filter and one specnet detector; got {got}")
    mf, sn = by_arch[MATCHED_FILTER], by_arch[SPECNET]
    net, _ = load_specnet(check_checkpoint(sn))
    mf_hp: dict[str, Any] = {
        k: (tuple(v) if isinstance(v, list) else v) for k, v in mf.hparams.items() if k not in VERSION_KEYS
    }
    mf_cfg = MatchedFilterConfig(**mf_hp)
    residuals = None
    if residual_pack is not None:
        residuals, _ = real_residuals(residual_pack, session=session, seed=seed)
    common: dict[str, Any] = {
        "priors": priors,
        "residuals": residuals,
        "residual_fraction": residual_fraction,
        "keep_spectra": True,
        "progress": progress,
    }
    fit_in, fit_set = build_inputs(n_fit, seed=seed, **common)
    feat, _, _ = _set_scores(net, mf_cfg, fit_in, fit_set)
    ck = fit_stack(feat, fit_in.labels)
    del fit_in, fit_set
    ev_in, ev_set = build_inputs(n_fit, seed=seed + 1, **common)
    feat_e, prob_e, mf_e = _set_scores(net, mf_cfg, ev_in, ev_set)
    y = ev_in.labels.astype(bool)
    bright = np.nan_to_num(ev_in.line["snr_matched"], nan=0.0) >= SNR_BRIGHT
    score_e = _score(feat_e, ck)
    metrics: dict[str, Any] = {"n_fit": n_fit, "seed": seed, "priors": priors, "residual_pack": residual_pack}
    for tag, sc in (("ensemble", score_e), ("specnet", prob_e.astype(np.float64)), ("mf", mf_e)):
        comp, thr = completeness_at_fpr(y, sc, 1e-3)
        metrics[f"{tag}_completeness_at_fpr_1e-3"] = comp
        metrics[f"{tag}_completeness_snr_ge_8"] = (
            float(np.mean(sc[y & bright] > thr)) if (y & bright).any() else math.nan
        )
        metrics[f"{tag}_auc"] = roc_auc(y, sc)
    metrics["ensemble_fpr_at_threshold"] = float(np.mean(score_e[~y] >= ck["threshold_logodds"]))
    metrics["ensemble_completeness_at_threshold"] = float(np.mean(score_e[y] >= ck["threshold_logodds"]))
    ck.update(
        format=FORMAT,
        members=[_member_row(mf), _member_row(sn)],
        seed=seed,
        n_fit=n_fit,
        priors=priors,
        residual_pack=residual_pack,
    )
    hparams = {
        "members": [
            {
                "model_id": m.model_id,
                "label": m.label,
                "architecture": m.architecture,
                "checkpoint_sha256": m.checkpoint_sha256,
            }
            for m in (mf, sn)
        ],
        "features": list(FEATURES),
        "threshold_logodds": ck["threshold_logodds"],
        "fpr": 1e-3,
        "sample": sn.hparams.get("sample", mf.hparams.get("sample", "galaxies")),
        "continuum": mf.hparams.get("continuum", sn.hparams.get("continuum", "pipeline")),
        "fit": {
            "n_fit": n_fit,
            "seed": seed,
            "priors": priors,
            "residual_pack": residual_pack,
            "residual_fraction": residual_fraction if residual_pack else None,
        },
    }
    tsha = hashlib.sha256(json.dumps(hparams["fit"], sort_keys=True).encode()).hexdigest()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ensemble.json"
        path.write_text(json.dumps(ck, sort_keys=True, default=str))
        stored, sha = store_checkpoint(path)
    mv, _created = register_model(
        "detector",
        name,
        architecture=ENSEMBLE,
        output_dim=1,
        checkpoint_path=stored,
        checkpoint_sha256=sha,
        origin="trained",
        hparams=json.loads(json.dumps(hparams, default=float)),
        input_spec={"window_k0": WINDOW.k0, "window_n": WINDOW.n, "dlog": WINDOW.dlog},
        training_set_sha256=tsha,
        metrics=json.loads(json.dumps(metrics, default=float)),
        description=f"logistic stack of {sn.label} (ResNet) and {mf.label} (matched filter)",
        session=session,
    )
    return mv, metrics
