"""Joint evidence: image score, grades, spectra, lens model and literature combined into one ranking.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07

Design notes
------------
* ``lenscat.joint_evidence_all`` computes the evidence of *every* source (one row per source, each
  piece from a LATERAL subquery); ``public.joint_evidence`` keeps the candidates: sources with a
  grade, with a spectral line hit passing every veto, or with a lens model. The service
  (:mod:`lenscat.evidence.service`) reads ``lenscat.joint_evidence_all`` for a named classifier's
  top N, which need not be graded yet.
* The ranking score ``evidence_score`` is a sum of log10 likelihood-ratio-like contributions
  ("dex" of odds), one column each, so a reader sees why a candidate ranks where it does:

  - ``grade_llr``: consensus grade A +2, B +1, C 0, N -2 (no grade: 0). Graders who call a lens
    "sure" are right most of the time (SLED/Space Warps experience), so A is worth about a factor
    100 in odds and N takes it back.
  - ``image_llr``: ``0.5 log10(n / (n_above + 1))`` clipped to [0, 2], where ``n`` is the number of
    sources the classifier version scored and ``n_above`` how many scored strictly higher. A
    classifier that put every lens in its top fraction f would raise the odds by at most 1/f; half
    of that in dex allows for the classifier's own false positives. A low score is not counted
    against a candidate (classifiers miss lenses), so the term is never negative.
  - ``spectral_llr``: +2 when a line hit passing every veto (Lyman alpha or [OII]) has
    ``z_source > z_lens + 0.05``, +0.5 more for two or more such hits. A background emission line
    in the galaxy's fibre is the classic spectroscopic selection of lenses (SLACS, BELLS).
  - ``model_llr``: the row of the most recently registered lens-model version that modelled the
    source (as ``lenscat.modelling.service.lens_model_for``): passed vetting with theta_E >= 0.5 arcsec
    +0.5; passed with a smaller theta_E 0 (unresolved from the ground); failed vetting -1.5.
  - ``literature_llr``: a literature lens that is confirmed (grade 'A', 'confirmed', 'definite'
    or 'sure', or with a measured source redshift) +3, otherwise known +1, new 0.

* ``category`` (first that applies): 'spectroscopically supported' (a supporting hit), 'known lens'
  (literature), 'vetoed by model', 'rejected by graders' (consensus N), 'imaging + model' (a model
  that passed vetting), 'imaging only'.
* ``score_rank`` (how many sources the version scored higher) is exact but cheap for any
  candidate: one aggregate per query counts every version's scores in 1000 bins of width 0.001
  (a scan of ``lenscat.scores``: 0.1 s at 3e5 scores, bench/evidence.py), the bins above the
  candidate's are summed, and only its own bin is counted row by row on ``ix_scores_model_score``.
"""

from __future__ import annotations

from alembic import op

from lenscat.migrations.comments import apply_comments, grant_reader

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

ALL_VIEW = """
    CREATE VIEW lenscat.joint_evidence_all AS
    WITH hist AS MATERIALIZED (
        SELECT model_id, width_bucket(score, 0, 1, 1000) AS b, count(*) AS n
        FROM lenscat.scores GROUP BY 1, 2
    ),
    cum AS MATERIALIZED (
        SELECT model_id, b,
               coalesce(sum(n) OVER (PARTITION BY model_id ORDER BY b DESC
                                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS n_higher,
               sum(n) OVER (PARTITION BY model_id) AS n_model
        FROM hist
    ),
    parts AS (
        SELECT s.source_id, v.name AS survey, s.objid, s.ra, s.dec,
               c.consensus_grade, c.mean_grade, c.n_votes,
               sc.score AS image_score, sc.classifier AS image_classifier, sc.model_id AS classifier_id,
               sc.n_above::integer AS score_rank, sc.n_model::integer AS n_scored,
               h.n_support::integer AS n_supporting_hits, h.line AS best_hit_line,
               h.z_source AS best_hit_z_source, h.z_lens AS best_hit_z_lens, h.snr AS best_hit_snr,
               lm.lens_model, lm.theta_e, lm.theta_e_err, lm.arc_mag, lm.arc_band, lm.passed_vetting,
               lm.vet_flags,
               lit.names AS literature_names,
               CASE WHEN lit.n IS NULL OR lit.n = 0 THEN 'new'
                    WHEN lit.confirmed THEN 'confirmed' ELSE 'known' END AS literature_status
        FROM lenscat.sources s
        JOIN lenscat.surveys v ON v.survey_id = s.survey_id
        LEFT JOIN public.grade_consensus c ON c.source_id = s.source_id
        LEFT JOIN LATERAL (
            SELECT b.score, b.model_id, b.classifier, c.n_model,
                   c.n_higher + (SELECT count(*) FROM lenscat.scores y
                                 WHERE y.model_id = b.model_id AND y.score > b.score
                                   AND y.score < (c.b + 1) / 1000.0
                                   AND width_bucket(y.score, 0, 1, 1000) = c.b) AS n_above
            FROM (
                SELECT x.score, x.model_id, m.name || '@' || m.version AS classifier
                FROM lenscat.scores x JOIN lenscat.model_versions m ON m.model_id = x.model_id
                WHERE x.source_id = s.source_id ORDER BY x.score DESC, x.model_id DESC LIMIT 1
            ) b
            JOIN cum c ON c.model_id = b.model_id AND c.b = width_bucket(b.score, 0, 1, 1000)
        ) sc ON true
        LEFT JOIN LATERAL (
            SELECT count(*) OVER () AS n_support, h.line, h.z_source, h.z_lens, h.snr
            FROM public.spectral_hits h
            WHERE h.source_id = s.source_id AND h.is_candidate
              AND h.z_source > coalesce(h.z_lens, s.z_spec, 0) + 0.05
            ORDER BY h.snr DESC NULLS LAST, h.hit_id LIMIT 1
        ) h ON true
        LEFT JOIN LATERAL (
            SELECT l.lens_model, l.theta_e, l.theta_e_err, l.arc_mag, l.arc_band, l.passed_vetting, l.vet_flags
            FROM public.lens_models l JOIN lenscat.model_versions mv ON mv.model_id = l.model_id
            WHERE l.source_id = s.source_id
            ORDER BY mv.created_at DESC, l.model_id DESC LIMIT 1
        ) lm ON true
        LEFT JOIN LATERAL (
            SELECT count(*) AS n, string_agg(DISTINCT l.name, ' | ') AS names,
                   bool_or(lower(coalesce(l.grade, '')) IN ('a', 'confirmed', 'definite', 'sure')
                           OR l.z_source IS NOT NULL) AS confirmed
            FROM lenscat.crossmatches x JOIN lenscat.literature_lenses l ON l.lens_id = x.lens_id
            WHERE x.source_id = s.source_id
        ) lit ON true
    ),
    scored AS (
        SELECT p.*,
               CASE WHEN p.n_scored IS NULL THEN NULL
                    ELSE (100.0 * (1 - p.score_rank::double precision / p.n_scored)) END AS score_percentile,
               CASE p.consensus_grade WHEN 'A' THEN 2.0 WHEN 'B' THEN 1.0 WHEN 'C' THEN 0.0
                    WHEN 'N' THEN -2.0 ELSE 0.0 END AS grade_llr,
               CASE WHEN p.n_scored IS NULL THEN 0.0
                    ELSE least(greatest(0.5 * log(p.n_scored::double precision / (p.score_rank + 1)), 0.0), 2.0)
               END AS image_llr,
               CASE WHEN coalesce(p.n_supporting_hits, 0) = 0 THEN 0.0
                    WHEN p.n_supporting_hits >= 2 THEN 2.5 ELSE 2.0 END AS spectral_llr,
               CASE WHEN p.lens_model IS NULL THEN 0.0
                    WHEN NOT p.passed_vetting THEN -1.5
                    WHEN p.theta_e >= 0.5 THEN 0.5 ELSE 0.0 END AS model_llr,
               CASE p.literature_status WHEN 'confirmed' THEN 3.0 WHEN 'known' THEN 1.0 ELSE 0.0 END
                   AS literature_llr
        FROM parts p
    )
    SELECT source_id, survey, objid, ra, dec, consensus_grade, mean_grade, n_votes,
           image_score, image_classifier, classifier_id, score_rank, n_scored, score_percentile,
           coalesce(n_supporting_hits, 0) AS n_supporting_hits, best_hit_line, best_hit_z_source,
           best_hit_z_lens, best_hit_snr,
           lens_model, theta_e, theta_e_err, arc_mag, arc_band, passed_vetting, vet_flags,
           literature_status, literature_names,
           grade_llr, image_llr, spectral_llr, model_llr, literature_llr,
           grade_llr + image_llr + spectral_llr + model_llr + literature_llr AS evidence_score,
           CASE WHEN coalesce(n_supporting_hits, 0) > 0 THEN 'spectroscopically supported'
                WHEN literature_status <> 'new' THEN 'known lens'
                WHEN lens_model IS NOT NULL AND NOT passed_vetting THEN 'vetoed by model'
                WHEN consensus_grade = 'N' THEN 'rejected by graders'
                WHEN lens_model IS NOT NULL THEN 'imaging + model'
                ELSE 'imaging only' END AS category
    FROM scored"""

PUBLIC_VIEW = """
    CREATE VIEW public.joint_evidence AS
    SELECT e.* FROM lenscat.joint_evidence_all e
    WHERE e.source_id IN (
        SELECT source_id FROM public.grade_consensus
        UNION SELECT source_id FROM public.spectral_hits WHERE is_candidate AND source_id IS NOT NULL
        UNION SELECT source_id FROM lenscat.lens_models
    )"""

_COLUMNS: dict[str, str] = {
    "source_id": "lenscat source id (lenscat.sources).",
    "survey": "Survey name (no unit).",
    "objid": "Survey object id (no unit).",
    "ra": "Right ascension, ICRS [deg].",
    "dec": "Declination, ICRS [deg].",
    "consensus_grade": "Consensus grade A/B/C/N (public.grade_consensus), NULL when ungraded (no unit).",
    "mean_grade": "Mean of each grader's latest non-skip grade, A=3 B=2 C=1 N=0 (dimensionless).",
    "n_votes": "Non-skip votes [count].",
    "image_score": "Best classifier score of the source over every classifier version, 0-1 (dimensionless).",
    "image_classifier": "Classifier name@version of image_score (no unit).",
    "classifier_id": "model_versions id of that classifier version (provenance).",
    "score_rank": "Sources that version scored strictly higher than this one [count].",
    "n_scored": "Sources that version scored [count].",
    "score_percentile": "Percentile of image_score among that version's scores, 100 (1 - score_rank / n_scored) "
    "[percent].",
    "n_supporting_hits": "Spectral line hits passing every veto with z_source > z_lens + 0.05 (Lyman alpha or "
    "[OII]) [count].",
    "best_hit_line": "Line family of the highest-S/N supporting hit: 'lya' or 'oii' (no unit).",
    "best_hit_z_source": "z_source of that hit (dimensionless).",
    "best_hit_z_lens": "Redshift of the spectrum (the foreground galaxy) of that hit (dimensionless).",
    "best_hit_snr": "Detection S/N of that hit (dimensionless).",
    "lens_model": "Latest lens-model version name@version that modelled the source (no unit).",
    "theta_e": "Einstein radius of that model [arcsec].",
    "theta_e_err": "Calibrated 1-sigma uncertainty of theta_e [arcsec].",
    "arc_mag": "AB magnitude of the lensed light in arc_band from the model [mag].",
    "arc_band": "Band of arc_mag (no unit).",
    "passed_vetting": "True when the model passed every vetting rule (no unit).",
    "vet_flags": "Vetting rules the model failed (no unit).",
    "literature_status": "'confirmed' (a matched literature lens graded A/confirmed/definite/sure or with a "
    "source redshift), 'known' (matched otherwise) or 'new' (no unit).",
    "literature_names": "Names of the matched literature lenses, ' | ' separated (no unit).",
    "grade_llr": "Grade contribution: A +2, B +1, C 0, N -2, ungraded 0 [dex of odds].",
    "image_llr": "Image contribution: 0.5 log10(n_scored / (score_rank + 1)) clipped to [0, 2] [dex of odds].",
    "spectral_llr": "Spectral contribution: +2 for a supporting hit, +2.5 for two or more [dex of odds].",
    "model_llr": "Lens-model contribution: passed vetting with theta_e >= 0.5 arcsec +0.5, passed with a smaller "
    "theta_e 0, failed vetting -1.5, no model 0 [dex of odds].",
    "literature_llr": "Literature contribution: confirmed +3, known +1, new 0 [dex of odds].",
    "evidence_score": "Ranking score: grade_llr + image_llr + spectral_llr + model_llr + literature_llr [dex of odds].",
    "category": "First that applies: 'spectroscopically supported', 'known lens', 'vetoed by model', "
    "'rejected by graders', 'imaging + model', 'imaging only' (no unit).",
}

VIEW_COMMENTS: dict[str, dict[str, str]] = {
    "lenscat.joint_evidence_all": {
        "": "Joint evidence of every source (image score, grades, spectral support, lens model, literature) "
        "with each contribution to the ranking score; see public.joint_evidence.",
        **_COLUMNS,
    },
    "public.joint_evidence": {
        "": "Joint evidence of the candidates (graded, with a spectral hit passing every veto, or modelled): "
        "one documented ranking score, evidence_score, as a sum of log10 likelihood-ratio-like contributions, "
        "each in its own column, and a category ('spectroscopically supported' is its own).",
        **_COLUMNS,
    },
}


def upgrade() -> None:
    op.execute(ALL_VIEW)
    op.execute(PUBLIC_VIEW)
    apply_comments(op, {}, VIEW_COMMENTS)
    grant_reader(op, ["public.joint_evidence"])


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS public.joint_evidence")
    op.execute("DROP VIEW IF EXISTS lenscat.joint_evidence_all")
