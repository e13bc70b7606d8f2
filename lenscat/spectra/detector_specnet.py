"""The Li et al. (2018) 1-D ResNet detector family for background Lyα lines (:mod:`lenscat.models.specnet`).

A version is a trained checkpoint (``lenscat spectra train``); every named architecture of
:data:`lenscat.models.specnet.ARCHITECTURES` (``small``, ``li2018``) loads through the same checkpoint
format, whose ``config`` rebuilds the network. The stored file must be unchanged since registration:
its sha256 is checked against the version's ``checkpoint_sha256`` before it is loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lenscat.registry.checkpoints import verify_checkpoint
from lenscat.registry.versions import ModelVersion
from lenscat.spectra.detectors import Candidates, Detector, SpectrumBatch, register_detector
from lenscat.spectra.grid import WINDOW

SPECNET = "specnet"
#: pixels either side of the network's position where the matched-filter S/N of a candidate is read
LOCAL_PX = 4

__all__ = ["SPECNET", "SpecNetDetector", "check_checkpoint"]


def check_checkpoint(model: ModelVersion) -> Path:
    """The checkpoint file of a detector version, after checking it is there and unchanged.

    :func:`lenscat.registry.checkpoints.verify_checkpoint`, for the members an ensemble loads itself.

    Raises
    ------
    CheckpointError
        No checkpoint registered, file missing, or its sha256 differs from ``checkpoint_sha256``.
    """
    return verify_checkpoint(model)


@register_detector
class SpecNetDetector(Detector):
    """A trained :class:`~lenscat.models.specnet.SpecResNet`: a hit where the probability passes the threshold."""

    architecture = SPECNET
    family = "lya"

    def __init__(self, model: ModelVersion, device: str | None = None) -> None:
        super().__init__(model, device)
        from lenscat.models.specnet import load_specnet

        self.net, self.net_hparams = load_specnet(check_checkpoint(model))
        self.threshold = float(model.hparams.get("threshold", 0.5))

    def scores(self, batch: SpectrumBatch) -> tuple[np.ndarray, np.ndarray]:
        """Line probability (N,) and most likely line pixel (N,) on the window of every spectrum."""
        from lenscat.models.specnet_inference import predict
        from lenscat.models.specnet_inputs import prepare_inputs
        from lenscat.spectra.masks import specnet_pixel_mask

        rows = batch.rows
        x = prepare_inputs(
            rows.flux, rows.ivar, rows.continuum, rows.z, wave=WINDOW.wave, pixel_mask=specnet_pixel_mask
        )
        prob, pixel = predict(self.net, x, device=self.device)
        return np.asarray(prob), np.asarray(pixel, dtype=np.int64)

    def detect(self, batch: SpectrumBatch) -> Candidates:
        """One candidate per spectrum whose probability reaches the threshold, at the network's position.

        The candidate's S/N is the matched filter's (default kernel bank) at the network's position
        (maximum within +-:data:`LOCAL_PX` pixels), computed for the candidate spectra only: the
        network locates to a few pixels, and a line's significance is then measured the classic way
        rather than by a skew-normal fit whose free shape dilutes it.
        """
        from lenscat.spectra.matched_filter import snr_map

        rows = batch.rows
        prob, pixel = self.scores(batch)
        sel = np.flatnonzero(prob >= self.threshold)
        snr = np.full(sel.size, np.nan)
        if sel.size:
            m = snr_map(rows.flux[sel], rows.ivar[sel], rows.continuum[sel], rows.z[sel], wave=WINDOW.wave)
            lo = np.clip(pixel[sel] - LOCAL_PX, 0, m.shape[1] - 1)
            hi = np.clip(pixel[sel] + LOCAL_PX + 1, 1, m.shape[1])
            for k in range(sel.size):
                seg = m[k, lo[k] : hi[k]]
                seg = seg[np.isfinite(seg) & (seg > -1e30)]  # uncovered pixels carry a large negative flag
                if seg.size:
                    snr[k] = float(seg.max())
        return Candidates(row=sel, pixel=pixel[sel], snr=snr, prob=prob[sel], best=prob)
