"""Lens models: a modelling network's parameters, with calibrated uncertainties, per (source, model version).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

Design notes
------------
* ``lenscat.model_versions.kind`` gains ``'lensmodel'``: a network that predicts a singular isothermal
  ellipsoid with external shear (Einstein radius, ellipticity, shear, lens centre) and the unlensed
  source position from a cutout (issue 33). Every row of ``lenscat.lens_models`` references the
  version that made it, as scores and embeddings do; re-running a source with the same version
  replaces its row (natural key ``(model_id, source_id)``).
* Angles and positions are in a sky frame centred on the source's catalogue position: ``x`` grows
  towards the East (ΔRA·cos δ), ``y`` towards the North, both in arcsec. Ellipticity and shear use
  lenstronomy's components with the position angle φ measured from +x (East) towards +y (North):
  ``e1 = (1-q)/(1+q)·cos 2φ``, ``e2 = (1-q)/(1+q)·sin 2φ``, ``γ1 = γ·cos 2φ_γ``, ``γ2 = γ·sin 2φ_γ``.
  The view ``public.lens_models`` converts them to the axis ratio and the astronomer's position
  angle (degrees East of North, ``90° - φ``, modulo 180°).
* Each ``*_err`` column is the calibrated 1σ uncertainty (the half-width of a 68 % interval) after
  the version's calibration on held-out simulations; ``hparams`` of the version records the factors.
* ``vet_flags`` lists the reasons a model failed vetting (empty: passed); ``vet_detail`` holds the
  numbers behind them (:mod:`lenscat.modelling.vetting`).
* No foreign keys to sources or model versions, as ``lenscat.scores`` (bulk writes from workers,
  deletions handled by the services).
"""

from __future__ import annotations

from alembic import op

from lenscat.migrations.comments import apply_comments, grant_reader

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_ERR = "Calibrated 1-sigma uncertainty of {what} (half-width of the 68 % interval) [{unit}]."

COMMENTS: dict[str, dict[str, str]] = {
    "lenscat.lens_models": {
        "": "Lens model of a source by a modelling network version (SIE + external shear + source position), "
        "with calibrated uncertainties and the vetting verdict.",
        "model_id": "Modelling network version (lenscat.model_versions, kind 'lensmodel').",
        "source_id": "Modelled source (lenscat.sources).",
        "theta_e": "Einstein radius [arcsec].",
        "theta_e_err": _ERR.format(what="theta_e", unit="arcsec"),
        "e1": "Mass ellipticity component e1 = (1-q)/(1+q) cos 2phi, phi from East towards North (dimensionless).",
        "e1_err": _ERR.format(what="e1", unit="dimensionless"),
        "e2": "Mass ellipticity component e2 = (1-q)/(1+q) sin 2phi (dimensionless).",
        "e2_err": _ERR.format(what="e2", unit="dimensionless"),
        "gamma1": "External shear component gamma1 = gamma cos 2phi_gamma, phi from East towards North "
        "(dimensionless).",
        "gamma1_err": _ERR.format(what="gamma1", unit="dimensionless"),
        "gamma2": "External shear component gamma2 = gamma sin 2phi_gamma (dimensionless).",
        "gamma2_err": _ERR.format(what="gamma2", unit="dimensionless"),
        "center_x": "Lens centre East of the catalogue position (delta RA cos dec) [arcsec].",
        "center_x_err": _ERR.format(what="center_x", unit="arcsec"),
        "center_y": "Lens centre North of the catalogue position [arcsec].",
        "center_y_err": _ERR.format(what="center_y", unit="arcsec"),
        "source_x": "Unlensed source position East of the catalogue position [arcsec].",
        "source_x_err": _ERR.format(what="source_x", unit="arcsec"),
        "source_y": "Unlensed source position North of the catalogue position [arcsec].",
        "source_y_err": _ERR.format(what="source_y", unit="arcsec"),
        "arc_mag": "AB magnitude of the lensed light left after subtracting the lens galaxy, in arc_band, "
        "measured where the model puts the images (NULL when not measurable) [mag].",
        "arc_band": "Band of arc_mag (no unit).",
        "vet_flags": "Reasons the model failed vetting; empty when it passed (no unit).",
        "vet_detail": "Numbers behind the vetting verdict (JSON).",
        "job_id": "Job that wrote the row (lenscat.jobs), NULL when written outside a job.",
        "created_at": "When the row was written [UTC timestamp].",
    },
}

VIEW_COMMENTS: dict[str, dict[str, str]] = {
    "public.lens_models": {
        "": "Lens models with the network's name and version, the axis ratio and position angles derived from "
        "the stored components, and whether the model passed vetting.",
        "lens_model": "Modelling network name@version (no unit).",
        "q": "Mass axis ratio b/a derived from e1, e2 (dimensionless, 0-1].",
        "pa_deg": "Position angle of the mass major axis, East of North [deg, 0-180).",
        "gamma_ext": "External shear strength sqrt(gamma1^2 + gamma2^2) (dimensionless).",
        "gamma_pa_deg": "Position angle of the external shear, East of North [deg, 0-180).",
        "passed_vetting": "True when vet_flags is empty (no unit).",
    },
}


def upgrade() -> None:
    op.execute("ALTER TABLE lenscat.model_versions DROP CONSTRAINT ck_model_versions_kind")
    op.execute(
        "ALTER TABLE lenscat.model_versions ADD CONSTRAINT ck_model_versions_kind "
        "CHECK (kind IN ('encoder', 'classifier', 'detector', 'lensmodel'))"
    )
    op.execute(
        """
        CREATE TABLE lenscat.lens_models (
            model_id integer NOT NULL,
            source_id bigint NOT NULL,
            theta_e real NOT NULL CONSTRAINT ck_lens_models_theta_e CHECK (theta_e >= 0),
            theta_e_err real NOT NULL CONSTRAINT ck_lens_models_theta_e_err CHECK (theta_e_err >= 0),
            e1 real NOT NULL,
            e1_err real NOT NULL,
            e2 real NOT NULL,
            e2_err real NOT NULL,
            gamma1 real NOT NULL,
            gamma1_err real NOT NULL,
            gamma2 real NOT NULL,
            gamma2_err real NOT NULL,
            center_x real NOT NULL,
            center_x_err real NOT NULL,
            center_y real NOT NULL,
            center_y_err real NOT NULL,
            source_x real NOT NULL,
            source_x_err real NOT NULL,
            source_y real NOT NULL,
            source_y_err real NOT NULL,
            arc_mag real,
            arc_band text,
            vet_flags text[] NOT NULL DEFAULT '{}',
            vet_detail jsonb NOT NULL DEFAULT '{}',
            job_id bigint,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_lens_models PRIMARY KEY (model_id, source_id)
        )"""
    )
    op.execute("CREATE INDEX ix_lens_models_source ON lenscat.lens_models (source_id)")
    op.execute(
        """
        CREATE VIEW public.lens_models AS
        SELECT l.source_id, l.model_id, m.name || '@' || m.version AS lens_model,
               l.theta_e, l.theta_e_err, l.e1, l.e1_err, l.e2, l.e2_err,
               ((1 - least(sqrt(l.e1 * l.e1 + l.e2 * l.e2), 0.999))
                / (1 + least(sqrt(l.e1 * l.e1 + l.e2 * l.e2), 0.999)))::real AS q,
               mod((90 - degrees(0.5 * atan2(l.e2, l.e1)) + 360)::numeric, 180)::real AS pa_deg,
               l.gamma1, l.gamma1_err, l.gamma2, l.gamma2_err,
               sqrt(l.gamma1 * l.gamma1 + l.gamma2 * l.gamma2)::real AS gamma_ext,
               mod((90 - degrees(0.5 * atan2(l.gamma2, l.gamma1)) + 360)::numeric, 180)::real AS gamma_pa_deg,
               l.center_x, l.center_x_err, l.center_y, l.center_y_err,
               l.source_x, l.source_x_err, l.source_y, l.source_y_err,
               l.arc_mag, l.arc_band, l.vet_flags, cardinality(l.vet_flags) = 0 AS passed_vetting,
               l.vet_detail, l.job_id, l.created_at
        FROM lenscat.lens_models l
        JOIN lenscat.model_versions m ON m.model_id = l.model_id"""
    )
    apply_comments(op, COMMENTS, VIEW_COMMENTS)
    grant_reader(op, ["public.lens_models"])


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS public.lens_models")
    op.execute("DROP TABLE IF EXISTS lenscat.lens_models")
    op.execute("DELETE FROM lenscat.model_versions WHERE kind = 'lensmodel'")
    op.execute("ALTER TABLE lenscat.model_versions DROP CONSTRAINT ck_model_versions_kind")
    op.execute(
        "ALTER TABLE lenscat.model_versions ADD CONSTRAINT ck_model_versions_kind "
        "CHECK (kind IN ('encoder', 'classifier', 'detector'))"
    )
