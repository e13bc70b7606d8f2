"""The ensemble's threshold checked on real spectra: re-noised early-type hosts without a line.

The stack of :mod:`lenscat.spectra.detector_ensemble` is fitted on synthetic spectra and its
threshold set at a false-positive rate of 10^-3 on the synthetic negatives. The synthetic and the
real negatives differ (the synthetic sky residuals and template mismatches make the matched
filter's 10^-3 threshold S/N 9-10 there, against no false hit at S/N 6 in re-noised real early
types), so a threshold can be right on one and not on the other. :func:`real_clean_threshold`
measures the stacked log-odds on clean re-noised realisations of the real early-type hosts
(:func:`lenscat.spectra.evaluate_realisations.make_realisations` with no line, a seed of its own)
and returns the threshold with at most ``fpr`` of them at or above it -- where ``fpr`` is the
stricter of the target (10^-3) and the matched filter's own rate of spectra with a hit on the same
clean realisations, so that the ensemble's stack adds no more false candidates than the filter
makes ("at the same false rate"); the ensemble takes the stricter of the synthetic and the real
threshold. Both rates are taken before the per-line vetoes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from lenscat.errors import InvalidParameter
from lenscat.registry.versions import ModelVersion

__all__ = ["real_clean_scores", "real_clean_threshold", "threshold_at_fpr"]


def threshold_at_fpr(scores: np.ndarray, fpr: float) -> float:
    """The lowest threshold with at most ``floor(fpr * n)`` of the (negative) ``scores`` at or above it.

    Raises
    ------
    InvalidParameter
        ``fpr`` outside [0, 1) or no scores.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if not 0.0 <= fpr < 1.0:
        raise InvalidParameter("fpr", f"{{fpr}} must be in [0, 1), got {fpr}")
    if s.size == 0:
        raise InvalidParameter("scores", "{scores} must not be empty")
    k = int(np.floor(fpr * s.size))
    return float(np.nextafter(s[k], np.inf))


def real_clean_scores(
    mf: ModelVersion,
    sn: ModelVersion,
    ck: dict[str, Any],
    *,
    session: Session,
    realisations: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Stacked log-odds of ``realisations`` clean re-noised realisations of the real early-type hosts,
    and whether the matched filter has a hit in each (before the vetoes).

    Each member subtracts its own per-survey continuum choice, as in a scan.
    """
    from lenscat.spectra.detector_mf import MatchedFilterDetector
    from lenscat.spectra.detector_specnet import SpecNetDetector
    from lenscat.spectra.detectors import SpectrumBatch, apply_continuum
    from lenscat.spectra.ensemble_stack import ensemble_features, score
    from lenscat.spectra.evaluate_hosts import load_hosts
    from lenscat.spectra.evaluate_realisations import (
        LYA_FWHM_RANGE,
        LYA_SKEW_RANGE,
        LYA_SNR_RANGE,
        LYA_WAVE_RANGE,
        make_realisations,
    )
    from lenscat.spectra.grid import WINDOW
    from lenscat.spectra.matched_filter import snr_map

    if realisations < 1:
        raise InvalidParameter("realisations", f"{{realisations}} must be >= 1, got {realisations}")
    real = load_hosts(session=session, hosts="early-type")
    rs = make_realisations(
        real,
        realisations=realisations,
        line_fraction=0.0,
        snr_range=LYA_SNR_RANGE,
        fwhm_range=LYA_FWHM_RANGE,
        skew_range=LYA_SKEW_RANGE,
        wave_range=LYA_WAVE_RANGE,
        renoise=True,
        family="lya",
        seed=seed,
    )
    mfd = MatchedFilterDetector(mf)
    net = SpecNetDetector(sn)
    choices = mfd.continuum_for(rs.surveys)
    rows = apply_continuum(rs.rows, choices)
    prob, pixel = net.scores(SpectrumBatch(rows, np.arange(len(rows)), rs.surveys, continuum=choices))
    m = snr_map(rows.flux, rows.ivar, rows.continuum, rows.z, wave=WINDOW.wave, config=mfd.config)
    feat, _ = ensemble_features(prob, pixel, m)
    hits = mfd.detect(SpectrumBatch(rows, np.arange(len(rows)), rs.surveys, continuum=choices))
    mf_hit = np.zeros(len(rows), dtype=bool)
    mf_hit[np.asarray(hits.row, dtype=np.int64)] = True
    return score(feat, ck), mf_hit


def real_clean_threshold(
    mf: ModelVersion,
    sn: ModelVersion,
    ck: dict[str, Any],
    *,
    session: Session,
    realisations: int,
    seed: int,
    fpr: float = 1e-3,
) -> tuple[float, dict[str, Any]]:
    """Log-odds threshold on clean re-noised real early types at the stricter of ``fpr`` and the
    matched filter's own rate there (see the module docstring).

    Returns
    -------
    threshold, info
        The threshold and what it was measured on: ``realisations``, ``seed``, the target ``fpr``,
        the matched filter's rate ``mf_fpr``, the rate used ``fpr_used``, the highest clean score.
    """
    sc, mf_hit = real_clean_scores(mf, sn, ck, session=session, realisations=realisations, seed=seed)
    mf_fpr = float(mf_hit.mean())
    used = min(fpr, mf_fpr)
    thr = threshold_at_fpr(sc, used)
    info = {
        "realisations": realisations,
        "seed": seed,
        "fpr": fpr,
        "mf_fpr": mf_fpr,
        "fpr_used": used,
        "max_score": float(sc.max()),
    }
    return thr, info
