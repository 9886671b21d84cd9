"""Foundation: no business tables; applying it creates alembic's version table.

Revision ID: 0001_foundation
Revises:
Create Date: 2026-11-25 22:22:44+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0001_foundation"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
