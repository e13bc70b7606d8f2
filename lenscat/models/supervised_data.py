"""Training data of the supervised lens classifiers: labels, lens-enriched batches, unique reads.

Lenses are rare (~1 in 10^3-10^4), so every training batch of
:func:`~lenscat.models.supervised_train.train_image_classifier` is drawn by :func:`lens_batches`:
about ``lens_fraction`` (5 %) of it are lenses, sampled with replacement from the positives, the rest
negatives taken in turn from successive random permutations.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from lenscat.errors import LenscatError
from lenscat.models.data import ArraySource, ImageSource

__all__ = ["lens_batches", "negative_epoch_steps"]


def _binary_labels(labels: np.ndarray, n: int, what: str = "labels") -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    if len(y) != n:
        raise LenscatError(f"{len(y)} {what} for {n} images")
    if y.dtype == bool:
        return y.astype(np.float32)
    if not np.issubdtype(y.dtype, np.number):
        raise LenscatError(f"{what} must be 0/1 or booleans, got dtype {y.dtype}")
    yf = y.astype(np.float64)
    bad = ~((yf == 0) | (yf == 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LenscatError(f"{what} must be 0 (non-lens) or 1 (lens); {what}[{i}] is {y[i].item()!r}")
    return yf.astype(np.float32)


class _Cycler:
    """Successive random permutations of ``indices``, taken ``k`` at a time."""

    def __init__(self, indices: np.ndarray, rng: np.random.Generator) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        self.rng = rng
        self.order = rng.permutation(self.indices)
        self.pos = 0

    def take(self, k: int) -> np.ndarray:
        parts = []
        while k > 0:
            if self.pos >= len(self.order):
                self.order = self.rng.permutation(self.indices)
                self.pos = 0
            part = self.order[self.pos : self.pos + k]
            self.pos += len(part)
            k -= len(part)
            parts.append(part)
        return np.concatenate(parts) if parts else np.empty(0, np.int64)


def lens_batches(
    labels: np.ndarray,
    batch_size: int,
    *,
    lens_fraction: float | None = 0.05,
    rng: np.random.Generator | int | None = 0,
) -> Iterator[np.ndarray]:
    """Endless training batches of indices that oversample the lenses.

    Parameters
    ----------
    labels : array, shape (N,)
        1 (or ``True``) for lenses, 0 for non-lenses.
    batch_size : int
        Indices per batch.
    lens_fraction : float or None
        Expected fraction of lenses in a batch, in (0, 1): each batch holds ``floor(f B)`` or
        ``floor(f B) + 1`` lenses (the latter with probability ``f B - floor(f B)``), drawn
        with replacement from the positives; the rest are negatives taken in turn from
        successive random permutations of all negatives. ``None``: no oversampling (batches
        taken in turn from successive permutations of all images).
    rng : numpy Generator or int or None
        Source of randomness (an int seeds a new one).

    Returns
    -------
    iterator of ndarray of int64, shape (batch_size,)
        Endless; in each batch the lenses come first, then the non-lenses.

    Raises
    ------
    LenscatError
        Bad ``lens_fraction``/``batch_size``, or (with ``lens_fraction``) no lenses or no
        non-lenses.
    """
    y = np.asarray(labels).reshape(-1)
    if batch_size < 1:
        raise LenscatError(f"batch_size must be positive, got {batch_size}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if lens_fraction is None:
        if len(y) == 0:
            raise LenscatError("no training labels")
        return _plain_batches(_Cycler(np.arange(len(y)), gen), batch_size)
    if not 0.0 < float(lens_fraction) < 1.0:
        raise LenscatError(f"lens_fraction must be in (0, 1) or None, got {lens_fraction!r}")
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    if len(pos) == 0:
        raise LenscatError("no lenses among the training labels (label 1)")
    if len(neg) == 0:
        raise LenscatError("no non-lenses among the training labels (label 0)")
    return _oversampled_batches(pos, _Cycler(neg, gen), gen, batch_size, float(lens_fraction))


def _plain_batches(every: _Cycler, batch_size: int) -> Iterator[np.ndarray]:
    while True:
        yield every.take(batch_size)


def _oversampled_batches(
    pos: np.ndarray, negatives: _Cycler, gen: np.random.Generator, batch_size: int, f: float
) -> Iterator[np.ndarray]:
    expected = f * batch_size
    base, frac = int(math.floor(expected)), expected - math.floor(expected)
    while True:
        k = min(batch_size, base + int(gen.random() < frac))
        lenses = pos[gen.integers(0, len(pos), size=k)]
        yield np.concatenate([lenses, negatives.take(batch_size - k)])


def negative_epoch_steps(labels: np.ndarray, batch_size: int, lens_fraction: float | None) -> int:
    """Steps of :func:`lens_batches` batches that draw every non-lens at least once.

    Every batch holds at most ``ceil(lens_fraction * batch_size)`` lenses, so at least the rest
    are non-lenses, taken in turn from a random permutation of all of them: this many steps
    exhaust the permutation. Without oversampling (``None``) it is an ordinary epoch,
    ``ceil(N / batch_size)``.
    """
    y = np.asarray(labels).reshape(-1)
    if lens_fraction is None:
        return max(1, math.ceil(len(y) / batch_size))
    n_neg = int((y == 0).sum())
    per_batch = max(1, batch_size - min(batch_size, math.ceil(float(lens_fraction) * batch_size)))
    return max(1, math.ceil(n_neg / per_batch))


class _UniqueReads:
    """An image source wrapper that reads each distinct index once per batch."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def get(self, indices: np.ndarray) -> np.ndarray:
        uniq, inv = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
        images = np.asarray(self.source.get(uniq), dtype=np.float32)
        if images.ndim != 4 or images.shape[0] != len(uniq):
            raise LenscatError(f"image source returned shape {getattr(images, 'shape', None)} for {len(uniq)} indices")
        return images[inv]

    def ebv(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        if not hasattr(self.source, "ebv"):
            return np.full(len(idx), np.nan, dtype=np.float32)
        uniq, inv = np.unique(idx, return_inverse=True)
        return np.asarray(self.source.ebv(uniq), dtype=np.float32).reshape(-1)[inv]


def _as_source(images: ImageSource | np.ndarray, what: str) -> ImageSource:
    if isinstance(images, np.ndarray):
        return ArraySource(images)
    if not isinstance(images, ImageSource):
        raise LenscatError(f"{what} must be an array (N, C, H, W) or an image source with __len__ and get()")
    return images
