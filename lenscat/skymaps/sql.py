"""SQL text of the sky-map domain: ``lenscat.skymaps``, ``skymap_tiles``, ``skymap_matches`` (migration 0018)."""

from __future__ import annotations

SKYMAP_BY_NAME = """
    SELECT skymap_id, name, file_sha256, kind, nside, max_order, n_tiles, area_deg2, area50_deg2, area90_deg2
    FROM lenscat.skymaps WHERE name = :name
"""

SKYMAP_NAMES = "SELECT name FROM lenscat.skymaps ORDER BY name"

LIST_SKYMAPS = """
    SELECT name, kind, nside, max_order, n_tiles, area_deg2, area50_deg2, area90_deg2,
           meta ->> 'OBJECT' AS object, meta ->> 'DATE-OBS' AS date_obs, meta ->> 'INSTRUME' AS instrument,
           file_name, ingested_at
    FROM lenscat.skymaps ORDER BY name
"""

INSERT_SKYMAP = """
    INSERT INTO lenscat.skymaps (name, file_name, file_sha256, kind, nside, max_order, n_tiles, area_deg2,
                                 area50_deg2, area90_deg2, meta)
    VALUES (:name, :file_name, :sha, :kind, :nside, :max_order, :n_tiles, :area, :area50, :area90,
            CAST(:meta AS jsonb))
    ON CONFLICT (name) DO UPDATE
    SET file_name = EXCLUDED.file_name, file_sha256 = EXCLUDED.file_sha256, kind = EXCLUDED.kind,
        nside = EXCLUDED.nside, max_order = EXCLUDED.max_order, n_tiles = EXCLUDED.n_tiles,
        area_deg2 = EXCLUDED.area_deg2, area50_deg2 = EXCLUDED.area50_deg2, area90_deg2 = EXCLUDED.area90_deg2,
        meta = EXCLUDED.meta, ingested_at = now()
    RETURNING skymap_id
"""
"""Upsert of a map's row on its name (a replaced map keeps its id)."""

CLEAR_SKYMAP = [
    "DELETE FROM lenscat.skymap_tiles WHERE skymap_id = :sid",
    "DELETE FROM lenscat.skymap_matches WHERE skymap_id = :sid",
]
"""A replaced map's tiles and matches go (its matches were against the old region)."""

REGION_TILES = """
    SELECT lo, hi, probdensity, cumprob FROM lenscat.skymap_tiles
    WHERE skymap_id = :sid AND cumprob <= :credible
    ORDER BY lo
"""
"""The tiles of a credible region (``ix_skymap_tiles_level``), sorted by ``lo``."""

ALL_TILES = "SELECT lo, hi, probdensity, cumprob FROM lenscat.skymap_tiles WHERE skymap_id = :sid ORDER BY lo"

LITERATURE_NAMES = """
    SELECT l.lens_id, c.name || ':' || l.name
    FROM lenscat.literature_lenses l JOIN lenscat.literature_catalogs c ON c.catalog_id = l.catalog_id
    WHERE l.lens_id = ANY(CAST(:ids AS bigint[]))
"""

MATCH_STAGE = "lenscat_stage_skymap_matches"

MATCH_STAGE_DDL = f"""
    CREATE TEMP TABLE IF NOT EXISTS {MATCH_STAGE} (
        object_id bigint, ra double precision, dec double precision,
        probdensity double precision, cumprob double precision
    ) ON COMMIT DROP
"""

UPSERT_MATCHES = f"""
    WITH up AS (
        INSERT INTO lenscat.skymap_matches AS m
            (skymap_id, credible, target, object_id, ra, dec, probdensity, cumprob, selection)
        SELECT :sid, :credible, :target, object_id, ra, dec, probdensity, cumprob, :selection
        FROM {MATCH_STAGE}
        ON CONFLICT (skymap_id, credible, target, object_id) DO UPDATE
        SET ra = EXCLUDED.ra, dec = EXCLUDED.dec, probdensity = EXCLUDED.probdensity,
            cumprob = EXCLUDED.cumprob, selection = EXCLUDED.selection, matched_at = now()
        WHERE (m.ra, m.dec, m.probdensity, m.cumprob, m.selection)
              IS DISTINCT FROM (EXCLUDED.ra, EXCLUDED.dec, EXCLUDED.probdensity, EXCLUDED.cumprob, EXCLUDED.selection)
        RETURNING (xmax = 0) AS inserted
    )
    SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up
"""
"""One upsert of the staged matches; rows already stored with the same values are left alone."""

LITERATURE_FILTER = "AND s.catalog_id = :cid"
