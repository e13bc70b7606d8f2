"""Results of the sky layer's searches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.coordinates import Angle


@dataclass(frozen=True)
class ConeHits:
    """The sources of one cone, nearest first (ties by source id).

    Attributes
    ----------
    source_id
        Source ids (int64).
    separation
        Their separations from the cone's centre.
    """

    source_id: np.ndarray
    separation: Angle

    def __len__(self) -> int:
        return len(self.source_id)


@dataclass(frozen=True)
class SkyPairs:
    """Pairs of positions within a radius of each other, matched in memory.

    Attributes
    ----------
    index
        Index of each pair's position in the positions searched (int64), ascending.
    target
        Index of its partner in the targets (int64); a position's partners nearest first.
    separation
        The separation of each pair.
    """

    index: np.ndarray
    target: np.ndarray
    separation: Angle

    def __len__(self) -> int:
        return len(self.index)


@dataclass(frozen=True)
class SkyMatch:
    """Positions matched to catalogue sources.

    Attributes
    ----------
    index
        Index of the matched position in the positions searched (int64), ascending.
    source_id
        The matched source of each row (int64).
    separation
        The separation of each pair.
    rank
        1 for a position's nearest source, 2 for the next, ... (ties by source id).
    """

    index: np.ndarray
    source_id: np.ndarray
    separation: Angle
    rank: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


@dataclass(frozen=True)
class RegionHits:
    """The rows of a table whose positions lie in a HEALPix region (:func:`lenscat.sky.service.within_region`).

    Attributes
    ----------
    row_id
        The rows' ids (``source_id`` for sources; int64), in the order of ``tile``, then id.
    ra, dec
        Their positions [deg].
    tile
        Index of the region's range ``[lo, hi)`` holding each position (int64).
    n_probed
        Rows the sky-index probe returned before the exact test (the cover's over-coverage included).
    n_boxes
        (zone, ra_lo, ra_hi) boxes the probe used.
    label
        A text per row when the caller asked for one (e.g. ``survey:objid``), else None.
    """

    row_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    tile: np.ndarray
    n_probed: int
    n_boxes: int
    label: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.row_id)
