"""Training, calibrating and registering a lens modelling network (``lenscat model train``).

1. A training set of ``n`` simulated lenses (:func:`lenscat.modelling.training_set.simulate_lens_set`),
   plus, when a survey is named, lenses injected into that survey's own galaxies
   (:func:`lenscat.modelling.injections.injected_lens_set`); and ``nonlens_ratio`` times as many
   non-lenses: the default simulator's impostor kinds
   (:data:`lenscat.modelling.training_set.NONLENS_KINDS`) and, with a survey, its injection hosts
   without an arc (:func:`lenscat.modelling.injections.host_window_set`), one per injection.
2. Split 80 / 10 / 10 into training, validation (the best epoch) and calibration sets.
3. Train the ensemble (:func:`lenscat.models.lensmodel_train.train_lensmodel`), drawing batches so that
   θ_E is flat over the simulated range (:func:`flat_theta_weights`); with non-lenses, the network
   also learns a lens logit (binary cross-entropy; the likelihood sees the lenses only).
4. Calibrate: on the calibration set, each parameter's σ is multiplied by the 68th percentile of
   ``|truth - μ| / σ`` over its lenses (:func:`lenscat.models.lensmodel.coverage_scale`), so its 1σ
   interval covers 68 % of held-out truths; the lens logit gets a temperature
   (:func:`lenscat.models.lensmodel_train.fit_temperature`) and the vetting threshold of the lens
   probability is the largest that flags at most ``max_lens_loss`` (1 %) of the calibration lenses
   (:func:`lenscat.models.lensmodel_train.completeness_threshold`). Factors, temperature and
   threshold go into the checkpoint and the version's ``hparams`` (``vet_rules``).
5. Register the version (kind ``lensmodel``, checkpoint sha256, hyper-parameters, training-set
   digest, calibration metrics).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from lenscat.errors import InvalidParameter
from lenscat.modelling.evaluation import parameter_metrics
from lenscat.modelling.modeller import (
    ARCHITECTURE,
    input_preprocessing,
    network_input,
    refinement_calibration,
    write_checkpoint,
)
from lenscat.modelling.training_set import NONLENS_KINDS, LensSet, concat, simulate_lens_set, split
from lenscat.modelling.types import PARAMS
from lenscat.modelling.vetting import VetRules
from lenscat.registry.versions import ModelVersion, register_model, store_checkpoint

PROBABILITY_ARC_MAG_R: tuple[float, float] = (19.0, 23.0)
"""Lensed r magnitudes of the simulated training lenses when the network also learns the lens probability."""


@dataclass
class LensTrainOptions:
    """What ``lenscat model train`` sets (defaults: the CPU recipe of docs/benchmarks.md)."""

    n: int = 4000
    epochs: int = 20
    members: int = 1
    width: int = 16
    batch_size: int = 64
    lr: float = 2e-3
    crop: int = 48
    seed: int = 0
    survey: str | None = None
    n_injections: int | None = None
    workers: int = 1
    device: str | None = None
    residual: bool = True
    arc_mag_r: tuple[float, float] | None = None
    flat_theta_prior: bool = True
    nonlens_ratio: float = 1.0
    max_lens_loss: float = 0.01
    bce_weight: float = 1.0
    lens_light_dm: tuple[float, float] | None = None

    def lens_arc_mag_r(self) -> tuple[float, float] | None:
        """The simulated lenses' lensed r magnitude range: ``arc_mag_r`` when set; else, with non-lenses,
        :data:`PROBABILITY_ARC_MAG_R` (the lens probability must learn that faint arcs are lenses too:
        docs/benchmarks.md, "Vetting with a lens probability"); else None (the simulator's 19.0-21.5)."""
        if self.arc_mag_r is not None:
            return self.arc_mag_r
        return PROBABILITY_ARC_MAG_R if self.nonlens_ratio > 0 else None

    def check(self) -> None:
        """Raise :class:`InvalidParameter` for values out of range."""
        if self.n < 100:
            raise InvalidParameter("n", "{n} must be at least 100 simulated lenses")
        if self.epochs < 1:
            raise InvalidParameter("epochs", "{epochs} must be at least 1")
        if self.members < 1:
            raise InvalidParameter("members", "{members} must be at least 1")
        if self.crop % 8 or self.crop < 16:
            raise InvalidParameter("crop", "{crop} must be a multiple of 8 of at least 16 pixels")
        if not 0.0 <= self.nonlens_ratio <= 10.0:
            raise InvalidParameter("nonlens_ratio", "{nonlens_ratio} must be between 0 (no lens probability) and 10")
        if not 0.0 <= self.max_lens_loss < 0.5:
            raise InvalidParameter("max_lens_loss", "{max_lens_loss} must be a fraction in [0, 0.5)")
        dm = self.lens_light_dm
        if dm is not None and not (
            len(dm) == 2 and all(math.isfinite(v) and abs(v) <= 5.0 for v in dm) and dm[0] <= dm[1]
        ):
            raise InvalidParameter("lens_light_dm", "{lens_light_dm} must be LO,HI magnitudes with -5 <= LO <= HI <= 5")


@dataclass
class LensTrainReport:
    """The registered version and what training measured."""

    model: ModelVersion
    created: bool
    report: dict[str, Any] = field(default_factory=dict)


def build_training_set(opts: LensTrainOptions, *, session: Session | None = None) -> LensSet:
    """Simulated lenses, plus injections into ``opts.survey``'s galaxies when a survey is named, plus
    ``opts.nonlens_ratio`` times as many non-lenses (simulated impostors; the survey's hosts as they are).
    ``opts.lens_light_dm`` shifts the simulated central objects' light (never the injections' hosts)."""
    sets = [
        simulate_lens_set(
            opts.n,
            seed=opts.seed,
            crop=opts.crop,
            workers=opts.workers,
            arc_mag_r=opts.lens_arc_mag_r(),
            lens_light_dm=opts.lens_light_dm,
        )
    ]
    n_inj = 0
    if opts.survey:
        if session is None:
            raise InvalidParameter("survey", "injections into {survey} need a database session")
        from lenscat.modelling.injections import injected_lens_set

        n_inj = opts.n_injections if opts.n_injections is not None else max(opts.n // 4, 1)
        sets.append(injected_lens_set(opts.survey, n_inj, seed=opts.seed, crop=opts.crop, session=session))
    n_non = int(round(opts.nonlens_ratio * (opts.n + n_inj)))
    n_hosts = min(int(round(opts.nonlens_ratio * n_inj)), n_non)
    if n_hosts:
        from lenscat.modelling.injections import host_window_set

        assert opts.survey is not None and session is not None
        sets.append(host_window_set(opts.survey, n_hosts, seed=opts.seed, crop=opts.crop, session=session))
    if n_non - n_hosts > 0:
        # a seed of its own: object i of the impostors shares no random stream with lens i
        sets.append(
            simulate_lens_set(
                n_non - n_hosts,
                seed=opts.seed + 1,
                kinds=NONLENS_KINDS,
                crop=opts.crop,
                workers=opts.workers,
                lens_light_dm=opts.lens_light_dm,
            )
        )
    return sets[0] if len(sets) == 1 else concat(sets)


def is_lens(kinds: np.ndarray) -> np.ndarray:
    """True for the lenses (simulated or injected) of a set's ``kinds``."""
    return np.isin(np.asarray(kinds, dtype=object), ["lens", "injection"])


def flat_theta_weights(theta_e: np.ndarray, bins: int = 22) -> np.ndarray:
    """Sampling weights that flatten the training set's θ_E distribution (1 / histogram density).

    The simulator's θ_E is log-normal (median 1.5″); a regression network shrinks towards where the
    training lenses are dense, under-estimating large Einstein radii. Drawing batches with these
    weights makes the prior flat over the simulated range (bins with fewer than 5 lenses are capped).
    """
    t = np.asarray(theta_e, dtype=np.float64)
    hist, edges = np.histogram(t, bins=bins, range=(float(t.min()), float(t.max()) + 1e-9))
    dens = hist[np.clip(np.digitize(t, edges) - 1, 0, bins - 1)]
    return np.asarray(1.0 / np.maximum(dens, 5), dtype=np.float64)


def fit_and_calibrate(data: LensSet, opts: LensTrainOptions, *, progress: bool = False) -> dict[str, Any]:
    """Train on ``data`` (80 / 10 / 10 split) and calibrate; returns state, factors and metrics."""
    from lenscat.models.lensmodel import coverage_scale, lens_probability, predict_with_logit
    from lenscat.models.lensmodel_train import completeness_threshold, fit_temperature, state_of, train_lensmodel

    pre = input_preprocessing(opts.crop, opts.residual)
    x = network_input(data.images, pre, opts.residual)
    tr, va, ca = split(len(data), (0.8, 0.1, 0.1), opts.seed)
    lens = is_lens(data.kinds)
    head = not lens.all()
    weights = None
    if opts.flat_theta_prior:
        # lenses flat in θ_E, with the weight of their number; each non-lens weighs 1
        weights = np.ones(len(tr))
        lt = lens[tr]
        w = flat_theta_weights(data.targets[tr][lt, 0])
        weights[lt] = w * lt.sum() / w.sum()
    res = train_lensmodel(
        x[tr],
        data.targets[tr],
        x[va],
        data.targets[va],
        members=opts.members,
        epochs=opts.epochs,
        warmup_epochs=min(2, max(opts.epochs - 1, 0)),
        batch_size=opts.batch_size,
        lr=opts.lr,
        width=opts.width,
        seed=opts.seed,
        device=opts.device or "cpu",
        progress=progress,
        sample_weights=weights,
        is_lens_train=lens[tr] if head else None,
        is_lens_val=lens[va] if head else None,
        bce_weight=opts.bce_weight,
    )
    mu, sig, logit = predict_with_logit(res.members, x[ca])
    lc = lens[ca]
    factors = coverage_scale((data.targets[ca][lc] - mu[lc]) / sig[lc])
    prob: dict[str, Any] | None = None
    if logit is not None:
        temperature = fit_temperature(logit, lc)
        p = lens_probability(logit, temperature)
        threshold = completeness_threshold(p[lc], opts.max_lens_loss)
        prob = {
            "temperature": temperature,
            "threshold": threshold,
            "max_lens_loss": opts.max_lens_loss,
            "calibration_set": probability_metrics(p, lc, threshold),
        }
    return {
        "state": state_of(res),
        "preprocessing": pre.to_dict(),
        "residual_channels": opts.residual,
        "calibration": factors,
        "calibration_metrics": parameter_metrics(mu[lc], sig[lc] * factors, data.targets[ca][lc]),
        "lens_probability": prob,
        "sizes": {"train": len(tr), "validation": len(va), "calibration": len(ca)},
        "history": res.history,
        "seconds": res.seconds,
    }


def probability_metrics(p: np.ndarray, lens: np.ndarray, threshold: float) -> dict[str, float]:
    """Lenses kept and non-lenses flagged at ``threshold``, the ROC AUC and the Brier score."""
    p, lens = np.asarray(p, dtype=np.float64), np.asarray(lens, dtype=bool)
    pl, pn = p[lens], p[~lens]
    # AUC: the chance that a random lens outranks a random non-lens (ties count half)
    auc = math.nan
    if len(pl) and len(pn):
        auc = float((pl[:, None] > pn[None, :]).mean() + 0.5 * (pl[:, None] == pn[None, :]).mean())
    return {
        "n_lenses": int(len(pl)),
        "n_nonlenses": int(len(pn)),
        "lenses_kept": round(float((pl >= threshold).mean()), 4) if len(pl) else math.nan,
        "nonlenses_flagged": round(float((pn < threshold).mean()), 4) if len(pn) else math.nan,
        "auc": round(auc, 4),
        "brier": round(float(np.mean((p - lens) ** 2)), 4),
    }


def train_lens_model(name: str, opts: LensTrainOptions, *, session: Session, progress: bool = False) -> LensTrainReport:
    """Simulate, train, calibrate and register a lensmodel version named ``name``.

    Parameters
    ----------
    name
        The model name; a new checkpoint becomes its next version.
    opts
        Sizes, epochs, seed, optional survey for injections.
    session
        Session for the injection hosts and the registration (not committed).
    progress
        Print one line per epoch.

    Returns
    -------
    LensTrainReport
    """
    opts.check()
    data = build_training_set(opts, session=session)
    fit = fit_and_calibrate(data, opts, progress=progress)
    prob = fit["lens_probability"]
    rules = VetRules(min_lens_probability=None if prob is None else round(float(prob["threshold"]), 6))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lensmodel.pt"
        state = dict(fit["state"])
        if prob is not None:
            state["lens_probability"] = {"temperature": prob["temperature"], "threshold": prob["threshold"]}
        state["refine_calibration"] = refinement_calibration(fit, data, opts.seed)  # forward-model refinement σ
        write_checkpoint(path, state, fit["preprocessing"], fit["calibration"], fit["residual_channels"])
        stored, sha = store_checkpoint(path)
    hparams = {
        "n": opts.n,
        "epochs": opts.epochs,
        "members": opts.members,
        "width": opts.width,
        "batch_size": opts.batch_size,
        "lr": opts.lr,
        "seed": opts.seed,
        "residual_channels": opts.residual,
        "flat_theta_prior": opts.flat_theta_prior,
        "arc_mag_r": opts.lens_arc_mag_r(),
        "lens_light_dm": None if opts.lens_light_dm is None else list(opts.lens_light_dm),
        "survey": opts.survey,
        "n_injections": int(np.sum(data.kinds == "injection")),
        "params": list(PARAMS),
        "calibration": {p: round(float(f), 4) for p, f in zip(PARAMS, fit["calibration"], strict=True)},
        "calibration_level": 0.6827,
        "vet_rules": asdict(rules),
        "nonlens_ratio": opts.nonlens_ratio,
        "n_nonlenses": int(np.sum(~is_lens(data.kinds))),
        "lens_probability": prob,
        "frame": "x East, y North [arcsec]; phi from East towards North",
        "training_set": data.meta,
    }
    model, created = register_model(
        "lensmodel",
        name,
        architecture=ARCHITECTURE,
        output_dim=2 * len(PARAMS),
        checkpoint_path=stored,
        checkpoint_sha256=sha,
        origin="trained",
        hparams=hparams,
        input_spec={"crop": opts.crop, "bands": ["g", "r", "z"], "pixel_scale": 0.262, **fit["preprocessing"]},
        training_set_sha256=data.digest(),
        metrics={"calibration_set": fit["calibration_metrics"]},
        description="CNN lens model (SIE + shear + source position) with a Gaussian likelihood head",
        session=session,
    )
    report = {
        "model": model.label,
        "created": created,
        "sizes": fit["sizes"],
        "train_seconds": round(fit["seconds"], 1),
        "calibration": hparams["calibration"],
        "calibration_set": fit["calibration_metrics"],
        "final_val_nll": fit["history"][-1]["val_nll"] if fit["history"] else None,
        "lens_probability": prob,
    }
    return LensTrainReport(model, created, report)
