"""Index notes.notebook_id CONCURRENTLY (pattern: an index built without blocking writes).

A plain `CREATE INDEX` blocks every write to notes until it is built. `CONCURRENTLY` does not, but
cannot run in a transaction: it runs in an autocommit block, in a revision of its own. Its waits
(for transactions older than it) block nobody, so the lock timeout is off around it: cancelled, it
would leave an INVALID index behind. That is also why it is dropped first, if there: a failed
earlier attempt leaves an INVALID index of that name, which `IF NOT EXISTS` would keep.

Revision ID: 0005_notes_notebook_index
Revises: 0004_notes_notebook_fk
Create Date: 2026-11-29 11:00:02+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from svc.lint import squawk_ignore
from svc.migrations import lock_timeout_off

revision: str = "0005_notes_notebook_index"
down_revision: str | Sequence[str] | None = "0004_notes_notebook_fk"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_notes_notebook_id"


def upgrade() -> None:
    with op.get_context().autocommit_block(), lock_timeout_off():
        op.drop_index(INDEX, "notes", postgresql_concurrently=True, if_exists=True)
        squawk_ignore(
            "prefer-robust-stmts",
            why="the index is dropped just above if a failed attempt left it INVALID; IF NOT EXISTS would keep that one",
        )
        op.create_index(INDEX, "notes", ["notebook_id"], postgresql_concurrently=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(INDEX, "notes", postgresql_concurrently=True, if_exists=True)
