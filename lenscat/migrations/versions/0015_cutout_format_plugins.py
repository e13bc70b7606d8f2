"""Cutout formats come from the format table in code, not from a fixed list in the schema.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

Design notes
------------
* Until now ``lenscat.cutout_files.format`` carried ``CHECK (format IN ('hdf5-stein', 'fits'))``,
  so adding a cutout format meant a module, a registration line *and* a migration. Formats are a
  plug-in table (:mod:`lenscat.images.formats`: one module per format, one ``register_format`` line);
  the ingest writes only registered names, and :func:`lenscat.images.store.open_store` refuses a name
  the table does not know with a one-line error naming the file.
* The column keeps a shape check (lower-case letters, digits and ``-``, 1-32 characters), so a typo
  in SQL cannot store free text; which names exist is the code's answer.
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE lenscat.cutout_files DROP CONSTRAINT ck_cutout_files_format")
    op.execute(
        "ALTER TABLE lenscat.cutout_files ADD CONSTRAINT ck_cutout_files_format "
        "CHECK (format ~ '^[a-z0-9][a-z0-9-]{0,31}$')"
    )
    op.execute(
        "COMMENT ON COLUMN lenscat.cutout_files.format IS "
        "'File format: a name registered in lenscat.images.formats, e.g. ''hdf5-stein'' or ''fits'' (no unit).'"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE lenscat.cutout_files DROP CONSTRAINT ck_cutout_files_format")
    op.execute(
        "ALTER TABLE lenscat.cutout_files ADD CONSTRAINT ck_cutout_files_format "
        "CHECK (format IN ('hdf5-stein', 'fits'))"
    )
    op.execute("COMMENT ON COLUMN lenscat.cutout_files.format IS 'File format: ''hdf5-stein'' or ''fits'' (no unit).'")
