"""Types of the sky-map domain: a map read from a file (tiles at order 29) and the summaries of a write."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KINDS: tuple[str, ...] = ("flat", "multiorder", "moc")
"""What a sky map file was: a flat HEALPix probability map, a multi-order (NUNIQ) map, or a MOC."""

TARGETS: tuple[str, ...] = ("source", "literature", "candidate")
"""What a match finds: catalogue sources, literature lenses, or graded candidates (sources)."""

STERADIAN_PER_TILE_UNIT = 4.0 * math.pi / (12.0 * 4.0**29)
"""Solid angle of one order-29 HEALPix cell [sr]: a range ``[lo, hi)`` covers ``(hi - lo)`` of them."""

DEG2_PER_SR = (180.0 / math.pi) ** 2
"""Square degrees in one steradian."""


@dataclass
class SkyMapData:
    """A sky map as tiles: disjoint NESTED ranges ``[lo, hi)`` at order 29, sorted by ``lo``.

    Attributes
    ----------
    kind
        ``'flat'``, ``'multiorder'`` or ``'moc'``.
    lo, hi
        Tile ranges (int64).
    density
        Probability density of each tile [sr^-1] (a MOC: uniform, 1 / its solid angle).
    cumprob
        Credible level of each tile: the probability of every tile at least as dense (tiles of
        equal density share the level of the last of them), so ``cumprob <= c`` is the credible
        region of level ``c``; a MOC's tiles all have level 1 (a MOC is its own region).
    nside
        Original HEALPix resolution of a flat map (None otherwise).
    max_order
        Finest order of the map's cells.
    meta
        Header cards worth keeping (OBJECT, DATE-OBS, INSTRUME, ...), ORDERING, COORDSYS, the column read.
    """

    kind: str
    lo: np.ndarray
    hi: np.ndarray
    density: np.ndarray
    cumprob: np.ndarray
    nside: int | None
    max_order: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lo)

    @property
    def area_sr(self) -> np.ndarray:
        """Solid angle of each tile [sr]."""
        return (self.hi - self.lo).astype(np.float64) * STERADIAN_PER_TILE_UNIT

    @property
    def prob(self) -> np.ndarray:
        """Probability of each tile (density times solid angle)."""
        return self.density * self.area_sr

    def credible_area_deg2(self, level: float) -> float:
        """Solid angle of the credible region of ``level`` (the tiles with ``cumprob <= level``) [deg^2]."""
        keep = self.cumprob <= level + 1e-12
        return float(self.area_sr[keep].sum() * DEG2_PER_SR)

    def region(self, credible: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Indices and ranges of the tiles in the credible region of level ``credible`` (a MOC: all)."""
        if self.kind == "moc":
            idx = np.arange(len(self.lo))
        else:
            idx = np.flatnonzero(self.cumprob <= credible + 1e-12)
        return idx, self.lo[idx], self.hi[idx]


@dataclass(frozen=True)
class SkyMapSummary:
    """What :func:`lenscat.skymaps.service.ingest_skymap` did.

    Attributes
    ----------
    name
        The map's name.
    skymap_id
        Its row in ``lenscat.skymaps``.
    status
        ``'inserted'``, ``'unchanged'`` (same file under the same name) or ``'replaced'``.
    kind, n_tiles, area50_deg2, area90_deg2, area_deg2, sha256
        As stored.
    """

    name: str
    skymap_id: int
    status: str
    kind: str
    n_tiles: int
    area50_deg2: float | None
    area90_deg2: float | None
    area_deg2: float
    sha256: str


@dataclass(frozen=True)
class MatchSummary:
    """Counts of a stored match: rows found, inserted and updated in ``lenscat.skymap_matches``."""

    n_found: int
    n_inserted: int
    n_updated: int
    n_probed: int
