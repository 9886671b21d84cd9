"""Validate the foreign key 0003_notebooks added NOT VALID (pattern: a foreign key in two steps).

`VALIDATE CONSTRAINT` scans notes holding only SHARE UPDATE EXCLUSIVE on it (and ROW SHARE on
notebooks): reads and writes go on. A revision of its own, so the brief, stronger lock of the
`ADD CONSTRAINT` was let go before the scan starts.

Revision ID: 0004_notes_notebook_fk
Revises: 0003_notebooks
Create Date: 2026-11-29 11:00:01+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004_notes_notebook_fk"
down_revision: str | Sequence[str] | None = "0003_notebooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE notes VALIDATE CONSTRAINT fk_notes_notebook_id_notebooks")


def downgrade() -> None:
    pass  # a valid constraint may stay valid: 0003's downgrade drops it
