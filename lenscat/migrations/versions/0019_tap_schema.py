"""TAP service: the TAP_SCHEMA views and the cone functions ADQL geometry is translated onto.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07

Design notes
------------
* ``tap_schema`` (IVOA TAP 1.1 section 4) holds five views, ``schemas``, ``tables``, ``columns``,
  ``keys`` and ``key_columns``, computed from the catalogue (``pg_class``, ``pg_attribute``,
  ``pg_description``) over the documented public views the TAP service publishes (``TAP_VIEWS``)
  and the five views themselves. Nothing is copied: a view added or commented by a later migration
  shows up as soon as it is in ``TAP_VIEWS`` of a later revision of these views, and a view that
  does not exist (yet) is simply absent.
* Units come from the column comments' convention (a trailing ``[unit]``; ``(no unit)`` and
  ``(dimensionless)`` give none), rewritten into VOUnits where the project's words differ
  (``count`` -> ``ct``, ``percent`` -> ``%``, ``dex of odds`` -> ``dex``). UCDs come from a small
  table by column name (``UCDS``); a column not in it has none.
* ``public.tap_cone_source_ids``, ``tap_cone_lens_ids`` and ``tap_cone_spectrum_ids`` return the ids
  of the rows of ``lenscat.sources``, ``lenscat.literature_lenses`` and ``lenscat.spectra`` within
  ``radius_deg`` of a position, through the zone sky index (``lenscat_sky_ranges`` -> one range
  scan of ``ix_*_zone_ra`` per range, then the exact ``lenscat_angsep``). The TAP service turns
  ``CONTAINS(POINT(ra, dec), CIRCLE(ra0, dec0, r)) = 1`` on a view whose position comes from one of
  those tables into ``key IN (SELECT tap_cone_…(ra0, dec0, r))``: the public views carry no zone
  column, so without it every cone would scan. Unlike ``public.cone_search`` they keep the sources of
  injection sets, as the ``sources`` view does. ``SECURITY DEFINER`` (with a fixed search_path), as
  ``cone_search``: the read-only role reads the views, never the tables.
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

#: The documented public views the TAP service publishes (those that exist).
TAP_VIEWS = (
    "sources",
    "literature_lenses",
    "crossmatches",
    "scores",
    "candidates",
    "spectral_hits",
    "lens_models",
    "joint_evidence",
)

#: UCD (IVOA UCD1+) by column name.
UCDS = {
    "source_id": "meta.id;meta.main",
    "lens_id": "meta.id",
    "hit_id": "meta.id;meta.main",
    "spectrum_id": "meta.id",
    "objid": "meta.id",
    "name": "meta.id",
    "lens_name": "meta.id",
    "spec_key": "meta.id",
    "survey": "meta.id;instr.setup",
    "catalog": "meta.bib",
    "ra": "pos.eq.ra;meta.main",
    "dec": "pos.eq.dec;meta.main",
    "mag_g": "phot.mag;em.opt.B",
    "mag_r": "phot.mag;em.opt.R",
    "mag_i": "phot.mag;em.opt.I",
    "mag_z": "phot.mag;em.opt.I",
    "mag_y": "phot.mag;em.IR.J",
    "mag": "phot.mag",
    "mag_err": "stat.error;phot.mag",
    "flux": "phot.flux",
    "ebv": "phys.absorption.gal",
    "z_spec": "src.redshift",
    "z_phot": "src.redshift.phot",
    "z_lens": "src.redshift",
    "z_source": "src.redshift",
    "best_hit_z_source": "src.redshift",
    "best_hit_z_lens": "src.redshift",
    "separation_arcsec": "pos.angDistance",
    "radius_arcsec": "pos.angDistance",
    "score": "stat.probability",
    "best_score": "stat.probability",
    "image_score": "stat.probability",
    "prob": "stat.probability",
    "snr": "stat.snr",
    "best_hit_snr": "stat.snr",
    "wavelength": "em.wl",
    "line_flux": "phot.flux;spect.line",
    "fwhm_kms": "spect.line.width",
    "grade": "meta.code.qual",
    "consensus_grade": "meta.code.qual",
    "n_votes": "meta.number",
    "theta_e": "phys.angSize;src",
    "theta_e_err": "stat.error;phys.angSize;src",
    "q": "phys.size.axisRatio",
    "pa_deg": "pos.posAng",
    "gamma_pa_deg": "pos.posAng",
    "evidence_score": "stat.likelihood",
    "category": "meta.code.class",
    "source_type": "src.class",
    "lens_type": "src.class",
    "created_at": "time.creation",
}

UNITS_SQL = r"""
    CASE substring(d.description FROM '\[([^][]+)\]\.?\s*$')
        WHEN 'count' THEN 'ct' WHEN 'percent' THEN '%' WHEN 'dex of odds' THEN 'dex'
        ELSE substring(d.description FROM '\[([^][]+)\]\.?\s*$') END"""

DATATYPE_SQL = """
    CASE WHEN t.typcategory = 'A' THEN 'char'
         WHEN a.atttypid = 'bigint'::regtype THEN 'long'
         WHEN a.atttypid = 'integer'::regtype THEN 'int'
         WHEN a.atttypid = 'smallint'::regtype THEN 'short'
         WHEN a.atttypid = 'real'::regtype THEN 'float'
         WHEN a.atttypid IN ('double precision'::regtype, 'numeric'::regtype) THEN 'double'
         WHEN a.atttypid = 'boolean'::regtype THEN 'boolean'
         ELSE 'char' END"""


def _published() -> str:
    """SELECT of (schema_name, table_name, oid, table_index) of the published views."""
    views = ", ".join(f"('{v}', {i})" for i, v in enumerate(TAP_VIEWS))
    tap = ", ".join(
        f"('{v}', {100 + i})" for i, v in enumerate(("schemas", "tables", "columns", "keys", "key_columns"))
    )
    return f"""
        SELECT n.nspname::text AS schema_name,
               CASE WHEN n.nspname = 'public' THEN c.relname::text ELSE n.nspname || '.' || c.relname END
                   AS table_name,
               c.oid, p.ix AS table_index
        FROM (VALUES {views}) p(name, ix)
        JOIN pg_class c ON c.relname = p.name
        JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
        UNION ALL
        SELECT 'tap_schema', 'tap_schema.' || c.relname, c.oid, p.ix
        FROM (VALUES {tap}) p(name, ix)
        JOIN pg_class c ON c.relname = p.name
        JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'tap_schema'"""


def _ucd_values() -> str:
    return ", ".join(f"('{k}', '{v}')" for k, v in UCDS.items())


CONE_FUNCTION = """
    CREATE FUNCTION public.{name}(ra_deg double precision, dec_deg double precision, radius_deg double precision)
    RETURNS SETOF bigint
    LANGUAGE sql STABLE STRICT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, public
    ROWS 20
    AS $$
        SELECT t.{key}
        FROM public.lenscat_sky_ranges(ra_deg, dec_deg, radius_deg) r
        JOIN lenscat.{table} t ON t.zone = r.zone AND t.ra BETWEEN r.ra_lo AND r.ra_hi
        WHERE public.lenscat_angsep(ra_deg, dec_deg, t.ra, t.dec) <= radius_deg
    $$"""

CONES = (
    ("tap_cone_source_ids", "source_id", "sources"),
    ("tap_cone_lens_ids", "lens_id", "literature_lenses"),
    ("tap_cone_spectrum_ids", "spectrum_id", "spectra"),
)


def upgrade() -> None:
    for name, key, table in CONES:
        op.execute(CONE_FUNCTION.format(name=name, key=key, table=table))
        op.execute(
            f"COMMENT ON FUNCTION public.{name}(double precision, double precision, double precision) IS "
            f"'{key} of lenscat.{table} within radius_deg of (ra_deg, dec_deg) [deg], through the zone sky index "
            "(the TAP service''s translation of ADQL CONTAINS).'"
        )
    op.execute("CREATE SCHEMA tap_schema")
    op.execute(
        "COMMENT ON SCHEMA tap_schema IS 'IVOA TAP_SCHEMA: the tables, columns and keys the TAP service publishes.'"
    )
    published = _published()
    op.execute(
        """
        CREATE VIEW tap_schema.schemas AS
        SELECT s.schema_name::varchar AS schema_name, s.description::varchar AS description,
               NULL::varchar AS utype, s.schema_index
        FROM (VALUES ('public', 'lenscat: strong-lens candidates, the sources they were found among, '
                                'literature lenses, scores, grades, spectra and lens models.', 0),
                     ('tap_schema', 'IVOA TAP_SCHEMA: what this service publishes.', 1))
             s(schema_name, description, schema_index)"""
    )
    op.execute(
        f"""
        CREATE VIEW tap_schema.tables AS
        SELECT p.schema_name::varchar AS schema_name, p.table_name::varchar AS table_name,
               'view'::varchar AS table_type, obj_description(p.oid, 'pg_class')::varchar AS description,
               NULL::varchar AS utype, p.table_index
        FROM ({published}) p"""
    )
    op.execute(
        f"""
        CREATE VIEW tap_schema.columns AS
        SELECT p.table_name::varchar AS table_name, a.attname::varchar AS column_name,
               d.description::varchar AS description,
               ({UNITS_SQL})::varchar AS unit,
               u.ucd::varchar AS ucd, NULL::varchar AS utype,
               ({DATATYPE_SQL})::varchar AS datatype,
               CASE WHEN ({DATATYPE_SQL}) = 'char' THEN '*' END::varchar AS arraysize,
               CASE WHEN a.atttypid IN ('timestamp with time zone'::regtype, 'timestamp'::regtype)
                    THEN 'timestamp' END::varchar AS xtype,
               NULL::integer AS "size",
               (a.attname IN ('source_id', 'lens_id', 'hit_id', 'ra', 'dec', 'name', 'survey', 'score',
                              'theta_e', 'category', 'table_name', 'column_name', 'schema_name'))::integer
                   AS principal,
               (a.attname IN ('source_id', 'lens_id', 'hit_id', 'spectrum_id', 'ra', 'dec'))::integer AS indexed,
               (p.schema_name = 'tap_schema')::integer AS std,
               a.attnum::integer AS column_index
        FROM ({published}) p
        JOIN pg_attribute a ON a.attrelid = p.oid AND a.attnum > 0 AND NOT a.attisdropped
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_description d ON d.objoid = p.oid AND d.classoid = 'pg_class'::regclass
                                   AND d.objsubid = a.attnum
        LEFT JOIN (VALUES {_ucd_values()}) u(column_name, ucd) ON u.column_name = a.attname"""
    )
    keys = (
        ("crossmatches_sources", "crossmatches", "sources", "source_id"),
        ("crossmatches_lenses", "crossmatches", "literature_lenses", "lens_id"),
        ("scores_sources", "scores", "sources", "source_id"),
        ("candidates_sources", "candidates", "sources", "source_id"),
        ("spectral_hits_sources", "spectral_hits", "sources", "source_id"),
        ("lens_models_sources", "lens_models", "sources", "source_id"),
        ("joint_evidence_sources", "joint_evidence", "sources", "source_id"),
    )
    key_rows = ", ".join(f"('{k}', '{f}', '{t}', '{c}')" for k, f, t, c in keys)
    op.execute(
        f"""
        CREATE VIEW tap_schema.keys AS
        SELECT k.key_id::varchar AS key_id, k.from_table::varchar AS from_table,
               k.target_table::varchar AS target_table,
               ('Rows of ' || k.from_table || ' refer to ' || k.target_table || ' by ' || k.col)::varchar
                   AS description,
               NULL::varchar AS utype
        FROM (VALUES {key_rows}) k(key_id, from_table, target_table, col)
        WHERE EXISTS (SELECT 1 FROM tap_schema.tables t WHERE t.table_name = k.from_table)"""
    )
    op.execute(
        f"""
        CREATE VIEW tap_schema.key_columns AS
        SELECT k.key_id::varchar AS key_id, k.col::varchar AS from_column, k.col::varchar AS target_column
        FROM (VALUES {key_rows}) k(key_id, from_table, target_table, col)
        WHERE EXISTS (SELECT 1 FROM tap_schema.tables t WHERE t.table_name = k.from_table)"""
    )
    for view, text in (
        ("schemas", "TAP_SCHEMA.schemas: the schemas this service publishes."),
        ("tables", "TAP_SCHEMA.tables: the tables (views) this service publishes."),
        ("columns", "TAP_SCHEMA.columns: their columns, with units and UCDs."),
        ("keys", "TAP_SCHEMA.keys: how the published tables refer to each other."),
        ("key_columns", "TAP_SCHEMA.key_columns: the columns of those keys."),
    ):
        op.execute(f"COMMENT ON VIEW tap_schema.{view} IS '{text}'")
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lenscat_reader') THEN
                GRANT USAGE ON SCHEMA tap_schema TO lenscat_reader;
                GRANT SELECT ON ALL TABLES IN SCHEMA tap_schema TO lenscat_reader;
            END IF;
        END
        $$"""
    )


def downgrade() -> None:
    op.execute("DROP SCHEMA IF EXISTS tap_schema CASCADE")
    for name, _, _ in CONES:
        op.execute(f"DROP FUNCTION IF EXISTS public.{name}(double precision, double precision, double precision)")
