"""Notebooks, and notes.notebook_id with its foreign key added NOT VALID (pattern: a foreign key in two steps).

`ADD CONSTRAINT ... FOREIGN KEY` checks every existing row while it holds a SHARE ROW EXCLUSIVE lock
on both tables: writes stop for the whole scan. `NOT VALID` makes it instant (new and changed rows
are checked from now on); 0004_notes_notebook_fk validates the old rows without blocking anyone.
The column is nullable: adding it rewrites nothing, and notes need no notebook.

Revision ID: 0003_notebooks
Revises: 0002_notes
Create Date: 2026-11-29 11:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from svc.ids import uuid_server_default

revision: str = "0003_notebooks"
down_revision: str | Sequence[str] | None = "0002_notes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notebooks",
        sa.Column("id", sa.Uuid(), server_default=uuid_server_default(op.get_bind()), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("char_length(name) BETWEEN 1 AND 200", name=op.f("ck_notebooks_name_length")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notebooks")),
    )
    op.add_column("notes", sa.Column("notebook_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_notes_notebook_id_notebooks"),
        "notes",
        "notebooks",
        ["notebook_id"],
        ["id"],
        postgresql_not_valid=True,
    )


def downgrade() -> None:
    op.drop_constraint(op.f("fk_notes_notebook_id_notebooks"), "notes", type_="foreignkey")
    op.drop_column("notes", "notebook_id")
    op.drop_table("notebooks")
