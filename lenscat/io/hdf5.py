"""HDF5 image files: fingerprints of their image rows and checks of the images' shape.

:func:`hdf5_fingerprint` digests every root dataset (image rows by :func:`image_row_digests`, in blocks)
so an ingest can tell a re-run of the same file from a changed one; :func:`expected_images_shape` checks
an ``images`` dataset before it is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenscat.errors import InputFileError
from lenscat.settings import get_settings

IMAGE_DIGEST_BYTES = 16
"""Size of the BLAKE2b digest of one image row of a Stein-layout HDF5 file."""


@dataclass(frozen=True)
class HDF5Fingerprint:
    """Digests of a Stein-layout HDF5 file, taken in one pass over it.

    Attributes
    ----------
    sha256
        Hex SHA-256 of every root dataset's name, shape and dtype, the bytes of every dataset but
        ``images``, then the per-row digests of ``images``: it changes when a catalogue value or a
        pixel changes.
    catalogue_sha256
        The same without the pixel rows (what lenscat recorded before pixel digests existed).
    image_digests
        ``(N, 16)`` uint8: BLAKE2b-128 of each image row's stored bytes, or None without ``images``.
    """

    sha256: str
    catalogue_sha256: str
    image_digests: np.ndarray | None


def image_row_digests(ds: Any, *, block_bytes: int = 64 * 2**20, progress: bool | None = None) -> np.ndarray:
    """BLAKE2b-128 of the stored bytes of every row of an HDF5 dataset, read in blocks of rows.

    Parameters
    ----------
    ds
        An ``h5py.Dataset`` with at least one dimension (the rows).
    block_bytes
        About how many bytes to read at a time.
    progress
        Show a progress bar (None: only on a terminal).

    Returns
    -------
    ndarray, shape (N, 16), uint8
    """
    import hashlib

    from tqdm import tqdm

    n = int(ds.shape[0])
    row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    step = max(1, block_bytes // row_bytes)
    out = np.empty((n, IMAGE_DIGEST_BYTES), dtype=np.uint8)
    with tqdm(
        total=n,
        unit="img",
        desc="digest images",
        leave=False,
        disable=progress is False if progress is not None else None,
    ) as bar:
        for start in range(0, n, step):
            block = np.ascontiguousarray(ds[start : start + step])
            for i in range(block.shape[0]):
                out[start + i] = np.frombuffer(
                    hashlib.blake2b(block[i].tobytes(), digest_size=IMAGE_DIGEST_BYTES).digest(), np.uint8
                )
            bar.update(block.shape[0])
    return out


def hdf5_fingerprint(
    fh: Any, loaded: dict[str, np.ndarray] | None = None, *, progress: bool | None = None
) -> HDF5Fingerprint:
    """Digests of an open HDF5 file's root datasets (see :class:`HDF5Fingerprint`).

    Parameters
    ----------
    fh
        An open ``h5py.File``.
    loaded
        Datasets already read in full (name -> the array ``ds[()]`` returned), so that reading the
        file for the catalogue and for its digest is one pass.
    progress
        Progress bar while the images are digested (None: only on a terminal).
    """
    import hashlib

    import h5py

    h = hashlib.sha256()
    images = None
    for name in sorted(fh):
        ds = fh[name]
        if not isinstance(ds, h5py.Dataset):
            continue
        h.update(f"{name}:{ds.shape}:{ds.dtype}".encode())
        if name == "images":
            images = ds
            continue
        arr = loaded[name] if loaded is not None and name in loaded else ds[()]
        h.update(np.asarray(arr).tobytes())
    catalogue = h.hexdigest()
    rows = None
    if images is not None and images.ndim >= 1:
        rows = image_row_digests(images, progress=progress)
        h.update(b"images:rows:")
        h.update(rows.tobytes())
    return HDF5Fingerprint(h.hexdigest(), catalogue, rows)


def expected_images_shape(path: Path, ds: Any, min_pixels: int | None = None) -> None:
    """Refuse an ``images`` dataset that is not (N, bands, H, W) numeric with H, W >= ``min_pixels``.

    Raises
    ------
    InputFileError
        One line naming the file, the dataset, its shape and the expected shape.
    """
    if min_pixels is None:
        min_pixels = get_settings().cutout_min_pixels
    shape = tuple(int(x) for x in ds.shape)
    want = f"expected (N, bands, H, W) with 1-16 bands and H, W >= {min_pixels} pixels, e.g. (N, 3, 152, 152)"
    if len(shape) != 4:
        raise InputFileError(f"{path}: dataset 'images' has shape {shape}; {want}")
    _, nb, hh, ww = shape
    if not 1 <= nb <= 16 or hh < min_pixels or ww < min_pixels:
        raise InputFileError(f"{path}: dataset 'images' has shape {shape}; {want}")
    if ds.dtype.kind not in "fiu":
        raise InputFileError(f"{path}: dataset 'images' has non-numeric type {ds.dtype}; {want}")
