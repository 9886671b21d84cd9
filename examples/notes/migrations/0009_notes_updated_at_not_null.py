"""Validate the CHECK, then notes.updated_at NOT NULL (pattern: a NOT NULL column in expand/contract steps, 4 of 4).

`VALIDATE CONSTRAINT` scans holding SHARE UPDATE EXCLUSIVE (reads and writes go on); with a valid
`CHECK (updated_at IS NOT NULL)` PostgreSQL sets NOT NULL without scanning again, under a brief
ACCESS EXCLUSIVE lock; the CHECK then says nothing NOT NULL does not, and goes.

Revision ID: 0009_notes_updated_at_not_null
Revises: 0008_notes_updated_at_check
Create Date: 2026-11-29 11:00:06+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from svc.lint import squawk_ignore

revision: str = "0009_notes_updated_at_not_null"
down_revision: str | Sequence[str] | None = "0008_notes_updated_at_check"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK = "ck_notes_updated_at_not_null"


def upgrade() -> None:
    op.execute(f"ALTER TABLE notes VALIDATE CONSTRAINT {CHECK}")
    op.alter_column("notes", "updated_at", existing_type=sa.DateTime(timezone=True), nullable=False)
    squawk_ignore("ban-drop-constraint", why="NOT NULL, set just above, guarantees what this CHECK did")
    op.drop_constraint(op.f(CHECK), "notes", type_="check")


def downgrade() -> None:
    op.create_check_constraint(op.f(CHECK), "notes", "updated_at IS NOT NULL", postgresql_not_valid=True)
    op.alter_column("notes", "updated_at", existing_type=sa.DateTime(timezone=True), nullable=True)
