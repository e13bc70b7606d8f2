"""The files the catalogue points at: cutout files, spectrum stores and model checkpoints.

The database keeps images, packed spectra and network weights in files and stores their absolute
paths (``lenscat.cutout_files.path`` and ``member_paths``, ``lenscat.spectrum_packs.path``,
``lenscat.model_versions.checkpoint_path``). :func:`check_files` says, for each, whether it is
still where it was registered and unchanged; :func:`relocate_files` rewrites a directory prefix
after the data moved (a new disk, or a shared volume mounted at another path on the workers),
and only after every moved file has been found, and checked, at its new place.

Checks, per kind of file:

* **cutouts**: the file (every per-band member of a FITS set) exists and its sha256 is the one
  recorded at ingest (for HDF5 the digest covers the catalogue datasets and every pixel of
  ``images``, through per-row digests, so this reads the whole file: a changed pixel is a
  problem; re-ingesting the file says which rows changed and recomputes what they feed);
* **spectra** (a packed-window store): the HDF5 file exists and holds at least the rows the
  database has committed to it;
* **checkpoint**: the file exists and its sha256 is the model version's ``checkpoint_sha256``
  (not for ``external`` encoders, whose vectors were loaded from a file that is not read again).

The paths of the files that were ingested (``lenscat.ingests.path``, ``lenscat.spectra.file_path``)
are a record of where the data came from and are left as they were.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session
from tqdm import tqdm

from lenscat.catalogue.ingest_log import file_sha256
from lenscat.errors import LenscatError
from lenscat.images.formats import format_names, get_format
from lenscat.io.hdf5 import hdf5_fingerprint
from lenscat.io.readers import HDF5_SUFFIXES

__all__ = ["KINDS", "DataFile", "Relocation", "check_files", "file_problem", "referenced_files", "relocate_files"]

KINDS = ("cutouts", "spectra", "checkpoint")
"""Kinds of referenced file, in the order they are listed."""


@dataclass(frozen=True)
class DataFile:
    """One file (or FITS set of per-band files) the database refers to.

    Attributes
    ----------
    kind : {'cutouts', 'spectra', 'checkpoint'}
        What the file holds.
    key : int
        ``file_id``, ``pack_id`` or ``model_id`` of its row.
    path : str
        Absolute path as stored.
    members : tuple of str
        The per-band files of a FITS set (empty otherwise).
    sha256 : str or None
        Recorded digest (None for spectrum stores, which grow).
    n_rows : int or None
        Images in a cutout file, or rows committed to a spectrum store.
    label : str
        What refers to it, for people: the surveys of a cutout file, the store name, the model.
    pixel_digests : bool
        For a Stein-layout HDF5 cutout file: its per-row pixel digests were recorded at ingest, so
        ``sha256`` covers the pixels. False for a file ingested before they were kept, whose
        ``sha256`` covers the catalogue only (and is checked as such).
    """

    kind: str
    key: int
    path: str
    members: tuple[str, ...]
    sha256: str | None
    n_rows: int | None
    label: str
    pixel_digests: bool = True

    @property
    def paths(self) -> tuple[str, ...]:
        """Every file on disk this entry needs."""
        return self.members or (self.path,)


def referenced_files(*, session: Session, kinds: Sequence[str] | None = None) -> list[DataFile]:
    """Every file the database refers to, by kind then path.

    Parameters
    ----------
    session : Session
        Open session (read only).
    kinds : sequence of str, optional
        Only these of :data:`KINDS`.
    """
    want = list(kinds or KINDS)
    bad = [k for k in want if k not in KINDS]
    if bad:
        raise LenscatError(f"unknown file kind(s) {', '.join(bad)}; expected {', '.join(KINDS)}")
    out: list[DataFile] = []
    if "cutouts" in want:
        rows = session.execute(
            text(
                """
            SELECT f.file_id, f.path, f.member_paths, f.sha256, f.n_images,
                   (SELECT string_agg(DISTINCT v.name, ',') FROM lenscat.sources s
                    JOIN lenscat.surveys v USING (survey_id) WHERE s.cutout_file_id = f.file_id) AS surveys,
                   NOT (f.format = ANY(:digest_formats)) OR EXISTS (SELECT 1 FROM lenscat.cutout_row_digests d
                                                       WHERE d.file_id = f.file_id) AS pixel_digests
            FROM lenscat.cutout_files f ORDER BY f.path
            """
            ),
            {"digest_formats": [name for name in format_names() if get_format(name).row_digests]},
        ).all()
        out += [
            DataFile(
                "cutouts",
                int(r.file_id),
                r.path,
                tuple(r.member_paths or ()),
                r.sha256,
                None if r.n_images is None else int(r.n_images),
                f"survey {r.surveys or '(none)'}",
                bool(r.pixel_digests),
            )
            for r in rows
        ]
    if "spectra" in want:
        rows = session.execute(
            text("SELECT pack_id, name, path, n_rows FROM lenscat.spectrum_packs ORDER BY path")
        ).all()
        out += [DataFile("spectra", int(r.pack_id), r.path, (), None, int(r.n_rows), f"store {r.name}") for r in rows]
    if "checkpoint" in want:
        rows = session.execute(
            text(
                """
            SELECT model_id, kind, name, version, checkpoint_path, checkpoint_sha256
            FROM lenscat.model_versions
            WHERE checkpoint_path IS NOT NULL AND origin <> 'external' ORDER BY checkpoint_path, model_id
            """
            )
        ).all()
        out += [
            DataFile(
                "checkpoint",
                int(r.model_id),
                r.checkpoint_path,
                (),
                r.checkpoint_sha256,
                None,
                f"{r.kind} {r.name}@{r.version}",
            )
            for r in rows
        ]
    return out


def _cutout_digest(f: DataFile) -> str:
    if f.members:  # a FITS set: digest of the members' digests (as `lenscat ingest cutouts` records it)
        return hashlib.sha256("".join(file_sha256(Path(p)) for p in f.members).encode()).hexdigest()
    if Path(f.path).suffix.lower() in HDF5_SUFFIXES:
        import h5py

        with h5py.File(f.path, "r") as fh:  # OSError: reported as unreadable
            fp = hdf5_fingerprint(fh, progress=False)
        # a file ingested before pixel digests were kept was recorded with its catalogue digest
        return fp.sha256 if f.pixel_digests else fp.catalogue_sha256
    return file_sha256(Path(f.path))


def file_problem(f: DataFile) -> str | None:
    """Why ``f`` cannot be used as registered (None when it can).

    Parameters
    ----------
    f : DataFile
        The entry, possibly with paths rewritten by :func:`relocate_files`.

    Returns
    -------
    str or None
        ``'missing'``, ``'not a file'``, a digest or row-count mismatch, or why it cannot be read.
    """
    for p in f.paths:
        if not os.path.lexists(p):
            return "missing" if p == f.path else f"missing band file {p}"
        if not Path(p).is_file():
            return f"{p}: not a file"
    try:
        if f.kind == "spectra":
            from lenscat.spectra.pack import PackStore

            have = PackStore(f.path).n_rows()
            if f.n_rows is not None and have < f.n_rows:
                return f"holds {have} rows, the database has committed {f.n_rows}"
            return None
        if f.kind == "cutouts":
            sha = _cutout_digest(f)
        else:
            sha = file_sha256(Path(f.path))
    except (OSError, ValueError, KeyError) as exc:
        return f"cannot be read: {exc}"
    except LenscatError as exc:
        return str(exc)
    if f.sha256 and sha != f.sha256:
        again = (
            "; ingest it again (`lenscat ingest sources`) to find the changed cutouts and recompute "
            "their embeddings and scores"
            if f.kind == "cutouts" and not f.members
            else ""
        )
        return f"contents changed (sha256 {sha[:12]}..., registered {f.sha256[:12]}...){again}"
    return None


def check_files(files: Sequence[DataFile], *, progress: bool = True) -> list[str | None]:
    """:func:`file_problem` of each file, with a progress bar (the digests read the files)."""
    return [file_problem(f) for f in tqdm(files, desc="check files", unit="file", disable=not progress, leave=False)]


def _moved(path: str, old: str, new: str) -> str | None:
    """``path`` with the directory prefix ``old`` replaced by ``new`` (None if not under ``old``)."""
    if path == old:
        return new
    if path.startswith(old + "/"):
        return new + path[len(old) :]
    return None


@dataclass
class Relocation:
    """What :func:`relocate_files` did (or, with ``dry_run``, would do).

    Attributes
    ----------
    moves : list of (DataFile, DataFile)
        Each entry as registered and with its new paths.
    problems : list of (DataFile, str)
        Moved entries that fail :func:`file_problem` at the new place; when there are any,
        nothing was written.
    written : bool
        The database was updated.
    """

    moves: list[tuple[DataFile, DataFile]]
    problems: list[tuple[DataFile, str]]
    written: bool

    def counts(self) -> dict[str, int]:
        """Moved entries per kind."""
        return {k: sum(1 for a, _ in self.moves if a.kind == k) for k in KINDS}


def relocate_files(
    old: str | Path, new: str | Path, *, session: Session, dry_run: bool = False, progress: bool = True
) -> Relocation:
    """Point every reference under directory ``old`` at the same relative path under ``new``.

    Parameters
    ----------
    old, new : str or Path
        Directory prefixes (absolute, or relative to the working directory; ``new`` is resolved,
        ``old`` is not, since it may no longer exist). A file path itself is accepted too.
    session : Session
        The caller commits; nothing is written when any moved file fails its check.
    dry_run : bool
        Check, but write nothing.
    progress : bool
        Show a progress bar while checking.

    Returns
    -------
    Relocation

    Raises
    ------
    LenscatError
        ``old`` and ``new`` are the same, or nothing is registered under ``old``.
    """
    old_s = os.path.normpath(os.path.abspath(os.path.expanduser(str(old))))
    new_s = os.path.normpath(str(Path(new).expanduser().resolve()))
    if old_s == new_s:
        raise LenscatError(f"old and new locations are the same ({old_s})")
    moves: list[tuple[DataFile, DataFile]] = []
    files = referenced_files(session=session)
    for f in files:
        path = _moved(f.path, old_s, new_s)
        members = tuple(_moved(m, old_s, new_s) or m for m in f.members)
        if path is None and members == f.members:
            continue
        moves.append((f, replace(f, path=path or f.path, members=members)))
    if not moves:
        raise LenscatError(
            f"no cutout file, spectrum store or checkpoint is registered under {old_s}; see `lenscat db files`"
        )
    problems = [
        (moved, p)
        for (_, moved), p in zip(moves, check_files([m for _, m in moves], progress=progress), strict=True)
        if p is not None
    ]
    moving = {b.key for b, _ in moves if b.kind == "cutouts"}
    taken = {f.path: f for f in files if f.kind == "cutouts" and f.key not in moving}
    for _, after in moves:  # cutout file paths are unique: the new place may be registered already
        if after.kind == "cutouts" and after.path in taken:
            other = taken[after.path]
            problems.append((after, f"already registered as cutout file {other.key} ({other.label})"))
    if problems or dry_run:
        return Relocation(moves, problems, written=False)
    for before, after in moves:
        if before.kind == "cutouts":
            session.execute(
                text("UPDATE lenscat.cutout_files SET path = :p, member_paths = :m WHERE file_id = :k"),
                {"p": after.path, "m": list(after.members) or None, "k": after.key},
            )
            # items that failed because the file was missing can be run again now
            session.execute(
                text(
                    "DELETE FROM lenscat.job_item_failures f USING lenscat.sources s "
                    "WHERE s.source_id = f.item_id AND s.cutout_file_id = :k"
                ),
                {"k": after.key},
            )
        elif before.kind == "spectra":
            session.execute(
                text("UPDATE lenscat.spectrum_packs SET path = :p WHERE pack_id = :k"),
                {"p": after.path, "k": after.key},
            )
        else:
            session.execute(
                text("UPDATE lenscat.model_versions SET checkpoint_path = :p WHERE model_id = :k"),
                {"p": after.path, "k": after.key},
            )
    return Relocation(moves, problems, written=True)
