"""Cross-matches keyed by (lens, rank): two indexes instead of three.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

Storing a cross-match writes ~2x10^4 rows for the community catalogue, and each index costs as
much again as the heap. The three indexes (primary key (lens_id, source_id), a by-source index and a
partial unique index on the nearest source) become two that say the same:

* ``pk_crossmatches`` (lens_id, rank): a lens's sources in separation order, at most one rank 1;
* ``uq_crossmatches_source_lens`` (source_id, lens_id): every (lens, source) pair once, and the
  by-source lookup (which lenses does this source match?);
* ``ck_crossmatches_nearest_rank``: ``is_nearest`` is exactly ``rank = 1``, so "one nearest source
  per lens" follows from the primary key.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE lenscat.crossmatches DROP CONSTRAINT pk_crossmatches")
    op.execute("DROP INDEX lenscat.uq_crossmatches_nearest")
    op.execute("DROP INDEX lenscat.ix_crossmatches_source")
    op.execute(
        "ALTER TABLE lenscat.crossmatches ADD CONSTRAINT ck_crossmatches_nearest_rank CHECK (is_nearest = (rank = 1))"
    )
    op.execute("ALTER TABLE lenscat.crossmatches ADD CONSTRAINT pk_crossmatches PRIMARY KEY (lens_id, rank)")
    op.execute(
        "ALTER TABLE lenscat.crossmatches ADD CONSTRAINT uq_crossmatches_source_lens UNIQUE (source_id, lens_id)"
    )
    op.execute(
        "COMMENT ON CONSTRAINT pk_crossmatches ON lenscat.crossmatches IS "
        "'A lens''s sources in separation order; rank 1 (its match) at most once per lens'"
    )
    op.execute(
        "COMMENT ON CONSTRAINT uq_crossmatches_source_lens ON lenscat.crossmatches IS "
        "'Each (lens, source) pair once; also the index for lookups by source'"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE lenscat.crossmatches DROP CONSTRAINT uq_crossmatches_source_lens")
    op.execute("ALTER TABLE lenscat.crossmatches DROP CONSTRAINT pk_crossmatches")
    op.execute("ALTER TABLE lenscat.crossmatches DROP CONSTRAINT ck_crossmatches_nearest_rank")
    op.execute("ALTER TABLE lenscat.crossmatches ADD CONSTRAINT pk_crossmatches PRIMARY KEY (lens_id, source_id)")
    op.execute("CREATE INDEX ix_crossmatches_source ON lenscat.crossmatches (source_id)")
    op.execute("CREATE UNIQUE INDEX uq_crossmatches_nearest ON lenscat.crossmatches (lens_id) WHERE is_nearest")
