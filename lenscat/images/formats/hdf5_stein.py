"""Cutout format ``hdf5-stein``: the Stein et al. (2022) layout, random access to many rows.

A root dataset ``images`` (N, bands, H, W) (float32 g, r, z nanomaggies at 0.262"/px in DECaLS)
beside one dataset per catalogue column; a source's ``cutout_row`` is its row.
:class:`HDF5CutoutStore` reads any rows in any order.

Read rate (HDF5, measured 2026-11-22 on the project's 2-core shared sandbox, file in the OS page
cache, 2,048 float32 (3, 152, 152) images chunked one image per chunk, uncompressed, best of 3-5):
sorted contiguous batches of 64-1,024 rows via :meth:`HDF5CutoutStore.iter_batches` ~9,000-11,000
images/s (2.5-3.0 GB/s); random rows (every 2nd-20th row of the file, 512 per call) 4,000-8,000
images/s (1.1-2.2 GB/s); one row at a time ~6,000-10,000 images/s. The earlier implementation's
h5py fancy indexing (``dataset[sorted_rows]``) managed ~180 images/s on scattered rows, 25-40 times
slower. Reading from disk rather than the page cache is bounded by the disk instead.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np

from lenscat.errors import InputFileError, LenscatError
from lenscat.images.cutout import DEFAULT_BANDS, DEFAULT_PIXEL_SCALE, Cutout
from lenscat.images.formats import register_format
from lenscat.images.resample import tan_wcs
from lenscat.images.rows import check_rows, row_runs

NAME = "hdf5-stein"
"""The ``lenscat.cutout_files.format`` value (``'hdf5'`` is accepted as an alias)."""


class HDF5CutoutStore:
    """Random access to the ``images`` dataset of a Stein-layout HDF5 file.

    Parameters
    ----------
    path
        The HDF5 file. It is opened on first use and kept open until :meth:`close` (the store is
        also a context manager); a store used after a ``fork`` reopens the file in the child.
    dataset
        Name of the image dataset (default ``images``), shape (N, bands, H, W).
    rdcc_nbytes
        HDF5 chunk cache per open file (default 16 MiB; matters only for compressed or multi-image
        chunks).

    Notes
    -----
    Band names come from the ``bands`` attribute of the dataset or the file (``'grz'`` or
    ``'g,r,z'``; default g, r, z), the pixel scale from ``pixel_scale_arcsec`` (default 0.262),
    the unit from ``unit`` (default nanomaggy). Reads convert any stored float type or byte order
    to native float32 inside HDF5 (no extra copy).
    """

    format = NAME

    def __init__(self, path: str | Path, *, dataset: str = "images", rdcc_nbytes: int = 16 * 2**20):
        self.path = Path(path)
        self.dataset = dataset
        self.rdcc_nbytes = int(rdcc_nbytes)
        self._fh: Any = None
        self._ds: Any = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ opening
    def _dataset(self) -> Any:
        if self._ds is not None and self._pid == os.getpid():
            return self._ds
        with self._lock:
            if self._ds is not None and self._pid != os.getpid():  # forked: the parent's handle is unusable
                self._fh = self._ds = None
            if self._ds is None:
                self._open()
        return self._ds

    def _open(self) -> None:
        import h5py

        if not self.path.is_file():
            raise InputFileError(
                f"{self.path}: cutout file not found (if the data moved: "
                "`lenscat db relocate OLD_DIR NEW_DIR`; `lenscat db files` lists what is missing)"
            )
        try:
            fh = h5py.File(self.path, "r", rdcc_nbytes=self.rdcc_nbytes, rdcc_nslots=10007)
        except OSError as exc:
            raise InputFileError(f"{self.path}: cannot open as HDF5: {exc}") from exc
        try:
            if self.dataset not in fh:
                raise InputFileError(
                    f"{self.path}: no '{self.dataset}' dataset (Stein layout expected: images (N, bands, H, W))"
                )
            ds = fh[self.dataset]
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 4:
                raise InputFileError(
                    f"{self.path}: '{self.dataset}' has shape {getattr(ds, 'shape', '?')}, expected (N, bands, H, W)"
                )
            if ds.dtype.kind not in "fiu":
                raise InputFileError(f"{self.path}: '{self.dataset}' has non-numeric type {ds.dtype}")
        except BaseException:
            fh.close()
            raise
        self._fh, self._ds, self._pid = fh, ds, os.getpid()

    def _attr(self, name: str) -> Any:
        ds = self._dataset()
        if name in ds.attrs:
            return ds.attrs[name]
        return self._fh.attrs.get(name)

    # ------------------------------------------------------------------ metadata
    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, bands, H, W)."""
        s = self._dataset().shape
        return int(s[0]), int(s[1]), int(s[2]), int(s[3])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(bands, H, W) of one image."""
        return self.shape[1:]

    @property
    def bands(self) -> list[str]:
        """Band names (``bands`` attribute; default g, r, z, or band0... beyond three)."""
        nb = self.shape[1]
        attr = self._attr("bands")
        if attr is None:
            return list(DEFAULT_BANDS[:nb]) if nb <= 3 else [f"band{i}" for i in range(nb)]
        if isinstance(attr, bytes):
            attr = attr.decode()
        if isinstance(attr, np.ndarray) and attr.ndim == 1:
            names = [x.decode() if isinstance(x, bytes) else str(x) for x in attr]
        else:
            text = str(attr).strip()
            names = [b.strip() for b in text.split(",")] if "," in text else list(text)
        if len(names) != nb:
            raise InputFileError(f"{self.path}: bands attribute {attr!r} does not match {nb} image planes")
        return names

    @property
    def pixel_scale(self) -> u.Quantity:
        """Pixel scale (``pixel_scale_arcsec`` attribute, default 0.262"/px)."""
        val = self._attr("pixel_scale_arcsec")
        return float(DEFAULT_PIXEL_SCALE if val is None else val) * u.arcsec

    @property
    def unit(self) -> str:
        """Pixel unit (``unit`` attribute, default nanomaggy)."""
        val = self._attr("unit")
        if isinstance(val, bytes):
            val = val.decode()
        return str(val) if val else "nanomaggy"

    def __len__(self) -> int:
        return self.shape[0]

    # ------------------------------------------------------------------ reading
    def _read_sorted(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Read strictly increasing ``rows`` into ``out`` (C-contiguous float32), one HDF5 read per run."""
        from h5py import h5s

        ds = self._dataset()
        tail = tuple(int(x) for x in ds.shape[1:])
        starts, ends = row_runs(rows)
        with self._lock:
            fspace = ds.id.get_space()
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                n = e - s
                fspace.select_hyperslab((int(rows[s]), 0, 0, 0), (n, *tail))
                mspace = h5s.create_simple((n, *tail))
                ds.id.read(mspace, fspace, out[s:e])

    def get(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images of ``rows`` in the order given (duplicates allowed).

        Parameters
        ----------
        rows
            0-based row numbers (``lenscat.sources.cutout_row``).

        Returns
        -------
        ndarray, shape (len(rows), bands, H, W), float32 (native byte order)

        Raises
        ------
        LenscatError
            A row outside ``[0, N)`` (the message names the file and the row).
        InputFileError
            The file is missing or not in the Stein layout.
        """
        ds = self._dataset()
        idx = check_rows(rows, self.path, int(ds.shape[0]))
        tail = tuple(int(x) for x in ds.shape[1:])
        if idx.size <= 1 or bool(np.all(np.diff(idx) > 0)):  # sorted, distinct: read straight into place
            out = np.empty((idx.size, *tail), dtype=np.float32)
            if idx.size:
                self._read_sorted(idx, out)
            return out
        uniq, inverse = np.unique(idx, return_inverse=True)
        buf = np.empty((uniq.size, *tail), dtype=np.float32)
        self._read_sorted(uniq, buf)
        return buf[inverse.ravel()]

    def _wcs_for(self, row: int, shape: tuple[int, int]) -> Any:
        """TAN WCS centred on the row's catalogue ``ra``/``dec`` (if the file has them), else None."""
        fh = self._fh
        if fh is None or "ra" not in fh or "dec" not in fh:
            return None
        try:
            ra, dec = float(fh["ra"][row]), float(fh["dec"][row])
        except (TypeError, ValueError, IndexError):
            return None
        if not (np.isfinite(ra) and np.isfinite(dec)):
            return None
        from astropy.coordinates import SkyCoord

        return tan_wcs(SkyCoord(ra * u.deg, dec * u.deg, frame="icrs"), float(self.pixel_scale.value), shape)

    def get_one(self, row: int) -> Cutout:
        """One row as a :class:`Cutout`.

        The WCS, when the file has root ``ra`` and ``dec`` datasets, assumes what Stein et al.'s
        cutouts are: centred on the catalogue position, north up, east left, in FITS orientation
        (row 0 at the bottom), at :attr:`pixel_scale`.
        """
        img = self.get([row])[0]
        return Cutout(
            img,
            self.bands,
            self.pixel_scale,
            self._wcs_for(int(row), img.shape[-2:]),
            self.unit,
            f"{self.path}[row {int(row)}]",
        )

    def iter_batches(
        self, rows: Sequence[int] | np.ndarray | None = None, batch_size: int = 256
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, images) batches over the distinct ``rows`` (default all) in ascending order.

        Each batch is read with one HDF5 read per run of consecutive rows (see the module docstring
        for measured rates). Every requested row appears exactly once.
        """
        if batch_size < 1:
            raise LenscatError(f"batch_size must be >= 1, not {batch_size}")
        ds = self._dataset()
        n = int(ds.shape[0])
        idx = np.arange(n, dtype=np.int64) if rows is None else np.unique(check_rows(rows, self.path, n))
        tail = tuple(int(x) for x in ds.shape[1:])
        for i in range(0, idx.size, batch_size):
            part = idx[i : i + batch_size]
            out = np.empty((part.size, *tail), dtype=np.float32)
            self._read_sorted(part, out)
            yield part, out

    # ------------------------------------------------------------------ closing
    @property
    def closed(self) -> bool:
        """Whether no file handle is held."""
        return self._fh is None

    def close(self) -> None:
        """Close the HDF5 handle (a later read reopens it)."""
        with self._lock:
            if self._fh is not None and self._pid == os.getpid():
                with contextlib.suppress(Exception):  # closing a dead handle must not raise
                    self._fh.close()
            self._fh = self._ds = None
            self._pid = None

    def __enter__(self) -> HDF5CutoutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HDF5CutoutStore({str(self.path)!r})"


register_format(
    NAME,
    HDF5CutoutStore,
    description="Stein et al. (2022) HDF5: images (N, bands, H, W) beside the catalogue columns",
    row_digests=True,
    aliases=("hdf5",),
)
