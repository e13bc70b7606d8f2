"""Injection sets: surveys derived from another survey's cutouts with simulated lensed arcs painted on.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

Design notes
------------
* ``lenscat.surveys.kind`` is ``'survey'`` for a real survey and ``'injection'`` for a cutout set
  made by ``lenscat simulate inject`` from the host galaxies of another survey
  (``parent_survey_id``). Injected cutouts keep their host's RA/Dec, so every query that enumerates
  the sky or the survey's own candidates (cone searches, literature cross-matches, top-N rankings,
  exports, grading samples, active-learning batches) leaves the sources of injection surveys out;
  they are reached only by naming the injection survey.
* ``lenscat.labels.origin`` gains ``'injection'``: the truth of an injected lens (label 1, detail
  = the injection's parameters). Positives of that origin are not "known lenses" for the exclusion
  of negatives near lenses (the host galaxy itself stays an ordinary negative of its survey).
* ``public.cone_search`` leaves the sources of injection surveys out.
"""

from __future__ import annotations

from alembic import op

from lenscat.migrations.comments import apply_comments, comment_sql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

COMMENTS: dict[str, dict[str, str]] = {
    "lenscat.surveys": {
        "kind": "'survey' (a real survey) or 'injection' (cutouts of a parent survey's galaxies with simulated "
        "lensed sources added; left out of sky queries and rankings) (no unit).",
        "parent_survey_id": "For an injection set: the survey whose galaxies host the injections (NULL otherwise).",
    },
    "lenscat.labels": {
        "origin": "'literature' (cross-match), 'simulation' (truth), 'import' (a user's table), 'human' (grades) "
        "or 'injection' (truth of a simulated lens painted on a survey galaxy) (no unit).",
    },
}

VIEW_COMMENTS: dict[str, dict[str, str]] = {
    "public.labels": {
        "origin": "'literature', 'simulation', 'import', 'human' or 'injection'.",
    },
    "public.surveys": {
        "kind": "'survey' or 'injection' (a derived set of injected lenses).",
        "parent_survey": "For an injection set: the survey whose galaxies host the injections.",
    },
}

CONE_SEARCH = """
    CREATE OR REPLACE FUNCTION public.cone_search(ra_deg double precision, dec_deg double precision,
                                                  radius_arcsec double precision)
    RETURNS TABLE (source_id bigint, separation_arcsec double precision)
    LANGUAGE sql STABLE STRICT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
        SELECT s.source_id, public.lenscat_angsep(ra_deg, dec_deg, s.ra, s.dec) * 3600.0
        FROM public.lenscat_sky_ranges(ra_deg, dec_deg, radius_arcsec / 3600.0) r
        JOIN lenscat.sources s ON s.zone = r.zone AND s.ra BETWEEN r.ra_lo AND r.ra_hi
        WHERE public.lenscat_angsep(ra_deg, dec_deg, s.ra, s.dec) * 3600.0 <= radius_arcsec
          {filter}
        ORDER BY 2
    $$"""
CONE_COMMENT = (
    "COMMENT ON FUNCTION public.cone_search(double precision, double precision, double precision) IS '{text}'"
)


def upgrade() -> None:
    op.execute(
        "ALTER TABLE lenscat.surveys "
        "ADD COLUMN kind text NOT NULL DEFAULT 'survey' "
        "CONSTRAINT ck_surveys_kind CHECK (kind IN ('survey', 'injection')), "
        "ADD COLUMN parent_survey_id smallint CONSTRAINT fk_surveys_parent REFERENCES lenscat.surveys (survey_id), "
        "ADD CONSTRAINT ck_surveys_parent CHECK (kind = 'injection' OR parent_survey_id IS NULL)"
    )
    op.execute("ALTER TABLE lenscat.labels DROP CONSTRAINT ck_labels_origin")
    op.execute(
        "ALTER TABLE lenscat.labels ADD CONSTRAINT ck_labels_origin "
        "CHECK (origin IN ('literature', 'simulation', 'import', 'human', 'injection'))"
    )
    # new columns at the end of the view: CREATE OR REPLACE keeps the grants
    op.execute(
        """
        CREATE OR REPLACE VIEW public.surveys AS
        SELECT v.survey_id, v.name AS survey, v.bands, v.pixel_scale_arcsec, v.description,
               v.created_at, v.kind, p.name AS parent_survey
        FROM lenscat.surveys v
        LEFT JOIN lenscat.surveys p ON p.survey_id = v.parent_survey_id"""
    )
    op.execute(
        CONE_SEARCH.format(
            filter="AND s.survey_id IN (SELECT v.survey_id FROM lenscat.surveys v WHERE v.kind = 'survey')"
        )
    )
    op.execute(
        CONE_COMMENT.format(
            text="Sources within radius_arcsec of (ra, dec) [deg], nearest first, leaving out injection sets; "
            "join the sources view on source_id."
        )
    )
    apply_comments(op, COMMENTS, VIEW_COMMENTS)


def downgrade() -> None:
    op.execute(CONE_SEARCH.format(filter=""))
    op.execute(
        CONE_COMMENT.format(
            text="Sources within radius_arcsec of (ra, dec) [deg], nearest first; join the sources view on source_id."
        )
    )
    op.execute("DROP VIEW public.surveys")
    op.execute(
        """
        CREATE VIEW public.surveys AS
        SELECT v.survey_id, v.name AS survey, v.bands, v.pixel_scale_arcsec, v.description,
               v.created_at
        FROM lenscat.surveys v"""
    )
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lenscat_reader') THEN
                GRANT SELECT ON public.surveys TO lenscat_reader;
            END IF;
        END
        $$"""
    )
    # the sources of injection sets and their labels go with the schema that describes them
    op.execute("DELETE FROM lenscat.labels WHERE origin = 'injection'")
    op.execute("ALTER TABLE lenscat.labels DROP CONSTRAINT ck_labels_origin")
    op.execute(
        "ALTER TABLE lenscat.labels ADD CONSTRAINT ck_labels_origin "
        "CHECK (origin IN ('literature', 'simulation', 'import', 'human'))"
    )
    op.execute(
        "ALTER TABLE lenscat.surveys DROP CONSTRAINT IF EXISTS ck_surveys_parent, "
        "DROP COLUMN IF EXISTS parent_survey_id, DROP COLUMN IF EXISTS kind"
    )
    for stmt in comment_sql(
        "lenscat.labels",
        {
            "origin": (
                "'literature' (cross-match), 'simulation' (truth), 'import' (a user's table) or 'human' (grades)."
            ),
        },
    ):
        op.execute(stmt)
    for stmt in comment_sql(
        "public.labels", {"origin": "'literature', 'simulation', 'import' or 'human'."}, kind="VIEW"
    ):
        op.execute(stmt)
