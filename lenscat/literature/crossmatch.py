"""Cone searches and literature cross-matches, in SQL on the zone sky index.

Every position query expands a cone into (zone, ra_lo, ra_hi) ranges with the SQL function
``lenscat_sky_ranges`` and probes ``ix_sources_zone_ra`` once per range; an exact great-circle
separation (``lenscat_angsep``, Vincenty formula) then keeps the sources within the radius.

Cross-match semantics follow Stein et al. (2022): the nearest source within the radius is the
lens's match (``is_nearest``); other sources within the radius are kept as neighbours with their
separation and rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.surveys import get_survey, real_survey_ids
from lenscat.db.pgbinary import SIGNATURE, TRAILER
from lenscat.db.session import raw_connection
from lenscat.errors import LenscatError
from lenscat.literature.ingest import get_catalog_id

MAX_RADIUS = 10 * u.deg


def _check_radius(radius: u.Quantity) -> float:
    r = radius.to_value(u.deg)
    if not np.isfinite(r) or r <= 0:
        raise LenscatError(f"radius must be positive, got {radius}")
    if r > MAX_RADIUS.to_value(u.deg):
        raise LenscatError(f"radius {radius} is larger than {MAX_RADIUS}; use lenscat sql for large regions")
    return float(r)


def _survey_ids(surveys: list[str] | None, session: Session) -> list[int] | None:
    """Ids of the named surveys; none named: every real survey (injection sets left out), or None for all."""
    if not surveys:
        real = real_survey_ids(session=session)
        n_all = session.execute(text("SELECT count(*) FROM lenscat.surveys")).scalar_one()
        return real if len(real) < n_all else None
    return [get_survey(s, session=session).survey_id for s in surveys]


CONE_SQL = """
    SELECT v.source_id, v.survey, v.objid, v.ra, v.dec,
           lenscat_angsep(:ra, :dec, v.ra, v.dec) * 3600.0 AS separation,
           v.mag_g, v.mag_r, v.mag_i, v.mag_z, v.mag_y, v.ebv, v.source_type, v.z_spec, v.z_phot
    FROM lenscat_sky_ranges(:ra, :dec, :r) q
    JOIN lenscat.sources s ON s.zone = q.zone AND s.ra BETWEEN q.ra_lo AND q.ra_hi
    JOIN public.sources v ON v.source_id = s.source_id
    WHERE lenscat_angsep(:ra, :dec, s.ra, s.dec) <= :r
      {survey_filter}
    ORDER BY separation, v.source_id
    {limit}
"""

CONE_UNITS = {
    "ra": u.deg,
    "dec": u.deg,
    "separation": u.arcsec,
    "mag_g": u.mag,
    "mag_r": u.mag,
    "mag_i": u.mag,
    "mag_z": u.mag,
    "mag_y": u.mag,
    "ebv": u.mag,
}


def cone_search(
    coord: SkyCoord,
    radius: u.Quantity = 5 * u.arcsec,
    *,
    session: Session,
    surveys: list[str] | None = None,
    limit: int | None = None,
) -> Table:
    """Sources within ``radius`` of ``coord``, nearest first.

    Parameters
    ----------
    coord
        Search centre (converted to ICRS).
    radius
        Search radius, e.g. ``5 * u.arcsec``.
    session
        Database session.
    surveys
        Restrict to these surveys (default: all).
    limit
        At most this many rows.

    Returns
    -------
    astropy.table.Table
        ``source_id, survey, objid, ra [deg], dec [deg], separation [arcsec], mag_g..mag_y [mag],
        ebv [mag], source_type, z_spec, z_phot``.
    """
    icrs = coord.icrs
    r = _check_radius(radius)
    sids = _survey_ids(surveys, session)
    sql = CONE_SQL.format(
        survey_filter="AND s.survey_id = ANY(:sids)" if sids else "",
        limit="LIMIT :limit" if limit else "",
    )
    params: dict[str, Any] = {"ra": float(icrs.ra.deg), "dec": float(icrs.dec.deg), "r": r}
    if sids:
        params["sids"] = sids
    if limit:
        params["limit"] = int(limit)
    result = session.execute(text(sql), params)
    return rows_to_table(result.keys(), result.fetchall(), CONE_UNITS)


def rows_to_table(keys: Any, rows: Sequence[Any], units: dict[str, u.UnitBase] | None = None) -> Table:
    """An astropy Table from SQL rows, with units attached to known columns."""
    names = list(keys)
    units = units or {}
    cols = []
    for j in range(len(names)):
        values = [row[j] for row in rows]
        if values and all(isinstance(v, bool) for v in values):
            cols.append(np.array(values, dtype=bool))
            continue
        if (
            values
            and all(isinstance(v, int | float) or v is None for v in values)
            and any(isinstance(v, float) for v in values)
        ):
            arr: Any = np.array([np.nan if v is None else v for v in values], dtype=float)
        elif values and all(isinstance(v, int) for v in values):
            arr = np.array(values, dtype=np.int64)
        elif (
            values
            and all(isinstance(v, int | float) or v is None for v in values)
            and any(v is not None for v in values)
        ):
            arr = np.ma.masked_array([0 if v is None else v for v in values], mask=[v is None for v in values])
        else:
            arr = np.array(values, dtype=object) if values else np.array([], dtype=float)
        cols.append(arr)
    table = Table(cols, names=names) if names else Table()
    for name, unit in units.items():
        if name in table.colnames and table[name].dtype.kind == "f":
            table[name].unit = unit
    return table


def pairs_sql(survey_filter: bool = False, part: bool = False) -> str:
    """SELECT of (lens_id, source_id, sep [deg]) for catalogue ``:cid`` within ``:r`` degrees.

    One index range scan of ``ix_sources_zone_ra`` per lens. For almost every lens (a cone that
    touches at most two 1-arcmin zones, does not cross ra = 0/360 and is not at a pole) the bounds
    are computed inline, ``zone = ANY(ARRAY[z0, z1]) AND ra BETWEEN lo AND hi``, one probe with no
    set-returning function; the few others go through ``lenscat_sky_ranges`` (split ra ranges,
    polar caps, wide radii). ``OFFSET 0`` keeps each lateral subquery parameterised by the lens:
    flattened, the planner could hash-join all sources. With ``part``, only the lenses with
    ``:row_lo <= row_number < :row_hi`` (a range of ``uq_literature_lenses_catalog_row``).
    """
    survey = "AND s.survey_id = ANY(:sids)" if survey_filter else ""
    parts = "AND l.row_number >= :row_lo AND l.row_number < :row_hi" if part else ""
    return f"""
        WITH l AS MATERIALIZED (
            SELECT l.lens_id, l.ra, l.dec,
                   CASE WHEN abs(l.dec) + :r >= 89.9999 THEN 180.0
                        ELSE degrees(asin(least(1.0, sind(:r) / cosd(l.dec)))) * (1 + 1e-9) + 1e-12 END AS a,
                   lenscat_zone(greatest(l.dec - :r, -90.0)) AS z0,
                   lenscat_zone(least(l.dec + :r, 90.0)) AS z1
            FROM lenscat.literature_lenses l
            WHERE l.catalog_id = :cid {parts}
        )
        SELECT l.lens_id, m.source_id, m.sep
        FROM l
        CROSS JOIN LATERAL (
            SELECT s.source_id, lenscat_angsep(l.ra, l.dec, s.ra, s.dec) AS sep
            FROM lenscat.sources s
            WHERE s.zone = ANY(ARRAY[l.z0, l.z1]) AND s.ra BETWEEN l.ra - l.a AND l.ra + l.a {survey}
            OFFSET 0  -- keep the probe per lens: never flatten into a hash join of all sources
        ) m
        WHERE l.a < 180 AND l.z1 - l.z0 <= 1 AND l.ra - l.a >= 0 AND l.ra + l.a < 360 AND m.sep <= :r
        UNION ALL
        SELECT l.lens_id, m.source_id, m.sep
        FROM l
        CROSS JOIN LATERAL lenscat_sky_ranges(l.ra, l.dec, :r) q
        CROSS JOIN LATERAL (
            SELECT s.source_id, lenscat_angsep(l.ra, l.dec, s.ra, s.dec) AS sep
            FROM lenscat.sources s
            WHERE s.zone = q.zone AND s.ra BETWEEN q.ra_lo AND q.ra_hi {survey}
            OFFSET 0
        ) m
        WHERE NOT (l.a < 180 AND l.z1 - l.z0 <= 1 AND l.ra - l.a >= 0 AND l.ra + l.a < 360) AND m.sep <= :r
    """


def ranked_pairs_sql(survey_filter: bool = False, part: bool = False) -> str:
    """SELECT of the rows of ``lenscat.crossmatches`` for catalogue ``:cid`` within ``:r`` degrees.

    Each lens's sources are ranked by separation (ties by source_id); rank 1 is its match. Rows
    come sorted by (lens_id, rank), the order of the primary key, in the table's column types.
    """
    return f"""
        SELECT p.lens_id, p.source_id, p.sep * 3600.0 AS separation_arcsec, p.rank = 1 AS is_nearest,
               p.rank::integer AS rank, :r * 3600.0 AS radius_arcsec
        FROM (
            SELECT q.lens_id, q.source_id, q.sep,
                   row_number() OVER (PARTITION BY q.lens_id ORDER BY q.sep, q.source_id) AS rank
            FROM ({pairs_sql(survey_filter, part)}) q
        ) p
        ORDER BY p.lens_id, p.rank
    """


XMATCH_COLUMNS = "lens_id, source_id, separation_arcsec, is_nearest, rank, radius_arcsec"

PAIR_WORKERS = 2
"""Connections that search lens pairs at once (each PostgreSQL backend uses one core)."""

LENSES_PER_CHUNK = 4_000
"""Lenses per searched chunk (a ``row_number`` range): with several chunks per connection, the
caller's connection writes the first chunks' changes while the others are still searched."""

MAX_CHUNKS = 4 * PAIR_WORKERS
"""At most this many chunks per run (each costs a query and its planning on a worker)."""


def _parallel_parts(session: Session) -> int:
    """How many connections may search at once: 1 inside a bound (test) connection, or once this
    session's transaction has written anything (other connections would not see those rows)."""
    import os

    from lenscat.db import session as db_session

    if db_session._bound_connection is not None:
        return 1
    wrote = session.execute(text("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")).scalar()
    return 1 if wrote else max(1, min(PAIR_WORKERS, os.cpu_count() or 1))


def _literal_sql(sql: str, params: dict[str, Any]) -> str:
    """``sql`` with its ``:name`` placeholders replaced by literals (COPY takes no parameters).

    Only lenscat's own numbers go through here: ints, floats (``repr`` is exact) and int lists.
    """
    import re

    def literal(m: re.Match[str]) -> str:
        v = params[m.group(1)]
        if isinstance(v, bool) or not isinstance(v, int | float | list):
            raise TypeError(f"no literal for {m.group(1)}={v!r}")
        if isinstance(v, list):
            return "ARRAY[" + ",".join(str(int(x)) for x in v) + "]::integer[]"
        return f"{float(v)!r}::double precision" if isinstance(v, float) else str(int(v))

    return re.sub(r"(?<!:):([a-z_]+)\b", literal, sql)


XMATCH_ROW_BYTES = 2 + (4 + 8) * 3 + (4 + 1) + (4 + 4) + (4 + 8)
"""Bytes of one ``ranked_pairs_sql`` row in a binary COPY stream: field count, then (length, value)
for lens_id, source_id, separation_arcsec, is_nearest, rank and radius_arcsec (none NULL)."""

NEAREST_OFFSET = 2 + (4 + 8) * 3 + 4
"""Offset of the ``is_nearest`` byte in such a row."""

LENS_ID_OFFSET = 2 + 4
"""Offset of the big-endian ``lens_id`` in such a row."""

EMPTY_STREAM = SIGNATURE + TRAILER
"""A binary COPY stream with no rows."""

STORED_PAIRS_SQL = f"""
    WITH l AS MATERIALIZED (
        SELECT lens_id FROM lenscat.literature_lenses
        WHERE catalog_id = :cid AND row_number >= :row_lo AND row_number < :row_hi
    )
    SELECT {", ".join("x." + c for c in XMATCH_COLUMNS.split(", "))}
    FROM lenscat.crossmatches x
    WHERE x.lens_id BETWEEN (SELECT min(lens_id) FROM l) AND (SELECT max(lens_id) FROM l)
      AND x.lens_id IN (SELECT lens_id FROM l)
"""
"""The stored rows of a chunk of lenses, in the layout of ``ranked_pairs_sql``: one range scan of
``pk_crossmatches`` between the chunk's smallest and largest lens id (contiguous when the
catalogue was ingested in one go), not one probe per lens."""


def _stream_rows(data: bytes) -> np.ndarray:
    """The rows of a binary COPY stream of ``ranked_pairs_sql`` rows, as an (n, row bytes) array."""
    body = len(data) - len(SIGNATURE) - len(TRAILER)
    if body < 0 or body % XMATCH_ROW_BYTES or not data.startswith(SIGNATURE):
        raise LenscatError(f"unexpected cross-match stream of {len(data)} bytes")
    return np.frombuffer(data, np.uint8, body, len(SIGNATURE)).reshape(-1, XMATCH_ROW_BYTES)


def _stream_counts(data: bytes) -> tuple[int, int]:
    """(pairs, nearest matches) in a binary COPY stream of ``ranked_pairs_sql`` rows."""
    rows = _stream_rows(data)
    return len(rows), int(rows[:, NEAREST_OFFSET].sum())


def _lens_ids(rows: np.ndarray) -> np.ndarray:
    """The lens_id of each row of :func:`_stream_rows`."""
    return rows[:, LENS_ID_OFFSET : LENS_ID_OFFSET + 8].copy().view(">i8").ravel()


def changed_rows(new: bytes, rows_old: np.ndarray) -> tuple[np.ndarray, bytes]:
    """What turns the stored rows ``rows_old`` (an (n, row bytes) array, as from
    :func:`_stream_rows`) into ``new`` (a binary COPY stream of ranked pairs).

    Returns
    -------
    stale : numpy.ndarray
        Lens ids whose stored rows must be deleted: those with a stored row that ``new`` lacks
        (a lens whose pairs differ in any way has all its rows rewritten).
    insert : bytes
        A binary COPY stream of the rows of ``new`` for the lenses whose pairs changed; just the
        header and trailer when nothing did.
    """
    rows_new = _stream_rows(new)
    rows_old = np.ascontiguousarray(rows_old)
    void = np.dtype((np.void, XMATCH_ROW_BYTES))
    v_new, v_old = rows_new.view(void).ravel(), rows_old.view(void).ravel()
    lens_new, lens_old = _lens_ids(rows_new), _lens_ids(rows_old)
    gone = np.unique(lens_old[~np.isin(v_old, v_new)])
    changed = np.union1d(gone, lens_new[~np.isin(v_new, v_old)])
    stale = np.intersect1d(changed, lens_old)
    keep = np.isin(lens_new, changed)
    return stale, SIGNATURE + rows_new[keep].tobytes() + TRAILER


def _delete_pairs(cid: int, *, session: Session) -> None:
    session.execute(
        text(
            """
            DELETE FROM lenscat.crossmatches x USING lenscat.literature_lenses l
            WHERE x.lens_id = l.lens_id AND l.catalog_id = :cid
            """
        ),
        {"cid": cid},
    )


def _lens_rows(cid: int, *, session: Session) -> tuple[int, int, int]:
    """(number of lenses, smallest row_number, largest row_number) of the catalogue."""
    n, lo, hi = session.execute(
        text(
            "SELECT count(*), min(row_number), max(row_number) FROM lenscat.literature_lenses WHERE catalog_id = :cid"
        ),
        {"cid": cid},
    ).one()
    return int(n), int(lo or 0), int(hi or 0)


def _chunks(lens_rows: tuple[int, int, int], nworkers: int) -> list[tuple[int, int]]:
    """``row_number`` ranges [lo, hi) covering the catalogue's lenses, about equal in size."""
    n, lo, hi = lens_rows
    if not n:
        return []
    k = max(nworkers, min(MAX_CHUNKS, -(-n // LENSES_PER_CHUNK)))
    edges = np.linspace(lo, hi + 1, k + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _replace_pairs(
    cid: int, r: float, sids: list[int] | None, lens_rows: tuple[int, int, int], *, session: Session
) -> tuple[int, int]:
    """Make the catalogue's stored pairs those within ``r`` degrees: (pairs, matched lenses).

    With committed inputs the lenses are split into ``row_number`` ranges searched on connections
    of their own; each sends back its ranked rows and the chunk's stored rows as binary COPY
    streams, :func:`changed_rows` compares them, and the caller's transaction deletes and writes
    only the lenses whose pairs changed (through binary COPY: no row passes through Python
    objects). A re-run on unchanged inputs writes nothing; chunks are written as they arrive,
    while later ones are still searched. Otherwise (a bound test connection, or inputs this
    transaction wrote, which other connections cannot see) the old rows are deleted and one
    ``INSERT ... SELECT`` writes the new ones on ``session``. Runs for one catalogue are
    serialised by a transaction-level advisory lock. ``lens_rows`` is :func:`_lens_rows`.
    """
    params: dict[str, Any] = {"r": r, "cid": cid, **({"sids": sids} if sids else {})}
    nworkers = _parallel_parts(session)  # asked before this transaction writes anything
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('lenscat.crossmatch'), CAST(:cid AS integer))"), {"cid": cid}
    )
    if nworkers == 1:
        _delete_pairs(cid, session=session)
        n_pairs, n_matched = session.execute(
            text(f"""
            WITH ins AS (
                INSERT INTO lenscat.crossmatches ({XMATCH_COLUMNS}) {ranked_pairs_sql(bool(sids))}
                RETURNING is_nearest
            )
            SELECT count(*), count(*) FILTER (WHERE is_nearest) FROM ins"""),
            params,
        ).one()
        return int(n_pairs), int(n_matched)
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from lenscat.db.session import get_engine

    query = ranked_pairs_sql(bool(sids), part=True)

    def run(lo: int, hi: int) -> tuple[bytes, np.ndarray]:
        """The chunk's new rows (a binary COPY stream) and its stored rows (an array)."""
        bounds = {**params, "row_lo": lo, "row_hi": hi}
        streams = []
        with get_engine().connect() as conn:
            pg = conn.connection.driver_connection
            assert pg is not None
            for sql in (query, STORED_PAIRS_SQL):
                with (
                    pg.cursor() as cur,
                    cur.copy(f"COPY ({_literal_sql(sql, bounds)}) TO STDOUT (FORMAT binary)") as copy,
                ):
                    streams.append(b"".join(bytes(block) for block in copy))
            conn.rollback()
        return streams[0], _stream_rows(streams[1])

    conn = raw_connection(session)
    n_pairs = n_matched = 0
    with ThreadPoolExecutor(max_workers=nworkers, thread_name_prefix="lenscat-xmatch") as pool:
        futures = [pool.submit(run, lo, hi) for lo, hi in _chunks(lens_rows, nworkers)]
        try:
            for fut in as_completed(futures):
                new, stored = fut.result()
                stale, insert = changed_rows(new, stored)
                with conn.cursor() as cur:
                    if stale.size:
                        cur.execute(
                            "DELETE FROM lenscat.crossmatches WHERE lens_id = ANY(%s::bigint[])", (stale.tolist(),)
                        )
                    if insert != EMPTY_STREAM:
                        with cur.copy(
                            f"COPY lenscat.crossmatches ({XMATCH_COLUMNS}) FROM STDIN (FORMAT binary)"
                        ) as copy:
                            copy.write(insert)
                pairs, matched = _stream_counts(new)
                n_pairs, n_matched = n_pairs + pairs, n_matched + matched
        finally:
            for fut in futures:
                fut.cancel()
    return n_pairs, n_matched


@dataclass
class CrossmatchSummary:
    """Counts from a cross-match run."""

    catalog: str
    radius_arcsec: float
    n_lenses: int
    n_matched: int
    n_pairs: int
    surveys: list[str]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return dict(self.__dict__)


def crossmatch_catalog(
    catalog: str,
    radius: u.Quantity = 5 * u.arcsec,
    *,
    session: Session,
    surveys: list[str] | None = None,
) -> CrossmatchSummary:
    """Cross-match a literature catalogue with the sources and store the result.

    Replaces the catalogue's earlier cross-matches, so a re-run leaves the same rows.
    """
    r = _check_radius(radius)
    cid = get_catalog_id(catalog, session=session)
    sids = _survey_ids(surveys, session)
    lens_rows = _lens_rows(cid, session=session)
    n_lenses = lens_rows[0]
    n_pairs, n_matched = _replace_pairs(cid, r, sids, lens_rows, session=session)
    session.execute(
        text(
            """
            INSERT INTO lenscat.crossmatch_runs (catalog_id, radius_arcsec, surveys, n_lenses, n_matched,
                                                 n_pairs, ran_at)
            VALUES (:cid, :r, :surveys, :nl, :nm, :np, now())
            ON CONFLICT ON CONSTRAINT pk_crossmatch_runs DO UPDATE
            SET radius_arcsec = EXCLUDED.radius_arcsec, surveys = EXCLUDED.surveys,
                n_lenses = EXCLUDED.n_lenses, n_matched = EXCLUDED.n_matched,
                n_pairs = EXCLUDED.n_pairs, ran_at = EXCLUDED.ran_at
            """
        ),
        {"cid": cid, "r": r * 3600.0, "surveys": surveys or [], "nl": n_lenses, "nm": n_matched, "np": n_pairs},
    )
    return CrossmatchSummary(catalog, r * 3600.0, int(n_lenses), int(n_matched), int(n_pairs), list(surveys or []))


MATCH_UNITS = {"lens_ra": u.deg, "lens_dec": u.deg, "ra": u.deg, "dec": u.deg, "separation_arcsec": u.arcsec}


def crossmatch_table(catalog: str, *, session: Session, nearest_only: bool = True, limit: int | None = None) -> Table:
    """The stored cross-match of ``catalog`` as a Table (nearest matches, or all pairs)."""
    cid = get_catalog_id(catalog, session=session)
    result = session.execute(
        text(
            f"""
            SELECT l.lens_id, l.name AS lens_name, l.ra AS lens_ra, l.dec AS lens_dec, l.grade,
                   x.source_id, v.name AS survey, s.objid, s.ra, s.dec, x.separation_arcsec,
                   x.is_nearest, x.rank
            FROM lenscat.crossmatches x
            JOIN lenscat.literature_lenses l USING (lens_id)
            JOIN lenscat.sources s USING (source_id)
            JOIN lenscat.surveys v ON v.survey_id = s.survey_id
            WHERE l.catalog_id = :cid {"AND x.is_nearest" if nearest_only else ""}
            ORDER BY l.lens_id, x.rank
            {"LIMIT :limit" if limit else ""}
            """
        ),
        {"cid": cid, **({"limit": limit} if limit else {})},
    )
    return rows_to_table(result.keys(), result.fetchall(), MATCH_UNITS)
