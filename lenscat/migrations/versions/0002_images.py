"""Images: model versions (encoders first), pgvector embeddings, jobs and their chunks.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Design notes
------------
* ``lenscat.model_versions`` is the provenance row every derived number points at: encoders now,
  classifiers and spectral detectors in later revisions (``kind``). A (kind, name) has numbered
  versions; registering the same checkpoint (same sha256) under the same name again is a no-op.
* ``lenscat.embeddings`` stores one L2-normalised vector per (model, source) as ``halfvec`` without
  a fixed dimension (``halfvec`` indexes up to 4,000 dimensions, so ResNet-50's 2048 fit). HNSW
  indexes are **partial expression indexes, one per encoder version**, e.g.
  ``CREATE INDEX ix_embeddings_hnsw_m7 ON lenscat.embeddings
  USING hnsw ((embedding::halfvec(128)) halfvec_cosine_ops) WHERE model_id = 7``, so encoders never
  share an index. They depend on data (which encoders exist, and their dimension), so
  ``lenscat.embeddings.vectors.ensure_hnsw_index`` builds them after an embedding run instead of a
  migration; they are the only objects created outside alembic.
* Like ``lenscat.sources``, ``lenscat.embeddings`` has no per-row foreign keys: at 10^8-10^9 rows
  the FK triggers would dominate bulk writes. Model and source rows are never deleted.
* ``lenscat.jobs`` and ``lenscat.job_chunks`` hold the progress of work done by Celery workers; the
  CLI's progress bars read them. A chunk is a source_id range, so 10^9 sources need ~10^6 rows.
"""

from __future__ import annotations

from alembic import op

from lenscat.migrations.comments import apply_comments, comment_sql, grant_reader

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CUTOUT_FILE_COMMENTS = {
    "member_paths": "For a cutout spread over several FITS files (one per band): all of them, in band order (no unit).",
    "bands": "Band names of the cutout planes, in order (no unit).",
    "pixel_scale_arcsec": "Pixel scale of the cutouts [arcsec/pixel].",
}

COMMENTS: dict[str, dict[str, str]] = {
    "lenscat.model_versions": {
        "": "Versioned models (encoders, classifiers, detectors): the provenance of every embedding and score.",
        "model_id": "Primary key.",
        "kind": "'encoder', 'classifier' or 'detector' (no unit).",
        "name": "Model name chosen by the user, e.g. 'moco-small' (no unit).",
        "version": "Version number within (kind, name), from 1 [count].",
        "architecture": "Architecture, e.g. 'resnet50', 'resnet-small', 'external' (no unit).",
        "output_dim": "Length of the output vector (embedding dimension for encoders) [count].",
        "checkpoint_path": "Absolute path of the checkpoint file (no unit).",
        "checkpoint_sha256": "SHA-256 of the checkpoint file, or of the vectors file for external embeddings (hex).",
        "hparams": "Hyper-parameters (JSON, units in the key names).",
        "training_set_sha256": "SHA-256 of the training set description (sources and files used) (hex).",
        "parent_model_id": "Model this one builds on (a classifier's encoder), if any.",
        "origin": "'trained', 'imported', 'external' or 'initialised' (no unit).",
        "input_spec": "What the model expects: bands, pixel scale [arcsec], cutout size [px], preprocessing (JSON).",
        "metrics": "Training metrics, e.g. final loss, time [s] (JSON).",
        "description": "Free-text description (no unit).",
        "created_at": "When the version was registered [UTC timestamp].",
    },
    "lenscat.embeddings": {
        "": "One L2-normalised image embedding per (encoder version, source).",
        "model_id": "Encoder version (lenscat.model_versions) that made the vector.",
        "source_id": "Catalogue source (lenscat.sources).",
        "embedding": "Unit-length embedding vector, half precision (dimensionless).",
        "job_id": "Job that wrote the vector (NULL for an ingest of precomputed vectors).",
        "created_at": "When the vector was written [UTC timestamp].",
    },
    "lenscat.jobs": {
        "": "Work submitted to Celery workers, with progress counters.",
        "job_id": "Primary key.",
        "kind": "'embed' (later: 'score', 'scan') (no unit).",
        "model_id": "Model version the job runs.",
        "params": "Job options (JSON).",
        "status": "'queued', 'running', 'done', 'failed' or 'cancelled' (no unit).",
        "n_items": "Items (sources, spectra) the job covers [count].",
        "n_done": "Items finished [count].",
        "n_chunks": "Chunks the job was split into [count].",
        "created_at": "When the job was submitted [UTC timestamp].",
        "finished_at": "When the last chunk finished [UTC timestamp].",
        "message": "Summary or error message (no unit).",
    },
    "lenscat.job_chunks": {
        "": "One Celery task's share of a job: a source_id range.",
        "job_id": "Job (lenscat.jobs).",
        "chunk_no": "Chunk number within the job, from 0 [count].",
        "lo_id": "First item id of the range, inclusive (no unit).",
        "hi_id": "Last item id of the range, inclusive (no unit).",
        "n_items": "Items in the range when the job was planned [count].",
        "n_written": "Items written by the run that finished the chunk [count].",
        "status": "'queued', 'running', 'done' or 'failed' (no unit).",
        "attempts": "Times a worker started this chunk [count].",
        "worker": "Hostname and pid of the worker of the latest attempt (no unit).",
        "started_at": "Start of the latest attempt [UTC timestamp].",
        "finished_at": "When the chunk finished [UTC timestamp].",
        "seconds": "Wall time of the finishing attempt [s].",
        "error": "Last error message (no unit).",
    },
}

VIEW_COMMENTS: dict[str, dict[str, str]] = {
    "public.encoders": {
        "": "Encoder versions (documented user view).",
        "encoder_id": "Model version id (model_versions.model_id).",
        "encoder": "Encoder name.",
        "version": "Version within the name.",
        "is_latest": "True for the newest version of the name.",
        "architecture": "Architecture.",
        "dim": "Embedding dimension [count].",
        "checkpoint_sha256": "SHA-256 of the checkpoint (hex).",
        "hparams": "Hyper-parameters (JSON).",
        "training_set_sha256": "SHA-256 of the training set description (hex).",
        "origin": "'trained', 'imported', 'external' or 'initialised'.",
        "created_at": "Registration time [UTC timestamp].",
    },
    "public.embeddings": {
        "": "Image embeddings per source and encoder version (documented user view).",
        "source_id": "Catalogue source.",
        "encoder": "Encoder name.",
        "encoder_version": "Encoder version.",
        "encoder_id": "Model version id.",
        "dim": "Embedding dimension [count].",
        "embedding": "Unit-length embedding (halfvec, dimensionless).",
        "created_at": "When the vector was written [UTC timestamp].",
    },
    "public.model_versions": {
        "": "Every model version with its provenance (documented user view).",
    },
    "public.jobs": {
        "": "Worker jobs and their progress (documented user view).",
        "job_id": "Job id.",
        "kind": "Job kind.",
        "model": "Model name and version, 'name@version'.",
        "status": "Job status.",
        "n_items": "Items [count].",
        "n_done": "Items done [count].",
        "n_chunks": "Chunks [count].",
        "n_chunks_done": "Chunks done [count].",
        "n_retried": "Chunks started more than once [count].",
    },
}


def upgrade() -> None:
    # FITS cutouts (one object per file or per set of band files) next to Stein-layout HDF5 files
    op.execute(
        "ALTER TABLE lenscat.cutout_files ADD COLUMN member_paths text[], ADD COLUMN bands text[], "
        "ADD COLUMN pixel_scale_arcsec real"
    )
    for stmt in comment_sql("lenscat.cutout_files", CUTOUT_FILE_COMMENTS):
        op.execute(stmt)
    op.execute(
        """
        CREATE TABLE lenscat.model_versions (
            model_id integer GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_model_versions PRIMARY KEY,
            kind text NOT NULL CONSTRAINT ck_model_versions_kind CHECK (kind IN ('encoder', 'classifier', 'detector')),
            name text NOT NULL CONSTRAINT ck_model_versions_name CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.+-]*$'),
            version integer NOT NULL CONSTRAINT ck_model_versions_version CHECK (version >= 1),
            architecture text NOT NULL,
            output_dim integer CONSTRAINT ck_model_versions_output_dim CHECK (output_dim > 0),
            checkpoint_path text,
            checkpoint_sha256 text,
            hparams jsonb NOT NULL DEFAULT '{}',
            training_set_sha256 text,
            parent_model_id integer CONSTRAINT fk_model_versions_parent REFERENCES lenscat.model_versions (model_id),
            origin text NOT NULL CONSTRAINT ck_model_versions_origin
                CHECK (origin IN ('trained', 'imported', 'external', 'initialised')),
            input_spec jsonb NOT NULL DEFAULT '{}',
            metrics jsonb NOT NULL DEFAULT '{}',
            description text,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT uq_model_versions_kind_name_version UNIQUE (kind, name, version),
            CONSTRAINT uq_model_versions_kind_name_sha256 UNIQUE (kind, name, checkpoint_sha256)
        )"""
    )
    op.execute(
        """
        CREATE TABLE lenscat.embeddings (
            model_id integer NOT NULL,
            source_id bigint NOT NULL,
            embedding halfvec NOT NULL,
            job_id bigint,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_embeddings PRIMARY KEY (model_id, source_id)
        )"""
    )
    op.execute("CREATE INDEX ix_embeddings_source ON lenscat.embeddings (source_id)")
    op.execute(
        """
        CREATE TABLE lenscat.jobs (
            job_id bigint GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_jobs PRIMARY KEY,
            kind text NOT NULL,
            model_id integer CONSTRAINT fk_jobs_model REFERENCES lenscat.model_versions (model_id),
            params jsonb NOT NULL DEFAULT '{}',
            status text NOT NULL DEFAULT 'queued' CONSTRAINT ck_jobs_status
                CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
            n_items bigint NOT NULL DEFAULT 0,
            n_done bigint NOT NULL DEFAULT 0,
            n_chunks integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            message text
        )"""
    )
    op.execute(
        """
        CREATE TABLE lenscat.job_chunks (
            job_id bigint NOT NULL CONSTRAINT fk_job_chunks_job REFERENCES lenscat.jobs (job_id) ON DELETE CASCADE,
            chunk_no integer NOT NULL,
            lo_id bigint NOT NULL,
            hi_id bigint NOT NULL,
            n_items integer NOT NULL,
            n_written integer,
            status text NOT NULL DEFAULT 'queued' CONSTRAINT ck_job_chunks_status
                CHECK (status IN ('queued', 'running', 'done', 'failed')),
            attempts integer NOT NULL DEFAULT 0,
            worker text,
            started_at timestamptz,
            finished_at timestamptz,
            seconds real,
            error text,
            CONSTRAINT pk_job_chunks PRIMARY KEY (job_id, chunk_no),
            CONSTRAINT ck_job_chunks_range CHECK (lo_id <= hi_id)
        )"""
    )

    op.execute(
        """
        CREATE VIEW public.encoders AS
        SELECT m.model_id AS encoder_id, m.name AS encoder, m.version,
               m.version = max(m.version) OVER (PARTITION BY m.name) AS is_latest,
               m.architecture, m.output_dim AS dim, m.checkpoint_sha256, m.hparams,
               m.training_set_sha256, m.origin, m.input_spec, m.metrics, m.description, m.created_at
        FROM lenscat.model_versions m
        WHERE m.kind = 'encoder'"""
    )
    op.execute(
        """
        CREATE VIEW public.embeddings AS
        SELECT e.source_id, m.name AS encoder, m.version AS encoder_version, e.model_id AS encoder_id,
               m.output_dim AS dim, e.embedding, e.created_at
        FROM lenscat.embeddings e
        JOIN lenscat.model_versions m ON m.model_id = e.model_id"""
    )
    op.execute(
        """
        CREATE VIEW public.model_versions AS
        SELECT m.model_id, m.kind, m.name, m.version, m.architecture, m.output_dim,
               m.checkpoint_path, m.checkpoint_sha256, m.hparams, m.training_set_sha256,
               m.parent_model_id, p.name || '@' || p.version AS parent, m.origin, m.input_spec,
               m.metrics, m.description, m.created_at
        FROM lenscat.model_versions m
        LEFT JOIN lenscat.model_versions p ON p.model_id = m.parent_model_id"""
    )
    op.execute(
        """
        CREATE VIEW public.jobs AS
        SELECT j.job_id, j.kind, m.name || '@' || m.version AS model, j.status, j.n_items, j.n_done,
               j.n_chunks,
               (SELECT count(*) FROM lenscat.job_chunks c WHERE c.job_id = j.job_id AND c.status = 'done')
                   AS n_chunks_done,
               (SELECT count(*) FROM lenscat.job_chunks c WHERE c.job_id = j.job_id AND c.attempts > 1)
                   AS n_retried,
               j.params, j.created_at, j.finished_at, j.message
        FROM lenscat.jobs j
        LEFT JOIN lenscat.model_versions m ON m.model_id = j.model_id"""
    )

    # SQL-callable neighbour search: the query vector's encoder decides the (partial) HNSW index.
    op.execute(
        """
        CREATE FUNCTION public.similar_to_vector(query halfvec, encoder text, k integer DEFAULT 100)
        RETURNS TABLE (source_id bigint, similarity double precision)
        LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
        AS $$
        DECLARE
            mid integer;
            dim integer;
        BEGIN
            IF k IS NULL OR k < 1 OR k > 10000 THEN
                RAISE EXCEPTION 'k must be between 1 and 10000, got %', k;
            END IF;
            SELECT m.model_id, m.output_dim INTO mid, dim
            FROM lenscat.model_versions m
            WHERE m.kind = 'encoder'
              AND (m.name = encoder OR m.name || '@' || m.version = encoder)
            ORDER BY m.version DESC LIMIT 1;
            IF mid IS NULL THEN
                RAISE EXCEPTION 'no encoder named %', encoder;
            END IF;
            IF public.vector_dims(query) <> dim THEN
                RAISE EXCEPTION 'query has % dimensions, encoder % has %', public.vector_dims(query), encoder, dim;
            END IF;
            PERFORM set_config('hnsw.ef_search', least(1000, greatest(40, 2 * k))::text, true);
            PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
            RETURN QUERY EXECUTE format(
                'SELECT c.source_id, 1.0 - c.dist FROM ('
                '  SELECT e.source_id, (e.embedding::halfvec(%1$s) OPERATOR(public.<=>) """
        """$1::halfvec(%1$s))::float8 AS dist'
                '  FROM lenscat.embeddings e WHERE e.model_id = %2$s'
                '  ORDER BY e.embedding::halfvec(%1$s) OPERATOR(public.<=>) $1::halfvec(%1$s) LIMIT $2) c'
                ' ORDER BY c.dist, c.source_id', dim, mid)
            USING query, k;
        END
        $$"""
    )
    op.execute(
        """
        CREATE FUNCTION public.similar_sources(query_source_id bigint, encoder text, k integer DEFAULT 100)
        RETURNS TABLE (source_id bigint, similarity double precision)
        LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
        AS $$
        DECLARE
            q halfvec;
        BEGIN
            SELECT e.embedding INTO q
            FROM lenscat.embeddings e JOIN lenscat.model_versions m ON m.model_id = e.model_id
            WHERE e.source_id = query_source_id AND m.kind = 'encoder'
              AND (m.name = encoder OR m.name || '@' || m.version = encoder)
            ORDER BY m.version DESC LIMIT 1;
            IF q IS NULL THEN
                RAISE EXCEPTION 'source % has no embedding from encoder %', query_source_id, encoder;
            END IF;
            RETURN QUERY
            SELECT s.source_id, s.similarity FROM public.similar_to_vector(q, encoder, k + 1) s
            WHERE s.source_id <> query_source_id
            ORDER BY s.similarity DESC, s.source_id
            LIMIT k;
        END
        $$"""
    )
    op.execute(
        "COMMENT ON FUNCTION public.similar_to_vector(halfvec, text, integer) IS "
        "'The k sources most similar (cosine similarity, 1 = identical) to a query vector under an encoder "
        "(name or name@version; latest version by default), most similar first, via its HNSW index.'"
    )
    op.execute(
        "COMMENT ON FUNCTION public.similar_sources(bigint, text, integer) IS "
        "'The k sources most similar to a source (its own embedding under the encoder), excluding itself.'"
    )

    apply_comments(op, COMMENTS, VIEW_COMMENTS)
    grant_reader(op, ["public.encoders", "public.embeddings", "public.model_versions", "public.jobs"])


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS public.similar_sources(bigint, text, integer)")
    op.execute("DROP FUNCTION IF EXISTS public.similar_to_vector(halfvec, text, integer)")
    for view in ("jobs", "model_versions", "embeddings", "encoders"):
        op.execute(f"DROP VIEW IF EXISTS public.{view}")
    for table in ("job_chunks", "jobs", "embeddings", "model_versions"):
        op.execute(f"DROP TABLE IF EXISTS lenscat.{table}")
    op.execute(
        "ALTER TABLE lenscat.cutout_files DROP COLUMN IF EXISTS member_paths, "
        "DROP COLUMN IF EXISTS bands, DROP COLUMN IF EXISTS pixel_scale_arcsec"
    )
