"""The schema as alembic builds it: extensions, comments with units, round trips."""

from sqlalchemy import text

from lenscat.db import migrate


def test_extensions_and_revision(session):
    exts = dict(session.execute(text("SELECT extname, extversion FROM pg_extension")).all())
    assert "vector" in exts
    assert migrate.current_revision(connection=session.connection()) == migrate.head_revision()


def test_every_column_has_a_comment(session):
    missing = (
        session.execute(
            text(
                """
            SELECT c.relname || '.' || a.attname
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'lenscat' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
              AND c.relname <> 'alembic_version'
              AND col_description(c.oid, a.attnum) IS NULL
            """
            )
        )
        .scalars()
        .all()
    )
    assert missing == []


def test_named_constraints_and_sky_index(session):
    names = set(
        session.execute(
            text(
                "SELECT conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
                "WHERE nspname='lenscat'"
            )
        ).scalars()
    )
    assert {"uq_sources_survey_objid", "pk_crossmatches", "uq_literature_lenses_catalog_row"} <= names
    idx = set(session.execute(text("SELECT indexname FROM pg_indexes WHERE schemaname='lenscat'")).scalars())
    assert "ix_sources_zone_ra" in idx


def test_documented_views_have_the_promised_columns(session):
    def cols(view):
        return set(
            session.execute(
                text(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema='public' AND table_name=:v"
                ),
                {"v": view},
            ).scalars()
        )

    assert {"source_id", "survey", "objid", "ra", "dec", "mag_r", "ebv", "z_spec"} <= cols("sources")
    assert {"lens_id", "catalog", "name", "ra", "dec", "grade", "z_lens", "z_source"} <= cols("literature_lenses")
    assert {"lens_id", "source_id", "separation_arcsec", "is_nearest"} <= cols("crossmatches")


def test_downgrade_and_upgrade_round_trip(db_conn):
    # DDL is transactional: the test's outer transaction rolls all of this back.
    migrate.downgrade("base", connection=db_conn)
    assert db_conn.exec_driver_sql("SELECT to_regclass('lenscat.sources')").scalar() is None
    migrate.upgrade("head", connection=db_conn)
    assert db_conn.exec_driver_sql("SELECT to_regclass('lenscat.sources')").scalar() is not None
