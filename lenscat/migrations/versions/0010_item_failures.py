"""Worker hardening: per-item failures, chunk heartbeats, per-row cutout digests.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

Design notes
------------
* ``lenscat.job_item_failures`` records an item (a source) a worker could not process under a
  model version (an unreadable or missing cutout, a NaN image, a cutout too small for the encoder),
  keyed on (model version, item) so that running the same chunk again updates the row instead of
  adding one. The rest of the chunk is written; scheduled re-processing leaves these items out until
  their input changes (the source row is updated, or its cutout pixels change) or the user asks
  (``lenscat reprocess --retry-failed``). A later success removes the row.
* ``lenscat.job_chunks.heartbeat_at``: a worker touches its running chunk every few seconds, so a
  chunk whose worker died is seen as stalled after ``LENSCAT_JOB_STALL_S`` instead of the broker's
  visibility timeout; ``n_failed`` counts the items of the chunk recorded as failed.
* ``lenscat.cutout_row_digests`` keeps a 16-byte BLAKE2b digest of every image row of a Stein-layout
  HDF5 file, packed per block of rows (one row per 4,096 images, not one per image), so a re-ingest
  of a file whose pixels changed finds which rows changed and makes exactly their embeddings and
  scores stale.
"""

from __future__ import annotations

from alembic import op

from lenscat.migrations.comments import apply_comments, grant_reader

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

COMMENTS: dict[str, dict[str, str]] = {
    "lenscat.job_item_failures": {
        "": "Items (sources) a worker could not process under a model version, with the reason; "
        "left out of scheduled re-processing until their input changes.",
        "model_id": "Model version (lenscat.model_versions) the item failed under.",
        "item_id": "The item: a source_id for embed and score jobs (no unit).",
        "job_id": "Job of the latest failed attempt (lenscat.jobs).",
        "kind": "Job kind: 'embed' or 'score' (no unit).",
        "reason": "Why the item could not be processed, one line (no unit).",
        "attempts": "Times the item failed under this model version [count].",
        "first_failed_at": "First failure [UTC timestamp].",
        "failed_at": "Latest failure [UTC timestamp].",
    },
    "lenscat.job_chunks": {
        "heartbeat_at": "Last sign of life of the worker running the chunk; a running chunk with an old "
        "heartbeat is stalled [UTC timestamp].",
        "n_failed": "Items of the chunk recorded in lenscat.job_item_failures by the finishing run [count].",
    },
    "lenscat.cutout_row_digests": {
        "": "Per-image digests of a Stein-layout HDF5 cutout file, packed per block of rows.",
        "file_id": "Cutout file (lenscat.cutout_files).",
        "block_no": "Block number: rows block_no * 4096 ... block_no * 4096 + 4095 [count].",
        "digests": "16-byte BLAKE2b digest of each image row of the block, concatenated (binary).",
    },
}

VIEW_COMMENTS: dict[str, dict[str, str]] = {
    "public.job_item_failures": {
        "": "Items workers could not process, per model version, with the reason (documented user view).",
        "model": "Model name and version, 'name@version'.",
        "item_id": "Source id.",
        "job_id": "Job of the latest failed attempt.",
        "kind": "Job kind.",
        "reason": "Why it failed.",
        "attempts": "Failures so far [count].",
        "failed_at": "Latest failure [UTC timestamp].",
    },
}


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE lenscat.job_item_failures (
            model_id integer NOT NULL CONSTRAINT fk_job_item_failures_model
                REFERENCES lenscat.model_versions (model_id) ON DELETE CASCADE,
            item_id bigint NOT NULL,
            job_id bigint CONSTRAINT fk_job_item_failures_job REFERENCES lenscat.jobs (job_id) ON DELETE SET NULL,
            kind text NOT NULL,
            reason text NOT NULL,
            attempts integer NOT NULL DEFAULT 1,
            first_failed_at timestamptz NOT NULL DEFAULT now(),
            failed_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_job_item_failures PRIMARY KEY (model_id, item_id)
        )"""
    )
    op.execute("CREATE INDEX ix_job_item_failures_job ON lenscat.job_item_failures (job_id)")
    op.execute("CREATE INDEX ix_job_item_failures_item ON lenscat.job_item_failures (item_id)")
    op.execute(
        "ALTER TABLE lenscat.job_chunks ADD COLUMN heartbeat_at timestamptz, "
        "ADD COLUMN n_failed integer NOT NULL DEFAULT 0"
    )
    op.execute(
        """
        CREATE TABLE lenscat.cutout_row_digests (
            file_id integer NOT NULL CONSTRAINT fk_cutout_row_digests_file
                REFERENCES lenscat.cutout_files (file_id) ON DELETE CASCADE,
            block_no integer NOT NULL,
            digests bytea NOT NULL,
            CONSTRAINT pk_cutout_row_digests PRIMARY KEY (file_id, block_no)
        )"""
    )
    op.execute(
        """
        CREATE VIEW public.job_item_failures AS
        SELECT m.name || '@' || m.version AS model, f.item_id, f.job_id, f.kind, f.reason, f.attempts,
               f.failed_at
        FROM lenscat.job_item_failures f
        JOIN lenscat.model_versions m ON m.model_id = f.model_id"""
    )
    apply_comments(op, COMMENTS, VIEW_COMMENTS)
    grant_reader(op, ["public.job_item_failures"])


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS public.job_item_failures")
    op.execute("DROP TABLE IF EXISTS lenscat.cutout_row_digests")
    op.execute("ALTER TABLE lenscat.job_chunks DROP COLUMN IF EXISTS heartbeat_at, DROP COLUMN IF EXISTS n_failed")
    op.execute("DROP TABLE IF EXISTS lenscat.job_item_failures")
