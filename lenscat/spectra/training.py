"""``lenscat spectra train``: the Li et al. (2018) ResNet trained on synthetic spectra, registered.

The training set is built from real ingredients (:func:`lenscat.spectra.synth.iter_training_set`):
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
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError
from lenscat.registry.versions import ModelVersion, register_model, store_checkpoint
from lenscat.spectra.grid import WINDOW

DEFAULT_FPR = 1e-3
#: default architecture (:data:`lenscat.models.specnet.ARCHITECTURES`), chosen by measurement
#: (docs/benchmarks.md, "ResNet against the matched filter (issue 31)")
DEFAULT_ARCH = "li2018"
#: default line priors (:data:`lenscat.spectra.synth.LINE_PRIORS`)
DEFAULT_PRIORS = "matched"
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


@dataclass
class InputSet:
    """Network input of a synthetic set and what is known about its lines."""

    inputs: np.ndarray  #: (N, 3, P) float32, :func:`lenscat.models.specnet.prepare_inputs`
    labels: np.ndarray  #: (N,) int8, 1 = a line
    line_pixel: np.ndarray  #: (N,) int64 peak pixel, -1 for none
    line: dict[str, np.ndarray]  #: per-row line parameters (NaN for negatives), e.g. ``snr_matched``
    seconds: float  #: generation + preparation time [s]

    def arrays(self) -> dict[str, np.ndarray]:
        """What :func:`lenscat.models.specnet.train_specnet` takes."""
        return {"inputs": self.inputs, "labels": self.labels, "line_pixel": self.line_pixel}


def build_inputs(
    n: int,
    *,
    seed: int,
    positive_fraction: float = 1 / 16,
    priors: str = DEFAULT_PRIORS,
    residuals: np.ndarray | None = None,
    residual_fraction: float = 0.8,
    keep_spectra: bool = False,
    progress: bool = False,
) -> tuple[InputSet, Any]:
    """Generate a synthetic set block by block and keep only its network input.

    Parameters
    ----------
    n, seed, positive_fraction, priors, residuals, residual_fraction
        As :func:`lenscat.spectra.synth.make_training_set`.
    keep_spectra
        Also return the full :class:`~lenscat.spectra.synth.SyntheticSet` (without truth), e.g.
        to run the matched filter on the same validation spectra.
    progress
        tqdm bar over the blocks.

    Returns
    -------
    (InputSet, SyntheticSet or None)
    """
    from tqdm import tqdm

    from lenscat.models.specnet import N_INPUT_CHANNELS, prepare_inputs
    from lenscat.spectra.synth import iter_training_set

    t0 = time.perf_counter()
    x = np.empty((n, N_INPUT_CHANNELS, WINDOW.n), dtype=np.float32)
    labels = np.empty(n, dtype=np.int8)
    lpix = np.empty(n, dtype=np.int64)
    lines: list[dict[str, np.ndarray]] = []
    parts: list[Any] = []
    s0 = 0
    it = iter_training_set(
        n,
        positive_fraction=positive_fraction,
        seed=seed,
        priors=priors,
        residuals=residuals,
        residual_fraction=residual_fraction,
        keep_truth=False,
    )
    with tqdm(total=n, disable=not progress, unit="spectrum", desc=f"synthetic set (seed {seed})") as bar:
        for part in it:
            sl = slice(s0, s0 + len(part))
            s0 += len(part)
            x[sl] = prepare_inputs(part.flux, part.ivar, part.continuum, part.z, wave=part.wave)
            labels[sl], lpix[sl] = part.labels, part.line_pixel
            lines.append(part.line)
            if keep_spectra:
                parts.append(part)
            bar.update(len(part))
    line = {k: np.concatenate([d[k] for d in lines]) for k in lines[0]}
    full = None
    if keep_spectra:
        from lenscat.spectra.synth import SyntheticSet

        full = SyntheticSet(
            wave=parts[0].wave,
            flux=np.concatenate([q.flux for q in parts]),
            ivar=np.concatenate([q.ivar for q in parts]),
            continuum=np.concatenate([q.continuum for q in parts]),
            z=np.concatenate([q.z for q in parts]),
            labels=labels,
            line=line,
            line_pixel=lpix,
            meta={"seed": seed, "priors": priors},
        )
    return InputSet(x, labels, lpix, line, time.perf_counter() - t0), full


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
    (:func:`lenscat.models.specnet.completeness_at_fpr`); completeness over all lines and over lines of
    matched S/N >= :data:`SNR_BRIGHT`.

    Returns
    -------
    dict
        ``{prefix}auc``, ``{prefix}completeness_at_fpr_1e-3``, ``{prefix}completeness_snr_ge_8`` and the same
        with ``mf_`` before the prefix (``mf_val_...``), ``mf_threshold_snr``.
    """
    from lenscat.models.specnet import completeness_at_fpr, roc_auc

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


def real_residuals(
    pack: str,
    *,
    session: Session,
    max_rows: int = 5000,
    seed: int = 0,
    min_coverage: float = 0.8,
    max_line_snr: float | None = 6.0,
) -> tuple[np.ndarray, list[int]]:
    """Continuum-subtracted residuals of ingested spectra in S/N units, ``(flux - continuum) * sqrt(ivar)``.

    They carry the real continuum-fit and sky-subtraction structure into the synthetic sets, but
    none of the real galaxy's own lines (which a synthetic spectrum would show at the wrong
    redshift) and no real background line (label noise): the foreground lines at the spectrum's
    pipeline redshift (the matched filter's extended list, +-600 km/s) are masked, and a spectrum
    whose masked residual still holds a matched-filter peak of S/N >= ``max_line_snr``
    (:func:`lenscat.spectra.matched_filter.snr_max`) is left out (None: keep all).

    Returns
    -------
    residuals : numpy.ndarray, shape (M, P), float32
        Clipped to +-20; masked pixels are 0.
    spectrum_ids : list of int
        The spectra used.

    Raises
    ------
    LenscatError
        No spectrum of the store qualifies.
    """
    from lenscat.spectra.ingest import pack_store
    from lenscat.spectra.masks import galaxy_line_masks
    from lenscat.spectra.matched_filter import snr_max

    rows = session.execute(
        text(
            "SELECT s.spectrum_id, s.pack_id, s.pack_row FROM lenscat.spectra s JOIN lenscat.spectrum_packs p "
            "USING (pack_id) WHERE p.name = :n AND s.window_coverage >= :c ORDER BY s.spectrum_id"
        ),
        {"n": pack, "c": min_coverage},
    ).all()
    if not rows:
        raise LenscatError(f"spectrum store {pack!r} has no spectra with >= {min_coverage:.0%} good window pixels")
    if len(rows) > max_rows:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_rows, replace=False))
        rows = [rows[i] for i in pick]
    store = pack_store(int(rows[0][1]), session=session)
    packed = store.read(np.array([r[2] for r in rows], dtype=np.int64))
    z = np.asarray(packed.z, dtype=np.float64)
    good = (packed.ivar > 0) & ~galaxy_line_masks(WINDOW.wave, z, extended=True)
    res = np.where(good, (packed.flux - packed.continuum) * np.sqrt(np.where(good, packed.ivar, 0.0)), 0.0)
    keep = np.ones(len(rows), dtype=bool)
    if max_line_snr is not None:
        best = snr_max(
            packed.flux, np.where(good, packed.ivar, 0.0).astype(np.float32), packed.continuum, z, wave=WINDOW.wave
        )
        keep = ~(np.nan_to_num(best, nan=0.0) >= max_line_snr)
    if not keep.any():
        raise LenscatError(
            f"spectrum store {pack!r}: every candidate spectrum holds a line of matched-filter "
            f"S/N >= {max_line_snr:g}; no clean residuals"
        )
    ids = [int(r[0]) for r, k in zip(rows, keep, strict=True) if k]
    return np.clip(res[keep], -20, 20).astype(np.float32), ids


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
        Line priors (:data:`lenscat.spectra.synth.LINE_PRIORS`).
    arch
        Network (:data:`lenscat.models.specnet.ARCHITECTURES`).
    recipe
        ``'cpu'`` or ``'gpu'`` (:data:`RECIPES`).
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
        The detector version and its validation metrics, the matched filter's on the same
        validation set beside them (``mf_val_*``).
    """
    from lenscat.models.specnet import (
        architecture_config,
        completeness_at_fpr,
        predict,
        save_specnet,
        train_specnet,
    )
    from lenscat.spectra.matched_filter import snr_max
    from lenscat.spectra.scan import sample_sql
    from lenscat.spectra.synth import LINE_PRIORS

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
    from lenscat.registry.versions import training_state_dir

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
