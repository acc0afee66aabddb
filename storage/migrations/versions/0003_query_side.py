"""The query side: review marks, indexes for the list query, snapshot paths relative to their root.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

- Review marks are columns of `incidents` (one review per incident; the list filters on them).
  A CHECK keeps `verdict` to the known values; on SQLite that takes a table copy (batch mode).
- The list query walks `(camera_id, opened_at, id)` or `(opened_at, id)` in order and pages by
  keyset on `(opened_at, id)`; `sort=score` walks `(best_score, id)`. The two older indexes are
  prefixes of the new ones, so they go.
- Snapshot paths were stored absolute (`<data_dir>/snapshots/<camera>/<date>/<file>`). The API
  resolves them under the configured root only, so they become `<camera>/<date>/<file>`: the
  last three parts of the path, which is the layout `pipeline.snapshots.snapshot_paths` has
  always written, wherever the data folder was. Downgrade keeps them relative (the old root is
  not known any more); 0002 code reads them relative to its working directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PATH_COLUMNS = ("snapshot_path", "crop_path", "car_path")
_VERDICT_CHECK = "verdict IS NULL OR verdict IN ('confirmed', 'false-alarm')"
_BATCH = 5000


def upgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("verdict", sa.String(16), nullable=True))
        batch.add_column(sa.Column("review_note", sa.String(2000), nullable=True))
        batch.add_column(sa.Column("reviewed_by", sa.String(255), nullable=True))
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_check_constraint("verdict", _VERDICT_CHECK)
        batch.drop_index("ix_incidents_camera_id_opened_at")
        batch.drop_index("ix_incidents_opened_at")
        batch.create_index("ix_incidents_camera_id_opened_at_id", ["camera_id", "opened_at", "id"])
        batch.create_index("ix_incidents_opened_at_id", ["opened_at", "id"])
        batch.create_index("ix_incidents_best_score_id", ["best_score", "id"])
    _relative_snapshot_paths()


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.drop_index("ix_incidents_best_score_id")
        batch.drop_index("ix_incidents_opened_at_id")
        batch.drop_index("ix_incidents_camera_id_opened_at_id")
        batch.create_index("ix_incidents_opened_at", ["opened_at"])
        batch.create_index("ix_incidents_camera_id_opened_at", ["camera_id", "opened_at"])
        batch.drop_constraint(op.f("ck_incidents_verdict"), type_="check")
        for name in ("reviewed_at", "reviewed_by", "review_note", "verdict"):
            batch.drop_column(name)


def relative_snapshot_path(path: str | None) -> str | None:
    """`<anything>/<camera>/<date>/<file>` -> `<camera>/<date>/<file>`; relative paths stay as they are."""
    if path is None or not PurePath(path).is_absolute():
        return path
    return PurePath(*PurePath(path).parts[-3:]).as_posix()


def _relative_snapshot_paths() -> None:
    """Rewrite absolute paths in batches of ids, so a large table is never held in memory."""
    incidents = sa.table("incidents", sa.column("id", sa.Integer), *(sa.column(c, sa.String) for c in PATH_COLUMNS))
    absolute = sa.or_(*(incidents.c[c].like("/%") for c in PATH_COLUMNS))
    conn = op.get_bind()
    last_id = 0
    while True:
        rows = conn.execute(
            sa.select(incidents).where(absolute, incidents.c.id > last_id).order_by(incidents.c.id).limit(_BATCH)
        ).all()
        if not rows:
            return
        for row in rows:
            values = {c: relative_snapshot_path(getattr(row, c)) for c in PATH_COLUMNS}
            conn.execute(sa.update(incidents).where(incidents.c.id == row.id).values(**values))
        last_id = rows[-1].id
