"""The sky layer: cone searches and position matching against the catalogue's sources.

One answer to "which sources are near here": a cone (:func:`cone_search`, :func:`cone_ids`), a
set of positions matched to their nearest source or to every source within a radius
(:func:`match_positions`, or :func:`match_query` for positions that live in a table), and a cone
condition for queries driven by another index (:func:`within`); positions already in memory are
paired with :func:`pairs_within` (no database). Callers pass ``SkyCoord`` and
``Quantity``; :mod:`lenscat.sky.units` converts to the degrees the SQL (:mod:`lenscat.sky.sql`)
takes. Unless surveys are named, injection sets are left out (as ``public.cone_search`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import astropy.units as u
import numpy as np
from astropy.coordinates import Angle, SkyCoord, search_around_sky
from astropy.table import Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.surveys import get_survey, real_survey_ids
from lenscat.sky.sql import CONE_IDS_SQL, CONE_SQL, POSITIONS_SQL, SURVEY_FILTER, matches_sql, within_sql
from lenscat.sky.types import ConeHits, SkyMatch, SkyPairs
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
