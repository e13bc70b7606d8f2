"""Literature cross-matches: each lens of a catalogue against the sources, stored in ``lenscat.crossmatches``.

The pair search is the sky layer's (:mod:`lenscat.sky`): one probe of the zone sky index per lens,
then an exact great-circle separation.

Cross-match semantics follow Stein et al. (2022): the nearest source within the radius is the
lens's match (``is_nearest``); other sources within the radius are kept as neighbours with their
separation and rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.db import session as db_session
from lenscat.db.pgbinary import SIGNATURE, TRAILER
from lenscat.db.session import get_engine, raw_connection
from lenscat.errors import LenscatError
from lenscat.literature.service import get_catalog_id
from lenscat.sky.service import survey_ids
from lenscat.sky.sql import pairs_sql as sky_pairs_sql
from lenscat.sky.units import radius_degrees, rows_to_table


def pairs_sql(survey_filter: bool = False, part: bool = False) -> str:
    """SELECT of (lens_id, source_id, sep [deg]) for catalogue ``:cid`` within ``:r`` degrees.

    The sky layer's pair search (:func:`lenscat.sky.sql.pairs_sql`: one probe of the sky index
    per lens) over the catalogue's lenses. With ``part``, only the lenses with
    ``:row_lo <= row_number < :row_hi`` (a range of ``uq_literature_lenses_catalog_row``).
    """
    parts = "AND l.row_number >= :row_lo AND l.row_number < :row_hi" if part else ""
    lenses = f"SELECT l.lens_id, l.ra, l.dec FROM lenscat.literature_lenses l WHERE l.catalog_id = :cid {parts}"
    return sky_pairs_sql(lenses, key="lens_id", survey_filter=survey_filter)


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
    r = radius_degrees(radius)
    cid = get_catalog_id(catalog, session=session)
    sids = survey_ids(surveys, session=session)
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
