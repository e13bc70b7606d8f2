"""Background [OII] emitters: a second line family in the spectral hits, with its own vetoes.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

Design notes
------------
* The [OII] detector family (:mod:`lenscat.spectra.detector_oii`, architecture ``oii-filter``) finds
  the [OII] 3726,3729 doublet of a source behind the galaxy anywhere in the full 3600-10400 A range.
  Its hits go to the same ``lenscat.spectral_hits`` table as the Lyman-alpha hits, told apart by
  ``line`` ('lya' or 'oii'; existing rows are Lyman alpha), so scans, hit listings, evaluation and
  export work unchanged. For an [OII] hit ``wavelength`` is the observed mean doublet wavelength,
  ``z_source`` the doublet redshift and ``pixel`` the peak on the full-range grid (FULL).
* New measured columns: ``z_source_err``, ``doublet_ratio`` (+ error), ``doublet_dchi2`` (single
  Gaussian minus doublet chi^2), ``companion_snr`` (Hbeta or [OIII] at the same redshift). New
  veto flags: ``veto_doublet``, ``veto_interloper`` (false for Lyman-alpha hits),
  ``veto_foreground`` (both families: the feature sits on the galaxy's own lines) and ``veto_weak``
  (a Lyman-alpha candidate below S/N 5 both in detection and in the line fit). ``is_candidate`` in
  ``public.spectral_hits`` and the hit count of ``public.candidates`` include them.
* ``public.spectral_hits`` keeps its columns in their order; the new ones are appended.
"""

from __future__ import annotations

from alembic import op

from lenscat.migrations.comments import apply_comments

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

OLD_VETOES = "h.veto_oii OR h.veto_skew OR h.veto_overdensity"
NEW_VETOES = (
    "h.veto_oii OR h.veto_skew OR h.veto_overdensity OR h.veto_doublet OR h.veto_foreground "
    "OR h.veto_interloper OR h.veto_weak"
)

COMMENTS: dict[str, dict[str, str]] = {
    "lenscat.spectral_hits": {
        "line": "Line family of the hit: 'lya' (Lyman alpha, 3800-5000 A window) or 'oii' (the [OII] 3726,3729 "
        "doublet of a background source, full range) (no unit).",
        "pixel": "Pixel of the detection peak on the detector's grid, from 0: the 3800-5000 A window for 'lya', "
        "the 3600-10400 A full range for 'oii' [count].",
        "wavelength": "Observed vacuum wavelength from the line fit: the line peak ('lya') or the mean doublet "
        "wavelength 3728.48 (1 + z_source) ('oii') [Angstrom].",
        "z_source": "Source redshift: wavelength / 1215.67 - 1 ('lya'), or the fitted doublet redshift ('oii') "
        "(dimensionless).",
        "z_source_err": "Error of z_source from the doublet fit ('oii'; NULL for 'lya') (dimensionless).",
        "snr": "Detection S/N: matched-filter S/N (Lyman alpha, or the doublet filter for 'oii'; for a network's "
        "candidate the matched filter's within 4 px of its position) (dimensionless).",
        "line_flux": "Integrated line flux from the fit: skew-normal ('lya') or both doublet components ('oii') "
        "[1e-17 erg/s/cm^2].",
        "fwhm_kms": "Full width at half maximum of the fitted profile (each doublet component for 'oii') [km/s].",
        "doublet_ratio": "Fitted [OII] flux ratio F(3729) / F(3727), bounded to 0.3-1.5 ('oii') (dimensionless).",
        "doublet_ratio_err": "Error of doublet_ratio (dimensionless).",
        "doublet_dchi2": "chi^2 of a single Gaussian minus chi^2 of the doublet over the same pixels; > 0 when the "
        "doublet fits better ('oii') (dimensionless).",
        "companion_snr": "Largest S/N of Hbeta or [OIII] 4959+5007 at z_source where covered ('oii'; NULL when "
        "neither is covered) (dimensionless).",
        "veto_doublet": "True when a single narrow line is preferred to the [OII] doublet (cosmic ray, sky spike).",
        "veto_foreground": "True when the feature belongs to the foreground galaxy: for 'oii', z_source within "
        "6000 km/s of the galaxy or within 1000 km/s of one of its emission lines; for 'lya', the "
        "line within 600 km/s of one of the galaxy's own emission lines (Balmer, [OII], [NeIII], "
        "[OIII]...).",
        "veto_weak": "True when a Lyman-alpha candidate reaches S/N 5 neither in its detector's own S/N nor in the "
        "line fit (line_flux / line_flux_err): a network's probability alone is not a line.",
        "veto_interloper": "True when the feature is [OIII] 5007/4959, Hbeta or Halpha of a lower-redshift emitter "
        "(its partner line present at the expected position and flux ratio).",
        "veto_detail": "Veto measurements: S/N at the interloper positions, bin counts, doublet-fit and companion "
        "values (JSON).",
    },
}

VIEW_COMMENTS: dict[str, dict[str, str]] = {
    "public.spectral_hits": {
        "wavelength": "Observed wavelength of the line peak, or the mean [OII] doublet wavelength [Angstrom].",
        "z_source": "Source redshift (Lyman alpha, or the fitted [OII] doublet redshift).",
        "is_candidate": "True when no veto is set and the fit converged.",
        "line": "'lya' (Lyman alpha) or 'oii' ([OII] doublet of a background source).",
        "z_source_err": "Error of z_source ('oii').",
        "doublet_ratio": "[OII] F(3729) / F(3727) ('oii').",
        "doublet_ratio_err": "Error of doublet_ratio.",
        "doublet_dchi2": "chi^2(single Gaussian) - chi^2(doublet); > 0 favours the doublet.",
        "companion_snr": "Largest S/N of Hbeta or [OIII] at z_source ('oii').",
        "veto_doublet": "Single narrow line preferred to the doublet.",
        "veto_foreground": "Feature belongs to the foreground galaxy.",
        "veto_interloper": "Feature is a line of a lower-redshift emitter.",
        "veto_weak": "Lyman-alpha candidate below S/N 5 in both detection and line fit.",
    },
}

HITS_VIEW = """
    CREATE OR REPLACE VIEW public.spectral_hits AS
    SELECT h.hit_id, h.spectrum_id, m.name AS detector, m.version AS detector_version,
           h.model_id AS detector_id, h.wavelength, h.z_source, h.snr, h.prob, h.line_flux,
           h.line_flux_err, h.fwhm_kms, h.skew_alpha, h.skewness, h.veto_oii, h.veto_skew,
           h.veto_overdensity,
           (h.fit_ok AND NOT ({vetoes})) AS is_candidate,
           s.z AS z_lens, s.survey, s.spec_key, s.ra, s.dec, s.source_id, h.veto_detail,
           h.created_at{extra}
    FROM lenscat.spectral_hits h
    JOIN lenscat.model_versions m ON m.model_id = h.model_id
    JOIN lenscat.spectra s ON s.spectrum_id = h.spectrum_id"""

HITS_EXTRA = """, h.line, h.z_source_err, h.doublet_ratio, h.doublet_ratio_err, h.doublet_dchi2,
           h.companion_snr, h.veto_doublet, h.veto_foreground, h.veto_interloper, h.veto_weak"""

# public.candidates as 0006 created it, with the hit count's veto condition as a parameter
CANDIDATES_VIEW = """
    CREATE OR REPLACE VIEW public.candidates AS
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
          AND h.fit_ok AND NOT ({vetoes})
    ) sh ON true"""


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE lenscat.spectral_hits
            ADD COLUMN line text NOT NULL DEFAULT 'lya'
                CONSTRAINT ck_spectral_hits_line CHECK (line IN ('lya', 'oii')),
            ADD COLUMN z_source_err real,
            ADD COLUMN doublet_ratio real,
            ADD COLUMN doublet_ratio_err real,
            ADD COLUMN doublet_dchi2 real,
            ADD COLUMN companion_snr real,
            ADD COLUMN veto_doublet boolean NOT NULL DEFAULT false,
            ADD COLUMN veto_foreground boolean NOT NULL DEFAULT false,
            ADD COLUMN veto_interloper boolean NOT NULL DEFAULT false,
            ADD COLUMN veto_weak boolean NOT NULL DEFAULT false"""
    )
    op.execute(HITS_VIEW.format(vetoes=NEW_VETOES, extra=HITS_EXTRA))
    op.execute(CANDIDATES_VIEW.format(vetoes=NEW_VETOES))
    apply_comments(op, COMMENTS, VIEW_COMMENTS)
    op.execute(
        "COMMENT ON COLUMN public.candidates.n_spectral_hits IS 'Spectral line hits (Lyman alpha or "
        "background [OII]) passing every veto on spectra linked to the source [count].'"
    )


def downgrade() -> None:
    # the view loses its appended columns: drop and recreate it as 0005 made it
    op.execute("DROP VIEW IF EXISTS public.spectral_hits")
    op.execute(HITS_VIEW.format(vetoes=OLD_VETOES, extra=""))
    op.execute(CANDIDATES_VIEW.format(vetoes=OLD_VETOES))
    op.execute("DELETE FROM lenscat.spectral_hits WHERE line <> 'lya'")
    op.execute(
        """
        ALTER TABLE lenscat.spectral_hits
            DROP COLUMN line, DROP COLUMN z_source_err, DROP COLUMN doublet_ratio,
            DROP COLUMN doublet_ratio_err, DROP COLUMN doublet_dchi2, DROP COLUMN companion_snr,
            DROP COLUMN veto_doublet, DROP COLUMN veto_foreground, DROP COLUMN veto_interloper,
            DROP COLUMN veto_weak"""
    )
