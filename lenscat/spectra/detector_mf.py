"""The matched-filter detector family (BELLS GALLERY Gaussian kernel bank) for background Lyα lines.

Its version is the sha256 of its configuration (:func:`register_matched_filter`), so the same
settings are the same version; the search itself is :mod:`lenscat.spectra.matched_filter`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from lenscat.registry.versions import ModelVersion
from lenscat.spectra.configured import register_configured_detector
from lenscat.spectra.detectors import Candidates, Detector, SpectrumBatch, register_detector
from lenscat.spectra.grid import WINDOW
from lenscat.spectra.matched_filter import MatchedFilterConfig, scan_batch_with_max

MATCHED_FILTER = "matched-filter"

#: hyper-parameters of a version that are not MatchedFilterConfig fields
VERSION_KEYS = ("sample", "continuum")


def register_matched_filter(
    name: str,
    *,
    session: Session,
    sample: str = "galaxies",
    continuum: str | dict[str, str] | None = None,
    **config: Any,
) -> tuple[ModelVersion, bool]:
    """Register a matched-filter detector version with the given configuration (defaults otherwise).

    Parameters
    ----------
    name
        Detector name.
    sample
        Spectra it scans (:data:`lenscat.spectra.scan.SAMPLES`).
    continuum
        ``'pipeline'``, ``'fit'`` or ``{survey: choice}``; default: the measured per-survey choices
        (:func:`lenscat.spectra.scan.continuum_snapshot`).
    **config
        :class:`~lenscat.spectra.matched_filter.MatchedFilterConfig` fields.
    """
    return register_configured_detector(
        name,
        MATCHED_FILTER,
        MatchedFilterConfig(**config),
        sample=sample,
        continuum=continuum,
        input_spec={"window_k0": WINDOW.k0, "window_n": WINDOW.n, "dlog": WINDOW.dlog},
        description="BELLS GALLERY matched filter (Gaussian kernel bank)",
        session=session,
    )


@register_detector
class MatchedFilterDetector(Detector):
    """The BELLS GALLERY matched filter over the 3800-5000 A window."""

    architecture = MATCHED_FILTER
    family = "lya"

    def __init__(self, model: ModelVersion, device: str | None = None) -> None:
        super().__init__(model, device)
        hp: dict[str, Any] = {
            k: (tuple(v) if isinstance(v, list) else v) for k, v in model.hparams.items() if k not in VERSION_KEYS
        }
        self.config = MatchedFilterConfig(**hp)

    def detect(self, batch: SpectrumBatch) -> Candidates:
        """Hits (local S/N maxima above the threshold) and the best S/N of every spectrum."""
        rows = batch.rows
        hits, best = scan_batch_with_max(
            rows.flux, rows.ivar, rows.continuum, rows.z, wave=WINDOW.wave, config=self.config
        )
        return Candidates(
            row=np.asarray(hits.row),
            pixel=np.asarray(hits.pixel),
            snr=np.asarray(hits.snr),
            prob=np.full(len(hits.row), np.nan),
            best=np.asarray(best),
            extra={"mf_sigma_kms": np.asarray(hits.sigma_kms)},
        )
