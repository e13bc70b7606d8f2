"""``lenscat spectra train``: the Li et al. (2018) ResNet trained on synthetic spectra, registered.

The training set is built from real ingredients (:func:`lenscat.spectra.synth.make_training_set`):
SDSS eigenspectrum galaxies at 0.3 < z < 0.7, real SDSS sky spectra and photon + read noise, and,
with ``residual_pack``, real continuum-subtracted residuals from ingested spectra for part of the set;
Lyman-alpha lines follow Li et al.'s priors at a ~1:15 positive fraction. A validation set from an
independent seed picks the epoch and the hit threshold (by default the probability that keeps the
false-positive rate on synthetic non-lenses at 10^-3). The checkpoint goes into the model store and
a ``detector`` model version records architecture, hyper-parameters, checkpoint and training-set
hashes.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError
from lenscat.registry import ModelVersion, register_model, store_checkpoint
from lenscat.spectra.grid import WINDOW

DEFAULT_FPR = 1e-3


def real_residuals(pack: str, *, session: Session, max_rows: int = 5000, seed: int = 0,
                   min_coverage: float = 0.8) -> tuple[np.ndarray, list[int]]:
    """Continuum-subtracted residuals of ingested spectra in S/N units, ``(flux - continuum) * sqrt(ivar)``.

    Masked pixels are 0. Returns (residuals (M, P), spectrum ids used).
    """
    from lenscat.spectra.ingest import pack_store

    rows = session.execute(text(
        "SELECT s.spectrum_id, s.pack_id, s.pack_row FROM lenscat.spectra s JOIN lenscat.spectrum_packs p "
        "USING (pack_id) WHERE p.name = :n AND s.window_coverage >= :c ORDER BY s.spectrum_id"),
        {"n": pack, "c": min_coverage}).all()
    if not rows:
        raise LenscatError(f"spectrum store {pack!r} has no spectra with >= {min_coverage:.0%} good window pixels")
    if len(rows) > max_rows:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_rows, replace=False))
        rows = [rows[i] for i in pick]
    store = pack_store(int(rows[0][1]), session=session)
    packed = store.read(np.array([r[2] for r in rows], dtype=np.int64))
    res = np.where(packed.ivar > 0, (packed.flux - packed.continuum) * np.sqrt(packed.ivar), 0.0)
    return np.clip(res, -20, 20).astype(np.float32), [int(r[0]) for r in rows]


def train_detector(
    name: str,
    *,
    session: Session,
    n_train: int = 20_000,
    n_val: int = 5_000,
    positive_fraction: float = 1 / 16,
    epochs: int | None = None,
    residual_pack: str | None = None,
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
        Synthetic training and validation spectra.
    positive_fraction
        Fraction with an injected line.
    epochs
        Training epochs (default: :func:`lenscat.models.specnet.train_specnet`'s).
    residual_pack
        Take real residuals for part of the set from this spectrum store.
    threshold
        Hit probability; default: the validation threshold at a false-positive rate of 10^-3.
    seed
        Seed of the training set (validation uses ``seed + 1``) and of the training.
    device
        Torch device (default: CUDA when available).
    sample
        Spectra the detector scans (:data:`lenscat.spectra.scan.SAMPLES`).
    resume
        Continue an interrupted training of the same recipe (its state is kept after every
        epoch); ``False`` starts over.

    Returns
    -------
    (ModelVersion, dict)
        The detector version and its validation metrics.
    """
    from lenscat.models.specnet import (
        completeness_at_fpr,
        predict,
        prepare_inputs,
        roc_auc,
        save_specnet,
        train_specnet,
    )
    from lenscat.spectra.scan import sample_sql
    from lenscat.spectra.synth import make_training_set

    sample_sql(sample)
    residuals = None
    residual_ids: list[int] = []
    if residual_pack is not None:
        residuals, residual_ids = real_residuals(residual_pack, session=session, seed=seed)
    t0 = time.perf_counter()
    train = make_training_set(n_train, positive_fraction=positive_fraction, seed=seed, residuals=residuals)
    val = make_training_set(n_val, positive_fraction=positive_fraction, seed=seed + 1, residuals=residuals)
    t_synth = time.perf_counter() - t0
    set_desc = {"generator": "lenscat.spectra.synth.make_training_set", "n_train": n_train, "n_val": n_val,
                "positive_fraction": positive_fraction, "seed": seed, "residual_pack": residual_pack,
                "residual_spectrum_ids_sha256": hashlib.sha256(json.dumps(residual_ids).encode()).hexdigest()
                if residual_ids else None}
    tsha = hashlib.sha256(json.dumps(set_desc, sort_keys=True).encode()).hexdigest()
    from lenscat.registry import training_state_dir

    kwargs: dict[str, Any] = {"seed": seed, "device": device, "progress": progress,
                              "state_dir": training_state_dir(), "run_tag": tsha, "resume": resume}
    if epochs is not None:
        kwargs["epochs"] = epochs
    model, history = train_specnet(train.arrays(), val.arrays(), **kwargs)
    x = prepare_inputs(val.flux, val.ivar, val.continuum, val.z, wave=WINDOW.wave)
    prob, pixel = predict(model, x, device=device)
    labels = np.asarray(val.labels).astype(bool)
    comp, thr_fpr = completeness_at_fpr(labels, prob, DEFAULT_FPR)
    thr = float(threshold) if threshold is not None else float(min(max(thr_fpr, 1e-6), 1 - 1e-6))
    pos = labels
    located = np.abs(np.asarray(pixel)[pos] - np.asarray(val.line_pixel)[pos]) <= 3
    metrics: dict[str, Any] = {
        "val_auc": roc_auc(labels, prob), "val_completeness_at_fpr_1e-3": comp,
        "threshold": thr, "val_completeness_at_threshold": float(np.mean(prob[pos] >= thr)),
        "val_false_positive_rate_at_threshold": float(np.mean(prob[~pos] >= thr)),
        "val_located_within_3px": float(np.mean(located)) if located.size else float("nan"),
        "train_seconds": float(history.get("seconds", 0.0)), "synth_seconds": t_synth,
        "best_epoch": history.get("best_epoch"), "n_train": n_train, "n_val": n_val,
    }
    hparams = {**history.get("hparams", {}), "threshold": thr, "training_set": set_desc, "sample": sample}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "specnet.pt"
        save_specnet(model, path, hparams=hparams)
        stored, sha = store_checkpoint(path)
    mv, _created = register_model(
        "detector", name, architecture="specnet", output_dim=1, checkpoint_path=stored, checkpoint_sha256=sha,
        origin="trained", hparams=json.loads(json.dumps(hparams, default=float)),
        input_spec={"window_k0": WINDOW.k0, "window_n": WINDOW.n, "dlog": WINDOW.dlog,
                    "channels": ["snr_residual", "scaled_residual", "good_mask"]},
        training_set_sha256=tsha, metrics=json.loads(json.dumps(metrics, default=float)),
        description="Li et al. (2018) 1-D ResNet for background Lyman-alpha lines", session=session)
    if history.get("state_path"):  # registered (the caller commits): nothing is left to resume
        Path(history["state_path"]).unlink(missing_ok=True)
    return mv, metrics
