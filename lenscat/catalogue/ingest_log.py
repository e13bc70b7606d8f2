"""Bookkeeping shared by every ingest: file fingerprints, the ingests row, batches and rejects.

An ingest is keyed by (kind, target, file fingerprint, options fingerprint). Each batch commits
together with its row in ``ingest_batches``; a re-run skips committed batches, so an interrupted
ingest resumes where it stopped and a repeated one changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.io.hdf5 import hdf5_fingerprint
from lenscat.io.readers import HDF5_SUFFIXES

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's contents.

    For HDF5 files the digest is :func:`lenscat.io.hdf5.hdf5_fingerprint`: every root dataset in
    full, the ``images`` rows through per-row digests (so a changed pixel changes it), independent
    of how HDF5 laid the data out in the file.
    """
    h = hashlib.sha256()
    if path.suffix.lower() in HDF5_SUFFIXES:
        import h5py

        try:
            with h5py.File(path, "r") as fh:
                return hdf5_fingerprint(fh).sha256
        except OSError:
            pass  # not readable as HDF5: hash bytes; the reader reports the error
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def options_sha256(options: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ingest options."""
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Reject:
    """A refused input row."""

    row: int  # 1-based data row
    column: str  # '' when no one column is at fault (a row with too many fields)
    value: str
    reason: str  # may name an ingest parameter as {param} (listed in params), as LenscatError does
    params: tuple[str, ...] = ()

    def why(self, spell: Callable[[str], str] = str) -> str:
        """The reason, each ``{param}`` spelled by ``spell`` (the plain name by default; the CLI: its flag)."""
        out = self.reason
        for name in self.params:
            out = out.replace("{" + name + "}", spell(name))
        return out

    def line(self, path: Path | str, spell: Callable[[str], str] = str) -> str:
        """One-line message naming file, row and column (parameters spelled by ``spell``)."""
        col = f"column {self.column!r}: " if self.column else ""
        return f"{path}: row {self.row}: {col}{self.why(spell)} (value {self.value!r}); row rejected"


@dataclass
class IngestRecord:
    """State of an ingest row."""

    ingest_id: int
    status: str
    done_batches: set[int]


def open_ingest(
    *,
    session: Session,
    kind: str,
    target: str,
    path: Path,
    sha256: str,
    options: dict[str, Any],
    n_rows: int,
    n_batches: int,
) -> IngestRecord:
    """Create the ingests row, or find the earlier one for the same file and options."""
    opt_sha = options_sha256(options)
    row = session.execute(
        text(
            """
            INSERT INTO lenscat.ingests (kind, target, path, sha256, size_bytes, options,
                                         options_sha256, n_rows, n_batches, status)
            VALUES (:kind, :target, :path, :sha, :size, CAST(:options AS jsonb), :opt_sha,
                    :n_rows, :n_batches, 'running')
            ON CONFLICT ON CONSTRAINT uq_ingests_kind_target_file
            DO UPDATE SET path = EXCLUDED.path,
                          status = CASE WHEN lenscat.ingests.status = 'done' THEN 'done' ELSE 'running' END,
                          message = NULL
            RETURNING ingest_id, status
            """
        ),
        {
            "kind": kind,
            "target": target,
            "path": str(path),
            "sha": sha256,
            "size": path.stat().st_size,
            "options": json.dumps(options, sort_keys=True, default=str),
            "opt_sha": opt_sha,
            "n_rows": n_rows,
            "n_batches": n_batches,
        },
    ).one()
    done = {
        r[0]
        for r in session.execute(
            text("SELECT batch_no FROM lenscat.ingest_batches WHERE ingest_id = :i"), {"i": row[0]}
        )
    }
    return IngestRecord(ingest_id=row[0], status=row[1], done_batches=done)


def record_rejects(rejects: list[Reject], *, session: Session, ingest_id: int) -> None:
    """Store rejected rows (idempotent on ingest, row and column)."""
    if not rejects:
        return
    session.execute(
        text(
            """
            INSERT INTO lenscat.ingest_rejects (ingest_id, row_number, column_name, value, reason)
            VALUES (:i, :row, :col, :val, :reason)
            ON CONFLICT ON CONSTRAINT uq_ingest_rejects_row DO NOTHING
            """
        ),
        [{"i": ingest_id, "row": r.row, "col": r.column, "val": r.value[:1000], "reason": r.why()} for r in rejects],
    )


def record_batch(
    *,
    session: Session,
    ingest_id: int,
    batch_no: int,
    row_start: int,
    row_stop: int,
    n_inserted: int,
    n_updated: int,
    n_unchanged: int,
    n_rejected: int,
) -> None:
    """Mark a batch committed (in the same transaction as its rows)."""
    session.execute(
        text(
            """
            INSERT INTO lenscat.ingest_batches (ingest_id, batch_no, row_start, row_stop, n_inserted,
                                                n_updated, n_unchanged, n_rejected)
            VALUES (:i, :b, :r0, :r1, :ni, :nu, :nn, :nr)
            ON CONFLICT ON CONSTRAINT pk_ingest_batches DO NOTHING
            """
        ),
        {
            "i": ingest_id,
            "b": batch_no,
            "r0": row_start,
            "r1": row_stop,
            "ni": n_inserted,
            "nu": n_updated,
            "nn": n_unchanged,
            "nr": n_rejected,
        },
    )


def batch_totals(*, session: Session, ingest_id: int) -> dict[str, int]:
    """Inserted/updated/unchanged/rejected rows over the committed batches of an ingest."""
    row = session.execute(
        text(
            """
            SELECT coalesce(sum(n_inserted), 0), coalesce(sum(n_updated), 0),
                   coalesce(sum(n_unchanged), 0), coalesce(sum(n_rejected), 0)
            FROM lenscat.ingest_batches WHERE ingest_id = :i
            """
        ),
        {"i": ingest_id},
    ).one()
    return dict(zip(("inserted", "updated", "unchanged", "rejected"), (int(v) for v in row), strict=True))


def close_ingest(*, session: Session, ingest_id: int) -> dict[str, int]:
    """Mark an ingest done and return its totals over all batches."""
    totals = batch_totals(session=session, ingest_id=ingest_id)
    session.execute(
        text(
            """
            UPDATE lenscat.ingests SET status = 'done', finished_at = coalesce(finished_at, now()),
                   n_loaded = :loaded, n_rejected = :rej
            WHERE ingest_id = :i
            """
        ),
        {
            "i": ingest_id,
            "loaded": totals["inserted"] + totals["updated"] + totals["unchanged"],
            "rej": totals["rejected"],
        },
    )
    return totals


def fail_ingest(*, session: Session, ingest_id: int, message: str) -> None:
    """Record why an ingest stopped (committed batches stay; a re-run resumes)."""
    session.execute(
        text("UPDATE lenscat.ingests SET status = 'failed', message = :m WHERE ingest_id = :i"),
        {"i": ingest_id, "m": message[:2000]},
    )
