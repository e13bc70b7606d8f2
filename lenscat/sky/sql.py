"""SQL text of the sky layer: cones and pair searches on the zone sky index.

Every position query expands a cone into (zone, ra_lo, ra_hi) ranges and probes
``ix_sources_zone_ra`` once per range; an exact great-circle separation (``lenscat_angsep``,
Vincenty formula) then keeps the sources within the radius. All angles here are degrees; the
Python edge (:mod:`lenscat.sky.units`) converts. The SQL functions themselves (``lenscat_zone``,
``lenscat_angsep``, ``lenscat_sky_ranges``, ``public.cone_search``) live in the migrations.
"""

from __future__ import annotations

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
"""A cone around (``:ra``, ``:dec``) of ``:r`` degrees: the public sources view's columns and the
separation [arcsec], nearest first. Format ``survey_filter`` (e.g. ``AND s.survey_id = ANY(:sids)``)
and ``limit`` (e.g. ``LIMIT :limit``) first, to empty strings when not wanted."""

CONE_IDS_SQL = """
    SELECT s.source_id, lenscat_angsep(:ra, :dec, s.ra, s.dec) * 3600.0 AS separation_arcsec
    FROM lenscat_sky_ranges(:ra, :dec, :r) q
    JOIN lenscat.sources s ON s.zone = q.zone AND s.ra BETWEEN q.ra_lo AND q.ra_hi
    WHERE lenscat_angsep(:ra, :dec, s.ra, s.dec) <= :r
      {survey_filter}
    ORDER BY separation_arcsec, s.source_id
    {limit}
"""
"""Like :data:`CONE_SQL`, only ``source_id`` and ``separation_arcsec`` (no join to the view)."""

SURVEY_FILTER = "AND s.survey_id = ANY(:sids)"
"""The survey condition of the cone and pair searches (``:sids``: survey ids)."""


def pairs_sql(centres: str, *, key: str = "pos_id", survey_filter: bool = False) -> str:
    """SELECT of (``key``, source_id, sep [deg]): every source within ``:r`` degrees of each centre.

    Parameters
    ----------
    centres
        A SELECT whose columns are ``key``, ``ra`` and ``dec`` [deg]: the positions to match (rows
        with a NULL position match nothing).
    key
        Name of the centres' identifying column, kept in the output.
    survey_filter
        Only sources of the surveys ``:sids``.

    Notes
    -----
    One index range scan of ``ix_sources_zone_ra`` per centre. For almost every centre (a cone that
    touches at most two 1-arcmin zones, does not cross ra = 0/360 and is not at a pole) the bounds
    are computed inline, ``zone = ANY(ARRAY[z0, z1]) AND ra BETWEEN lo AND hi``, one probe with no
    set-returning function; the few others go through ``lenscat_sky_ranges`` (split ra ranges,
    polar caps, wide radii). ``OFFSET 0`` keeps each lateral subquery parameterised by the centre:
    flattened, the planner could hash-join all sources.
    """
    survey = SURVEY_FILTER if survey_filter else ""
    return f"""
        WITH l AS MATERIALIZED (
            SELECT l.{key}, l.ra, l.dec,
                   CASE WHEN abs(l.dec) + :r >= 89.9999 THEN 180.0
                        ELSE degrees(asin(least(1.0, sind(:r) / cosd(l.dec)))) * (1 + 1e-9) + 1e-12 END AS a,
                   lenscat_zone(greatest(l.dec - :r, -90.0)) AS z0,
                   lenscat_zone(least(l.dec + :r, 90.0)) AS z1
            FROM ({centres}) l
        )
        SELECT l.{key}, m.source_id, m.sep
        FROM l
        CROSS JOIN LATERAL (
            SELECT s.source_id, lenscat_angsep(l.ra, l.dec, s.ra, s.dec) AS sep
            FROM lenscat.sources s
            WHERE s.zone = ANY(ARRAY[l.z0, l.z1]) AND s.ra BETWEEN l.ra - l.a AND l.ra + l.a {survey}
            OFFSET 0  -- keep the probe per centre: never flatten into a hash join of all sources
        ) m
        WHERE l.a < 180 AND l.z1 - l.z0 <= 1 AND l.ra - l.a >= 0 AND l.ra + l.a < 360 AND m.sep <= :r
        UNION ALL
        SELECT l.{key}, m.source_id, m.sep
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


def matches_sql(centres: str, *, key: str = "pos_id", survey_filter: bool = False, nearest: bool = False) -> str:
    """SELECT of (``key``, source_id, separation_arcsec, rank) from :func:`pairs_sql`.

    Each centre's sources are ranked by separation (ties by source_id), rank 1 nearest; with
    ``nearest`` only rank 1 is kept (the nearest source within ``:r`` degrees of each centre).
    Rows come sorted by (``key``, rank).
    """
    pairs = pairs_sql(centres, key=key, survey_filter=survey_filter)
    if nearest:
        return f"""
            SELECT DISTINCT ON (p.{key}) p.{key}, p.source_id, p.sep * 3600.0 AS separation_arcsec, 1 AS rank
            FROM ({pairs}) p
            ORDER BY p.{key}, p.sep, p.source_id
        """
    return f"""
        SELECT p.{key}, p.source_id, p.sep * 3600.0 AS separation_arcsec,
               row_number() OVER (PARTITION BY p.{key} ORDER BY p.sep, p.source_id)::integer AS rank
        FROM ({pairs}) p
        ORDER BY p.{key}, rank
    """


POSITIONS_SQL = (
    "SELECT t.pos_id, t.ra, t.dec "
    "FROM unnest(CAST(:pos_id AS bigint[]), CAST(:pos_ra AS float8[]), CAST(:pos_dec AS float8[])) "
    "AS t(pos_id, ra, dec)"
)
"""Centres for :func:`pairs_sql` passed as arrays: ``:pos_id``, ``:pos_ra`` and ``:pos_dec`` [deg]."""


def within_sql(prefix: str, *, ra: str = "s.ra", dec: str = "s.dec", outside: bool = False) -> str:
    """SQL condition: the position (``ra``, ``dec``) is within (or, ``outside``, beyond) a cone.

    The cone's parameters are ``:{prefix}_ra``, ``:{prefix}_dec`` and ``:{prefix}_r`` [deg]. Use it
    where the rows are already chosen by another index (e.g. an ANN search); to find the sources of
    a cone, use :data:`CONE_SQL`, which probes the sky index.
    """
    op = ">" if outside else "<="
    return f"lenscat_angsep(:{prefix}_ra, :{prefix}_dec, {ra}, {dec}) {op} :{prefix}_r"


def zone_boxes_sql(
    table: str = "lenscat.sources", key: str = "source_id", condition: str = "", *, label: str | None = None
) -> str:
    """SELECT of (``key``, ra, dec[, label]) of the rows of ``table`` inside (zone, ra_lo, ra_hi) boxes.

    The boxes are the arrays ``:zb_zone`` (integer), ``:zb_lo`` and ``:zb_hi`` [deg]; one index range
    scan of ``(zone, ra)`` per box (``ix_sources_zone_ra``, ``ix_literature_lenses_zone_ra``), kept
    per box by ``OFFSET 0`` as in :func:`pairs_sql`. ``condition`` (e.g. ``AND s.survey_id =
    ANY(:sids)``) filters the rows, aliased ``s``. Boxes of one zone must not overlap (a row would
    come back twice). ``label``, a text expression over ``s``, adds a fourth column.
    """
    extra = f", {label} AS label" if label else ""
    return f"""
        SELECT m.*
        FROM unnest(CAST(:zb_zone AS integer[]), CAST(:zb_lo AS float8[]), CAST(:zb_hi AS float8[]))
             AS q(zone, ra_lo, ra_hi)
        CROSS JOIN LATERAL (
            SELECT s.{key}, s.ra, s.dec{extra}
            FROM {table} s
            WHERE s.zone = q.zone AND s.ra BETWEEN q.ra_lo AND q.ra_hi {condition}
            OFFSET 0  -- one index probe per box
        ) m
    """
