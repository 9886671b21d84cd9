"""notes.updated_at, nullable for now (pattern: a NOT NULL column in expand/contract steps, 1 of 4).

Expand: the column is added without a value for existing rows (no rewrite, a brief lock), and
new rows get `now()`. 0007 fills the old rows in batches, 0008 adds `CHECK (updated_at IS NOT
NULL) NOT VALID`, 0009 validates it and sets NOT NULL. A constant default would do it in one step
(PostgreSQL 11+ rewrites nothing), but the old rows' value comes from each row: created_at.

Revision ID: 0006_notes_updated_at
Revises: 0005_notes_notebook_index
Create Date: 2026-11-29 11:00:03+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_notes_updated_at"
down_revision: str | Sequence[str] | None = "0005_notes_notebook_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("notes", sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    # After the column exists, so existing rows stay NULL (their value comes in 0007) rather than all get this instant.
    op.alter_column("notes", "updated_at", server_default=sa.func.now())


def downgrade() -> None:
    op.drop_column("notes", "updated_at")
