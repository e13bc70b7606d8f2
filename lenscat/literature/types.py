"""Dataclasses of a literature ingest: the column choices, a validated lens list, the summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lenscat.catalogue.ingest_log import Reject


@dataclass
class LiteratureColumns:
    """Column choices for a literature list (None = auto/absent)."""

    ra: str | None = None
    dec: str | None = None
    name: str | None = None
    grade: str | None = None
    z_lens: str | None = None
    z_source: str | None = None
    lens_type: str | None = None
    source_type: str | None = None
    refs: str | None = None
    null_values: tuple[float, ...] = (-99.0, -999.0)

    def as_options(self) -> dict[str, Any]:
        """JSON-able form (part of the ingest's natural key)."""
        d = dict(self.__dict__)
        d["null_values"] = list(self.null_values)
        return d


@dataclass
class PreparedLiterature:
    """A validated literature list."""

    path: Path
    catalog: str
    layout: str
    sha256: str
    options: dict[str, Any]
    rows: list[dict[str, Any]]
    rejects: list[Reject] = field(default_factory=list)
    columns: dict[str, str | None] = field(default_factory=dict)
    duplicates: list[Reject] = field(default_factory=list)
    """Rows not loaded because they repeat an earlier row (reason "duplicate of row K ...")."""
    repeats: int = 0
    """Rows loaded although an earlier row has the same name and position (other values differ)."""


@dataclass
class LiteratureSummary:
    """What a literature ingest did."""

    catalog: str
    path: Path
    layout: str
    n_rows: int
    loaded: int
    removed: int
    rejected: int
    already_done: bool
    rejects: list[Reject]
    duplicates: list[Reject] = field(default_factory=list)
    """Rows skipped as duplicates of an earlier row of the file (recorded in ``ingest_rejects``)."""
    repeats: int = 0
    """Loaded rows with the name and position of an earlier row but other values."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "catalog": self.catalog,
            "path": str(self.path),
            "layout": self.layout,
            "rows": self.n_rows,
            "loaded": self.loaded,
            "removed": self.removed,
            "rejected": self.rejected,
            "duplicates": len(self.duplicates),
            "repeats": self.repeats,
            "already_ingested": self.already_done,
        }
