"""Sky maps in the database: ingest a localisation map or MOC, match sources, lenses or candidates to it.

* :func:`ingest_skymap` reads a file (:func:`lenscat.skymaps.readers.read_skymap`) and stores the
  map under a name: one ``lenscat.skymaps`` row and its tiles (order-29 NESTED ranges with the
  density [sr^-1] and the credible level): the map's old tiles and matches are deleted and the new
  tiles go in with one binary COPY (every key is new, as the first load of a source batch).
  Idempotent on the name: the same file again changes nothing; another file needs ``replace``.
* :func:`match_skymap` finds the catalogue's sources (optionally of some surveys), the literature
  lenses (optionally of one catalogue) or the graded candidates inside the credible region of a
  level, with their density and credible level; sources and lenses through the sky index
  (:func:`lenscat.sky.service.rows_in_region`), candidates (a few thousand, chosen by
  :func:`lenscat.export.catalogue.candidate_table`) in memory with the same membership test. The
  matches are stored (``public.skymap_matches``) through a binary COPY into staging and one
  upsert, idempotent on (map, level, target, object).

Every function takes ``session=`` and never commits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Column, Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.ingest_log import file_sha256
from lenscat.db.pgbinary import Column as CopyColumn
from lenscat.db.pgbinary import encode_copy_binary
from lenscat.db.session import raw_connection
from lenscat.errors import InputFileError, InvalidParameter, NotFoundError
from lenscat.export.catalogue import candidate_table
from lenscat.literature.service import get_catalog_id
from lenscat.sky.healpix import range_index
from lenscat.sky.service import rows_in_region, within_region
from lenscat.sky.types import RegionHits
from lenscat.skymaps import sql
from lenscat.skymaps.readers import read_skymap
from lenscat.skymaps.types import DEG2_PER_SR, TARGETS, MatchSummary, SkyMapData, SkyMapSummary

MATCH_COLUMNS: dict[str, tuple[Any, str]] = {
    "target": (None, "What was matched: source, literature (lens) or candidate"),
    "object_id": (None, "source_id (source, candidate) or lens_id (literature)"),
    "name": (None, "survey:objid of a source or candidate, catalogue:name of a literature lens"),
    "ra": (u.deg, "Right ascension (ICRS)"),
    "dec": (u.deg, "Declination (ICRS)"),
    "probdensity": (u.sr**-1, "Probability density of the map at the position"),
    "probdensity_deg2": (u.deg**-2, "Probability density of the map at the position"),
    "cumprob": (None, "Credible level at the position: the smallest credible region containing it"),
}
"""Columns of a match table: unit and description."""


def _copy(session: Session, table: str, names: list[str], columns: list[CopyColumn]) -> None:
    """Binary COPY of ``columns`` into ``table``."""
    data = encode_copy_binary(columns)
    with (
        raw_connection(session).cursor() as cur,
        cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN (FORMAT binary)") as copy,
    ):
        copy.write(data)


def _skymap_row(name: str, *, session: Session) -> dict[str, Any] | None:
    row = session.execute(text(sql.SKYMAP_BY_NAME), {"name": name}).mappings().first()
    return dict(row) if row is not None else None


def get_skymap(name: str, *, session: Session) -> dict[str, Any]:
    """The ``lenscat.skymaps`` row of ``name`` as a dict; raises NotFoundError listing the known names."""
    row = _skymap_row(name, session=session)
    if row is None:
        known = [r[0] for r in session.execute(text(sql.SKYMAP_NAMES))]
        raise NotFoundError(f"no sky map named {name!r}; known: {', '.join(known) if known else '(none yet)'}")
    return row


def _summary(row: dict[str, Any], status: str) -> SkyMapSummary:
    def opt(v: Any) -> float | None:
        return None if v is None else float(v)

    return SkyMapSummary(
        name=str(row["name"]),
        skymap_id=int(row["skymap_id"]),
        status=status,
        kind=str(row["kind"]),
        n_tiles=int(row["n_tiles"]),
        area50_deg2=opt(row["area50_deg2"]),
        area90_deg2=opt(row["area90_deg2"]),
        area_deg2=float(row["area_deg2"]),
        sha256=str(row["file_sha256"]),
    )


def store_skymap(data: SkyMapData, name: str, *, session: Session, file_name: str = "", sha256: str = "") -> int:
    """Write a map read from a file under ``name`` (replacing its tiles and matches); returns its id."""
    moc = data.kind == "moc"
    params = {
        "name": name,
        "file_name": file_name,
        "sha": sha256,
        "kind": data.kind,
        "nside": data.nside,
        "max_order": data.max_order,
        "n_tiles": len(data),
        "area": float(data.area_sr.sum() * DEG2_PER_SR),
        "area50": None if moc else data.credible_area_deg2(0.5),
        "area90": None if moc else data.credible_area_deg2(0.9),
        "meta": json.dumps(data.meta, default=str),
    }
    sid = int(session.execute(text(sql.INSERT_SKYMAP), params).scalar_one())
    for stmt in sql.CLEAR_SKYMAP:
        session.execute(text(stmt), {"sid": sid})
    # the map's tiles were just deleted, so every key is new: one COPY straight into the table
    # (as the first load of a source batch in lenscat.catalogue.ingest_write)
    _copy(
        session,
        "lenscat.skymap_tiles",
        ["skymap_id", "lo", "hi", "probdensity", "cumprob"],
        [
            CopyColumn("int4", np.full(len(data), sid, np.int32)),
            CopyColumn("int8", data.lo),
            CopyColumn("int8", data.hi),
            CopyColumn("float8", data.density),
            CopyColumn("float8", data.cumprob),
        ],
    )
    session.execute(text("ANALYZE lenscat.skymap_tiles"))
    return sid


def ingest_skymap(path: str | Path, name: str, *, session: Session, replace: bool = False) -> SkyMapSummary:
    """Read a sky-map file and store it under ``name``.

    Parameters
    ----------
    path
        A flat HEALPix map, a multi-order map or a MOC (FITS, gzip or not; see :mod:`lenscat.skymaps.readers`).
    name
        The map's name (e.g. the event's ``S250206dm``).
    session
        Database session (not committed).
    replace
        Replace a map of the same name read from another file.

    Returns
    -------
    SkyMapSummary
        ``status`` ``'inserted'``, ``'unchanged'`` (this file is already stored under the name: nothing
        written) or ``'replaced'``.

    Raises
    ------
    InputFileError
        For an unreadable or invalid file (one line naming it).
    InvalidParameter
        When ``name`` holds a map from another file and ``replace`` is false.
    """
    if not name or not name.strip():
        raise InvalidParameter("name", "{name} must not be empty")
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputFileError(f"{p}: no such file")
    sha = file_sha256(p)
    old = _skymap_row(name, session=session)
    if old is not None and old["file_sha256"] == sha:
        return _summary(old, "unchanged")
    data = read_skymap(p)
    if old is not None and not replace:
        raise InvalidParameter(
            ("name", "replace"),
            f"sky map {name!r} is stored from another file (sha256 {str(old['file_sha256'])[:12]}...); "
            "give another {name} or {replace} it",
        )
    store_skymap(data, name, session=session, file_name=p.name, sha256=sha)
    row = _skymap_row(name, session=session)
    assert row is not None
    return _summary(row, "replaced" if old is not None else "inserted")


def list_skymaps(*, session: Session) -> Table:
    """The stored maps: name, kind, resolution, number of tiles, areas [deg^2], header metadata, file."""
    rows = session.execute(text(sql.LIST_SKYMAPS)).mappings().all()
    names = ["name", "kind", "nside", "max_order", "n_tiles", "area_deg2", "area50_deg2", "area90_deg2",
             "object", "date_obs", "instrument", "file_name", "ingested_at"]  # fmt: skip
    t = Table(rows=[[r[n] for n in names] for r in rows] or None, names=names)
    for col in ("area_deg2", "area50_deg2", "area90_deg2"):
        if col in t.colnames and len(t):
            t[col].unit = u.deg**2
    return t


def _check_credible(credible: float) -> float:
    c = float(credible)
    if not 0.0 < c <= 1.0:
        raise InvalidParameter("credible", "{credible} must be in (0, 1], e.g. 0.9 for the 90 % region")
    return round(c, 6)


def region_tiles(
    name: str, credible: float, *, session: Session
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A stored map's row and the tiles of its credible region (a MOC: all its tiles), sorted by ``lo``.

    Returns
    -------
    row, lo, hi, probdensity, cumprob
    """
    row = get_skymap(name, session=session)
    c = _check_credible(credible)
    if row["kind"] == "moc":
        rows = session.execute(text(sql.ALL_TILES), {"sid": row["skymap_id"]}).all()
    else:
        rows = session.execute(text(sql.REGION_TILES), {"sid": row["skymap_id"], "credible": c + 1e-12}).all()
    n = len(rows)
    lo = np.fromiter((r[0] for r in rows), np.int64, n)
    hi = np.fromiter((r[1] for r in rows), np.int64, n)
    dens = np.fromiter((r[2] for r in rows), np.float64, n)
    cum = np.fromiter((r[3] for r in rows), np.float64, n)
    return row, lo, hi, dens, cum


def _names(sql_text: str, ids: np.ndarray, *, session: Session) -> dict[int, str]:
    if len(ids) == 0:
        return {}
    return {int(a): str(b) for a, b in session.execute(text(sql_text), {"ids": ids.tolist()})}


def _candidates_in(
    lo: np.ndarray, hi: np.ndarray, grades: str, surveys: Sequence[str] | None, *, session: Session
) -> tuple[RegionHits, list[str]]:
    cand = candidate_table(session=session, grades=grades, surveys=surveys)
    ra = np.asarray(cand["ra"], dtype=np.float64)
    dec = np.asarray(cand["dec"], dtype=np.float64)
    ids = np.asarray(cand["source_id"], dtype=np.int64)
    tile = range_index(ra, dec, lo, hi)
    keep = np.flatnonzero(tile >= 0)
    keep = keep[np.lexsort((ids[keep], tile[keep]))]
    names = [f"{cand['survey'][i]}:{cand['objid'][i]}" for i in keep]
    return RegionHits(ids[keep], ra[keep], dec[keep], tile[keep], len(cand), 0), names


def match_skymap(
    name: str,
    *,
    session: Session,
    credible: float = 0.9,
    target: str = "source",
    catalog: str | None = None,
    surveys: Sequence[str] | None = None,
    grades: str = "A,B",
    store: bool = True,
) -> Table:
    """What lies inside a stored map's credible region, most probable first.

    Parameters
    ----------
    name
        The stored map.
    session
        Database session (not committed).
    credible
        Credible level in (0, 1]: the region is the tiles whose credible level is at most this
        (a MOC: the whole MOC, whatever the level).
    target
        ``'source'`` (catalogue sources, of ``surveys`` if given), ``'literature'`` (literature
        lenses, of ``catalog`` if given) or ``'candidate'`` (graded candidates with a consensus grade
        in ``grades``, as ``lenscat export`` selects them).
    catalog
        Literature catalogue (target ``'literature'`` only).
    surveys
        Surveys of the sources or candidates (default: every real survey).
    grades
        Consensus grades of the candidates.
    store
        Also upsert the matches into ``lenscat.skymap_matches``.

    Returns
    -------
    astropy.table.Table
        :data:`MATCH_COLUMNS`, sorted by ``cumprob`` then ``object_id``; ``meta`` holds the map,
        the level, the selection and the counts (``n_probed``: rows the index probe read).
    """
    if target not in TARGETS:
        raise InvalidParameter("target", f"{{target}} must be one of {', '.join(TARGETS)}, not {target!r}")
    if catalog is not None and target != "literature":
        raise InvalidParameter(("catalog", "target"), "{catalog} applies to literature lenses only")
    row, lo, hi, dens, cum = region_tiles(name, credible, session=session)
    c = _check_credible(credible)
    selection = ""
    if target == "source":
        hits = within_region(lo, hi, session=session, surveys=surveys, names=True)
        names = [str(x) for x in (hits.label if hits.label is not None else [])]
        selection = "surveys=" + ",".join(surveys) if surveys else ""
    elif target == "literature":
        cond, params = "", {}
        if catalog is not None:
            cond, params = sql.LITERATURE_FILTER, {"cid": get_catalog_id(catalog, session=session)}
            selection = f"catalog={catalog}"
        hits = rows_in_region(
            lo, hi, session=session, table="lenscat.literature_lenses", key="lens_id", condition=cond, params=params
        )
        labels = _names(sql.LITERATURE_NAMES, hits.row_id, session=session)
        names = [labels[int(i)] for i in hits.row_id]
    else:
        hits, names = _candidates_in(lo, hi, grades, surveys, session=session)
        selection = f"grades={grades}" + (";surveys=" + ",".join(surveys) if surveys else "")
    d, cp = dens[hits.tile], cum[hits.tile]
    order = np.lexsort((hits.row_id, cp))
    table = Table()
    values: dict[str, Any] = {
        "target": np.array([target] * len(order), dtype=str),
        "object_id": hits.row_id[order],
        "name": np.array([names[i] for i in order], dtype=str),
        "ra": hits.ra[order],
        "dec": hits.dec[order],
        "probdensity": d[order],
        "probdensity_deg2": d[order] / DEG2_PER_SR,
        "cumprob": cp[order],
    }
    for col, (unit, desc) in MATCH_COLUMNS.items():
        table[col] = Column(values[col], unit=unit, description=desc)
    summary = MatchSummary(len(order), 0, 0, hits.n_probed)
    if store:
        summary = _store_matches(int(row["skymap_id"]), c, target, selection, table, hits.n_probed, session=session)
    table.meta.update(
        skymap=row["name"],
        kind=row["kind"],
        credible=c,
        selection=selection,
        n_found=summary.n_found,
        n_probed=summary.n_probed,
        n_boxes=hits.n_boxes,
        n_inserted=summary.n_inserted,
        n_updated=summary.n_updated,
    )
    return table


def _store_matches(
    sid: int, credible: float, target: str, selection: str, table: Table, n_probed: int, *, session: Session
) -> MatchSummary:
    session.execute(text(sql.MATCH_STAGE_DDL))
    session.execute(text(f"TRUNCATE {sql.MATCH_STAGE}"))
    if len(table):
        _copy(
            session,
            sql.MATCH_STAGE,
            ["object_id", "ra", "dec", "probdensity", "cumprob"],
            [
                CopyColumn("int8", np.asarray(table["object_id"], np.int64)),
                CopyColumn("float8", np.asarray(table["ra"], np.float64)),
                CopyColumn("float8", np.asarray(table["dec"], np.float64)),
                CopyColumn("float8", np.asarray(table["probdensity"], np.float64)),
                CopyColumn("float8", np.asarray(table["cumprob"], np.float64)),
            ],
        )
    params = {"sid": sid, "credible": credible, "target": target, "selection": selection}
    ins, upd = session.execute(text(sql.UPSERT_MATCHES), params).one()
    return MatchSummary(len(table), int(ins), int(upd), n_probed)
