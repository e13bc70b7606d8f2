"""Catalogue schema: extensions, surveys, sources, ingests, literature lenses, cross-matches.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Design notes
------------
* Base tables live in schema ``lenscat``; the documented user-facing views live in ``public``.
* Sky index: declination *zones* (Gray, Szalay et al. 2006). ``zone = floor((dec + 90) * 60)``
  (1 arcmin high) is a stored generated column, and a btree on ``(zone, ra)`` serves cone searches
  and cross-matches as a handful of index range scans per position, followed by an exact
  great-circle separation. It needs no extension, works on any PostgreSQL >= 15 and is
  partition-friendly: at 10^9 rows, ``PARTITION BY RANGE (zone)`` splits the sky into dec stripes.
* All keys are bigint where rows can reach 10^9.
* ``lenscat.sources`` carries no foreign keys: at 10^9 rows a per-row FK trigger costs a third of
  the bulk-load time. The loader writes survey, cutout-file and ingest rows in the same
  transaction as the sources that reference them, and nothing deletes those rows. For the same
  reason ``lenscat.crossmatches.source_id`` has no foreign key (sources are never deleted).
"""

from __future__ import annotations

from alembic import op

from lenscat.migrations.comments import apply_comments

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ZONE_EXPR = "(floor((dec + 90.0) * 60.0))::integer"

COMMENTS: dict[str, dict[str, str]] = {
    "lenscat.surveys": {
        "": "Imaging or spectroscopic surveys whose sources are catalogued.",
        "survey_id": "Primary key.",
        "name": "Short unique survey name, e.g. 'decals-dr9' (no unit).",
        "bands": "Photometric band names, in the order of the per-band arrays in sources (no unit).",
        "pixel_scale_arcsec": "Pixel scale of the survey's cutouts [arcsec/pixel].",
        "description": "Free-text description (no unit).",
        "created_at": "When the survey row was created [UTC timestamp].",
    },
    "lenscat.cutout_files": {
        "": "Image files that hold cutouts (Stein-layout HDF5, FITS cutouts).",
        "file_id": "Primary key.",
        "path": "Absolute path of the file (no unit).",
        "format": "File format: 'hdf5-stein' or 'fits' (no unit).",
        "sha256": "SHA-256 of the file contents at registration (hex).",
        "n_images": "Number of cutouts in the file [count].",
        "image_shape": "Shape of one cutout (bands, height, width) [pixels].",
        "created_at": "When the file was registered [UTC timestamp].",
    },
    "lenscat.ingests": {
        "": "One row per ingest of a file (sources or a literature list); resumable by batches.",
        "ingest_id": "Primary key.",
        "kind": "'sources' or 'literature' (no unit).",
        "target": "Survey name (sources) or catalogue name (literature) (no unit).",
        "path": "Absolute path of the ingested file (no unit).",
        "sha256": "SHA-256 of the file contents (hex).",
        "size_bytes": "File size [bytes].",
        "options": "Column mapping and options used (JSON, no unit).",
        "options_sha256": "SHA-256 of the canonical JSON options (hex).",
        "n_rows": "Data rows in the file [count].",
        "n_loaded": "Rows written (inserted or updated or unchanged) [count].",
        "n_rejected": "Rows rejected, with reasons in ingest_rejects [count].",
        "n_batches": "Number of all-or-nothing batches [count].",
        "status": "'running', 'done' or 'failed' (no unit).",
        "message": "Last error message when status is 'failed' (no unit).",
        "started_at": "Start of the first attempt [UTC timestamp].",
        "finished_at": "End of the successful attempt [UTC timestamp].",
    },
    "lenscat.ingest_batches": {
        "": "Committed batches of an ingest: a re-run skips these, so an interrupted ingest resumes.",
        "ingest_id": "Ingest this batch belongs to.",
        "batch_no": "0-based batch number within the file (no unit).",
        "row_start": "First data row of the batch, 1-based [row].",
        "row_stop": "Last data row of the batch, 1-based, inclusive [row].",
        "n_inserted": "New rows written [count].",
        "n_updated": "Existing rows whose values changed [count].",
        "n_unchanged": "Existing rows left as they were [count].",
        "n_rejected": "Rows of the batch rejected [count].",
        "done_at": "When the batch committed [UTC timestamp].",
    },
    "lenscat.ingest_rejects": {
        "": "Rows refused by an ingest, with the reason; nothing is dropped silently.",
        "reject_id": "Primary key.",
        "ingest_id": "Ingest that refused the row.",
        "row_number": "1-based data row in the file (header lines not counted) [row].",
        "column_name": "Column of the file that failed (no unit).",
        "value": "The offending value as text (no unit).",
        "reason": "Why the row was refused (no unit).",
    },
    "lenscat.sources": {
        "": "The source catalogue: one row per survey object.",
        "source_id": "Primary key (bigint, for 10^9 rows).",
        "survey_id": "Survey the object belongs to.",
        "objid": "Survey object id, unique within the survey (text, e.g. '331017_2146' = brickid_objid).",
        "ra": "Right ascension, ICRS [deg], 0 <= ra < 360.",
        "dec": "Declination, ICRS [deg], -90 <= dec <= 90.",
        "zone": "Sky-index zone: floor((dec + 90) * 60), 1 arcmin dec stripes (no unit).",
        "mag": "AB magnitudes per survey band, in surveys.bands order [mag].",
        "mag_err": "1-sigma AB magnitude errors per band [mag].",
        "flux": "Fluxes per band [nanomaggies] (22.5 AB zero point).",
        "flux_ivar": "Inverse variance of flux per band [nanomaggies^-2].",
        "ebv": "Galactic reddening E(B-V) (SFD) [mag].",
        "source_type": "Morphological type from the survey pipeline, e.g. PSF/REX/DEV/EXP/SER (no unit).",
        "z_spec": "Spectroscopic redshift [dimensionless]; NULL when none.",
        "z_phot": "Photometric redshift, mean or median [dimensionless].",
        "z_phot_l68": "Lower 68% bound of the photometric redshift [dimensionless].",
        "z_phot_u68": "Upper 68% bound of the photometric redshift [dimensionless].",
        "cutout_file_id": "File holding this source's cutout, if any.",
        "cutout_row": "0-based index of the cutout in that file (row of the images dataset) [row].",
        "extra": "Further catalogue columns kept on request (JSON, units as in the input file).",
        "ingest_id": "Ingest that last wrote the row.",
        "created_at": "When the row was first written [UTC timestamp].",
        "updated_at": "When the row's values last changed [UTC timestamp].",
    },
    "lenscat.literature_catalogs": {
        "": "Published lens lists (one row per ingested catalogue).",
        "catalog_id": "Primary key.",
        "name": "Unique catalogue name chosen at ingest (no unit).",
        "citation": "Bibliographic reference (no unit).",
        "path": "Path of the ingested file (no unit).",
        "sha256": "SHA-256 of the ingested file (hex).",
        "format": "Recognised layout: 'lenscat', 'stein2021', 'sled' or 'generic' (no unit).",
        "n_lenses": "Rows in the catalogue [count].",
        "ingested_at": "When the current version was ingested [UTC timestamp].",
    },
    "lenscat.literature_lenses": {
        "": "Lenses and lens candidates from literature catalogues.",
        "lens_id": "Primary key.",
        "catalog_id": "Catalogue the row comes from.",
        "row_number": "1-based data row in the catalogue file (natural key with catalog_id) [row].",
        "name": "Name as published; an IAU-style J-name from the position when the file has none (no unit).",
        "ra": "Right ascension, ICRS [deg].",
        "dec": "Declination, ICRS [deg].",
        "zone": "Sky-index zone: floor((dec + 90) * 60) (no unit).",
        "grade": "Grade or confidence as published, e.g. A/B/C or confident/probable (no unit).",
        "z_lens": "Lens (deflector) redshift [dimensionless]; first value when several are given.",
        "z_source": "Source redshift [dimensionless]; first value when several are given.",
        "lens_type": "Type of the deflector, e.g. galaxy/group/cluster (no unit).",
        "source_type": "Type of the lensed source, e.g. galaxy/quasar/SN (no unit).",
        "refs": "References for the system (no unit).",
        "raw": "The catalogue row exactly as read (JSON, units as in the file).",
    },
    "lenscat.crossmatches": {
        "": "Sky cross-match of literature lenses with catalogue sources.",
        "lens_id": "Literature lens.",
        "source_id": "Catalogue source within the match radius.",
        "separation_arcsec": "Exact great-circle separation [arcsec].",
        "is_nearest": "True for the nearest source within the radius (the lens's match); others are neighbours.",
        "rank": "1 = nearest, 2 = second nearest, ... (no unit).",
        "radius_arcsec": "Match radius used [arcsec].",
        "matched_at": "When the cross-match ran [UTC timestamp].",
    },
    "lenscat.crossmatch_runs": {
        "": "The last cross-match of each catalogue: radius, scope and counts.",
        "catalog_id": "Literature catalogue.",
        "radius_arcsec": "Match radius [arcsec].",
        "surveys": "Survey names searched; empty means all (no unit).",
        "n_lenses": "Lenses in the catalogue [count].",
        "n_matched": "Lenses with at least one source within the radius [count].",
        "n_pairs": "Lens-source pairs within the radius [count].",
        "ran_at": "When the cross-match ran [UTC timestamp].",
    },
}

VIEW_COMMENTS: dict[str, dict[str, str]] = {
    "public.sources": {
        "": "Catalogue sources with survey name and per-band magnitudes (documented user view).",
        "source_id": "Source primary key.",
        "survey": "Survey name.",
        "objid": "Survey object id (unique within survey).",
        "ra": "Right ascension, ICRS [deg].",
        "dec": "Declination, ICRS [deg].",
        "mag_g": "AB magnitude in g [mag] (NULL when the survey has no g band).",
        "mag_r": "AB magnitude in r [mag].",
        "mag_i": "AB magnitude in i [mag].",
        "mag_z": "AB magnitude in z [mag].",
        "mag_y": "AB magnitude in y [mag].",
        "bands": "Band names of the mag/flux arrays.",
        "mag": "AB magnitudes per band [mag].",
        "flux": "Fluxes per band [nanomaggies].",
        "ebv": "Galactic E(B-V) [mag].",
        "source_type": "Morphological type.",
        "z_spec": "Spectroscopic redshift.",
        "z_phot": "Photometric redshift.",
        "cutout_file": "Path of the file holding the cutout.",
        "cutout_row": "0-based index of the cutout in the file.",
    },
    "public.literature_lenses": {
        "": "Literature lenses with their catalogue name (documented user view).",
        "lens_id": "Lens primary key.",
        "catalog": "Catalogue name.",
        "name": "Published name.",
        "ra": "Right ascension, ICRS [deg].",
        "dec": "Declination, ICRS [deg].",
        "grade": "Published grade or confidence.",
        "z_lens": "Lens redshift.",
        "z_source": "Source redshift.",
    },
    "public.crossmatches": {
        "": "Lens-source pairs within the match radius; is_nearest marks each lens's match (documented user view).",
        "lens_id": "Literature lens.",
        "source_id": "Catalogue source.",
        "separation_arcsec": "Great-circle separation [arcsec].",
        "is_nearest": "True for the lens's nearest source (its match).",
        "catalog": "Catalogue of the lens.",
    },
}


def upgrade() -> None:
    # Extensions first. pgvector serves the embedding tables of later revisions; the sky index
    # below needs no extension.
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute("CREATE SCHEMA IF NOT EXISTS lenscat")

    op.execute(
        """
        CREATE TABLE lenscat.surveys (
            survey_id smallint GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_surveys PRIMARY KEY,
            name text NOT NULL CONSTRAINT uq_surveys_name UNIQUE,
            bands text[] NOT NULL DEFAULT '{}',
            pixel_scale_arcsec real,
            description text,
            created_at timestamptz NOT NULL DEFAULT now()
        )"""
    )
    op.execute(
        """
        CREATE TABLE lenscat.cutout_files (
            file_id integer GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_cutout_files PRIMARY KEY,
            path text NOT NULL CONSTRAINT uq_cutout_files_path UNIQUE,
            format text NOT NULL CONSTRAINT ck_cutout_files_format CHECK (format IN ('hdf5-stein', 'fits')),
            sha256 text,
            n_images bigint,
            image_shape integer[],
            created_at timestamptz NOT NULL DEFAULT now()
        )"""
    )
    op.execute(
        """
        CREATE TABLE lenscat.ingests (
            ingest_id integer GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_ingests PRIMARY KEY,
            kind text NOT NULL CONSTRAINT ck_ingests_kind CHECK (kind IN ('sources', 'literature')),
            target text NOT NULL,
            path text NOT NULL,
            sha256 text NOT NULL,
            size_bytes bigint NOT NULL,
            options jsonb NOT NULL DEFAULT '{}',
            options_sha256 text NOT NULL,
            n_rows bigint,
            n_loaded bigint NOT NULL DEFAULT 0,
            n_rejected bigint NOT NULL DEFAULT 0,
            n_batches integer,
            status text NOT NULL DEFAULT 'running'
                CONSTRAINT ck_ingests_status CHECK (status IN ('running', 'done', 'failed')),
            message text,
            started_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            CONSTRAINT uq_ingests_kind_target_file UNIQUE (kind, target, sha256, options_sha256)
        )"""
    )
    op.execute(
        """
        CREATE TABLE lenscat.ingest_batches (
            ingest_id integer NOT NULL
                CONSTRAINT fk_ingest_batches_ingest REFERENCES lenscat.ingests ON DELETE CASCADE,
            batch_no integer NOT NULL,
            row_start bigint NOT NULL,
            row_stop bigint NOT NULL,
            n_inserted bigint NOT NULL DEFAULT 0,
            n_updated bigint NOT NULL DEFAULT 0,
            n_unchanged bigint NOT NULL DEFAULT 0,
            n_rejected bigint NOT NULL DEFAULT 0,
            done_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_ingest_batches PRIMARY KEY (ingest_id, batch_no)
        )"""
    )
    op.execute(
        """
        CREATE TABLE lenscat.ingest_rejects (
            reject_id bigint GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_ingest_rejects PRIMARY KEY,
            ingest_id integer NOT NULL
                CONSTRAINT fk_ingest_rejects_ingest REFERENCES lenscat.ingests ON DELETE CASCADE,
            row_number bigint NOT NULL,
            column_name text NOT NULL,
            value text,
            reason text NOT NULL,
            CONSTRAINT uq_ingest_rejects_row UNIQUE (ingest_id, row_number, column_name)
        )"""
    )
    op.execute(
        f"""
        CREATE TABLE lenscat.sources (
            source_id bigint GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_sources PRIMARY KEY,
            survey_id smallint NOT NULL,
            objid text NOT NULL,
            ra double precision NOT NULL CONSTRAINT ck_sources_ra CHECK (ra >= 0 AND ra < 360),
            dec double precision NOT NULL CONSTRAINT ck_sources_dec CHECK (dec BETWEEN -90 AND 90),
            zone integer GENERATED ALWAYS AS ({ZONE_EXPR}) STORED,
            mag real[],
            mag_err real[],
            flux real[],
            flux_ivar real[],
            ebv real,
            source_type text,
            z_spec real,
            z_phot real,
            z_phot_l68 real,
            z_phot_u68 real,
            cutout_file_id integer,
            cutout_row integer,
            extra jsonb,
            ingest_id integer,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT uq_sources_survey_objid UNIQUE (survey_id, objid)
        )"""
    )
    op.execute("CREATE INDEX ix_sources_zone_ra ON lenscat.sources (zone, ra)")
    op.execute(
        """
        CREATE TABLE lenscat.literature_catalogs (
            catalog_id integer GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_literature_catalogs PRIMARY KEY,
            name text NOT NULL CONSTRAINT uq_literature_catalogs_name UNIQUE,
            citation text,
            path text NOT NULL,
            sha256 text NOT NULL,
            format text NOT NULL,
            n_lenses integer NOT NULL DEFAULT 0,
            ingested_at timestamptz NOT NULL DEFAULT now()
        )"""
    )
    op.execute(
        f"""
        CREATE TABLE lenscat.literature_lenses (
            lens_id bigint GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_literature_lenses PRIMARY KEY,
            catalog_id integer NOT NULL
                CONSTRAINT fk_literature_lenses_catalog REFERENCES lenscat.literature_catalogs ON DELETE CASCADE,
            row_number integer NOT NULL,
            name text NOT NULL,
            ra double precision NOT NULL CONSTRAINT ck_literature_lenses_ra CHECK (ra >= 0 AND ra < 360),
            dec double precision NOT NULL CONSTRAINT ck_literature_lenses_dec CHECK (dec BETWEEN -90 AND 90),
            zone integer GENERATED ALWAYS AS ({ZONE_EXPR}) STORED,
            grade text,
            z_lens real,
            z_source real,
            lens_type text,
            source_type text,
            refs text[],
            raw jsonb NOT NULL,
            CONSTRAINT uq_literature_lenses_catalog_row UNIQUE (catalog_id, row_number)
        )"""
    )
    op.execute("CREATE INDEX ix_literature_lenses_zone_ra ON lenscat.literature_lenses (zone, ra)")
    op.execute("CREATE INDEX ix_literature_lenses_name ON lenscat.literature_lenses (name)")
    op.execute(
        """
        CREATE TABLE lenscat.crossmatches (
            lens_id bigint NOT NULL
                CONSTRAINT fk_crossmatches_lens REFERENCES lenscat.literature_lenses ON DELETE CASCADE,
            source_id bigint NOT NULL,
            separation_arcsec double precision NOT NULL,
            is_nearest boolean NOT NULL,
            rank integer NOT NULL,
            radius_arcsec double precision NOT NULL,
            matched_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_crossmatches PRIMARY KEY (lens_id, source_id)
        )"""
    )
    op.execute("CREATE INDEX ix_crossmatches_source ON lenscat.crossmatches (source_id)")
    op.execute("CREATE UNIQUE INDEX uq_crossmatches_nearest ON lenscat.crossmatches (lens_id) WHERE is_nearest")
    op.execute(
        """
        CREATE TABLE lenscat.crossmatch_runs (
            catalog_id integer CONSTRAINT pk_crossmatch_runs PRIMARY KEY
                CONSTRAINT fk_crossmatch_runs_catalog REFERENCES lenscat.literature_catalogs ON DELETE CASCADE,
            radius_arcsec double precision NOT NULL,
            surveys text[] NOT NULL DEFAULT '{}',
            n_lenses integer NOT NULL,
            n_matched integer NOT NULL,
            n_pairs integer NOT NULL,
            ran_at timestamptz NOT NULL DEFAULT now()
        )"""
    )

    # --- SQL functions (public: callable from `lenscat sql`) ---------------------------------
    op.execute(
        f"""
        CREATE FUNCTION public.lenscat_zone(dec_deg double precision) RETURNS integer
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        RETURN {ZONE_EXPR.replace("dec", "dec_deg")}"""
    )
    op.execute(
        """
        CREATE FUNCTION public.lenscat_angsep(
            ra1 double precision, dec1 double precision, ra2 double precision, dec2 double precision
        ) RETURNS double precision
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        RETURN degrees(atan2(
            sqrt((cosd(dec2) * sind(ra2 - ra1)) ^ 2
                 + (cosd(dec1) * sind(dec2) - sind(dec1) * cosd(dec2) * cosd(ra2 - ra1)) ^ 2),
            sind(dec1) * sind(dec2) + cosd(dec1) * cosd(dec2) * cosd(ra2 - ra1)))"""
    )
    op.execute(
        "COMMENT ON FUNCTION public.lenscat_angsep("
        "double precision, double precision, double precision, double precision) "
        "IS 'Great-circle separation (Vincenty formula) between two ICRS positions given in degrees; returns degrees.'"
    )
    # Zone/RA ranges covering a cone: the ra half-width of a circle of radius r at dec is
    # asin(sin r / cos dec); ranges that cross ra = 0/360 are split in two. Not STRICT, so the
    # planner inlines it into a cross-match (a STRICT set-returning SQL function is not inlined).
    op.execute(
        """
        CREATE FUNCTION public.lenscat_sky_ranges(
            ra_deg double precision, dec_deg double precision, radius_deg double precision
        ) RETURNS TABLE (zone integer, ra_lo double precision, ra_hi double precision)
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        AS $$
            SELECT z.zone, v.lo, v.hi
            FROM (SELECT CASE WHEN abs(dec_deg) + radius_deg >= 89.9999
                              THEN 180.0
                              ELSE degrees(asin(least(1.0, sind(radius_deg) / cosd(dec_deg)))) * (1 + 1e-9) + 1e-12
                         END AS alpha
                  OFFSET 0) a  -- evaluate alpha once per cone, not once per use
            CROSS JOIN LATERAL (VALUES
                (CASE WHEN a.alpha >= 180 THEN 0.0 ELSE greatest(ra_deg - a.alpha, 0.0) END,
                 CASE WHEN a.alpha >= 180 THEN 360.0 ELSE least(ra_deg + a.alpha, 360.0) END),
                (CASE WHEN a.alpha < 180 AND ra_deg - a.alpha < 0 THEN ra_deg - a.alpha + 360.0 END, 360.0),
                (0.0, CASE WHEN a.alpha < 180 AND ra_deg + a.alpha >= 360 THEN ra_deg + a.alpha - 360.0 END)
            ) v(lo, hi)
            CROSS JOIN LATERAL generate_series(
                public.lenscat_zone(greatest(dec_deg - radius_deg, -90.0)),
                public.lenscat_zone(least(dec_deg + radius_deg, 90.0))) AS z(zone)
            WHERE v.lo IS NOT NULL AND v.hi IS NOT NULL
        $$"""
    )
    op.execute(
        "COMMENT ON FUNCTION public.lenscat_sky_ranges(double precision, double precision, double precision) "
        "IS 'Sky-index (zone, ra_lo, ra_hi) ranges covering a cone; inputs in degrees.'"
    )

    # --- documented user views ----------------------------------------------------------------
    op.execute(
        """
        CREATE VIEW public.sources AS
        SELECT s.source_id, v.name AS survey, s.objid, s.ra, s.dec,
               s.mag[array_position(v.bands, 'g')] AS mag_g,
               s.mag[array_position(v.bands, 'r')] AS mag_r,
               s.mag[array_position(v.bands, 'i')] AS mag_i,
               s.mag[array_position(v.bands, 'z')] AS mag_z,
               s.mag[array_position(v.bands, 'y')] AS mag_y,
               v.bands, s.mag, s.mag_err, s.flux, s.flux_ivar, s.ebv, s.source_type,
               s.z_spec, s.z_phot, s.z_phot_l68, s.z_phot_u68,
               f.path AS cutout_file, s.cutout_row, s.extra, s.created_at, s.updated_at
        FROM lenscat.sources s
        JOIN lenscat.surveys v USING (survey_id)
        LEFT JOIN lenscat.cutout_files f ON f.file_id = s.cutout_file_id"""
    )
    op.execute(
        """
        CREATE VIEW public.surveys AS
        SELECT v.survey_id, v.name AS survey, v.bands, v.pixel_scale_arcsec, v.description,
               v.created_at
        FROM lenscat.surveys v"""
    )
    op.execute(
        """
        CREATE VIEW public.literature_catalogs AS
        SELECT c.catalog_id, c.name AS catalog, c.citation, c.format, c.n_lenses, c.path, c.sha256,
               c.ingested_at
        FROM lenscat.literature_catalogs c"""
    )
    op.execute(
        """
        CREATE VIEW public.literature_lenses AS
        SELECT l.lens_id, c.name AS catalog, l.name, l.ra, l.dec, l.grade, l.z_lens, l.z_source,
               l.lens_type, l.source_type, l.refs, l.row_number, l.raw
        FROM lenscat.literature_lenses l
        JOIN lenscat.literature_catalogs c USING (catalog_id)"""
    )
    op.execute(
        """
        CREATE VIEW public.crossmatches AS
        SELECT x.lens_id, x.source_id, x.separation_arcsec, x.is_nearest, x.rank,
               c.name AS catalog, l.name AS lens_name, v.name AS survey, s.objid,
               x.radius_arcsec, x.matched_at
        FROM lenscat.crossmatches x
        JOIN lenscat.literature_lenses l USING (lens_id)
        JOIN lenscat.literature_catalogs c USING (catalog_id)
        JOIN lenscat.sources s USING (source_id)
        JOIN lenscat.surveys v ON v.survey_id = s.survey_id"""
    )
    op.execute(
        """
        CREATE VIEW public.ingests AS
        SELECT i.ingest_id, i.kind, i.target, i.path, i.sha256, i.status, i.n_rows, i.n_loaded,
               i.n_rejected, i.n_batches,
               (SELECT count(*) FROM lenscat.ingest_batches b WHERE b.ingest_id = i.ingest_id) AS batches_done,
               i.started_at, i.finished_at, i.message
        FROM lenscat.ingests i"""
    )
    op.execute(
        """
        CREATE VIEW public.ingest_rejects AS
        SELECT r.ingest_id, i.path, i.target, r.row_number, r.column_name, r.value, r.reason
        FROM lenscat.ingest_rejects r JOIN lenscat.ingests i USING (ingest_id)"""
    )
    # SQL-callable cone search over the sources view's table (uses ix_sources_zone_ra).
    op.execute(
        """
        CREATE FUNCTION public.cone_search("""
        """ra_deg double precision, dec_deg double precision, radius_arcsec double precision)
        RETURNS TABLE (source_id bigint, separation_arcsec double precision)
        LANGUAGE sql STABLE STRICT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, public
        AS $$
            SELECT s.source_id, public.lenscat_angsep(ra_deg, dec_deg, s.ra, s.dec) * 3600.0
            FROM public.lenscat_sky_ranges(ra_deg, dec_deg, radius_arcsec / 3600.0) r
            JOIN lenscat.sources s ON s.zone = r.zone AND s.ra BETWEEN r.ra_lo AND r.ra_hi
            WHERE public.lenscat_angsep(ra_deg, dec_deg, s.ra, s.dec) * 3600.0 <= radius_arcsec
            ORDER BY 2
        $$"""
    )
    op.execute(
        "COMMENT ON FUNCTION public.cone_search(double precision, double precision, double precision) "
        "IS 'Sources within radius_arcsec of (ra, dec) [deg], nearest first; join the sources view on source_id.'"
    )

    apply_comments(op, COMMENTS, VIEW_COMMENTS)

    # --- read-only role for `lenscat sql` ------------------------------------------------------
    # Created when the migrating user may create roles (the embedded server: superuser). On a
    # managed server without that right, point LENSCAT_READONLY_DATABASE_URL at a SELECT-only login.
    op.execute(
        """
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lenscat_reader') THEN
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user
                           AND (rolsuper OR rolcreaterole)) THEN
                    CREATE ROLE lenscat_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
                END IF;
            END IF;
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lenscat_reader') THEN
                GRANT USAGE ON SCHEMA public TO lenscat_reader;
                GRANT SELECT ON ALL TABLES IN SCHEMA public TO lenscat_reader;
                ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO lenscat_reader;
            END IF;
        END
        $$"""
    )


def downgrade() -> None:
    for view in (
        "ingest_rejects",
        "ingests",
        "crossmatches",
        "literature_lenses",
        "literature_catalogs",
        "surveys",
        "sources",
    ):
        op.execute(f"DROP VIEW IF EXISTS public.{view}")
    op.execute("DROP FUNCTION IF EXISTS public.cone_search(double precision, double precision, double precision)")
    op.execute(
        "DROP FUNCTION IF EXISTS public.lenscat_sky_ranges(double precision, double precision, double precision)"
    )
    op.execute(
        "DROP FUNCTION IF EXISTS public.lenscat_angsep("
        "double precision, double precision, double precision, double precision)"
    )
    op.execute("DROP FUNCTION IF EXISTS public.lenscat_zone(double precision)")
    for table in (
        "crossmatch_runs",
        "crossmatches",
        "literature_lenses",
        "literature_catalogs",
        "sources",
        "ingest_rejects",
        "ingest_batches",
        "ingests",
        "cutout_files",
        "surveys",
    ):
        op.execute(f"DROP TABLE IF EXISTS lenscat.{table}")
