"""Throwaway, for tests only: a table keyed by `svc.ids.uuid_server_default()`, filled, then dropped.

Lives outside migrations/versions; tests add this directory to alembic's version_locations.

Revision ID: t001_uuid_server_default
Revises: 0001_foundation
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from svc.ids import uuid_server_default

revision: str = "t001_uuid_server_default"
down_revision: str | Sequence[str] | None = "0001_foundation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "throwaway_uuid_default"
ROWS = 5


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.Uuid(), primary_key=True, server_default=uuid_server_default(op.get_bind())),
        sa.Column("n", sa.Integer(), nullable=False),
    )
    # One row per statement, so each id comes from its own call of the default.
    for n in range(1, ROWS + 1):
        op.execute(sa.text(f"INSERT INTO {TABLE} (n) VALUES ({n})"))


def downgrade() -> None:
    op.drop_table(TABLE)
