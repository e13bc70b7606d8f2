"""Cutout format ``fits``: one object per FITS file or per set of per-band files, row 0.

Real cutouts of known lenses (Pan-STARRS per-band files, Euclid Q1 one HDU per band, HST ``SCI``)
are registered by :func:`lenscat.catalogue.ingest_fits.ingest_fits_cutouts`; :class:`FITSCutoutStore`
wraps :func:`lenscat.images.fits.read_fits_cutout`. The images keep the file's own pixel scale and
bands, so readers resample them (:func:`lenscat.images.resample.resample`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import astropy.units as u
import numpy as np

from lenscat.images.cutout import Cutout
from lenscat.images.fits import read_fits_cutout
from lenscat.images.formats import register_format
from lenscat.images.rows import check_rows

NAME = "fits"
"""The ``lenscat.cutout_files.format`` value."""


class FITSCutoutStore:
    """A FITS cutout registered as a cutout "file": one object, row 0.

    Parameters
    ----------
    path
        The file (``lenscat.cutout_files.path``).
    member_paths
        The per-band files when the object is a set (``lenscat.cutout_files.member_paths``), else
        None: ``path`` alone holds every band (one HDU per band, a ``SCI`` HDU, or a cube).
    bands
        Keep these bands (default all).

    Notes
    -----
    Kept deliberately simple: a FITS "file" is one multi-band cutout, so ``len(store) == 1`` and the
    only row is 0 (what ``lenscat ingest cutouts`` registers). Images come back at the file's own
    pixel scale and bands; use :func:`resample` to put them on a survey's grid. The cutout is read
    once and kept in memory until :meth:`close`.
    """

    format = NAME

    def __init__(
        self, path: str | Path, member_paths: Sequence[str | Path] | None = None, bands: Sequence[str] | None = None
    ):
        self.path = Path(path)
        self.member_paths = [Path(p) for p in member_paths] if member_paths else None
        self.band_filter = list(bands) if bands is not None else None
        self._cutout: Cutout | None = None

    def _read(self) -> Cutout:
        if self._cutout is None:
            self._cutout = read_fits_cutout(self.member_paths or self.path, self.band_filter)
        return self._cutout

    @property
    def bands(self) -> list[str]:
        """Band names of the cutout."""
        return list(self._read().bands)

    @property
    def pixel_scale(self) -> u.Quantity:
        """Pixel scale (from the WCS)."""
        return self._read().pixel_scale

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(1, bands, H, W)."""
        b, h, w = self._read().data.shape
        return 1, int(b), int(h), int(w)

    def __len__(self) -> int:
        return 1

    def get(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """(len(rows), bands, H, W) copies of the cutout; every row must be 0."""
        idx = check_rows(rows, self.path, 1)
        return np.repeat(self._read().data[None], idx.size, axis=0)

    def get_one(self, row: int = 0) -> Cutout:
        """The cutout (row must be 0)."""
        check_rows([row], self.path, 1)
        return self._read()

    def iter_batches(
        self, rows: Sequence[int] | np.ndarray | None = None, batch_size: int = 256
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One batch (row 0) when row 0 is requested (or ``rows`` is None)."""
        idx = np.zeros(1, dtype=np.int64) if rows is None else np.unique(check_rows(rows, self.path, 1))
        if idx.size:
            yield idx, self.get(idx)

    def close(self) -> None:
        """Forget the cached cutout."""
        self._cutout = None

    def __enter__(self) -> FITSCutoutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FITSCutoutStore({str(self.path)!r})"


register_format(
    NAME,
    FITSCutoutStore,
    description="FITS cutout with a WCS: one object per file or per set of per-band files",
    single_object=True,
    member_files=True,
)
