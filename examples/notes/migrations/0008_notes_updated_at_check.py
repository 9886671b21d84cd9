"""CHECK (updated_at IS NOT NULL), NOT VALID (pattern: a NOT NULL column in expand/contract steps, 3 of 4).

`SET NOT NULL` alone scans the whole table under an ACCESS EXCLUSIVE lock: no reads or writes for
the scan. A `CHECK ... NOT VALID` is instant and holds for new rows; 0009 validates it without
blocking anyone, after which `SET NOT NULL` needs no scan (PostgreSQL 12+).

Revision ID: 0008_notes_updated_at_check
Revises: 0007_notes_updated_at_backfill
Create Date: 2026-11-29 11:00:05+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008_notes_updated_at_check"
down_revision: str | Sequence[str] | None = "0007_notes_updated_at_backfill"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK = "ck_notes_updated_at_not_null"


def upgrade() -> None:
    op.create_check_constraint(op.f(CHECK), "notes", "updated_at IS NOT NULL", postgresql_not_valid=True)


def downgrade() -> None:
    op.drop_constraint(op.f(CHECK), "notes", type_="check")
