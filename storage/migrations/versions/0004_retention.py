"""Retention: a `keep` flag that protects an incident and its snapshots from cleanup.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

NOT NULL with a server default, so existing rows become "not kept" in place (SQLite adds such a
column without rebuilding the table). No index: cleanup walks `opened_at` (indexed) and skips
the few kept rows as it goes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("incidents", sa.Column("keep", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("keep")
