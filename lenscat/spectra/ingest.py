"""``lenscat spectra ingest``: spectrum files -> one DB row per spectrum + packed pixels.

Files are read (and packed: resampled onto the full 3600-10400 A range and its search window, the
project's continuum fitted for every spectrum beside the pipeline model where the file has one; see
:mod:`lenscat.spectra.pack`) in worker processes; each batch of files then goes into the array store and into
``lenscat.spectra`` in one transaction, together with one ``lenscat.ingests`` row per file. A file
already ingested (same content, same store) is skipped, so an interrupted ingest resumes and a repeated
one changes nothing. A file that cannot be read is recorded as a failed ingest with its reason and
reported; the batch goes on. A spectrum with no usable pixel in the search window (no pixel with
finite flux and ivar > 0: flux all NaN, every pixel masked, or no coverage of the window) is
rejected with its reason (``lenscat.ingest_rejects``) and not ingested; a file all of whose
spectra are rejected fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue import ingest_log
from lenscat.db.session import session_scope
from lenscat.errors import LenscatError
from lenscat.settings import get_settings
from lenscat.sky.service import match_query
from lenscat.spectra.grid import VETO, WINDOW
from lenscat.spectra.pack import PackedFull, PackedRows, PackStore, pack_spectra, window_quality
from lenscat.spectra.spectrum import Spectrum

DEFAULT_LINK_RADIUS = 2.0 * u.arcsec


@dataclass
class FileResult:
    """A file read and packed by a worker (or the reason it could not be)."""

    path: Path
    sha256: str
    spectra: list[dict[str, Any]] = field(default_factory=list)
    rows: PackedRows | None = None
    full: PackedFull | None = None
    error: str | None = None
    rejected: list[ingest_log.Reject] = field(default_factory=list)


@dataclass
class SpectraIngestSummary:
    """What an ingest did."""

    files: int = 0
    files_skipped: int = 0
    files_failed: int = 0
    spectra_inserted: int = 0
    spectra_updated: int = 0
    linked: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    spectra_rejected: int = 0
    rejections: list[tuple[str, str]] = field(default_factory=list)  # (file, one-line reason)
    pack: str = "default"

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "files": self.files,
            "files_skipped_unchanged": self.files_skipped,
            "files_failed": self.files_failed,
            "spectra_inserted": self.spectra_inserted,
            "spectra_updated": self.spectra_updated,
            "spectra_rejected": self.spectra_rejected,
            "linked_to_sources": self.linked,
            "pack": self.pack,
            "failures": [{"file": f, "reason": r} for f, r in self.failures],
            "rejected": [{"file": f, "reason": r} for f, r in self.rejections],
        }


def _jsonable(v: Any) -> Any:
    """A metadata value as plain JSON (numpy scalars and arrays, bytes; NaN and inf -> null)."""
    if isinstance(v, np.ndarray | list | tuple):
        return [_jsonable(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _finite(x: Any) -> float | None:
    v = float(x)
    return v if np.isfinite(v) else None


def spectrum_row(s: Spectrum) -> dict[str, Any]:
    """The ``lenscat.spectra`` values of a spectrum (positions normalised, NaN -> NULL)."""

    def num(x: float | None) -> float | None:
        return None if x is None or not np.isfinite(x) else float(x)

    ra, dec = num(s.ra), num(s.dec)
    if ra is not None:
        ra %= 360.0
    if dec is not None and not -90.0 <= dec <= 90.0:
        ra = dec = None
    if ra is None or dec is None:
        ra = dec = None
    meta = {k: _jsonable(v) for k, v in s.meta.items()}
    return {
        "survey": s.survey,
        "spec_key": s.key,
        "plate": s.plate,
        "mjd": s.mjd,
        "fiber": s.fiber,
        "targetid": s.targetid,
        "ra": ra,
        "dec": dec,
        "z": num(s.z),
        "z_err": num(s.z_err),
        "spec_class": s.spec_class,
        "subclass": s.subclass,
        "file_path": str(Path(s.path).resolve()),
        "file_row": int(s.index),
        "ivar_estimated": bool(s.ivar_estimated),
        "meta": meta,
    }


def read_and_pack(path: Path, sha: str) -> FileResult:
    """Read one spectrum file (content hash ``sha``) and pack it (runs in a worker process)."""
    from lenscat.spectra.readers import read_spectra

    try:
        spectra = read_spectra(path)
        if not spectra:
            raise LenscatError(f"{path}: no spectra in the file")
        rows, full = pack_spectra(spectra)
        usable = usable_rows(rows)
        rejected = [
            ingest_log.Reject(row=s.index + 1, column="flux", value=s.key, reason=unusable_reason(s))
            for s, ok in zip(spectra, usable, strict=True)
            if not ok
        ]
        if len(rejected) == len(spectra):
            which = (
                f"spectrum {rejected[0].value}: {rejected[0].reason}"
                if len(spectra) == 1
                else f"none of its {len(spectra)} spectra has a pixel with finite flux and ivar > 0 in the "
                f"search window"
            )
            raise LenscatError(f"{path}: {which}; not ingested")
        if rejected:
            keep = np.flatnonzero(usable)
            spectra = [spectra[i] for i in keep]
            rows = rows.take(keep)
            full = full.take(keep)
    except LenscatError as exc:
        return FileResult(path=path, sha256=sha, error=str(exc))
    except Exception as exc:  # a reader bug on a strange file must not stop the batch
        return FileResult(path=path, sha256=sha, error=f"{path}: unreadable ({type(exc).__name__}: {exc})")
    return FileResult(
        path=path, sha256=sha, spectra=[spectrum_row(s) for s in spectra], rows=rows, full=full, rejected=rejected
    )


_ROW_FIELDS = ("flux", "ivar", "continuum", "sky", "z", "continuum_source", "continuum_fit", "has_model")
_FULL_FIELDS = ("flux", "ivar", "model", "fit", "z", "has_model")


def usable_rows(rows: PackedRows) -> np.ndarray:
    """Per packed spectrum: whether any search-window pixel has finite flux and ivar > 0."""
    good = (rows.ivar > 0) & np.isfinite(rows.flux) & np.isfinite(rows.ivar)
    return np.asarray(good.any(axis=1), dtype=bool)


def unusable_reason(s: Spectrum) -> str:
    """Why spectrum ``s`` (with no usable window pixel) is rejected, in words."""
    lo, hi = float(WINDOW.wave[0]), float(WINDOW.wave[-1])
    anywhere = bool(np.any((np.asarray(s.ivar) > 0) & np.isfinite(s.flux)))
    if not anywhere:  # readers set ivar = 0 where flux is not finite
        return "no pixel with finite flux and ivar > 0 (flux all NaN, or every pixel masked)"
    return f"no pixel with finite flux and ivar > 0 in the search window {lo:.0f}-{hi:.0f} Angstrom"


def store_path(name: str) -> Path:
    """Where the array store ``name`` lives (``LENSCAT_HOME/spectra/<name>.h5``)."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise LenscatError(f"invalid store name {name!r}: use letters, digits, - and _")
    return get_settings().home.expanduser().resolve() / "spectra" / f"{name}.h5"


def ensure_pack(name: str, *, session: Session) -> tuple[int, PackStore]:
    """The ``spectrum_packs`` row of a store (created on first use) and its store object."""
    path = store_path(name)
    pid = session.execute(
        text("""INSERT INTO lenscat.spectrum_packs (name, path, window_k0, window_n, veto_k0, veto_n, dlog)
                VALUES (:n, :p, :wk, :wn, :vk, :vn, :d)
                ON CONFLICT ON CONSTRAINT uq_spectrum_packs_name DO UPDATE SET name = EXCLUDED.name
                RETURNING pack_id, path"""),
        {"n": name, "p": str(path), "wk": WINDOW.k0, "wn": WINDOW.n, "vk": VETO.k0, "vn": VETO.n, "d": WINDOW.dlog},
    ).one()
    return int(pid[0]), PackStore(pid[1])


def pack_store(pack_id: int, *, session: Session) -> PackStore:
    """The store object of a ``spectrum_packs`` row."""
    path = session.execute(
        text("SELECT path FROM lenscat.spectrum_packs WHERE pack_id = :p"), {"p": pack_id}
    ).scalar_one()
    return PackStore(path)


_COLUMNS = (
    "survey text, spec_key text, plate integer, mjd integer, fiber integer, targetid bigint, "
    "ra double precision, dec double precision, z real, z_err real, spec_class text, subclass text, "
    "file_path text, file_row integer, pack_id integer, pack_row bigint, ivar_estimated boolean, "
    "cov real, snr real, meta jsonb, ingest_id integer"
)

_UPSERT = text(
    f"""
    INSERT INTO lenscat.spectra AS t (survey, spec_key, plate, mjd, fiber, targetid, ra, dec, z, z_err,
        spec_class, subclass, file_path, file_row, pack_id, pack_row, ivar_estimated, window_coverage,
        window_snr, meta, ingest_id)
    SELECT survey, spec_key, plate, mjd, fiber, targetid, ra, dec, z, z_err, spec_class, subclass, file_path,
        file_row, pack_id, pack_row, ivar_estimated, cov, snr, meta, ingest_id
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r({_COLUMNS})
    ON CONFLICT ON CONSTRAINT uq_spectra_survey_key DO UPDATE SET
        plate = EXCLUDED.plate, mjd = EXCLUDED.mjd, fiber = EXCLUDED.fiber, targetid = EXCLUDED.targetid,
        ra = EXCLUDED.ra, dec = EXCLUDED.dec, z = EXCLUDED.z, z_err = EXCLUDED.z_err,
        spec_class = EXCLUDED.spec_class, subclass = EXCLUDED.subclass, file_path = EXCLUDED.file_path,
        file_row = EXCLUDED.file_row, pack_id = EXCLUDED.pack_id, pack_row = EXCLUDED.pack_row,
        ivar_estimated = EXCLUDED.ivar_estimated, window_coverage = EXCLUDED.window_coverage,
        window_snr = EXCLUDED.window_snr, meta = EXCLUDED.meta, ingest_id = EXCLUDED.ingest_id,
        updated_at = now()
    RETURNING spectrum_id, ingest_id, (xmax = 0) AS inserted
    """
)


def link_spectra(
    *,
    session: Session,
    radius: u.Quantity = DEFAULT_LINK_RADIUS,
    spectrum_ids: list[int] | None = None,
    relink: bool = False,
) -> int:
    """Link spectra to their nearest catalogue source within ``radius`` (through the sky index).

    Only spectra without a link are looked at unless ``relink``; returns the number linked.
    """
    where = ["sp.ra IS NOT NULL", "sp.dec IS NOT NULL"]
    ids: dict[str, Any] = {}
    if not relink:
        where.append("sp.source_id IS NULL")
    if spectrum_ids is not None:
        where.append("sp.spectrum_id = ANY(:ids)")
        ids["ids"] = spectrum_ids
    centres = f"SELECT sp.spectrum_id, sp.ra, sp.dec FROM lenscat.spectra sp WHERE {' AND '.join(where)}"
    nearest, params = match_query(centres, radius, session=session, key="spectrum_id", nearest=True, what="link radius")
    res = session.execute(
        text(f"""
            UPDATE lenscat.spectra t SET source_id = m.source_id, source_sep_arcsec = m.separation_arcsec
            FROM ({nearest}) m
            WHERE t.spectrum_id = m.spectrum_id"""),
        {**params, **ids},
    )
    return int(getattr(res, "rowcount", 0) or 0)


def _write_batch(
    results: list[FileResult], *, pack_name: str, link_radius: u.Quantity, summary: SpectraIngestSummary
) -> None:
    good = [r for r in results if r.error is None and r.rows is not None and r.full is not None]
    with session_scope() as session:
        pack_id, store = ensure_pack(pack_name, session=session)
        if good:
            rows = PackedRows(*(np.concatenate([getattr(r.rows, f) for r in good]) for f in _ROW_FIELDS))
            full = PackedFull(*(np.concatenate([getattr(r.full, f) for r in good]) for f in _FULL_FIELDS))
            cov, snr = window_quality(rows)
            with store.writer() as fh:
                start = store.append(fh, rows, full)
            session.execute(
                text("UPDATE lenscat.spectrum_packs SET n_rows = :n WHERE pack_id = :p"),
                {"n": start + len(rows), "p": pack_id},
            )
        offset = 0
        pending: dict[tuple[str, str], dict[str, Any]] = {}  # one row per key: the last file wins
        repeated: dict[int, int] = {}  # ingest_id -> spectra superseded by a later file of the batch
        done: list[int] = []
        done_results: list[tuple[int, FileResult]] = []
        for r in results:
            rec = ingest_log.open_ingest(
                session=session,
                kind="spectra",
                target=pack_name,
                path=r.path,
                sha256=r.sha256,
                options={"pack": pack_name},
                n_rows=len(r.spectra) + len(r.rejected),
                n_batches=1,
            )
            if r.error is not None:
                ingest_log.fail_ingest(session=session, ingest_id=rec.ingest_id, message=r.error)
                summary.files_failed += 1
                summary.failures.append((str(r.path), r.error))
                continue
            ingest_log.record_rejects(r.rejected, session=session, ingest_id=rec.ingest_id)
            summary.spectra_rejected += len(r.rejected)
            summary.rejections.extend(
                (str(r.path), f"{r.path}: spectrum {x.value} (row {x.row}): {x.reason}; not ingested")
                for x in r.rejected
            )
            for i, row in enumerate(r.spectra):
                k = offset + i
                key = (row["survey"], row["spec_key"])
                if key in pending:
                    earlier = int(pending[key]["ingest_id"])
                    repeated[earlier] = repeated.get(earlier, 0) + 1
                pending[key] = {
                    **row,
                    "pack_id": pack_id,
                    "pack_row": start + k,
                    "cov": _finite(cov[k]),
                    "snr": _finite(snr[k]),
                    "ingest_id": rec.ingest_id,
                }
            offset += len(r.spectra)
            done.append(rec.ingest_id)
            done_results.append((rec.ingest_id, r))
        n_rejected = {rec_id: len(r.rejected) for rec_id, r in done_results}
        counts = {i: [0, repeated.get(i, 0)] for i in done}  # ingest_id -> [inserted, updated]
        ids: list[int] = []
        if pending:
            payload = json.dumps(list(pending.values()), default=str, allow_nan=False)
            for sid, iid, inserted in session.execute(_UPSERT, {"rows": payload}):
                ids.append(int(sid))
                counts[int(iid)][0 if inserted else 1] += 1
        for iid in done:
            ins, upd = counts[iid]
            ingest_log.record_batch(
                session=session,
                ingest_id=iid,
                batch_no=0,
                row_start=1,
                row_stop=ins + upd,
                n_inserted=ins,
                n_updated=upd,
                n_unchanged=0,
                n_rejected=n_rejected[iid],
            )
            ingest_log.close_ingest(session=session, ingest_id=iid)
            summary.spectra_inserted += ins
            summary.spectra_updated += upd
        if ids:
            summary.linked += link_spectra(session=session, radius=link_radius, spectrum_ids=ids, relink=True)


def ingest_spectra(
    paths: Iterable[str | Path],
    *,
    pack: str = "default",
    link_radius: u.Quantity = DEFAULT_LINK_RADIUS,
    workers: int | None = None,
    batch_files: int = 64,
    progress: bool | None = None,
) -> SpectraIngestSummary:
    """Ingest spectrum files (or directories of them) into the database and the array store ``pack``.

    Parameters
    ----------
    paths
        Files, directories (searched recursively) or glob patterns.
    pack
        Name of the array store (``LENSCAT_HOME/spectra/<pack>.h5``).
    link_radius
        Spectra are linked to the nearest catalogue source within this radius.
    workers
        Reader processes (default: the number of CPU cores, at most 8; 1 reads in this process).
    batch_files
        Files per transaction.
    progress
        Show a progress bar (None: only on a terminal).

    Returns
    -------
    SpectraIngestSummary
    """
    from tqdm import tqdm

    from lenscat.spectra.readers import iter_spectrum_files

    files = list(dict.fromkeys(Path(p).resolve() for p in iter_spectrum_files(paths)))
    if not files:
        raise LenscatError("no spectrum files found in " + ", ".join(str(p) for p in paths))
    summary = SpectraIngestSummary(files=len(files), pack=pack)
    with session_scope() as session:
        ensure_pack(pack, session=session)
        done = {
            r[0]
            for r in session.execute(
                text("SELECT sha256 FROM lenscat.ingests WHERE kind = 'spectra' AND target = :t AND status = 'done'"),
                {"t": pack},
            )
        }
    shas = {f: ingest_log.file_sha256(f) for f in files}
    todo = [f for f in files if shas[f] not in done]
    summary.files_skipped = len(files) - len(todo)
    n_workers = min(workers or min(os.cpu_count() or 1, 8), max(len(todo), 1))
    bar = tqdm(
        total=len(files),
        unit="file",
        desc="ingest spectra",
        initial=summary.files_skipped,
        disable=progress is False if progress is not None else None,
        leave=False,
    )
    try:
        batches = [todo[i : i + batch_files] for i in range(0, len(todo), batch_files)]
        if n_workers > 1 and len(todo) > 4:
            with ProcessPoolExecutor(n_workers) as pool:
                for batch in batches:
                    results = list(
                        pool.map(
                            read_and_pack,
                            batch,
                            [shas[f] for f in batch],
                            chunksize=max(1, len(batch) // (4 * n_workers)),
                        )
                    )
                    _write_batch(results, pack_name=pack, link_radius=link_radius, summary=summary)
                    bar.update(len(batch))
        else:
            for batch in batches:
                results = [read_and_pack(f, shas[f]) for f in batch]
                _write_batch(results, pack_name=pack, link_radius=link_radius, summary=summary)
                bar.update(len(batch))
    finally:
        bar.close()
    if summary.spectra_inserted or summary.spectra_updated:
        with session_scope() as session:
            session.execute(text("ANALYZE lenscat.spectra"))
    return summary
