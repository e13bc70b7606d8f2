"""Inputs of the spectral detector training: the synthetic training and validation sets and real residuals.

:func:`build_inputs` draws the training set from real ingredients
(:func:`lenscat.spectra.synth_training.iter_training_set`) into an :class:`InputSet`, under the line
priors :data:`DEFAULT_PRIORS` by default; :func:`real_residuals` reads continuum-subtracted residuals
of real spectra from the packed store to use as noise. The training itself is
:func:`lenscat.spectra.training.train_detector`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError
from lenscat.spectra.grid import WINDOW

#: default line priors (:data:`lenscat.spectra.synth_priors.LINE_PRIORS`)
DEFAULT_PRIORS = "matched"


@dataclass
class InputSet:
    """Network input of a synthetic set and what is known about its lines."""

    inputs: np.ndarray  #: (N, 3, P) float32, :func:`lenscat.models.specnet_inputs.prepare_inputs`
    labels: np.ndarray  #: (N,) int8, 1 = a line
    line_pixel: np.ndarray  #: (N,) int64 peak pixel, -1 for none
    line: dict[str, np.ndarray]  #: per-row line parameters (NaN for negatives), e.g. ``snr_matched``
    seconds: float  #: generation + preparation time [s]

    def arrays(self) -> dict[str, np.ndarray]:
        """What :func:`lenscat.models.specnet_train.train_specnet` takes."""
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
        As :func:`lenscat.spectra.synth_training.make_training_set`.
    keep_spectra
        Also return the full :class:`~lenscat.spectra.synth_training.SyntheticSet` (without truth), e.g.
        to run the matched filter on the same validation spectra.
    progress
        tqdm bar over the blocks.

    Returns
    -------
    (InputSet, SyntheticSet or None)
    """
    from tqdm import tqdm

    from lenscat.models.specnet_inputs import N_INPUT_CHANNELS, prepare_inputs
    from lenscat.spectra.masks import specnet_pixel_mask
    from lenscat.spectra.synth_training import iter_training_set

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
            x[sl] = prepare_inputs(
                part.flux, part.ivar, part.continuum, part.z, wave=part.wave, pixel_mask=specnet_pixel_mask
            )
            labels[sl], lpix[sl] = part.labels, part.line_pixel
            lines.append(part.line)
            if keep_spectra:
                parts.append(part)
            bar.update(len(part))
    line = {k: np.concatenate([d[k] for d in lines]) for k in lines[0]}
    full = None
    if keep_spectra:
        from lenscat.spectra.synth_training import SyntheticSet

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
