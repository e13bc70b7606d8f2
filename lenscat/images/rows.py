"""Row checks shared by the cutout stores: rows as an int64 array, runs of consecutive rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lenscat.errors import LenscatError


def check_rows(rows: Sequence[int] | np.ndarray | int, path: Path, n: int) -> np.ndarray:
    """Rows as a 1-D int64 array, checked against ``n`` (error names the file and the row)."""
    idx = np.asarray(rows)
    if idx.ndim == 0:
        idx = idx.reshape(1)
    if idx.size == 0:
        return np.empty(0, dtype=np.int64)
    if idx.dtype.kind not in "iu":
        if idx.dtype.kind == "f" and np.all(np.isfinite(idx)) and np.all(idx == np.round(idx)):
            idx = idx.astype(np.int64)
        else:
            raise LenscatError(f"{path}: rows must be integers, got {idx.dtype} values such as {idx.ravel()[0]!r}")
    idx = idx.astype(np.int64, copy=False).ravel()
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        raise LenscatError(f"{path}: row {int(idx[bad][0])} is outside the file's {n} images (rows are 0-based)")
    return idx


def row_runs(sorted_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end positions (in ``sorted_rows``) of runs of consecutive rows."""
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    return np.r_[0, breaks], np.r_[breaks, len(sorted_rows)]
