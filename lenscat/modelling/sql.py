"""SQL of the lens-model domain: the upsert of ``lenscat.lens_models`` and its reads."""

from __future__ import annotations

from lenscat.modelling.types import PARAMS

VALUE_COLUMNS: tuple[str, ...] = tuple(c for p in PARAMS for c in (p, f"{p}_err"))
"""The parameter and uncertainty columns, in table order."""

ROW_COLUMNS: tuple[str, ...] = (
    "model_id",
    "source_id",
    *VALUE_COLUMNS,
    "arc_mag",
    "arc_band",
    "vet_flags",
    "vet_detail",
    "job_id",
)
"""Columns one stored row provides (``created_at`` is set by the database)."""

CREATE_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS lens_models_stage "
    "(LIKE lenscat.lens_models INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
TRUNCATE_STAGE = "TRUNCATE lens_models_stage"
COPY_STAGE = f"COPY lens_models_stage ({', '.join(ROW_COLUMNS)}) FROM STDIN"

_UPDATED = [c for c in ROW_COLUMNS if c not in ("model_id", "source_id")]
UPSERT_FROM_STAGE = f"""
INSERT INTO lenscat.lens_models AS l ({", ".join(ROW_COLUMNS)})
SELECT DISTINCT ON (model_id, source_id) {", ".join(ROW_COLUMNS)} FROM lens_models_stage
ORDER BY model_id, source_id
ON CONFLICT ON CONSTRAINT pk_lens_models DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in _UPDATED)}, created_at = now()
WHERE ({", ".join(f"l.{c}" for c in _UPDATED)}) IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in _UPDATED)})
"""
"""One upsert on the natural key; a re-run with identical values leaves the row (and created_at) alone."""

_SELECT = f"""
SELECT l.{", l.".join(ROW_COLUMNS)}, l.created_at, m.name || '@' || m.version AS lens_model
FROM lenscat.lens_models l JOIN lenscat.model_versions m ON m.model_id = l.model_id
"""

LATEST_FOR_SOURCES = f"""
SELECT DISTINCT ON (l.source_id) l.{", l.".join(ROW_COLUMNS)}, l.created_at, m.name || '@' || m.version AS lens_model
FROM lenscat.lens_models l JOIN lenscat.model_versions m ON m.model_id = l.model_id
WHERE l.source_id = ANY(:sids) AND m.kind = 'lensmodel'
ORDER BY l.source_id, m.created_at DESC, m.model_id DESC
"""
"""Per source, the row of the most recently registered lensmodel version that modelled it (one query)."""

FOR_SOURCE_AND_MODEL = _SELECT + "WHERE l.source_id = :sid AND l.model_id = :mid"

TOP_FOR_MODEL = _SELECT + "WHERE l.model_id = :mid ORDER BY l.theta_e DESC, l.source_id LIMIT :n"
"""Rows of one version, largest Einstein radius first."""

FOR_MODEL_AND_IDS = _SELECT + "WHERE l.model_id = :mid AND l.source_id = ANY(:sids) ORDER BY l.source_id"

COUNT_FOR_MODEL = "SELECT count(*) FROM lenscat.lens_models WHERE model_id = :mid"

ANALYZE = "ANALYZE lenscat.lens_models"

SOURCES_WITH_GRADES = (
    "SELECT source_id FROM public.grade_consensus WHERE consensus_grade = ANY(:grades) ORDER BY source_id"
)
"""Sources whose consensus grade is one of ``:grades``."""

JOB_IDS_IN_RANGE = (
    "SELECT DISTINCT x::bigint AS id FROM lenscat.jobs j, jsonb_array_elements_text(j.params -> 'source_ids') x "
    "WHERE j.job_id = :j AND x::bigint BETWEEN :lo AND :hi ORDER BY 1"
)
"""The sources of a lensmodel job within a chunk's id range."""

JOB_MODEL = (
    "SELECT model_id, COALESCE((params ->> 'refine')::boolean, false) AS refine FROM lenscat.jobs WHERE job_id = :j"
)
"""A lensmodel job's model and whether it refines by forward-model fitting (``params.refine``)."""

SELECTED_IDS = "SELECT unnest(CAST(:ids AS bigint[])) AS id"
"""The id query of :func:`lenscat.jobs.service.plan_chunks` over a fixed selection."""

LATEST_VERSION = (
    "SELECT model_id FROM lenscat.model_versions WHERE kind = 'lensmodel' "
    "ORDER BY created_at DESC, model_id DESC LIMIT 1"
)

SOURCE_PSF_FWHM = """
SELECT source_id,
       CASE WHEN jsonb_typeof(extra -> 'psf_fwhm_g') = 'number' THEN (extra ->> 'psf_fwhm_g')::float8 END AS g,
       CASE WHEN jsonb_typeof(extra -> 'psf_fwhm_r') = 'number' THEN (extra ->> 'psf_fwhm_r')::float8 END AS r
FROM lenscat.sources WHERE source_id = ANY(:ids) AND extra IS NOT NULL
"""
"""Per-source g and r PSF FWHM [arcsec] that a catalogue kept in ``extra`` (``psf_fwhm_<band>``)."""
