"""Encoder versions from the catalogue: what training, import and derivation share.

An encoder version is made by one of four paths, each ending in a ``lenscat.model_versions`` row of
kind ``encoder`` carrying the architecture, output dimension, checkpoint sha256, hyper-parameters and a
hash of the training set, so each embedding leads back to exactly what made it:

* :mod:`lenscat.embeddings.encoder_train` -- self-supervised MoCo-v2 training on the survey's cutouts;
* :mod:`lenscat.embeddings.encoder_import` -- external weights (a torchvision ResNet-50 state dict) or
  precomputed vectors keyed by survey object id;
* :mod:`lenscat.embeddings.encoder_derive` -- another ``views`` or ``readout`` of a version, or an image
  classifier's penultimate layer.

This module holds the default input specification and the catalogue's cutouts as training images
(:class:`CatalogueImages`, :func:`band_options`), which classifier training uses too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError
from lenscat.images.bands import BandOptions, image_training_options
from lenscat.images.store import open_store

DEFAULT_INPUT_SPEC = {"bands": ["g", "r", "z"], "pixel_scale_arcsec": 0.262, "stamp": 152, "unit": "nanomaggy"}


class CatalogueImages:
    """Training images of catalogued sources, read on demand from their cutout files.

    Implements the ``__len__`` / ``get(indices)`` / ``ebv(indices)`` protocol of
    :func:`lenscat.models.moco_train.train_moco`.
    """

    def __init__(self, paths: list[str], formats: list[str], rows: np.ndarray, ebv: np.ndarray):
        self.paths = paths
        self.formats = formats
        self.rows = rows  # (n, 2): file index, row in file
        self._ebv = ebv

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, indices: np.ndarray) -> np.ndarray:
        """(B, bands, H, W) float32 cutouts in the order of ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        out: np.ndarray | None = None
        for f in np.unique(self.rows[idx, 0]):
            sel = np.nonzero(self.rows[idx, 0] == f)[0]
            imgs = open_store(self.paths[int(f)], self.formats[int(f)]).get(self.rows[idx[sel], 1])
            if out is None:
                out = np.empty((len(idx), *imgs.shape[1:]), dtype=np.float32)
            out[sel] = imgs
        assert out is not None
        return out

    def ebv(self, indices: np.ndarray) -> np.ndarray:
        """E(B-V) [mag] of the sources (NaN where unknown)."""
        return self._ebv[np.asarray(indices, dtype=np.int64)]


def band_options(
    source_ids: np.ndarray, images: Any, *, seed: int, session: Session
) -> tuple[BandOptions, tuple[int, ...]]:
    """Training options for the cutouts of ``source_ids`` (:func:`~lenscat.images.bands.image_training_options`
    with the channel names of :func:`cutout_bands`), and the shape of one cutout batch ``(1, C, H, W)``."""
    shape = tuple(np.asarray(images.get(np.array([0], dtype=np.int64))).shape)
    names = cutout_bands(source_ids, shape[1], session=session)
    return image_training_options(names, images, seed=seed, shape=shape), shape


def cutout_bands(source_ids: np.ndarray, n_channels: int, *, session: Session) -> list[str]:
    """The band names of the cutout channels of ``source_ids`` ([] when nothing names them).

    A FITS cutout file records its bands; a Stein-layout HDF5 file does not, and then the survey's
    band list names the channels when it has one name per channel (a survey's bands can also be
    just those of its photometry columns): lists of another length than ``n_channels`` are ignored.

    Raises
    ------
    LenscatError
        The sources' cutouts have channels named differently (train one model per band set).
    """
    nb = int(n_channels)
    named = (
        session.execute(
            text(
                """
            SELECT DISTINCT COALESCE(NULLIF(f.bands, '{}'), v.bands) AS bands
            FROM lenscat.sources s JOIN lenscat.surveys v USING (survey_id)
            LEFT JOIN lenscat.cutout_files f ON f.file_id = s.cutout_file_id
            WHERE s.source_id = ANY(:ids)
            """
            ),
            {"ids": [int(i) for i in source_ids]},
        )
        .scalars()
        .all()
    )
    fitting = sorted({tuple(b) for b in named if b and len(b) == nb})
    if len(fitting) > 1:
        raise LenscatError(
            "the training cutouts have channels named differently ("
            + "; ".join(",".join(b) for b in fitting)
            + "): train one model per band set (restrict it with {surveys})",
            params="surveys",
        )
    return list(fitting[0]) if fitting else []
