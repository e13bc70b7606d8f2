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

Two decision rules (the version's ``rule``; versions from before it existed use ``'stack'``):

* ``'stack'`` -- a candidate where the stacked log-odds pass the threshold (one per spectrum);
* ``'union'`` -- those, *and* every hit of the matched-filter member (S/N >= its threshold, each
  local maximum): the ensemble keeps each member's own detections, so it is at least as complete as
  the matched filter by construction, and the stack adds the lines the filter misses. A stacked
  candidate within :data:`LOCAL_PX` pixels of a matched-filter hit is that hit (one candidate, at
  the filter's pixel and S/N, with the stack's probability). Its false rate is that of the union
  (reported by :func:`register_ensemble` as ``union_fpr_at_threshold``): the matched filter's
  false hits plus the stack's.
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

from lenscat.errors import InvalidParameter, LenscatError
from lenscat.registry.versions import ModelVersion, register_model, store_checkpoint
from lenscat.spectra.detectors import Candidates, Detector, SpectrumBatch, register_detector
from lenscat.spectra.ensemble_stack import (
    FEATURES,
    LOCAL_PX,
    LOGIT_CLIP,
    ensemble_features,
    fit_logistic,
    fit_stack,
)
from lenscat.spectra.ensemble_stack import score as _score
from lenscat.spectra.ensemble_stack import sigmoid as _sigmoid
from lenscat.spectra.grid import WINDOW

ENSEMBLE = "ensemble"
FORMAT = "lenscat-spectral-ensemble/1"
#: decision rules of an ensemble version (see the module docstring)
RULES = ("stack", "union")

__all__ = [
    "ENSEMBLE",
    "LOCAL_PX",
    "LOGIT_CLIP",
    "FEATURES",
    "RULES",
    "SpectralEnsemble",
    "ensemble_features",
    "fit_logistic",
    "fit_stack",
    "register_ensemble",
]


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
        self.rule = str(ck.get("rule", "stack"))
        if self.rule not in RULES:
            raise LenscatError(f"{path}: unknown ensemble rule {self.rule!r}; expected one of {', '.join(RULES)}")

    def features(self, batch: SpectrumBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(features (N, 3), ResNet probability, ResNet pixel, matched-filter peak pixel) of a batch."""
        from lenscat.spectra.matched_filter import snr_map

        rows = batch.rows
        prob, pixel = self.net.scores(batch)
        m = snr_map(rows.flux, rows.ivar, rows.continuum, rows.z, wave=WINDOW.wave, config=self.mf.config)
        feat, peak = ensemble_features(prob, pixel, m)
        return feat, prob, pixel, peak

    def detect(self, batch: SpectrumBatch) -> Candidates:
        """Candidates of the version's rule: stacked log-odds past the threshold (and, for ``'union'``,
        every matched-filter hit)."""
        feat, prob, pixel, peak = self.features(batch)
        score = _score(feat, self.ck)
        sel = np.flatnonzero(score >= self.threshold_logodds)
        at_mf = feat[:, 2] > feat[:, 1] + 1.0
        px = np.where(at_mf, peak, pixel)
        row = sel.astype(np.int64)
        pix = px[sel].astype(np.int64)
        snr = np.where(at_mf, feat[:, 2], feat[:, 1])[sel]
        from_stack = np.ones(sel.size, dtype=bool)
        from_mf = np.zeros(sel.size, dtype=bool)
        if self.rule == "union":
            row, pix, snr, from_stack, from_mf = _union(row, pix, snr, self.mf.detect(batch))
        p = _sigmoid(score)
        return Candidates(
            row=row,
            pixel=pix,
            snr=snr,
            prob=p[row],
            best=p,
            extra={
                "specnet_prob": prob[row].astype(np.float64),
                "mf_snr_local": feat[row, 1],
                "mf_snr_max": feat[row, 2],
                "from_stack": from_stack,
                "from_mf": from_mf,
            },
        )


def _union(
    row: np.ndarray, pix: np.ndarray, snr: np.ndarray, mf: Candidates
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stacked candidates joined with the matched filter's hits, sorted by (row, pixel).

    A stacked candidate within :data:`LOCAL_PX` pixels of a hit of the same spectrum is that hit
    (kept at the hit's pixel and S/N). Returns (row, pixel, snr, from_stack, from_mf).
    """
    mrow = np.asarray(mf.row, dtype=np.int64)
    mpix = np.asarray(mf.pixel, dtype=np.int64)
    msnr = np.asarray(mf.snr, dtype=np.float64)
    m_stack = np.zeros(mrow.size, dtype=bool)
    own = np.ones(row.size, dtype=bool)
    for j in range(row.size):
        near = np.flatnonzero((mrow == row[j]) & (np.abs(mpix - pix[j]) <= LOCAL_PX))
        if near.size:
            m_stack[near[np.argmin(np.abs(mpix[near] - pix[j]))]] = True
            own[j] = False
    r = np.concatenate([mrow, row[own]])
    p = np.concatenate([mpix, pix[own]])
    s = np.concatenate([msnr, np.asarray(snr, dtype=np.float64)[own]])
    fs = np.concatenate([m_stack, np.ones(int(own.sum()), dtype=bool)])
    fm = np.concatenate([np.ones(mrow.size, dtype=bool), np.zeros(int(own.sum()), dtype=bool)])
    order = np.lexsort((p, r))
    return r[order], p[order], s[order], fs[order], fm[order]


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
    rule: str = "stack",
    real_calibration: int = 0,
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
    rule
        ``'stack'`` (candidates where the stacked log-odds pass the threshold) or ``'union'`` (those
        and every matched-filter hit; see the module docstring).
    real_calibration
        When > 0: also measure the stacked log-odds on this many clean re-noised realisations of
        the real early-type hosts (seed ``seed + 2``) and keep the stricter of the synthetic
        threshold and the real one, at the stricter of 10^-3 and the matched filter's own false
        rate there (:func:`lenscat.spectra.ensemble_calibrate.real_clean_threshold`).

    Returns
    -------
    (ModelVersion, dict)
        The version and, on the evaluation set, completeness at a false-positive rate of 10^-3
        (over all lines and lines of matched S/N >= 8) of the ensemble and of each member, and the
        false-positive rate of the ensemble at its fitted threshold; for ``'union'`` also the
        union's false-positive rate and completeness (overall and at S/N >= 8) at the stack's
        threshold and the matched filter's own.

    Raises
    ------
    InvalidParameter
        ``rule`` is not one of :data:`RULES`.
    """
    from lenscat.models.metrics import completeness_at_fpr, roc_auc
    from lenscat.models.specnet import load_specnet
    from lenscat.spectra.detector_mf import MATCHED_FILTER, VERSION_KEYS
    from lenscat.spectra.detector_specnet import SPECNET, check_checkpoint
    from lenscat.spectra.matched_filter import MatchedFilterConfig
    from lenscat.spectra.training import SNR_BRIGHT
    from lenscat.spectra.training_inputs import build_inputs, real_residuals

    if rule not in RULES:
        raise InvalidParameter("rule", f"{{rule}} must be one of {', '.join(RULES)}, got {rule!r}")
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
    calibration: dict[str, Any] = {"threshold_synthetic": ck["threshold_logodds"]}
    if real_calibration > 0:
        from lenscat.spectra.ensemble_calibrate import real_clean_threshold

        thr_real, info = real_clean_threshold(
            mf, sn, ck, session=session, realisations=real_calibration, seed=seed + 2, fpr=ck["fpr"]
        )
        calibration.update(threshold_real=thr_real, real=info)
        ck["threshold_logodds"] = max(float(ck["threshold_logodds"]), thr_real)
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
    metrics["rule"] = rule
    metrics["threshold_logodds"] = ck["threshold_logodds"]
    metrics["calibration"] = calibration
    if rule == "union":
        # a spectrum has a union candidate when the stack passes or the filter reaches its threshold
        # (its best covered S/N: what a hit needs)
        hit = (score_e >= ck["threshold_logodds"]) | (np.nan_to_num(mf_e, nan=-np.inf) >= mf_cfg.threshold)
        metrics["union_fpr_at_threshold"] = float(np.mean(hit[~y]))
        metrics["union_completeness_at_threshold"] = float(np.mean(hit[y]))
        metrics["union_completeness_snr_ge_8"] = float(np.mean(hit[y & bright])) if (y & bright).any() else math.nan
    ck.update(
        format=FORMAT,
        rule=rule,
        calibration=calibration,
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
        "rule": rule,
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
            "real_calibration": real_calibration or None,
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
        description=f"logistic stack of {sn.label} (ResNet) and {mf.label} (matched filter)"
        + (", or any hit of the matched filter" if rule == "union" else ""),
        session=session,
    )
    return mv, metrics
