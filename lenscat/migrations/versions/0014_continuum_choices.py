"""Continuum choices: which continuum the line detectors subtract, per survey, from measured completeness.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

Design notes
------------
* The residual line search subtracts a continuum: the pipeline's own best-fit model (SDSS/BOSS
  ``model``, DESI redrock template) where the file has one, or the project's eigenspectrum +
  polynomial fit (:mod:`lenscat.spectra.continuum`). Which is better is measured, not assumed:
  ``lenscat spectra continuum choose`` runs the injection-recovery protocol of
  :func:`lenscat.spectra.evaluate.evaluate_protocol` with each continuum on the survey's early-type
  hosts and keeps one row per survey here (:mod:`lenscat.spectra.continuum_choice`).
* Detector registration snapshots the current choices into the version's hyper-parameters, so a
  detector version's hits never change meaning when the choice is re-measured later.
* Surveys never measured have no row; they use the pipeline model where the spectrum has one.
"""

from __future__ import annotations

from alembic import op

from lenscat.migrations.comments import apply_comments

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

COMMENTS: dict[str, dict[str, str]] = {
    "lenscat.continuum_choices": {
        "": "Continuum the spectral line detectors subtract, per survey, chosen by measured injection-recovery "
        "completeness and false-candidate rate.",
        "survey": "Spectrum survey: 'sdss', 'boss' or 'desi' (no unit).",
        "choice": "'pipeline' (the pipeline's best-fit model where the spectrum has one, else the project's fit) "
        "or 'fit' (always the project's eigenspectrum + polynomial fit) (no unit).",
        "reason": "Why this choice: the measured comparison, or that the survey's files carry no pipeline model "
        "(no unit).",
        "completeness_pipeline": "Fraction of injected lines with matched-filter S/N >= 8 found after the vetoes, "
        "with the pipeline continuum (dimensionless, 0-1; NULL when not measured).",
        "completeness_fit": "Same, with the project's continuum fit (dimensionless, 0-1).",
        "false_rate_pipeline": "Fraction of clean re-noised spectra with a false candidate after the vetoes, with "
        "the pipeline continuum (dimensionless, 0-1; NULL when not measured).",
        "false_rate_fit": "Same, with the project's continuum fit (dimensionless, 0-1).",
        "margin": "Largest increase in false-candidate rate accepted for higher completeness (dimensionless, 0-1).",
        "n_spectra": "Real early-type host spectra of the survey the realisations were drawn from [count].",
        "n_realisations": "Re-noised realisations per continuum [count].",
        "model_id": "Detector version measured (lenscat.model_versions, kind 'detector').",
        "detector": "Detector name@version measured (no unit).",
        "protocol": "Protocol settings: realisations, S/N, FWHM and skew ranges, seed (JSON).",
        "measured_at": "When the choice was measured [UTC timestamp].",
    },
}


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE lenscat.continuum_choices (
            survey text CONSTRAINT pk_continuum_choices PRIMARY KEY
                CONSTRAINT ck_continuum_choices_survey CHECK (survey IN ('sdss', 'boss', 'desi')),
            choice text NOT NULL CONSTRAINT ck_continuum_choices_choice CHECK (choice IN ('pipeline', 'fit')),
            reason text NOT NULL,
            completeness_pipeline real,
            completeness_fit real,
            false_rate_pipeline real,
            false_rate_fit real,
            margin real NOT NULL,
            n_spectra integer NOT NULL,
            n_realisations integer NOT NULL,
            model_id integer,
            detector text NOT NULL,
            protocol jsonb NOT NULL DEFAULT '{}',
            measured_at timestamptz NOT NULL DEFAULT now()
        )"""
    )
    apply_comments(op, COMMENTS)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS lenscat.continuum_choices")
