"""``crossmatches.matched_at``: when the lens's pairs were last written, not when a run ran.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

A re-run of a cross-match now rewrites only the lenses whose pairs changed (a re-run on unchanged
inputs writes nothing), so a row's ``matched_at`` is the time of the run that found the lens's
pairs as they are. The time of the latest run is ``crossmatch_runs.ran_at``. Only the comment
changes.
"""

from __future__ import annotations

from alembic import op

from lenscat.migrations.comments import comment_sql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

MATCHED_AT = (
    "When this lens's pairs were last written: the run that found them as they are; a re-run "
    "that finds the same pairs keeps it (crossmatch_runs.ran_at is the latest run) [UTC timestamp]."
)
OLD = "When the cross-match ran [UTC timestamp]."


def upgrade() -> None:
    for stmt in comment_sql("lenscat.crossmatches", {"matched_at": MATCHED_AT}):
        op.execute(stmt)


def downgrade() -> None:
    for stmt in comment_sql("lenscat.crossmatches", {"matched_at": OLD}):
        op.execute(stmt)
