"""``lenscat spectra train``: the Li et al. (2018) ResNet trained on synthetic spectra, registered.

The training set is built from real ingredients (:func:`lenscat.spectra.synth_training.iter_training_set`):
SDSS eigenspectrum galaxies at 0.3 < z < 0.7, real SDSS sky spectra and photon + read noise, and,
with ``residual_pack``, real continuum-subtracted residuals from ingested spectra for most of the set
(``residual_fraction``, default 0.8); Lyman-alpha lines at a ~1:15 positive fraction follow the
``'matched'`` priors (FWHM log-uniform 70-1100 km/s, red tails and some symmetric lines, matched-filter
S/N uniform 3-20; issue 31) or Li et al.'s (``priors='li2018'``). The set is generated and turned into
network input in blocks of 4,096 rows, so Li et al.'s 1.5x10^5 spectra need ~2 GB. A validation set from
an independent seed (``seed + 1``) picks the epoch and the hit threshold (by default the probability
that keeps the false-positive rate on synthetic non-lenses at 10^-3); the matched filter
(:func:`lenscat.spectra.matched_filter.snr_max`) is measured on the same validation set at the same
false-positive rate, so the two are compared like for like. The checkpoint goes into the model store
and a ``detector`` model version records architecture, hyper-parameters, checkpoint, training-set
hashes and both detectors' validation metrics.

Two recipes (:data:`RECIPES`) set the defaults: ``cpu`` (a set and schedule that train in minutes on
2 cores) and ``gpu`` (Li et al.'s 1.5x10^5 spectra, larger batches, automatic mixed precision, more
epochs). The GPU recipe is a parameter set; the same code runs it on the CPU (AMP is then off).
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError
from lenscat.registry.versions import ModelVersion, register_model, store_checkpoint
from lenscat.spectra.grid import WINDOW
from lenscat.spectra.training_inputs import DEFAULT_PRIORS, build_inputs, real_residuals

DEFAULT_FPR = 1e-3
#: default architecture (:data:`lenscat.models.specnet.ARCHITECTURES`), chosen by measurement
#: (docs/benchmarks.md, "ResNet against the matched filter (issue 31)")
DEFAULT_ARCH = "li2018"
#: matched S/N above which a line counts as "should be found" in the validation metrics
SNR_BRIGHT = 8.0


@dataclass(frozen=True)
class Recipe:
    """Defaults of a training run (each overridable)."""

    n_train: int
    n_val: int
    epochs: int
    batch_size: int
    lr: float
    amp: bool


#: ``cpu``: minutes on 2 cores; ``gpu``: Li et al.'s set size (1.5x10^5), batch 512, AMP, 12 epochs
RECIPES: dict[str, Recipe] = {
    "cpu": Recipe(n_train=40_000, n_val=10_000, epochs=4, batch_size=128, lr=3e-3, amp=False),
    "gpu": Recipe(n_train=150_000, n_val=20_000, epochs=12, batch_size=512, lr=4e-3, amp=True),
}


def _completeness(labels: np.ndarray, scores: np.ndarray, thr: float, sel: np.ndarray) -> float:
    pos = labels.astype(bool) & sel
    return float(np.mean(scores[pos] > thr)) if pos.any() else math.nan


def compare_with_matched_filter(
    labels: np.ndarray,
    score: np.ndarray,
    mf_snr: np.ndarray,
    snr_matched: np.ndarray,
    *,
    fpr: float = DEFAULT_FPR,
    prefix: str = "val_",
) -> dict[str, float]:
    """A detector's score and the matched filter's best S/N on the same validation set, like for like.

    Each gets the threshold giving false-positive rate ``fpr`` on that set's negatives
    (:func:`lenscat.models.metrics.completeness_at_fpr`); completeness over all lines and over lines of
    matched S/N >= :data:`SNR_BRIGHT`.

    Returns
    -------
    dict
        ``{prefix}auc``, ``{prefix}completeness_at_fpr_1e-3``, ``{prefix}completeness_snr_ge_8`` and the same
        with ``mf_`` before the prefix (``mf_val_...``), ``mf_threshold_snr``.
    """
    from lenscat.models.metrics import completeness_at_fpr, roc_auc

    y = np.asarray(labels).astype(bool)
    bright = np.nan_to_num(np.asarray(snr_matched, dtype=np.float64), nan=0.0) >= SNR_BRIGHT
    tag = f"{fpr:.0e}".replace("e-0", "e-")
    out: dict[str, float] = {}
    mf = np.nan_to_num(np.asarray(mf_snr, dtype=np.float64), nan=-np.inf)
    for pre, sc in ((prefix, np.asarray(score, dtype=np.float64)), ("mf_" + prefix, mf)):
        comp, thr = completeness_at_fpr(y, sc, fpr)
        finite = np.isfinite(sc)
        out[f"{pre}auc"] = roc_auc(y[finite], sc[finite]) if finite.any() else math.nan
        out[f"{pre}completeness_at_fpr_{tag}"] = comp
        out[f"{pre}completeness_snr_ge_8"] = _completeness(y, sc, thr, bright)
        if pre.startswith("mf_"):
            out["mf_threshold_snr"] = thr
    return out


def train_detector(
    name: str,
    *,
    session: Session,
    n_train: int | None = None,
    n_val: int | None = None,
    positive_fraction: float = 1 / 16,
    epochs: int | None = None,
    residual_pack: str | None = None,
    residual_fraction: float = 0.8,
    priors: str = DEFAULT_PRIORS,
    arch: str = DEFAULT_ARCH,
    recipe: str = "cpu",
    batch_size: int | None = None,
    lr: float | None = None,
    threshold: float | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    sample: str = "galaxies",
    resume: bool = True,
) -> tuple[ModelVersion, dict[str, Any]]:
    """Train a ResNet detector on synthetic spectra and register it.

    Parameters
    ----------
    name
        Detector name; a new checkpoint becomes the next version.
    n_train, n_val
        Synthetic training and validation spectra (default: the recipe's; Li et al. used 1.5x10^5).
    positive_fraction
        Fraction with an injected line.
    epochs, batch_size, lr
        Training schedule (default: the recipe's).
    residual_pack
        Take real residuals for part of the set from this spectrum store.
    residual_fraction
        Fraction of the spectra whose noise is a real residual (with ``residual_pack``).
    priors
        Line priors (:data:`lenscat.spectra.synth_priors.LINE_PRIORS`).
    arch
        Network (:data:`lenscat.models.specnet.ARCHITECTURES`).
    recipe
        ``'cpu'`` or ``'gpu'`` (:data:`RECIPES`).
    threshold
        Hit probability; default: the validation threshold at a false-positive rate of 10^-3.
    seed
        Seed of the training set (validation uses ``seed + 1``) and of the training.
    device
        Torch device (default: ``LENSCAT_DEVICE``, else CUDA when available).
    sample
        Spectra the detector scans (:data:`lenscat.spectra.scan.SAMPLES`).
    resume
        Continue an interrupted training of the same recipe (its state is kept after every
        epoch); ``False`` starts over.

    Returns
    -------
    (ModelVersion, dict)
        The detector version and its validation metrics, the matched filter's on the same
        validation set beside them (``mf_val_*``).
    """
    from lenscat.models.metrics import completeness_at_fpr
    from lenscat.models.specnet import architecture_config, save_specnet
    from lenscat.models.specnet_inference import predict
    from lenscat.models.specnet_train import train_specnet
    from lenscat.spectra.matched_filter import snr_max
    from lenscat.spectra.scan import sample_sql
    from lenscat.spectra.synth_priors import LINE_PRIORS

    sample_sql(sample)
    if recipe not in RECIPES:
        raise LenscatError(f"unknown training recipe {recipe!r}; expected one of {', '.join(RECIPES)}")
    if priors not in LINE_PRIORS:
        raise LenscatError(f"unknown line priors {priors!r}; expected one of {', '.join(LINE_PRIORS)}")
    if not 0.0 <= residual_fraction <= 1.0:
        raise LenscatError(f"residual fraction must be in [0, 1], got {residual_fraction}")
    config = architecture_config(arch)
    rc = RECIPES[recipe]
    n_train = rc.n_train if n_train is None else int(n_train)
    n_val = rc.n_val if n_val is None else int(n_val)
    epochs = rc.epochs if epochs is None else int(epochs)
    batch_size = rc.batch_size if batch_size is None else int(batch_size)
    lr = rc.lr if lr is None else float(lr)
    residuals = None
    residual_ids: list[int] = []
    if residual_pack is not None:
        residuals, residual_ids = real_residuals(residual_pack, session=session, seed=seed)
    common: dict[str, Any] = {
        "positive_fraction": positive_fraction,
        "priors": priors,
        "residuals": residuals,
        "residual_fraction": residual_fraction,
        "progress": progress,
    }
    train, _ = build_inputs(n_train, seed=seed, **common)
    val, val_set = build_inputs(n_val, seed=seed + 1, keep_spectra=True, **common)
    assert val_set is not None
    t_synth = train.seconds + val.seconds
    set_desc = {
        "generator": "lenscat.spectra.synth.iter_training_set",
        "n_train": n_train,
        "n_val": n_val,
        "positive_fraction": positive_fraction,
        "seed": seed,
        "priors": priors,
        "residual_pack": residual_pack,
        "residual_fraction": residual_fraction if residual_pack is not None else None,
        "residual_spectrum_ids_sha256": hashlib.sha256(json.dumps(residual_ids).encode()).hexdigest()
        if residual_ids
        else None,
    }
    tsha = hashlib.sha256(json.dumps(set_desc, sort_keys=True).encode()).hexdigest()
    from lenscat.registry.device import configured_device
    from lenscat.registry.versions import training_state_dir

    device = configured_device(device)  # LENSCAT_DEVICE by default, else CUDA when available
    model, history = train_specnet(
        train.arrays(),
        val.arrays(),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        config=config,
        seed=seed,
        device=device,
        amp=rc.amp,
        progress=progress,
        state_dir=training_state_dir(),
        run_tag=tsha,
        resume=resume,
    )
    del train
    t_pred = time.perf_counter()
    prob, pixel = predict(model, val.inputs, device=device)
    t_pred = time.perf_counter() - t_pred
    mf = snr_max(val_set.flux, val_set.ivar, val_set.continuum, val_set.z, wave=WINDOW.wave)
    labels = np.asarray(val.labels).astype(bool)
    comp, thr_fpr = completeness_at_fpr(labels, prob, DEFAULT_FPR)
    thr = float(threshold) if threshold is not None else float(min(max(thr_fpr, 1e-6), 1 - 1e-6))
    pos = labels
    located = np.abs(np.asarray(pixel)[pos] - np.asarray(val.line_pixel)[pos]) <= 3
    metrics: dict[str, Any] = {
        **compare_with_matched_filter(labels, prob, mf, val.line["snr_matched"]),
        "threshold": thr,
        "val_completeness_at_threshold": float(np.mean(prob[pos] >= thr)),
        "val_false_positive_rate_at_threshold": float(np.mean(prob[~pos] >= thr)),
        "val_located_within_3px": float(np.mean(located)) if located.size else float("nan"),
        "train_seconds": float(history.get("seconds", 0.0)),
        "synth_seconds": t_synth,
        "val_predict_spectra_per_s": len(prob) / max(t_pred, 1e-9),
        "best_epoch": history.get("best_epoch"),
        "n_train": n_train,
        "n_val": n_val,
        "arch": arch,
        "priors": priors,
        "recipe": recipe,
    }
    metrics["val_completeness_at_fpr_1e-3"] = comp
    hparams = {
        **history.get("hparams", {}),
        "threshold": thr,
        "training_set": set_desc,
        "sample": sample,
        "arch": arch,
        "recipe": {"name": recipe, **asdict(rc)},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "specnet.pt"
        save_specnet(model, path, hparams=hparams)
        stored, sha = store_checkpoint(path)
    mv, _created = register_model(
        "detector",
        name,
        architecture="specnet",
        output_dim=1,
        checkpoint_path=stored,
        checkpoint_sha256=sha,
        origin="trained",
        hparams=json.loads(json.dumps(hparams, default=float)),
        input_spec={
            "window_k0": WINDOW.k0,
            "window_n": WINDOW.n,
            "dlog": WINDOW.dlog,
            "channels": ["snr_residual", "scaled_residual", "good_mask"],
        },
        training_set_sha256=tsha,
        metrics=json.loads(json.dumps(metrics, default=float)),
        description=f"Li et al. (2018) 1-D ResNet ({arch}) for background Lyman-alpha lines",
        session=session,
    )
    if history.get("state_path"):  # registered (the caller commits): nothing is left to resume
        Path(history["state_path"]).unlink(missing_ok=True)
    return mv, metrics
