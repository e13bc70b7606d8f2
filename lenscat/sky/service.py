"""The sky layer: cone searches and position matching against the catalogue's sources.

One answer to "which sources are near here": a cone (:func:`cone_search`, :func:`cone_ids`), a
set of positions matched to their nearest source or to every source within a radius
(:func:`match_positions`, or :func:`match_query` for positions that live in a table), and a cone
condition for queries driven by another index (:func:`within`); positions already in memory are
paired with :func:`pairs_within` (no database). "Which sources lie in this HEALPix region" (a sky
map's credible region, a MOC) is :func:`within_region`, which probes the same index with the
region's zone boxes (:mod:`lenscat.sky.healpix`). Callers pass ``SkyCoord`` and
``Quantity``; :mod:`lenscat.sky.units` converts to the degrees the SQL (:mod:`lenscat.sky.sql`)
takes. Unless surveys are named, injection sets are left out (as ``public.cone_search`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import astropy.units as u
import numpy as np
from astropy.coordinates import Angle, SkyCoord, search_around_sky
from astropy.table import Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.surveys import get_survey, real_survey_ids
from lenscat.sky.healpix import merge_ranges, range_index, zone_ra_ranges
from lenscat.sky.sql import (
    CONE_IDS_SQL,
    CONE_SQL,
    POSITIONS_SQL,
    SURVEY_FILTER,
    matches_sql,
    within_sql,
    zone_boxes_sql,
)
from lenscat.sky.types import ConeHits, RegionHits, SkyMatch, SkyPairs
from lenscat.sky.units import CONE_UNITS, centre_degrees, positions_degrees, radius_degrees, rows_to_table


def survey_ids(surveys: Sequence[str] | Sequence[int] | None, *, session: Session) -> list[int] | None:
    """Survey ids to search.

    Parameters
    ----------
    surveys
        Survey names or ids; none: every real survey (injection sets left out).
    session
        Database session.

    Returns
    -------
    list of int or None
        The ids, or None for all surveys (none named and no injection set exists).
    """
    if not surveys:
        real = real_survey_ids(session=session)
        n_all = session.execute(text("SELECT count(*) FROM lenscat.surveys")).scalar_one()
        return real if len(real) < n_all else None
    return [s if isinstance(s, int) else get_survey(s, session=session).survey_id for s in surveys]


def _cone_params(
    coord: SkyCoord,
    radius: u.Quantity,
    surveys: Sequence[str] | Sequence[int] | None,
    limit: int | None,
    session: Session,
) -> tuple[dict[str, Any], dict[str, str]]:
    ra, dec = centre_degrees(coord)
    params: dict[str, Any] = {"ra": ra, "dec": dec, "r": radius_degrees(radius)}
    sids = survey_ids(surveys, session=session)
    if sids:
        params["sids"] = sids
    if limit:
        params["limit"] = int(limit)
    parts = {"survey_filter": SURVEY_FILTER if sids else "", "limit": "LIMIT :limit" if limit else ""}
    return params, parts


def cone_search(
    coord: SkyCoord,
    radius: u.Quantity = 5 * u.arcsec,
    *,
    session: Session,
    surveys: Sequence[str] | None = None,
    limit: int | None = None,
) -> Table:
    """Sources within ``radius`` of ``coord``, nearest first.

    Parameters
    ----------
    coord
        Search centre (converted to ICRS).
    radius
        Search radius, e.g. ``5 * u.arcsec`` (at most :data:`lenscat.sky.units.MAX_RADIUS`).
    session
        Database session.
    surveys
        Restrict to these surveys (default: every real survey).
    limit
        At most this many rows.

    Returns
    -------
    astropy.table.Table
        ``source_id, survey, objid, ra [deg], dec [deg], separation [arcsec], mag_g..mag_y [mag],
        ebv [mag], source_type, z_spec, z_phot``.
    """
    params, parts = _cone_params(coord, radius, surveys, limit, session)
    result = session.execute(text(CONE_SQL.format(**parts)), params)
    return rows_to_table(result.keys(), result.fetchall(), CONE_UNITS)


def cone_ids(
    coord: SkyCoord,
    radius: u.Quantity,
    *,
    session: Session,
    surveys: Sequence[str] | Sequence[int] | None = None,
    limit: int | None = None,
) -> ConeHits:
    """The ids and separations of the sources within ``radius`` of ``coord``, nearest first.

    As :func:`cone_search`, without the sources' columns (for other domains that join their own).
    """
    params, parts = _cone_params(coord, radius, surveys, limit, session)
    rows = session.execute(text(CONE_IDS_SQL.format(**parts)), params).all()
    ids = np.array([int(r[0]) for r in rows], dtype=np.int64)
    return ConeHits(ids, Angle(np.array([float(r[1]) for r in rows], dtype=np.float64), u.arcsec))


def match_query(
    centres: str,
    radius: u.Quantity,
    *,
    session: Session,
    key: str = "pos_id",
    surveys: Sequence[str] | Sequence[int] | None = None,
    nearest: bool = False,
    what: str = "radius",
) -> tuple[str, dict[str, Any]]:
    """SQL and parameters matching the positions of a SELECT against the sources.

    Parameters
    ----------
    centres
        A SELECT of ``key``, ``ra``, ``dec`` [deg] (its own parameters are the caller's to bind).
    radius
        Match radius.
    session
        Database session.
    key
        The centres' identifying column.
    surveys
        Only sources of these surveys (names or ids; default: every real survey).
    nearest
        Only each centre's nearest source; otherwise every source within ``radius``.
    what
        How errors name the radius.

    Returns
    -------
    sql, params
        A SELECT of (``key``, source_id, separation_arcsec, rank), sorted by (``key``, rank), and
        its parameters ``r`` [deg] and ``sids``.
    """
    params: dict[str, Any] = {"r": radius_degrees(radius, what=what)}
    sids = survey_ids(surveys, session=session)
    if sids:
        params["sids"] = sids
    return matches_sql(centres, key=key, survey_filter=bool(sids), nearest=nearest), params


def match_positions(
    coords: SkyCoord,
    radius: u.Quantity,
    *,
    session: Session,
    surveys: Sequence[str] | Sequence[int] | None = None,
    nearest: bool = True,
) -> SkyMatch:
    """Match positions to the catalogue's sources within ``radius``.

    Parameters
    ----------
    coords
        The positions (any frame; converted to ICRS).
    radius
        Match radius.
    session
        Database session.
    surveys
        Only sources of these surveys (names or ids; default: every real survey).
    nearest
        Each position's nearest source only (as astropy's ``match_coordinates_sky``, limited to
        ``radius``); otherwise every pair within ``radius`` (as ``search_around_sky``).

    Returns
    -------
    SkyMatch
        The pairs, sorted by position index and separation; positions with no source within
        ``radius`` have no row.
    """
    ra, dec = positions_degrees(coords)
    sql, params = match_query(POSITIONS_SQL, radius, session=session, surveys=surveys, nearest=nearest)
    params.update(pos_id=list(range(len(ra))), pos_ra=ra.tolist(), pos_dec=dec.tolist())
    rows = session.execute(text(sql), params).all() if len(ra) else []
    return SkyMatch(
        np.array([int(r[0]) for r in rows], dtype=np.int64),
        np.array([int(r[1]) for r in rows], dtype=np.int64),
        Angle(np.array([float(r[2]) for r in rows], dtype=np.float64), u.arcsec),
        np.array([int(r[3]) for r in rows], dtype=np.int64),
    )


def pairs_within(coords: SkyCoord, targets: SkyCoord, radius: u.Quantity) -> SkyPairs:
    """Every pair of a position and a target within ``radius``, matched in memory (no database).

    For positions already read (a few thousand candidates against the known lenses): a KD-tree
    match (astropy's ``search_around_sky``) instead of one cone search per target.

    Parameters
    ----------
    coords
        The positions (any frame; converted to ICRS).
    targets
        The positions to pair them with (any frame; converted to ICRS).
    radius
        Match radius (an angle, positive, at most the cone search's maximum).

    Returns
    -------
    SkyPairs
        Every pair within ``radius``, sorted by position index and separation (ties by target index).
    """
    r = radius_degrees(radius)
    if len(coords) == 0 or len(targets) == 0:
        return SkyPairs(np.empty(0, np.int64), np.empty(0, np.int64), Angle(np.empty(0), u.arcsec))
    idx, tgt, sep, _ = search_around_sky(coords.icrs, targets.icrs, r * u.deg)
    arcsec = np.asarray(sep.to_value(u.arcsec), dtype=np.float64)
    order = np.lexsort((tgt, arcsec, idx))
    return SkyPairs(
        np.asarray(idx, dtype=np.int64)[order],
        np.asarray(tgt, dtype=np.int64)[order],
        Angle(arcsec[order], u.arcsec),
    )


def within(
    prefix: str,
    centre: SkyCoord,
    radius: u.Quantity,
    *,
    ra: str = "s.ra",
    dec: str = "s.dec",
    outside: bool = False,
) -> tuple[str, dict[str, Any]]:
    """SQL condition and parameters: a row's position is within (``outside``: beyond) a cone.

    For rows chosen by another index (an ANN search's filter); the parameters are named
    ``{prefix}_ra``, ``{prefix}_dec`` and ``{prefix}_r`` [deg].
    """
    cra, cdec = centre_degrees(centre)
    r = float(u.Quantity(radius).to_value(u.deg))
    return within_sql(prefix, ra=ra, dec=dec, outside=outside), {
        f"{prefix}_ra": cra,
        f"{prefix}_dec": cdec,
        f"{prefix}_r": r,
    }


def rows_in_region(
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    session: Session,
    table: str = "lenscat.sources",
    key: str = "source_id",
    condition: str = "",
    params: dict[str, Any] | None = None,
    label: str | None = None,
) -> RegionHits:
    """The rows of a zone-indexed table whose positions lie in a HEALPix region.

    Parameters
    ----------
    lo, hi
        The region: disjoint order-29 NESTED ranges ``[lo, hi)`` sorted by ``lo``
        (:mod:`lenscat.sky.healpix`); ``tile`` in the answer indexes them.
    session
        Database session.
    table
        A table with ``ra``, ``dec`` [deg] and the sky-index column ``zone`` under a btree on
        ``(zone, ra)``: ``lenscat.sources`` or ``lenscat.literature_lenses``.
    key
        Its id column.
    condition
        Extra SQL condition on the rows, aliased ``s`` (e.g. ``AND s.catalog_id = :cid``).
    params
        Parameters of ``condition``.
    label
        A text expression over the row (aliased ``s``) returned as ``RegionHits.label``.

    Returns
    -------
    RegionHits
        The rows whose order-29 pixel lies in a range, sorted by range, then id.

    Notes
    -----
    Two steps: the region's cover by (zone, ra_lo, ra_hi) boxes (:func:`lenscat.sky.healpix.zone_ra_ranges`)
    probes the ``(zone, ra)`` index once per box, so only the rows near the region are read (no scan);
    then each row's pixel is tested against the ranges (:func:`lenscat.sky.healpix.range_index`).
    """
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    mlo, mhi = merge_ranges(lo, hi)
    boxes = zone_ra_ranges(mlo, mhi)
    empty = np.empty(0, np.int64)
    if len(boxes) == 0:
        return RegionHits(empty, np.empty(0), np.empty(0), empty, 0, 0, np.empty(0, np.str_) if label else None)
    args: dict[str, Any] = dict(params or {})
    # array literals: psycopg's per-element list dumping costs ~0.1 s for a few thousand boxes
    args.update(zb_zone=_array_text(boxes.zone), zb_lo=_array_text(boxes.ra_lo), zb_hi=_array_text(boxes.ra_hi))
    rows = session.execute(text(zone_boxes_sql(table, key, condition, label=label)), args).all()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    ra = np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))
    dec = np.fromiter((r[2] for r in rows), dtype=np.float64, count=len(rows))
    tile = range_index(ra, dec, lo, hi)
    keep = np.flatnonzero(tile >= 0)
    keep = keep[np.lexsort((ids[keep], tile[keep]))]
    labels = np.array([rows[int(i)][3] for i in keep], dtype=np.str_) if label else None
    return RegionHits(ids[keep], ra[keep], dec[keep], tile[keep], len(rows), len(boxes), labels)


def _array_text(values: np.ndarray) -> str:
    """A PostgreSQL array literal of numbers (shortest round-trip text of each)."""
    return "{" + ",".join(np.asarray(values).astype(str).tolist()) + "}"


def within_region(
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    session: Session,
    surveys: Sequence[str] | Sequence[int] | None = None,
    names: bool = False,
) -> RegionHits:
    """The catalogue's sources inside a HEALPix region (order-29 ranges), through the sky index.

    As :func:`rows_in_region` on ``lenscat.sources``; ``surveys`` restricts the sources (names or
    ids; default: every real survey, injection sets left out, as :func:`cone_search`); with
    ``names``, ``label`` holds each source's ``survey:objid``.
    """
    sids = survey_ids(surveys, session=session)
    cond = SURVEY_FILTER if sids else ""
    label = "s.survey_id::text || ':' || s.objid" if names else None
    args = {"sids": sids} if sids else None
    hits = rows_in_region(lo, hi, session=session, condition=cond, params=args, label=label)
    if hits.label is not None and len(hits):
        survey = {str(a): str(b) for a, b in session.execute(text("SELECT survey_id, name FROM lenscat.surveys"))}
        parts = [str(x).split(":", 1) for x in hits.label]
        hits = replace(hits, label=np.array([f"{survey[a]}:{b}" for a, b in parts], dtype=np.str_))
    return hits
