"""Dataclasses of a source-catalogue ingest: the column mapping, a validated file, the summary, cutout changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lenscat.catalogue.ingest_log import Reject

DEFAULT_NULL_VALUES = (-99.0, -999.0, -9999.0)


@dataclass
class SourceMapping:
    """How file columns map onto the sources table.

    Attributes
    ----------
    ra_col, dec_col
        Coordinate columns (degrees, or sexagesimal strings: RA in hours). Auto-detected if None.
    id_cols
        Object-id column(s); several are joined with ``_`` (e.g. ``brickid,objid``). ``@row``
        uses the 1-based row number, ``@iau`` an IAU J-name from the position.
    bands
        Band names of the per-band columns, e.g. ``['g', 'r', 'z']``.
    columns
        Explicit field -> file column overrides, e.g. ``{'z_spec': 'ZSPEC', 'mag_g': 'gmag'}``.
    keep_extra
        Store unmapped columns in the ``extra`` JSON column.
    wrap_ra
        Accept right ascensions in [-360, 720) and wrap them into [0, 360).
    null_values
        Sentinels that mean "missing" in optional numeric columns.
    """

    ra_col: str | None = None
    dec_col: str | None = None
    id_cols: list[str] | None = None
    bands: list[str] | None = None
    columns: dict[str, str] = field(default_factory=dict)
    keep_extra: bool = False
    wrap_ra: bool = False
    null_values: tuple[float, ...] = DEFAULT_NULL_VALUES

    def as_options(self) -> dict[str, Any]:
        """JSON-able form (part of the ingest's natural key)."""
        return {
            "ra_col": self.ra_col,
            "dec_col": self.dec_col,
            "id_cols": self.id_cols,
            "bands": self.bands,
            "columns": dict(sorted(self.columns.items())),
            "keep_extra": self.keep_extra,
            "wrap_ra": self.wrap_ra,
            "null_values": list(self.null_values),
        }


@dataclass
class PreparedSources:
    """A validated file, ready to be written in batches."""

    path: Path
    survey: str
    format: str
    sha256: str
    options: dict[str, Any]
    bands: list[str]
    n_rows: int
    objid: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    scalars: dict[str, np.ndarray]
    band_values: dict[str, np.ndarray]  # field -> (N, nbands) float array (NaN = missing)
    extra: list[str] | None
    good: np.ndarray  # bool mask of rows to write
    rejects: list[Reject]
    mapped_columns: dict[str, str]
    ignored_columns: list[str]
    images_shape: tuple[int, ...] | None
    pixel_scale_arcsec: float | None = None
    image_digests: np.ndarray | None = None  # (N, 16) per-row digests of a Stein file's images

    @property
    def n_rejected(self) -> int:
        """Rows refused."""
        return int((~self.good).sum())


@dataclass
class IngestSummary:
    """What an ingest did."""

    path: Path
    target: str
    ingest_id: int
    n_rows: int
    inserted: int
    updated: int
    unchanged: int
    rejected: int
    batches_total: int
    batches_skipped: int
    mapped_columns: dict[str, str] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    cutouts_moved_from: list[str] = field(default_factory=list)
    """Earlier paths of this file's content, gone now; their sources' cutouts are read from ``path``."""
    cutouts_changed: CutoutChanges | None = None
    """Image rows whose pixels differ from the earlier ingest of the file, and what was made stale."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "path": str(self.path),
            "target": self.target,
            "ingest_id": self.ingest_id,
            "rows": self.n_rows,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "batches": self.batches_total,
            "batches_already_done": self.batches_skipped,
            "mapped_columns": self.mapped_columns,
            "ignored_columns": self.ignored_columns,
            "cutouts_moved_from": self.cutouts_moved_from,
            "cutouts_changed": self.cutouts_changed.as_dict() if self.cutouts_changed else None,
        }


@dataclass
class CutoutChanges:
    """Image rows of a re-ingested file whose pixels changed, and the results made stale by it."""

    rows: list[int]
    sources: int
    embeddings_removed: int
    scores_removed: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (the first 1000 rows)."""
        return {
            "n_rows": len(self.rows),
            "rows": self.rows[:1000],
            "sources": self.sources,
            "embeddings_removed": self.embeddings_removed,
            "scores_removed": self.scores_removed,
        }
