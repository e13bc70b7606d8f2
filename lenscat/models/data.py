"""Image sources: what training and batched inference read cutouts from.

A source is any object with ``__len__`` and ``get(indices) -> (B, C, H, W) float32`` nanomaggies
(and optionally ``ebv(indices) -> (B,)`` Galactic ``E(B-V)``). Indices arrive in the order the
caller chooses (shuffled during training); a source backed by HDF5 should sort them for the read
and undo the sort. :class:`ArraySource` is the in-memory adapter. :func:`prefetch` reads the next
batch on a background thread while the current one is computed.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import numpy as np

from lenscat.errors import LenscatError

__all__ = ["ArraySource", "ImageSource", "prefetch"]


@runtime_checkable
class ImageSource(Protocol):
    """Random-access cutouts: ``len(source)`` images, ``source.get(indices)`` a batch."""

    def __len__(self) -> int:
        """Number of images."""
        ...

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Images ``(len(indices), C, H, W)``, float32 nanomaggies, in the order of ``indices``."""
        ...


class ArraySource:
    """An :class:`ImageSource` over in-memory arrays.

    Parameters
    ----------
    images : ndarray, shape (N, C, H, W)
        Nanomaggies (any float dtype; returned as float32).
    ebv : ndarray, shape (N,), optional
        Per-object ``E(B-V)``; enables :meth:`ebv`.
    """

    def __init__(self, images: np.ndarray, ebv: np.ndarray | None = None) -> None:
        if images.ndim != 4:
            raise LenscatError(f"images must be (N, C, H, W), got shape {images.shape}")
        self.images = images
        self._ebv = None if ebv is None else np.asarray(ebv, dtype=np.float32).reshape(-1)
        if self._ebv is not None and len(self._ebv) != len(images):
            raise LenscatError(f"{len(self._ebv)} ebv values for {len(images)} images")

    def __len__(self) -> int:
        """Number of images."""
        return int(self.images.shape[0])

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Images at ``indices`` as float32."""
        return np.asarray(self.images[np.asarray(indices)], dtype=np.float32)

    def ebv(self, indices: np.ndarray) -> np.ndarray:
        """``E(B-V)`` at ``indices`` (NaN everywhere when none was given)."""
        if self._ebv is None:
            return np.full(len(indices), np.nan, dtype=np.float32)
        return self._ebv[np.asarray(indices)]


def _read(source: ImageSource, idx: np.ndarray, with_ebv: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    images = source.get(idx)
    if images.ndim != 4 or images.shape[0] != len(idx):
        raise LenscatError(f"image source returned shape {getattr(images, 'shape', None)} for {len(idx)} indices")
    ebv = None
    if with_ebv and hasattr(source, "ebv"):
        ebv = np.asarray(source.ebv(idx), dtype=np.float32)
    return idx, images, ebv


def prefetch(
    source: ImageSource, batches: Iterable[np.ndarray], *, with_ebv: bool = False
) -> Generator[tuple[np.ndarray, np.ndarray, np.ndarray | None], None, None]:
    """Yield ``(indices, images, ebv_or_None)`` per batch, reading one batch ahead on a thread.

    The source is only ever called from the one background thread, one call at a time. Errors
    raised by the source surface in the caller at the batch they belong to.
    """
    it = iter(batches)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lenscat-prefetch") as pool:
        nxt = next(it, None)
        fut: Future | None = None if nxt is None else pool.submit(_read, source, nxt, with_ebv)
        while fut is not None:
            nxt = next(it, None)
            ahead = None if nxt is None else pool.submit(_read, source, nxt, with_ebv)
            try:
                yield fut.result()
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                raise
            fut = ahead
