"""The cutout store: images referenced by the database, read with random access, and RGB renderings.

``lenscat.cutout_files`` rows point at files of a registered format (``format``), looked up in the
plug-in table :mod:`lenscat.images.formats` (where to add a format: see that module):

* ``'hdf5-stein'`` (:mod:`lenscat.images.formats.hdf5_stein`): the Stein et al. (2022) layout, a
  root dataset ``images`` (N, bands, H, W); a source's ``cutout_row`` is its row.
  :class:`HDF5CutoutStore` reads any rows in any order (measured read rates in that module).
* ``'fits'`` (:mod:`lenscat.images.formats.fits`): one object per file or per set of per-band
  files (``member_paths``), row 0. :class:`FITSCutoutStore` wraps :func:`read_fits_cutout`.

:func:`open_store` returns a cached store (per process, bounded LRU, evicted stores closed) so a
worker reading many rows from a few files opens each once. This module also re-exports the FITS
reader (:mod:`lenscat.images.fits`), resampling (:mod:`lenscat.images.resample`) and the RGB
renderers (:mod:`lenscat.images.rgb`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lenscat.errors import LenscatError
from lenscat.images.cutout import (
    BAND_WAVELENGTH_NM,
    DEFAULT_BANDS,
    DEFAULT_PIXEL_SCALE,
    Cutout,
    band_wavelength_nm,
    coord_from_name,
    nearest_band,
    normalise_band,
)
from lenscat.images.fits import nanomaggy_factor, read_fits_cutout
from lenscat.images.formats import format_names, get_format
from lenscat.images.formats.fits import FITSCutoutStore
from lenscat.images.formats.hdf5_stein import NAME as HDF5_STEIN
from lenscat.images.formats.hdf5_stein import HDF5CutoutStore
from lenscat.images.resample import resample, tan_wcs
from lenscat.images.rgb import LEGACY_SCALES, rgb_grid, rgb_image, save_png
from lenscat.images.types import CutoutFormat, CutoutStore

__all__ = [
    "BAND_WAVELENGTH_NM",
    "DEFAULT_BANDS",
    "DEFAULT_PIXEL_SCALE",
    "FORMATS",
    "LEGACY_SCALES",
    "Cutout",
    "CutoutStore",
    "FITSCutoutStore",
    "HDF5CutoutStore",
    "StoreRegistry",
    "band_wavelength_nm",
    "close_stores",
    "coord_from_name",
    "nanomaggy_factor",
    "nearest_band",
    "normalise_band",
    "open_store",
    "read_fits_cutout",
    "resample",
    "rgb_grid",
    "rgb_image",
    "save_png",
    "tan_wcs",
]

FORMATS = format_names()
"""Values of ``lenscat.cutout_files.format`` that :func:`open_store` understands (the built-in formats)."""


def _format(path: str | Path, format: str) -> CutoutFormat:
    """The table entry of ``format``; an unknown one raises naming the file."""
    try:
        return get_format(format)
    except LenscatError as exc:
        raise LenscatError(f"{path}: {exc}") from None


class StoreRegistry:
    """Open stores by (path, format, members): a thread-safe LRU that closes what it evicts.

    Parameters
    ----------
    max_open
        Most stores kept open (default 32). An evicted store is closed; a caller still holding it
        can go on using it (it reopens its file on the next read).

    Notes
    -----
    After a ``fork`` the child starts with an empty registry (HDF5 handles must not cross a fork);
    the parent's stores are forgotten in the child, not closed.
    """

    def __init__(self, max_open: int = 32):
        if max_open < 1:
            raise LenscatError(f"max_open must be >= 1, not {max_open}")
        self.max_open = int(max_open)
        self._stores: OrderedDict[tuple[str, str, tuple[str, ...]], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def get(self, path: str | Path, format: str = HDF5_STEIN, member_paths: Sequence[str | Path] | None = None) -> Any:
        """The cached store for this file, opened (lazily) if new."""
        key = (
            str(Path(path)),
            _format(path, format).name,
            tuple(str(p) for p in member_paths) if member_paths else (),
        )
        evicted: list[Any] = []
        with self._lock:
            if self._pid != os.getpid():
                self._stores = OrderedDict()
                self._pid = os.getpid()
            store = self._stores.get(key)
            if store is not None:
                self._stores.move_to_end(key)
                return store
            store = _format(path, format).open(path, member_paths)
            self._stores[key] = store
            while len(self._stores) > self.max_open:
                evicted.append(self._stores.popitem(last=False)[1])
        for old in evicted:
            old.close()
        return store

    def close_all(self) -> None:
        """Close and forget every store."""
        with self._lock:
            stores = list(self._stores.values()) if self._pid == os.getpid() else []
            self._stores = OrderedDict()
            self._pid = os.getpid()
        for s in stores:
            s.close()

    def __len__(self) -> int:
        return len(self._stores)

    def __contains__(self, path: object) -> bool:
        return any(k[0] == str(path) for k in self._stores)


_REGISTRY = StoreRegistry()


def open_store(path: str | Path, format: str = HDF5_STEIN, *, member_paths: Sequence[str | Path] | None = None) -> Any:
    """A cached store for a registered cutout file.

    Parameters
    ----------
    path
        ``lenscat.cutout_files.path``.
    format
        A registered format (:func:`lenscat.images.formats.format_names`): ``'hdf5-stein'``
        (:class:`HDF5CutoutStore`), ``'fits'`` (:class:`FITSCutoutStore`) or a plug-in's.
    member_paths
        ``lenscat.cutout_files.member_paths`` for a FITS set of per-band files.

    Returns
    -------
    CutoutStore
        The format's store (e.g. HDF5CutoutStore or FITSCutoutStore); the same object for the same arguments while it
        stays among the 32 most recently used.
    """
    return _REGISTRY.get(path, format, member_paths)


def close_stores() -> None:
    """Close every store :func:`open_store` has cached in this process."""
    _REGISTRY.close_all()


def source_cutout(source_id: int, *, session: Any) -> tuple[np.ndarray, list[str]]:
    """The (bands, H, W) cutout of a catalogue source and its band names.

    Raises
    ------
    LenscatError
        No such source, or it has no cutout.
    """
    from sqlalchemy import text

    row = session.execute(
        text(
            "SELECT f.path, f.format, f.member_paths, f.bands AS file_bands, x.cutout_row, v.bands "
            "FROM lenscat.sources x JOIN lenscat.surveys v USING (survey_id) "
            "LEFT JOIN lenscat.cutout_files f ON f.file_id = x.cutout_file_id WHERE x.source_id = :i"
        ),
        {"i": int(source_id)},
    ).one_or_none()
    if row is None:
        raise LenscatError(f"no source with source_id {source_id}")
    if row.path is None:
        raise LenscatError(f"source {source_id} has no cutout")
    store = open_store(row.path, row.format, member_paths=list(row.member_paths) if row.member_paths else None)
    if get_format(row.format).single_object:
        cut = store.get_one(0)
        return np.asarray(cut.data), list(cut.bands)
    return np.asarray(store.get([int(row.cutout_row)])[0]), list(row.file_bands or store.bands)
