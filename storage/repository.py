"""Incident persistence: an idempotent upsert keyed by the pipeline's uid, and the list queries.

Callers deal in `IncidentRecord` (a frozen dataclass) rather than ORM objects, so records
can cross threads (IncidentWriter) and processes without sessions or lazy loading.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, case, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from storage.models import Camera, Incident


@dataclass(frozen=True, kw_only=True)
class IncidentRecord:
    """One incident as the pipeline produces it and the CLI shows it.

    Timestamps must be timezone-aware (any zone; they are stored and returned as UTC).
    `id` and `recorded_at` are set by the database and ignored by `save`.
    `camera_source`/`camera_kind` describe the camera row; None means "same as the
    incident's `source`/`kind`", which is the usual case.
    """

    uid: str
    camera_id: str
    kind: str
    source: str
    opened_at: datetime
    captured_at: datetime
    best_score: float
    x1: int
    y1: int
    x2: int
    y2: int
    frame_width: int
    frame_height: int
    model_name: str
    model_sha256: str
    detection_count: int
    closed_at: datetime | None = None
    media_time_s: float | None = None
    first_media_time_s: float | None = None
    snapshot_path: str | None = None
    crop_path: str | None = None
    car_track_id: int | None = None
    car_x1: int | None = None
    car_y1: int | None = None
    car_x2: int | None = None
    car_y2: int | None = None
    car_score: float | None = None
    car_path: str | None = None
    camera_source: str | None = None
    camera_kind: str | None = None
    recorded_at: datetime | None = None
    id: int | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2) in frame pixels."""
        return (self.x1, self.y1, self.x2, self.y2)


# Everything the pipeline may change on a later save of the same uid.
_DB_OWNED = {"id", "uid", "recorded_at"}
_MUTABLE_COLUMNS = [c.key for c in Incident.__table__.columns if c.key not in _DB_OWNED]
_UPSERT_INSERTS: dict[str, Callable[[Any], Any]] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


class IncidentRepository:
    """Reads and writes incidents through one engine; safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name not in _UPSERT_INSERTS:
            raise ValueError(f"unsupported database {engine.dialect.name!r}: use SQLite or PostgreSQL")
        self.engine = engine
        self._insert = _UPSERT_INSERTS[engine.dialect.name]

    def save(self, record: IncidentRecord) -> int:
        """Insert the incident, or update it if its uid exists; return its id.

        One INSERT .. ON CONFLICT statement per table, in one transaction: a retry after a
        failure, or two writers racing on the same uid, can never create a duplicate.
        """
        with self.engine.begin() as conn:
            conn.execute(self._camera_upsert(record))
            return conn.execute(self._incident_upsert(record)).scalar_one()

    def get(self, incident_id: int) -> IncidentRecord | None:
        """The incident with this id, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(_select_records().where(Incident.id == incident_id)).first()
        return None if row is None else IncidentRecord(**row._mapping)

    def list(
        self,
        *,
        camera: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        kind: str | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[IncidentRecord]:
        """Incidents opened in [since, until), optionally of one camera or kind, by opened_at."""
        stmt = _select_records().where(*_filters(camera, since, until, kind))
        order = Incident.opened_at.desc(), Incident.id.desc()
        if not newest_first:
            order = Incident.opened_at.asc(), Incident.id.asc()
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(*order).limit(limit)).all()
        return [IncidentRecord(**row._mapping) for row in rows]

    def count(self) -> int:
        """Number of incidents stored."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(Incident)).scalar_one()

    def _camera_upsert(self, record: IncidentRecord) -> Insert:
        """Create the camera row, or widen its first_seen/last_seen to cover this incident."""
        stmt = self._insert(Camera).values(
            id=record.camera_id,
            source=record.camera_source or record.source,
            kind=record.camera_kind or record.kind,
            first_seen=record.opened_at,
            last_seen=record.closed_at or record.opened_at,
        )
        new = stmt.excluded
        return stmt.on_conflict_do_update(
            index_elements=[Camera.id],
            set_={
                "source": new.source,
                "kind": new.kind,
                "first_seen": _least(new.first_seen, Camera.first_seen),
                "last_seen": _greatest(new.last_seen, Camera.last_seen),
            },
        )

    def _incident_upsert(self, record: IncidentRecord) -> Insert:
        """recorded_at is only in the INSERT half, so it keeps the time of the first write."""
        values = {key: getattr(record, key) for key in _MUTABLE_COLUMNS}
        stmt = self._insert(Incident).values(uid=record.uid, recorded_at=datetime.now(timezone.utc), **values)
        return stmt.on_conflict_do_update(
            index_elements=[Incident.uid],
            set_={key: stmt.excluded[key] for key in _MUTABLE_COLUMNS},
        ).returning(Incident.id)


def _least(a: ColumnElement[datetime], b: ColumnElement[datetime]) -> ColumnElement[datetime]:
    """LEAST(a, b), spelled as CASE because SQLite has no LEAST."""
    return case((a < b, a), else_=b)


def _greatest(a: ColumnElement[datetime], b: ColumnElement[datetime]) -> ColumnElement[datetime]:
    """GREATEST(a, b), spelled as CASE because SQLite has no GREATEST."""
    return case((a > b, a), else_=b)


def _select_records() -> Select[Any]:
    """Incident columns plus the camera's, labelled as IncidentRecord's field names."""
    return select(
        *Incident.__table__.columns,
        Camera.source.label("camera_source"),
        Camera.kind.label("camera_kind"),
    ).join(Camera, Incident.camera_id == Camera.id)


def _filters(
    camera: str | None, since: datetime | None, until: datetime | None, kind: str | None
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if camera is not None:
        conditions.append(Incident.camera_id == camera)
    if since is not None:
        conditions.append(Incident.opened_at >= since)
    if until is not None:
        conditions.append(Incident.opened_at < until)
    if kind is not None:
        conditions.append(Incident.kind == kind)
    return conditions
