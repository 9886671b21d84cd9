"""Fill notes.updated_at for existing rows, in batches (pattern: a backfill in batches; expand/contract 2 of 4).

One `UPDATE` of the whole table would lock every row it changes until it ends, and write it all
in one transaction. Here each batch of 1,000 rows is its own transaction (an autocommit block):
row locks last one batch, and a run stopped halfway (a lock timeout, a deploy) resumes where it
was, since only rows still NULL are picked.

Revision ID: 0007_notes_updated_at_backfill
Revises: 0006_notes_updated_at
Create Date: 2026-11-29 11:00:04+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_notes_updated_at_backfill"
down_revision: str | Sequence[str] | None = "0006_notes_updated_at"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A batch: 1,000 rows still NULL.
FILL_A_BATCH = sa.text(
    "UPDATE notes SET updated_at = created_at WHERE id IN (SELECT id FROM notes WHERE updated_at IS NULL LIMIT 1000)"
)


def upgrade() -> None:
    context = op.get_context()
    with context.autocommit_block():
        if context.as_sql:
            op.execute(FILL_A_BATCH)  # offline there are no row counts: the statement once, for review and lint
            return
        while op.get_bind().execute(FILL_A_BATCH).rowcount:
            pass


def downgrade() -> None:
    pass  # 0006's downgrade drops the column
