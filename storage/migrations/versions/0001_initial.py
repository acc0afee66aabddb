"""Initial schema: cameras and incidents.

Revision ID: 0001
Revises:
Create Date: 2025-11-25

Written out in plain SQLAlchemy types (not imported from storage.models) so that this
revision keeps meaning the same thing after the models move on. Names are wrapped in
op.f(): they are final, not to be run through the models' naming convention again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KIND_CHECK = "kind IN ('live', 'replay')"


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cameras",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("source", sa.String(2048), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("first_seen", _utc(), nullable=False),
        sa.Column("last_seen", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cameras")),
        sa.CheckConstraint(KIND_CHECK, name=op.f("ck_cameras_kind")),
    )
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("uid", sa.String(36), nullable=False),
        sa.Column("camera_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(2048), nullable=False),
        sa.Column("media_time_s", sa.Double(), nullable=True),
        sa.Column("first_media_time_s", sa.Double(), nullable=True),
        sa.Column("opened_at", _utc(), nullable=False),
        sa.Column("closed_at", _utc(), nullable=True),
        sa.Column("best_score", sa.Double(), nullable=False),
        sa.Column("x1", sa.Integer(), nullable=False),
        sa.Column("y1", sa.Integer(), nullable=False),
        sa.Column("x2", sa.Integer(), nullable=False),
        sa.Column("y2", sa.Integer(), nullable=False),
        sa.Column("frame_width", sa.Integer(), nullable=False),
        sa.Column("frame_height", sa.Integer(), nullable=False),
        sa.Column("snapshot_path", sa.String(2048), nullable=True),
        sa.Column("crop_path", sa.String(2048), nullable=True),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("detection_count", sa.Integer(), nullable=False),
        sa.Column("captured_at", _utc(), nullable=False),
        sa.Column("recorded_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incidents")),
        sa.UniqueConstraint("uid", name=op.f("uq_incidents_uid")),
        sa.ForeignKeyConstraint(["camera_id"], ["cameras.id"], name=op.f("fk_incidents_camera_id_cameras")),
        sa.CheckConstraint(KIND_CHECK, name=op.f("ck_incidents_kind")),
    )
    op.create_index(op.f("ix_incidents_camera_id_opened_at"), "incidents", ["camera_id", "opened_at"])
    op.create_index(op.f("ix_incidents_opened_at"), "incidents", ["opened_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_incidents_opened_at"), table_name="incidents")
    op.drop_index(op.f("ix_incidents_camera_id_opened_at"), table_name="incidents")
    op.drop_table("incidents")
    op.drop_table("cameras")
