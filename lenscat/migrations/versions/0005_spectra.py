"""Spectra: one row per ingested spectrum, the packed array store, detector scans and line hits.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

Design notes
------------
* ``lenscat.spectra`` has one row per spectrum, keyed by (survey, spec_key): ``PLATE-MJD-FIBER``
  for SDSS/BOSS, the TARGETID (with program or tile) for DESI. It keeps the fiber position with the
  same zone sky index as sources, the pipeline redshift and class, the file it came from, and the
  nearest catalogue source within the link radius.
* The pixels do not live in Postgres: each spectrum's search window (BOSS log-lambda pixels,
  3800-5000 A) and a red veto range (4900-8850 A) are packed once into an HDF5 array store
  (``lenscat.spectrum_packs``), and ``pack_row`` points at the spectrum's row, so scans read
  contiguous float32 arrays at memory speed instead of parsing FITS.
* ``lenscat.spectral_scans`` records that a detector version looked at a spectrum (one row per
  (detector, spectrum), with the best S/N or probability even when nothing was found), so re-running
  a scan only does the spectra not yet scanned, and a new detector version rescans everything.
* ``lenscat.spectral_hits`` holds candidate lines, keyed by (detector, spectrum, pixel of the peak):
  the line fit (skew-normal + continuum) and the veto flags.
* Spectrum files that cannot be read are kept in ``lenscat.ingests`` (kind 'spectra', status
  'failed', with the reason), so a batch never aborts on one bad file and nothing is dropped silently.
"""

from __future__ import annotations

from alembic import op

from lenscat.migrations.comments import apply_comments, comment_sql, grant_reader

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ZONE_EXPR = "(floor((dec + 90.0) * 60.0))::integer"

COMMENTS: dict[str, dict[str, str]] = {
    "lenscat.spectrum_packs": {
        "": "Array stores (HDF5) holding the packed search window of ingested spectra.",
        "pack_id": "Primary key.",
        "name": "Store name chosen at ingest (default 'default') (no unit).",
        "path": "Absolute path of the HDF5 file (no unit).",
        "window_k0": "log10(lambda/Angstrom) of the first window pixel divided by dlog [count].",
        "window_n": "Number of window pixels [count].",
        "veto_k0": "log10(lambda/Angstrom) of the first veto-range pixel divided by dlog [count].",
        "veto_n": "Number of veto-range pixels [count].",
        "dlog": "Pixel width in log10(lambda/Angstrom) (dimensionless).",
        "n_rows": "Rows committed to the store [count].",
        "created_at": "When the store was created [UTC timestamp].",
    },
    "lenscat.spectra": {
        "": "One row per ingested spectrum (SDSS/BOSS fiber or DESI target).",
        "spectrum_id": "Primary key.",
        "survey": "'sdss' (spec-PLATE-MJD-FIBER files), 'boss' (spPlate rows) or 'desi' (no unit).",
        "spec_key": "Natural key within the survey: PLATE-MJD-FIBER, or the DESI TARGETID with program/tile (no unit).",
        "plate": "SDSS/BOSS plate number (no unit).",
        "mjd": "SDSS/BOSS modified Julian date of the plate [day].",
        "fiber": "SDSS/BOSS fiber number (no unit).",
        "targetid": "DESI TARGETID (no unit).",
        "ra": "Fiber right ascension, ICRS [deg].",
        "dec": "Fiber declination, ICRS [deg].",
        "zone": "Sky-index zone: floor((dec + 90) * 60), 1 arcmin declination stripes [count].",
        "z": "Pipeline redshift of the (foreground) galaxy (dimensionless).",
        "z_err": "Error of z (dimensionless).",
        "spec_class": "Pipeline class: GALAXY, QSO, STAR (no unit).",
        "subclass": "Pipeline subclass (no unit).",
        "source_id": "Nearest catalogue source (lenscat.sources) within the link radius, if any.",
        "source_sep_arcsec": "Separation between fiber and linked source [arcsec].",
        "file_path": "Absolute path of the file the spectrum was read from (no unit).",
        "file_row": "Row of the spectrum within its file, from 0 [count].",
        "pack_id": "Array store holding the packed pixels (lenscat.spectrum_packs).",
        "pack_row": "Row within the array store, from 0 [count].",
        "ivar_estimated": "True when the file had no inverse variance and it was estimated from the pixel scatter.",
        "window_coverage": "Fraction of window pixels with ivar > 0 (dimensionless).",
        "window_snr": "Median continuum S/N per pixel in the window (dimensionless).",
        "meta": "Other pipeline values: velocity dispersion [km/s], zwarning, program... (JSON).",
        "ingest_id": "Ingest (lenscat.ingests) that wrote the row.",
        "created_at": "When the row was first written [UTC timestamp].",
        "updated_at": "When the row last changed [UTC timestamp].",
    },
    "lenscat.spectral_scans": {
        "": "Which detector version has scanned which spectrum, with its best statistic.",
        "model_id": "Detector version (lenscat.model_versions, kind 'detector').",
        "spectrum_id": "Spectrum (lenscat.spectra).",
        "n_hits": "Candidate lines found [count].",
        "best_stat": "Highest S/N (matched filter) or probability (ResNet) over the window (dimensionless).",
        "job_id": "Job that wrote the row.",
        "scanned_at": "When the spectrum was scanned [UTC timestamp].",
    },
    "lenscat.spectral_hits": {
        "": "Candidate background emission lines found by a detector version in a spectrum.",
        "hit_id": "Primary key.",
        "model_id": "Detector version (lenscat.model_versions, kind 'detector').",
        "spectrum_id": "Spectrum (lenscat.spectra).",
        "pixel": "Window pixel of the detection peak, from 0 [count].",
        "wavelength": "Observed vacuum wavelength of the line peak, from the line fit [Angstrom].",
        "wavelength_err": "Error of wavelength [Angstrom].",
        "z_source": "Source redshift if the line is Lyman alpha: wavelength / 1215.67 - 1 (dimensionless).",
        "snr": "Detection S/N: matched-filter S/N, or line flux / error of the fit for the ResNet (dimensionless).",
        "prob": "ResNet probability that the spectrum holds a background line, in [0, 1]; NULL for the matched filter.",
        "line_flux": "Integrated line flux from the skew-normal fit [1e-17 erg/s/cm^2].",
        "line_flux_err": "Error of line_flux [1e-17 erg/s/cm^2].",
        "fwhm_kms": "Full width at half maximum of the fitted profile [km/s].",
        "skew_alpha": "Skew-normal shape parameter; > 0 = red tail, as for Lyman alpha (dimensionless).",
        "skewness": "Third standardised moment of the fitted profile (dimensionless).",
        "fit_chi2": "Reduced chi^2 of the line fit (dimensionless).",
        "fit_ok": "True when the line fit converged to finite values.",
        "veto_oii": (
            "True when emission at 1.3042, 1.3432 or 1.7607 x wavelength (Hbeta, [OIII], Halpha) "
            "marks the line as an [OII] interloper."
        ),
        "veto_skew": "True when the line is skewed to the blue (unlike Lyman alpha).",
        "veto_overdensity": (
            "True when the wavelength is over-populated by hits across the survey (sky or template residual)."
        ),
        "veto_detail": "Veto measurements: S/N at the interloper positions, bin counts (JSON).",
        "job_id": "Job that wrote the row.",
        "created_at": "When the hit was first written [UTC timestamp].",
    },
}

VIEW_COMMENTS: dict[str, dict[str, str]] = {
    "public.spectra": {
        "": "Ingested spectra (documented user view).",
        "spectrum_id": "Spectrum id.",
        "survey": "'sdss', 'boss' or 'desi'.",
        "spec_key": "PLATE-MJD-FIBER or DESI TARGETID key.",
        "plate": "SDSS/BOSS plate.",
        "mjd": "SDSS/BOSS MJD [day].",
        "fiber": "SDSS/BOSS fiber.",
        "targetid": "DESI TARGETID.",
        "ra": "Fiber RA, ICRS [deg].",
        "dec": "Fiber Dec, ICRS [deg].",
        "z": "Pipeline redshift of the galaxy.",
        "z_err": "Error of z.",
        "spec_class": "Pipeline class.",
        "subclass": "Pipeline subclass.",
        "source_id": "Linked catalogue source, if any.",
        "source_sep_arcsec": "Fiber-source separation [arcsec].",
        "file_path": "Source file.",
        "file_row": "Row within the file.",
        "pack": "Array store name.",
        "pack_row": "Row within the array store.",
        "window_coverage": "Fraction of good window pixels.",
        "window_snr": "Median continuum S/N per pixel in the window.",
        "ivar_estimated": "True when ivar was estimated from the scatter.",
        "meta": "Other pipeline values (JSON).",
        "created_at": "First written [UTC timestamp].",
    },
    "public.spectral_hits": {
        "": "Candidate background emission lines per spectrum and detector (documented user view).",
        "hit_id": "Hit id.",
        "spectrum_id": "Spectrum id.",
        "detector": "Detector name.",
        "detector_version": "Detector version.",
        "detector_id": "Detector model version id.",
        "wavelength": "Observed wavelength of the line peak [Angstrom].",
        "z_source": "Source redshift if the line is Lyman alpha.",
        "snr": "Detection S/N.",
        "prob": "ResNet probability in [0, 1] (NULL for the matched filter).",
        "line_flux": "Line flux [1e-17 erg/s/cm^2].",
        "line_flux_err": "Error of line_flux [1e-17 erg/s/cm^2].",
        "fwhm_kms": "Line FWHM [km/s].",
        "skew_alpha": "Skew-normal shape (> 0 = red tail).",
        "skewness": "Third standardised moment of the profile.",
        "veto_oii": "[OII] interloper veto.",
        "veto_skew": "Blue-skew veto.",
        "veto_overdensity": "Survey wavelength over-density veto.",
        "is_candidate": "True when no veto is set and the fit converged.",
        "z_lens": "Pipeline redshift of the foreground galaxy.",
        "survey": "Spectrum survey.",
        "spec_key": "Spectrum key.",
        "ra": "Fiber RA [deg].",
        "dec": "Fiber Dec [deg].",
        "source_id": "Linked catalogue source, if any.",
        "veto_detail": "Veto measurements (JSON).",
        "created_at": "First written [UTC timestamp].",
    },
}


def upgrade() -> None:
    # a matched filter is a version by its configuration: origin 'configured'
    op.execute("ALTER TABLE lenscat.model_versions DROP CONSTRAINT ck_model_versions_origin")
    op.execute(
        "ALTER TABLE lenscat.model_versions ADD CONSTRAINT ck_model_versions_origin "
        "CHECK (origin IN ('trained', 'imported', 'external', 'initialised', 'configured'))"
    )
    op.execute("ALTER TABLE lenscat.ingests DROP CONSTRAINT ck_ingests_kind")
    op.execute(
        "ALTER TABLE lenscat.ingests ADD CONSTRAINT ck_ingests_kind "
        "CHECK (kind IN ('sources', 'literature', 'spectra'))"
    )
    op.execute(
        """
        CREATE TABLE lenscat.spectrum_packs (
            pack_id integer GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_spectrum_packs PRIMARY KEY,
            name text NOT NULL CONSTRAINT uq_spectrum_packs_name UNIQUE,
            path text NOT NULL,
            window_k0 integer NOT NULL,
            window_n integer NOT NULL,
            veto_k0 integer NOT NULL,
            veto_n integer NOT NULL,
            dlog double precision NOT NULL,
            n_rows bigint NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now()
        )"""
    )
    op.execute(
        f"""
        CREATE TABLE lenscat.spectra (
            spectrum_id bigint GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_spectra PRIMARY KEY,
            survey text NOT NULL CONSTRAINT ck_spectra_survey CHECK (survey IN ('sdss', 'boss', 'desi')),
            spec_key text NOT NULL,
            plate integer,
            mjd integer,
            fiber integer,
            targetid bigint,
            ra double precision CONSTRAINT ck_spectra_ra CHECK (ra >= 0 AND ra < 360),
            dec double precision CONSTRAINT ck_spectra_dec CHECK (dec BETWEEN -90 AND 90),
            zone integer GENERATED ALWAYS AS ({ZONE_EXPR}) STORED,
            z real,
            z_err real,
            spec_class text,
            subclass text,
            source_id bigint,
            source_sep_arcsec real,
            file_path text NOT NULL,
            file_row integer NOT NULL,
            pack_id integer NOT NULL CONSTRAINT fk_spectra_pack REFERENCES lenscat.spectrum_packs,
            pack_row bigint NOT NULL,
            ivar_estimated boolean NOT NULL DEFAULT false,
            window_coverage real,
            window_snr real,
            meta jsonb NOT NULL DEFAULT '{{}}',
            ingest_id integer,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT uq_spectra_survey_key UNIQUE (survey, spec_key)
        )"""
    )
    op.execute("CREATE INDEX ix_spectra_zone_ra ON lenscat.spectra (zone, ra)")
    op.execute("CREATE INDEX ix_spectra_source ON lenscat.spectra (source_id)")
    op.execute("CREATE INDEX ix_spectra_pack_row ON lenscat.spectra (pack_id, pack_row)")
    op.execute(
        """
        CREATE TABLE lenscat.spectral_scans (
            model_id integer NOT NULL,
            spectrum_id bigint NOT NULL,
            n_hits integer NOT NULL,
            best_stat real,
            job_id bigint,
            scanned_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_spectral_scans PRIMARY KEY (model_id, spectrum_id)
        )"""
    )
    op.execute(
        """
        CREATE TABLE lenscat.spectral_hits (
            hit_id bigint GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_spectral_hits PRIMARY KEY,
            model_id integer NOT NULL,
            spectrum_id bigint NOT NULL,
            pixel integer NOT NULL,
            wavelength double precision NOT NULL,
            wavelength_err real,
            z_source real,
            snr real,
            prob real CONSTRAINT ck_spectral_hits_prob CHECK (prob >= 0 AND prob <= 1),
            line_flux real,
            line_flux_err real,
            fwhm_kms real,
            skew_alpha real,
            skewness real,
            fit_chi2 real,
            fit_ok boolean NOT NULL DEFAULT false,
            veto_oii boolean NOT NULL DEFAULT false,
            veto_skew boolean NOT NULL DEFAULT false,
            veto_overdensity boolean NOT NULL DEFAULT false,
            veto_detail jsonb NOT NULL DEFAULT '{}',
            job_id bigint,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT uq_spectral_hits_model_spectrum_pixel UNIQUE (model_id, spectrum_id, pixel)
        )"""
    )
    op.execute("CREATE INDEX ix_spectral_hits_spectrum ON lenscat.spectral_hits (spectrum_id)")
    op.execute("CREATE INDEX ix_spectral_hits_model_snr ON lenscat.spectral_hits (model_id, snr DESC)")
    op.execute(
        """
        CREATE VIEW public.spectra AS
        SELECT s.spectrum_id, s.survey, s.spec_key, s.plate, s.mjd, s.fiber, s.targetid, s.ra, s.dec,
               s.z, s.z_err, s.spec_class, s.subclass, s.source_id, s.source_sep_arcsec,
               s.file_path, s.file_row, p.name AS pack, s.pack_row, s.window_coverage, s.window_snr,
               s.ivar_estimated, s.meta, s.created_at
        FROM lenscat.spectra s JOIN lenscat.spectrum_packs p USING (pack_id)"""
    )
    op.execute(
        """
        CREATE VIEW public.spectral_hits AS
        SELECT h.hit_id, h.spectrum_id, m.name AS detector, m.version AS detector_version,
               h.model_id AS detector_id, h.wavelength, h.z_source, h.snr, h.prob, h.line_flux,
               h.line_flux_err, h.fwhm_kms, h.skew_alpha, h.skewness, h.veto_oii, h.veto_skew,
               h.veto_overdensity,
               (h.fit_ok AND NOT (h.veto_oii OR h.veto_skew OR h.veto_overdensity)) AS is_candidate,
               s.z AS z_lens, s.survey, s.spec_key, s.ra, s.dec, s.source_id, h.veto_detail,
               h.created_at
        FROM lenscat.spectral_hits h
        JOIN lenscat.model_versions m ON m.model_id = h.model_id
        JOIN lenscat.spectra s ON s.spectrum_id = h.spectrum_id"""
    )
    for stmt in comment_sql(
        "lenscat.model_versions",
        {
            "origin": "'trained', 'imported', 'external', "
            "'initialised' or 'configured' (a matched filter's settings) (no unit)."
        },
    ):
        op.execute(stmt)
    apply_comments(op, COMMENTS, VIEW_COMMENTS)
    grant_reader(op, ["public.spectra", "public.spectral_hits"])


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS public.spectral_hits")
    op.execute("DROP VIEW IF EXISTS public.spectra")
    op.execute("DROP TABLE IF EXISTS lenscat.spectral_hits")
    op.execute("DROP TABLE IF EXISTS lenscat.spectral_scans")
    op.execute("DROP TABLE IF EXISTS lenscat.spectra")
    op.execute("DROP TABLE IF EXISTS lenscat.spectrum_packs")
    op.execute("DELETE FROM lenscat.ingests WHERE kind = 'spectra'")
    op.execute("DELETE FROM lenscat.model_versions WHERE origin = 'configured'")
    op.execute("ALTER TABLE lenscat.model_versions DROP CONSTRAINT ck_model_versions_origin")
    op.execute(
        "ALTER TABLE lenscat.model_versions ADD CONSTRAINT ck_model_versions_origin "
        "CHECK (origin IN ('trained', 'imported', 'external', 'initialised'))"
    )
    op.execute("ALTER TABLE lenscat.ingests DROP CONSTRAINT ck_ingests_kind")
    op.execute("ALTER TABLE lenscat.ingests ADD CONSTRAINT ck_ingests_kind CHECK (kind IN ('sources', 'literature'))")
