"""Training, calibrating and registering a lens modelling network (``lenscat model train``).

1. A training set of ``n`` simulated lenses (:func:`lenscat.modelling.training_set.simulate_lens_set`),
   plus, when a survey is named, lenses injected into that survey's own galaxies
   (:func:`lenscat.modelling.injections.injected_lens_set`).
2. Split 80 / 10 / 10 into training, validation (the best epoch) and calibration sets.
3. Train the ensemble (:func:`lenscat.models.lensmodel_train.train_lensmodel`), drawing batches so that
   θ_E is flat over the simulated range (:func:`flat_theta_weights`).
4. Calibrate: on the calibration set, each parameter's σ is multiplied by the 68th percentile of
   ``|truth - μ| / σ`` (:func:`lenscat.models.lensmodel.coverage_scale`), so its 1σ interval covers 68 %
   of held-out truths; the factors go into the checkpoint and the version's ``hparams``.
5. Register the version (kind ``lensmodel``, checkpoint sha256, hyper-parameters, training-set
   digest, calibration metrics).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from lenscat.errors import InvalidParameter
from lenscat.modelling.evaluation import parameter_metrics
from lenscat.modelling.modeller import ARCHITECTURE, input_preprocessing, network_input, write_checkpoint
from lenscat.modelling.training_set import LensSet, concat, simulate_lens_set, split
from lenscat.modelling.types import PARAMS
from lenscat.modelling.vetting import VetRules
from lenscat.registry.versions import ModelVersion, register_model, store_checkpoint


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


@dataclass
class LensTrainReport:
    """The registered version and what training measured."""

    model: ModelVersion
    created: bool
    report: dict[str, Any] = field(default_factory=dict)


def build_training_set(opts: LensTrainOptions, *, session: Session | None = None) -> LensSet:
    """Simulated lenses, plus injections into ``opts.survey``'s galaxies when a survey is named."""
    sets = [simulate_lens_set(opts.n, seed=opts.seed, crop=opts.crop, workers=opts.workers, arc_mag_r=opts.arc_mag_r)]
    if opts.survey:
        if session is None:
            raise InvalidParameter("survey", "injections into {survey} need a database session")
        from lenscat.modelling.injections import injected_lens_set

        n_inj = opts.n_injections if opts.n_injections is not None else max(opts.n // 4, 1)
        sets.append(injected_lens_set(opts.survey, n_inj, seed=opts.seed, crop=opts.crop, session=session))
    return sets[0] if len(sets) == 1 else concat(sets)


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
    from lenscat.models.lensmodel import coverage_scale, predict
    from lenscat.models.lensmodel_train import state_of, train_lensmodel

    pre = input_preprocessing(opts.crop, opts.residual)
    x = network_input(data.images, pre, opts.residual)
    tr, va, ca = split(len(data), (0.8, 0.1, 0.1), opts.seed)
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
        sample_weights=flat_theta_weights(data.targets[tr, 0]) if opts.flat_theta_prior else None,
    )
    mu, sig = predict(res.members, x[ca])
    factors = coverage_scale((data.targets[ca] - mu) / sig)
    return {
        "state": state_of(res),
        "preprocessing": pre.to_dict(),
        "residual_channels": opts.residual,
        "calibration": factors,
        "calibration_metrics": parameter_metrics(mu, sig * factors, data.targets[ca]),
        "sizes": {"train": len(tr), "validation": len(va), "calibration": len(ca)},
        "history": res.history,
        "seconds": res.seconds,
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
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lensmodel.pt"
        write_checkpoint(path, fit["state"], fit["preprocessing"], fit["calibration"], fit["residual_channels"])
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
        "survey": opts.survey,
        "n_injections": int(np.sum(data.kinds == "injection")),
        "params": list(PARAMS),
        "calibration": {p: round(float(f), 4) for p, f in zip(PARAMS, fit["calibration"], strict=True)},
        "calibration_level": 0.6827,
        "vet_rules": asdict(VetRules()),
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
    }
    return LensTrainReport(model, created, report)
