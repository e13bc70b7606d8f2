"""Cross-matches without a per-row foreign key to their lens.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Storing a cross-match (``COPY`` of ~2x10^4 pairs for the community catalogue) spent about 40 % of
its time in the foreign-key trigger that checked each row's lens. Like ``lenscat.sources`` and
``lenscat.embeddings``, ``lenscat.crossmatches`` now has no per-row FK: the only writer
(:func:`lenscat.literature.crossmatch.crossmatch_catalog`) takes its lens ids from ``literature_lenses`` in the
same transaction, and the literature writer deletes the cross-matches of the lenses it removes
(what ``ON DELETE CASCADE`` did).
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE lenscat.crossmatches DROP CONSTRAINT IF EXISTS fk_crossmatches_lens")


def downgrade() -> None:
    op.execute(
        "DELETE FROM lenscat.crossmatches x WHERE NOT EXISTS "
        "(SELECT 1 FROM lenscat.literature_lenses l WHERE l.lens_id = x.lens_id)"
    )
    op.execute(
        "ALTER TABLE lenscat.crossmatches ADD CONSTRAINT fk_crossmatches_lens FOREIGN KEY (lens_id) "
        "REFERENCES lenscat.literature_lenses ON DELETE CASCADE"
    )
