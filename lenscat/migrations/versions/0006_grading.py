"""Human grading: graders, append-only grades, consensus, active-learning loops, candidates.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

Design notes
------------
* ``lenscat.graders`` holds accounts. Passwords are stored only as salted scrypt hashes, API tokens
  only as their sha256; neither is visible through any ``public`` view, so the read-only role used
  by ``lenscat sql`` and the web query page cannot read them.
* ``lenscat.grades`` is append-only: a grader who changes their mind adds a row, and every view
  uses each grader's latest grade of a source. The natural key is (grader, request_id): the web
  form and ``lenscat grade`` send a fresh UUID per grading action, so a resubmitted form (a
  network retry, a double key press) is recorded once, while two graders grading the same image at
  the same moment are two rows. Grades are A / B / C (sure, probable, possible lens, worth 3/2/1),
  N (not a lens, worth 0) and S (skipped: seen, no opinion, ignored by the consensus).
* ``lenscat.al_campaigns`` and ``lenscat.al_loops`` record the active-learning loop: which encoder
  a campaign learns on, and for each loop the labels used, the classifier version trained, the
  batch proposed and, once graded, how many lenses it yielded.
* Views: ``grades`` (one row per grade), ``grade_consensus`` (one row per graded source: mean of
  A=3/B=2/C=1/N=0 over graders' latest grades, votes, disagreement), ``grade_conflicts``
  (graders' latest grades differ by 2 or more grade points) and ``candidates`` (graded sources with
  their catalogue values, consensus, best classifier score, literature status and spectral hits).
"""

from __future__ import annotations

from alembic import op

from lenscat.migrations.comments import apply_comments, grant_reader

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COMMENTS: dict[str, dict[str, str]] = {
    "lenscat.graders": {
        "": "People (or scripts) allowed to grade; passwords and tokens are stored only as hashes.",
        "grader_id": "Primary key.",
        "name": "Login name (no unit).",
        "full_name": "Display name (no unit).",
        "password_hash": "scrypt$N$r$p$salt$hash of the password, hex (no unit); NULL for token-only accounts.",
        "token_sha256": "sha256 of the API token, hex (no unit); NULL when no token was issued.",
        "is_active": "False once the account is disabled: it can no longer log in or grade.",
        "created_at": "When the account was created [UTC timestamp].",
    },
    "lenscat.grades": {
        "": "Append-only human grades: every grading action is one row.",
        "grade_id": "Primary key (increasing with time of insertion).",
        "source_id": "Graded source (lenscat.sources).",
        "grader_id": "Grader (lenscat.graders).",
        "grade": "A (sure lens), B (probable), C (possible), N (not a lens) or S (skipped) (no unit).",
        "grade_value": "Grade points: A=3, B=2, C=1, N=0, NULL for S (dimensionless).",
        "comment": "Free-text comment (no unit).",
        "sample": "What the grade was given from: e.g. 'top:clf@2', 'loop:campaign/3', 'similar:123', 'cli' (no unit).",
        "loop_id": "Active-learning loop whose batch the source was in (lenscat.al_loops), if any.",
        "request_id": "UUID of the grading action: a resubmission with the same id is recorded once (no unit).",
        "created_at": "When the grade was recorded [UTC timestamp].",
    },
    "lenscat.al_campaigns": {
        "": "Active-learning campaigns: a classifier retrained on human grades after each graded batch.",
        "campaign_id": "Primary key.",
        "name": "Campaign name; its classifier versions are registered as 'al-<name>' (no unit).",
        "encoder_id": "Encoder whose embeddings the classifier learns on (lenscat.model_versions).",
        "strategy": (
            "'top' (highest score among ungraded) or 'uncertainty' (score nearest the decision boundary, "
            "0.5 corrected for the training set's lens:non-lens ratio) (no unit)."
        ),
        "batch_size": "Sources proposed per loop [count].",
        "settings": "Training settings: ratio, l2, label origins, positive grades (JSON).",
        "created_at": "When the campaign was created [UTC timestamp].",
    },
    "lenscat.al_loops": {
        "": "One row per active-learning loop: labels used, model trained, batch proposed, yield.",
        "loop_id": "Primary key.",
        "campaign_id": "Campaign (lenscat.al_campaigns).",
        "loop_no": "Loop number within the campaign, from 1 [count].",
        "model_id": (
            "Classifier version trained for this loop (lenscat.model_versions); NULL when the batch was random."
        ),
        "n_positive": "Lens labels the classifier was trained on [count].",
        "n_negative": "Non-lens labels (graded and sampled) it was trained on [count].",
        "labels_sha256": (
            "sha256 of the training set: source ids sorted with their labels, random negatives included (no unit)."
        ),
        "batch": "Source ids proposed for grading, in proposal order (no unit).",
        "n_graded": "Sources of the batch graded so far (not skipped) [count].",
        "n_found": "Sources of the batch graded as lenses by consensus [count].",
        "created_at": "When the loop was proposed [UTC timestamp].",
        "completed_at": (
            "When every source of the batch had been inspected (any grade, a skip included) [UTC timestamp]."
        ),
        "detail": "Training metrics and timings (JSON).",
    },
}

VIEW_COMMENTS: dict[str, dict[str, str]] = {
    "public.grades": {
        "": "Every human grade (append-only): one row per grading action.",
        "grade_id": "Grade row id.",
        "source_id": "Graded source.",
        "grader": "Grader login name.",
        "grade": "A, B, C (lens: sure, probable, possible), N (not a lens) or S (skipped).",
        "grade_value": "A=3, B=2, C=1, N=0, NULL for skipped (dimensionless).",
        "comment": "Grader's comment.",
        "sample": "What the grade was given from (grid, loop, similarity search, cli).",
        "loop_id": "Active-learning loop, if any.",
        "created_at": "When it was recorded [UTC timestamp].",
    },
    "public.grade_consensus": {
        "": "One row per graded source: the consensus of each grader's latest non-skip grade.",
        "source_id": "Graded source.",
        "n_votes": "Graders whose latest grade is not a skip [count].",
        "mean_grade": "Mean grade points over those graders, A=3 B=2 C=1 N=0 (dimensionless).",
        "consensus_grade": "mean_grade rounded to a letter: >=2.5 A, >=1.5 B, >=0.5 C, else N.",
        "disagreement": "Largest minus smallest grade points among the votes (dimensionless).",
        "grade_std": "Population standard deviation of the grade points (dimensionless).",
        "grades": "Each grader's latest grade, 'name:GRADE', space separated.",
        "last_graded_at": "Latest grade of the source [UTC timestamp].",
    },
    "public.grade_conflicts": {
        "": "Graded sources whose graders disagree by 2 or more grade points (e.g. A vs C, B vs N).",
        "source_id": "Graded source.",
        "n_votes": "Votes [count].",
        "mean_grade": "Mean grade points (dimensionless).",
        "consensus_grade": "Consensus letter.",
        "disagreement": "Largest minus smallest grade points (dimensionless).",
        "grade_std": "Standard deviation of the grade points (dimensionless).",
        "grades": "Each grader's latest grade.",
        "last_graded_at": "Latest grade [UTC timestamp].",
    },
    "public.candidates": {
        "": (
            "Graded sources for follow-up: catalogue values, consensus grade, best score, "
            "literature status, spectral hits."
        ),
        "source_id": "Source id.",
        "survey": "Survey name.",
        "objid": "Survey object id.",
        "ra": "Right ascension, ICRS [deg].",
        "dec": "Declination, ICRS [deg].",
        "mag_g": "g magnitude [mag].",
        "mag_r": "r magnitude [mag].",
        "mag_i": "i magnitude [mag].",
        "mag_z": "z magnitude [mag].",
        "ebv": "E(B-V) [mag].",
        "z_spec": "Spectroscopic redshift of the source (dimensionless).",
        "z_phot": "Photometric redshift (dimensionless).",
        "consensus_grade": "Consensus letter A/B/C/N.",
        "mean_grade": "Mean grade points (dimensionless).",
        "n_votes": "Votes [count].",
        "disagreement": "Largest minus smallest grade points (dimensionless).",
        "grades": "Each grader's latest grade.",
        "best_score": "Highest classifier score of the source, in [0, 1] (dimensionless).",
        "best_classifier": "Classifier name@version that gave best_score.",
        "literature_status": "'known' when cross-matched to a literature lens, else 'new'.",
        "literature_names": "Names of the matched literature lenses, ' | ' separated.",
        "literature_catalogs": "Catalogues of those lenses, ' | ' separated.",
        "n_spectral_hits": "Spectral line hits passing every veto on spectra linked to the source [count].",
        "best_hit_z_source": "z_source of the highest-S/N such hit (dimensionless).",
        "last_graded_at": "Latest grade [UTC timestamp].",
    },
}

CONSENSUS_SQL = """
    WITH latest AS (
        SELECT DISTINCT ON (g.source_id, g.grader_id)
               g.source_id, g.grader_id, g.grade, g.grade_value, g.created_at
        FROM lenscat.grades g
        ORDER BY g.source_id, g.grader_id, g.grade_id DESC
    )
    SELECT l.source_id,
           count(*)::integer AS n_votes,
           avg(l.grade_value)::real AS mean_grade,
           CASE WHEN avg(l.grade_value) >= 2.5 THEN 'A' WHEN avg(l.grade_value) >= 1.5 THEN 'B'
                WHEN avg(l.grade_value) >= 0.5 THEN 'C' ELSE 'N' END AS consensus_grade,
           (max(l.grade_value) - min(l.grade_value))::smallint AS disagreement,
           stddev_pop(l.grade_value)::real AS grade_std,
           string_agg(r.name || ':' || l.grade, ' ' ORDER BY r.name) AS grades,
           max(l.created_at) AS last_graded_at
    FROM latest l JOIN lenscat.graders r USING (grader_id)
    WHERE l.grade <> 'S'
    GROUP BY l.source_id
"""


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE lenscat.graders (
            grader_id integer GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_graders PRIMARY KEY,
            name text NOT NULL CONSTRAINT uq_graders_name UNIQUE
                CONSTRAINT ck_graders_name CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$'),
            full_name text,
            password_hash text,
            token_sha256 text CONSTRAINT uq_graders_token UNIQUE,
            is_active boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT ck_graders_credential CHECK (password_hash IS NOT NULL OR token_sha256 IS NOT NULL)
        )"""
    )
    op.execute(
        """
        CREATE TABLE lenscat.al_campaigns (
            campaign_id integer GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_al_campaigns PRIMARY KEY,
            name text NOT NULL CONSTRAINT uq_al_campaigns_name UNIQUE,
            encoder_id integer NOT NULL CONSTRAINT fk_al_campaigns_encoder REFERENCES lenscat.model_versions,
            strategy text NOT NULL CONSTRAINT ck_al_campaigns_strategy CHECK (strategy IN ('top', 'uncertainty')),
            batch_size integer NOT NULL CONSTRAINT ck_al_campaigns_batch CHECK (batch_size > 0),
            settings jsonb NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL DEFAULT now()
        )"""
    )
    op.execute(
        """
        CREATE TABLE lenscat.al_loops (
            loop_id bigint GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_al_loops PRIMARY KEY,
            campaign_id integer NOT NULL CONSTRAINT fk_al_loops_campaign
                REFERENCES lenscat.al_campaigns ON DELETE CASCADE,
            loop_no integer NOT NULL,
            model_id integer CONSTRAINT fk_al_loops_model REFERENCES lenscat.model_versions,
            n_positive integer NOT NULL DEFAULT 0,
            n_negative integer NOT NULL DEFAULT 0,
            labels_sha256 text,
            batch bigint[] NOT NULL,
            n_graded integer NOT NULL DEFAULT 0,
            n_found integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            completed_at timestamptz,
            detail jsonb NOT NULL DEFAULT '{}',
            CONSTRAINT uq_al_loops_campaign_loop UNIQUE (campaign_id, loop_no)
        )"""
    )
    op.execute(
        """
        CREATE TABLE lenscat.grades (
            grade_id bigint GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_grades PRIMARY KEY,
            source_id bigint NOT NULL,
            grader_id integer NOT NULL CONSTRAINT fk_grades_grader REFERENCES lenscat.graders,
            grade text NOT NULL CONSTRAINT ck_grades_grade CHECK (grade IN ('A', 'B', 'C', 'N', 'S')),
            grade_value smallint GENERATED ALWAYS AS (
                CASE grade WHEN 'A' THEN 3 WHEN 'B' THEN 2 WHEN 'C' THEN 1 WHEN 'N' THEN 0 END) STORED,
            comment text,
            sample text,
            loop_id bigint CONSTRAINT fk_grades_loop REFERENCES lenscat.al_loops ON DELETE SET NULL,
            request_id uuid NOT NULL,
            created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            CONSTRAINT uq_grades_grader_request UNIQUE (grader_id, request_id)
        )"""
    )
    op.execute("CREATE INDEX ix_grades_source_grader ON lenscat.grades (source_id, grader_id, grade_id DESC)")
    op.execute("CREATE INDEX ix_grades_grader_created ON lenscat.grades (grader_id, created_at)")
    op.execute("CREATE INDEX ix_grades_loop ON lenscat.grades (loop_id) WHERE loop_id IS NOT NULL")
    op.execute(
        """
        CREATE VIEW public.grades AS
        SELECT g.grade_id, g.source_id, r.name AS grader, g.grade, g.grade_value, g.comment, g.sample,
               g.loop_id, g.created_at
        FROM lenscat.grades g JOIN lenscat.graders r USING (grader_id)"""
    )
    op.execute(f"CREATE VIEW public.grade_consensus AS {CONSENSUS_SQL}")
    op.execute(
        """
        CREATE VIEW public.grade_conflicts AS
        SELECT * FROM public.grade_consensus WHERE n_votes >= 2 AND disagreement >= 2"""
    )
    op.execute(
        """
        CREATE VIEW public.candidates AS
        SELECT c.source_id, v.survey, v.objid, v.ra, v.dec, v.mag_g, v.mag_r, v.mag_i, v.mag_z, v.ebv,
               v.z_spec, v.z_phot, c.consensus_grade, c.mean_grade, c.n_votes, c.disagreement, c.grades,
               sc.score AS best_score, sc.classifier AS best_classifier,
               CASE WHEN lit.names IS NULL THEN 'new' ELSE 'known' END AS literature_status,
               lit.names AS literature_names, lit.catalogs AS literature_catalogs,
               coalesce(sh.n_hits, 0)::integer AS n_spectral_hits, sh.z_source AS best_hit_z_source,
               c.last_graded_at
        FROM public.grade_consensus c
        JOIN public.sources v ON v.source_id = c.source_id
        LEFT JOIN LATERAL (
            SELECT s.score, m.name || '@' || m.version AS classifier
            FROM lenscat.scores s JOIN lenscat.model_versions m ON m.model_id = s.model_id
            WHERE s.source_id = c.source_id ORDER BY s.score DESC, s.model_id DESC LIMIT 1
        ) sc ON true
        LEFT JOIN LATERAL (
            SELECT string_agg(DISTINCT l.name, ' | ') AS names, string_agg(DISTINCT k.name, ' | ') AS catalogs
            FROM lenscat.crossmatches x
            JOIN lenscat.literature_lenses l ON l.lens_id = x.lens_id
            JOIN lenscat.literature_catalogs k ON k.catalog_id = l.catalog_id
            WHERE x.source_id = c.source_id
        ) lit ON true
        LEFT JOIN LATERAL (
            SELECT count(*) AS n_hits, (array_agg(h.z_source ORDER BY h.snr DESC NULLS LAST))[1] AS z_source
            FROM lenscat.spectra p JOIN lenscat.spectral_hits h ON h.spectrum_id = p.spectrum_id
            WHERE p.source_id = c.source_id
              AND h.fit_ok AND NOT (h.veto_oii OR h.veto_skew OR h.veto_overdensity)
        ) sh ON true"""
    )
    apply_comments(op, COMMENTS, VIEW_COMMENTS)
    grant_reader(op, ["public.grades", "public.grade_consensus", "public.grade_conflicts", "public.candidates"])


def downgrade() -> None:
    for view in ("candidates", "grade_conflicts", "grade_consensus", "grades"):
        op.execute(f"DROP VIEW IF EXISTS public.{view}")
    op.execute("DELETE FROM lenscat.labels WHERE origin = 'human'")
    for table in ("grades", "al_loops", "al_campaigns", "graders"):
        op.execute(f"DROP TABLE IF EXISTS lenscat.{table}")
