"""The cutout store of an ingested file: register it, keep per-row image digests, drop stale results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.types import CutoutChanges, PreparedSources
from lenscat.images.formats.hdf5_stein import NAME as HDF5_STEIN
from lenscat.io.hdf5 import IMAGE_DIGEST_BYTES

ROW_DIGEST_BLOCK = 4096
"""Image rows per ``lenscat.cutout_row_digests`` row."""


def update_row_digests(file_id: int, digests: np.ndarray, *, session: Session) -> list[int]:
    """Store the per-row image digests of a cutout file; return the rows whose digest changed.

    Rows the file did not have before, and a file registered before digests were kept (nothing
    to compare with), count as unchanged. Idempotent: storing the same digests again returns [].
    """
    d = np.ascontiguousarray(digests, dtype=np.uint8).reshape(-1, IMAGE_DIGEST_BYTES)
    old = {
        int(b): bytes(v)
        for b, v in session.execute(
            text("SELECT block_no, digests FROM lenscat.cutout_row_digests WHERE file_id = :f"), {"f": file_id}
        ).all()
    }
    changed: list[int] = []
    n_blocks = -(-len(d) // ROW_DIGEST_BLOCK)
    for b in range(n_blocks):
        new = d[b * ROW_DIGEST_BLOCK : (b + 1) * ROW_DIGEST_BLOCK]
        blob = new.tobytes()
        before = old.get(b)
        if before == blob:
            continue
        if before is not None:
            prev = np.frombuffer(before, np.uint8).reshape(-1, IMAGE_DIGEST_BYTES)
            m = min(len(prev), len(new))
            diff = np.flatnonzero((prev[:m] != new[:m]).any(axis=1))
            changed += (diff + b * ROW_DIGEST_BLOCK).tolist()
        session.execute(
            text(
                "INSERT INTO lenscat.cutout_row_digests (file_id, block_no, digests) VALUES (:f, :b, :d) "
                "ON CONFLICT ON CONSTRAINT pk_cutout_row_digests DO UPDATE SET digests = EXCLUDED.digests"
            ),
            {"f": file_id, "b": b, "d": blob},
        )
    session.execute(
        text("DELETE FROM lenscat.cutout_row_digests WHERE file_id = :f AND block_no >= :n"),
        {"f": file_id, "n": n_blocks},
    )
    return changed


def mark_cutouts_stale(file_id: int, rows: list[int], *, session: Session) -> CutoutChanges:
    """Remove the results computed from the old pixels of ``rows`` of a cutout file.

    Embeddings of encoders lenscat can run (not sets of precomputed vectors, which cannot be
    recomputed) and the scores of every classifier except linear ones on precomputed vectors are
    deleted, so ``lenscat embed``/``score`` and ``lenscat reprocess`` plan exactly these sources
    again; recorded item failures of the sources are forgotten (their input changed).
    """
    if not rows:
        return CutoutChanges([], 0, 0, 0)
    sids = [
        int(x)
        for x in session.execute(
            text("SELECT source_id FROM lenscat.sources WHERE cutout_file_id = :f AND cutout_row = ANY(:r)"),
            {"f": file_id, "r": rows},
        ).scalars()
    ]
    if not sids:
        return CutoutChanges(sorted(rows), 0, 0, 0)
    emb = session.execute(
        text(
            "DELETE FROM lenscat.embeddings e USING lenscat.model_versions m WHERE m.model_id = e.model_id "
            "AND m.origin <> 'external' AND e.source_id = ANY(:s)"
        ),
        {"s": sids},
    )
    sc = session.execute(
        text("""DELETE FROM lenscat.scores c USING lenscat.model_versions m
                WHERE m.model_id = c.model_id AND c.source_id = ANY(:s)
                  AND NOT (m.architecture = 'linear' AND EXISTS (
                      SELECT 1 FROM lenscat.model_versions p
                      WHERE p.model_id = m.parent_model_id AND p.origin = 'external'))"""),
        {"s": sids},
    )
    session.execute(text("DELETE FROM lenscat.job_item_failures WHERE item_id = ANY(:s)"), {"s": sids})
    return CutoutChanges(
        sorted(rows), len(sids), int(getattr(emb, "rowcount", 0) or 0), int(getattr(sc, "rowcount", 0) or 0)
    )


def register_cutout_file(
    prep: PreparedSources, *, session: Session
) -> tuple[int | None, list[str], CutoutChanges | None]:
    """Register the file as a cutout store when it carries an ``images`` dataset.

    Returns its ``file_id`` (None without images), the paths of earlier registrations of the same
    content (sha256) whose files no longer exist: their sources now read their cutouts from this
    file, as after ``lenscat db relocate`` (a survey file moved, then ingested again from its new
    place, whose rows are otherwise already done), and the image rows whose pixels changed since
    the file was last ingested (their embeddings and scores are removed: see
    :func:`mark_cutouts_stale`).
    """
    if prep.images_shape is None:
        return None, [], None
    file_id = int(
        session.execute(
            text(
                """
                INSERT INTO lenscat.cutout_files (path, format, sha256, n_images, image_shape)
                VALUES (:p, :fmt, :sha, :n, :shape)
                ON CONFLICT ON CONSTRAINT uq_cutout_files_path
                DO UPDATE SET sha256 = EXCLUDED.sha256, n_images = EXCLUDED.n_images,
                              image_shape = EXCLUDED.image_shape
                RETURNING file_id
                """
            ),
            {
                "p": str(prep.path),
                "fmt": HDF5_STEIN,
                "sha": prep.sha256,
                "n": prep.images_shape[0],
                "shape": list(prep.images_shape[1:]),
            },
        ).scalar_one()
    )
    copies = session.execute(
        text(
            "SELECT file_id, path FROM lenscat.cutout_files WHERE sha256 = :sha "
            "AND format = :fmt AND file_id <> :k ORDER BY file_id"
        ),
        {"sha": prep.sha256, "fmt": HDF5_STEIN, "k": file_id},
    ).all()
    gone = [(int(k), str(p)) for k, p in copies if not Path(p).exists()]
    for old_id, _ in gone:
        session.execute(
            text("UPDATE lenscat.sources SET cutout_file_id = :new, updated_at = now() WHERE cutout_file_id = :old"),
            {"new": file_id, "old": old_id},
        )
        session.execute(text("DELETE FROM lenscat.cutout_files WHERE file_id = :old"), {"old": old_id})
    changes = None
    if prep.image_digests is not None:
        changes = mark_cutouts_stale(
            file_id, update_row_digests(file_id, prep.image_digests, session=session), session=session
        )
    return file_id, [p for _, p in gone], changes
