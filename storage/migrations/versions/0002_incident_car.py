"""Incidents know their car: the car track, the car's box, and a whole-car snapshot.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

The detector's car stage finds the vehicle a damage box lies on. Every column is nullable:
incidents from before this revision, and from cameras run without the car stage, have no car.
Plain ``add_column`` works on both SQLite (no table rebuild needed for nullable columns) and
PostgreSQL, so old databases upgrade in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CAR_COLUMNS = ("car_track_id", "car_x1", "car_y1", "car_x2", "car_y2")


def upgrade() -> None:
    for name in CAR_COLUMNS:
        op.add_column("incidents", sa.Column(name, sa.Integer(), nullable=True))
    op.add_column("incidents", sa.Column("car_score", sa.Double(), nullable=True))
    op.add_column("incidents", sa.Column("car_path", sa.String(2048), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        for name in (*CAR_COLUMNS, "car_score", "car_path"):
            batch.drop_column(name)
