"""Sky maps: localisation maps (HEALPix, multi-order) and MOCs as order-29 tiles, and their matches.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07

Design notes
------------
* A map is stored as *tiles*: disjoint half-open ranges ``[lo, hi)`` of NESTED HEALPix indices at
  order 29 (``nside = 2**29``), as skyportal's healpix-alchemy does, so flat maps of any NSIDE,
  multi-order maps and MOCs share one form; neighbouring cells of equal density are one tile.
  A cell of order ``k`` and index ``i`` is ``[i * 4**(29-k), (i+1) * 4**(29-k))``; a tile's solid
  angle is ``(hi - lo) * 4 pi / (12 * 4**29)`` sr.
* ``cumprob`` is the tile's credible level: tiles ranked by decreasing density, the cumulative
  probability down to and including the last tile of its density (ties share a level). The
  credible region of level c is ``cumprob <= c`` (``ix_skymap_tiles_level``). A MOC has no
  probability: its density is uniform, every tile has level 1, and a match takes the whole MOC.
* Matches (``lenscat.skymap_matches``) are idempotent on (map, level, target kind, object id); a
  replaced map loses its tiles and matches (the service deletes them).
"""

from __future__ import annotations

from alembic import op

from lenscat.migrations.comments import apply_comments, grant_reader

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

COMMENTS: dict[str, dict[str, str]] = {
    "lenscat.skymaps": {
        "": "Sky maps: gravitational-wave / GRB localisation maps and MOCs, read from FITS files.",
        "skymap_id": "Identifier of the map.",
        "name": "Name given at ingest (e.g. the event name), unique.",
        "file_name": "Name of the file read (no unit).",
        "file_sha256": "SHA-256 of the file read; a re-ingest of the same file under the same name is a no-op.",
        "kind": "flat (HEALPix map), multiorder (NUNIQ map) or moc (no probability).",
        "nside": "NSIDE of a flat map (NULL for multi-order maps and MOCs) (no unit).",
        "max_order": "Finest HEALPix order of the map's cells (no unit).",
        "n_tiles": "Number of stored tiles (no unit).",
        "area_deg2": "Solid angle of all tiles [deg^2].",
        "area50_deg2": "Solid angle of the 50 % credible region (NULL for a MOC) [deg^2].",
        "area90_deg2": "Solid angle of the 90 % credible region (NULL for a MOC) [deg^2].",
        "meta": "Header metadata (OBJECT, DATE-OBS, INSTRUME, ...), ORDERING, COORDSYS and the column read (JSON).",
        "ingested_at": "When the map was (last) written [UTC timestamp].",
    },
    "lenscat.skymap_tiles": {
        "": "Tiles of a sky map: NESTED HEALPix ranges [lo, hi) at order 29 with density and credible level.",
        "skymap_id": "The map (lenscat.skymaps).",
        "lo": "First order-29 NESTED pixel index of the tile (inclusive) (no unit).",
        "hi": "Order-29 NESTED pixel index after the tile's last (exclusive) (no unit).",
        "probdensity": "Probability density [sr^-1] (a MOC: 1 / its solid angle).",
        "cumprob": "Credible level: probability of all tiles at least as dense (dimensionless, 0-1].",
    },
    "lenscat.skymap_matches": {
        "": "Objects inside the credible region of a sky map, with the map's density and credible level there.",
        "skymap_id": "The map (lenscat.skymaps).",
        "credible": "Credible level of the region searched (dimensionless, 0-1].",
        "target": "What was matched: source, literature (lens) or candidate (graded source).",
        "object_id": "source_id (source, candidate) or lens_id (literature).",
        "ra": "Right ascension (ICRS) [deg].",
        "dec": "Declination (ICRS) [deg].",
        "probdensity": "Probability density of the map at the position [sr^-1].",
        "cumprob": "Credible level at the position (dimensionless, 0-1].",
        "selection": "Which objects were searched (surveys, literature catalogue, grades); empty: all (no unit).",
        "matched_at": "When the row was (last) written [UTC timestamp].",
    },
}

VIEW_COMMENTS: dict[str, dict[str, str]] = {
    "public.skymaps": {
        "": "Stored sky maps with their credible-region areas and header metadata.",
        "object": "OBJECT header card (the event), if any (no unit).",
        "date_obs": "DATE-OBS header card, if any (no unit).",
        "instrument": "INSTRUME header card, if any (no unit).",
    },
    "public.skymap_matches": {
        "": "Sources, literature lenses and candidates inside sky maps' credible regions, most probable first.",
        "skymap": "Name of the sky map (no unit).",
        "credible": "Credible level of the region searched (dimensionless, 0-1].",
        "target": "source, literature or candidate (no unit).",
        "object_id": "source_id (source, candidate) or lens_id (literature).",
        "object_name": "survey:objid of a source, catalogue:name of a literature lens (no unit).",
        "ra": "Right ascension (ICRS) [deg].",
        "dec": "Declination (ICRS) [deg].",
        "probdensity": "Probability density of the map at the position [sr^-1].",
        "probdensity_deg2": "Probability density of the map at the position [deg^-2].",
        "cumprob": "Credible level at the position: the smallest credible region containing it (dimensionless).",
        "selection": "Which objects were searched; empty: all (no unit).",
        "matched_at": "When the row was (last) written [UTC timestamp].",
    },
}


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE lenscat.skymaps (
            skymap_id integer GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_skymaps PRIMARY KEY,
            name text NOT NULL CONSTRAINT uq_skymaps_name UNIQUE,
            file_name text NOT NULL,
            file_sha256 text NOT NULL,
            kind text NOT NULL CONSTRAINT ck_skymaps_kind CHECK (kind IN ('flat', 'multiorder', 'moc')),
            nside integer,
            max_order smallint NOT NULL CONSTRAINT ck_skymaps_max_order CHECK (max_order BETWEEN 0 AND 29),
            n_tiles integer NOT NULL,
            area_deg2 double precision NOT NULL,
            area50_deg2 double precision,
            area90_deg2 double precision,
            meta jsonb NOT NULL DEFAULT '{}',
            ingested_at timestamptz NOT NULL DEFAULT now()
        )"""
    )
    op.execute(
        """
        CREATE TABLE lenscat.skymap_tiles (
            skymap_id integer NOT NULL
                CONSTRAINT fk_skymap_tiles_skymap REFERENCES lenscat.skymaps ON DELETE CASCADE,
            lo bigint NOT NULL,
            hi bigint NOT NULL,
            probdensity double precision NOT NULL CONSTRAINT ck_skymap_tiles_density CHECK (probdensity >= 0),
            cumprob double precision NOT NULL CONSTRAINT ck_skymap_tiles_cumprob CHECK (cumprob BETWEEN 0 AND 1),
            CONSTRAINT ck_skymap_tiles_range CHECK (0 <= lo AND lo < hi AND hi <= 3458764513820540928),
            CONSTRAINT pk_skymap_tiles PRIMARY KEY (skymap_id, lo)
        )"""
    )
    op.execute("CREATE INDEX ix_skymap_tiles_level ON lenscat.skymap_tiles (skymap_id, cumprob)")
    op.execute(
        """
        CREATE TABLE lenscat.skymap_matches (
            skymap_id integer NOT NULL
                CONSTRAINT fk_skymap_matches_skymap REFERENCES lenscat.skymaps ON DELETE CASCADE,
            credible double precision NOT NULL
                CONSTRAINT ck_skymap_matches_credible CHECK (credible > 0 AND credible <= 1),
            target text NOT NULL
                CONSTRAINT ck_skymap_matches_target CHECK (target IN ('source', 'literature', 'candidate')),
            object_id bigint NOT NULL,
            ra double precision NOT NULL,
            dec double precision NOT NULL,
            probdensity double precision NOT NULL,
            cumprob double precision NOT NULL,
            selection text NOT NULL DEFAULT '',
            matched_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_skymap_matches PRIMARY KEY (skymap_id, credible, target, object_id)
        )"""
    )
    op.execute(
        """
        CREATE VIEW public.skymaps AS
        SELECT skymap_id, name, kind, nside, max_order, n_tiles, area_deg2, area50_deg2, area90_deg2,
               meta ->> 'OBJECT' AS object, meta ->> 'DATE-OBS' AS date_obs, meta ->> 'INSTRUME' AS instrument,
               meta, file_name, file_sha256, ingested_at
        FROM lenscat.skymaps"""
    )
    op.execute(
        """
        CREATE VIEW public.skymap_matches AS
        SELECT k.name AS skymap, m.credible, m.target, m.object_id,
               CASE WHEN m.target = 'literature' THEN c.name || ':' || l.name
                    ELSE v.name || ':' || s.objid END AS object_name,
               m.ra, m.dec, m.probdensity, m.probdensity * (pi() / 180.0) ^ 2 AS probdensity_deg2,
               m.cumprob, m.selection, m.matched_at
        FROM lenscat.skymap_matches m
        JOIN lenscat.skymaps k ON k.skymap_id = m.skymap_id
        LEFT JOIN lenscat.sources s ON m.target <> 'literature' AND s.source_id = m.object_id
        LEFT JOIN lenscat.surveys v ON v.survey_id = s.survey_id
        LEFT JOIN lenscat.literature_lenses l ON m.target = 'literature' AND l.lens_id = m.object_id
        LEFT JOIN lenscat.literature_catalogs c ON c.catalog_id = l.catalog_id"""
    )
    apply_comments(op, COMMENTS, VIEW_COMMENTS)
    grant_reader(op, ["public.skymaps", "public.skymap_matches"])


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS public.skymap_matches")
    op.execute("DROP VIEW IF EXISTS public.skymaps")
    op.execute("DROP TABLE IF EXISTS lenscat.skymap_matches")
    op.execute("DROP TABLE IF EXISTS lenscat.skymap_tiles")
    op.execute("DROP TABLE IF EXISTS lenscat.skymaps")
