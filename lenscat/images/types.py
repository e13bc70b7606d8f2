"""Types shared by the cutout stores: the store protocol and a plug-in format's table entry."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lenscat.images.cutout import Cutout


@runtime_checkable
class CutoutStore(Protocol):
    """What every store offers (also a :class:`lenscat.models.data.ImageSource`)."""

    path: Path

    def __len__(self) -> int:
        """Number of cutouts."""
        ...

    def get(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """(n, bands, H, W) float32 images of ``rows``, in the order given."""
        ...

    def get_one(self, row: int) -> Cutout:
        """One row as a :class:`Cutout`."""
        ...

    def iter_batches(
        self, rows: Sequence[int] | np.ndarray | None = None, batch_size: int = 256
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, images) batches over the distinct ``rows`` in ascending order."""
        ...

    def close(self) -> None:
        """Release file handles (the store reopens on next use)."""
        ...


@dataclass(frozen=True)
class CutoutFormat:
    """One entry of the cutout format table (:mod:`lenscat.images.formats`).

    Attributes
    ----------
    name
        The value of ``lenscat.cutout_files.format``.
    reader
        The store class (or any callable returning a :class:`CutoutStore`): called as
        ``reader(path)``, or ``reader(path, member_paths)`` when :attr:`member_files` is true.
    description
        One line for help texts and ``lenscat db files``.
    single_object
        True when a file (or set of per-band files) holds one object at its own pixel scale and
        bands, read as row 0 (:meth:`CutoutStore.get_one`) and resampled by the caller; False when
        a file holds many rows on the survey's grid (``lenscat.sources.cutout_row``).
    member_files
        True when a registered cutout may be a set of per-band files
        (``lenscat.cutout_files.member_paths``).
    row_digests
        True when ingest records a pixel digest per row (``lenscat.cutout_row_digests``), so
        ``lenscat db files`` can tell whether the digests exist.
    aliases
        Other names :func:`lenscat.images.formats.get_format` accepts (never stored).
    """

    name: str
    reader: Any
    description: str = ""
    single_object: bool = False
    member_files: bool = False
    row_digests: bool = False
    aliases: tuple[str, ...] = field(default=())

    def open(self, path: str | Path, member_paths: Sequence[str | Path] | None = None) -> Any:
        """A new (lazily opened) store of this format for ``path``."""
        if self.member_files:
            return self.reader(path, member_paths)
        return self.reader(path)
