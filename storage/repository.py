"""Incident persistence: an idempotent upsert keyed by the pipeline's uid, and the list queries.

Callers deal in `IncidentRecord` (a frozen dataclass) rather than ORM objects, so records
can cross threads (IncidentWriter) and processes without sessions or lazy loading.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, case, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from storage.models import VERDICTS, Camera, Incident
from storage.query import MAX_PAGE, SORTS, IncidentQuery, decode_cursor, encode_cursor


@dataclass(frozen=True, kw_only=True)
class IncidentRecord:
    """One incident as the pipeline produces it and the CLI shows it.

    Timestamps must be timezone-aware (any zone; they are stored and returned as UTC).
    `id` and `recorded_at` are set by the database, and the review fields by `review`; `save`
    ignores all of them, so the pipeline re-saving an incident never erases a review.
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
    verdict: str | None = None
    review_note: str | None = None
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    recorded_at: datetime | None = None
    keep: bool = False
    """Set by an operator (``set_keep``), never by the pipeline's saves."""
    id: int | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2) in frame pixels."""
        return (self.x1, self.y1, self.x2, self.y2)


# Everything the pipeline may change on a later save of the same uid.
_DB_OWNED = {"id", "uid", "recorded_at", "verdict", "review_note", "reviewed_by", "reviewed_at", "keep"}
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
        query: IncidentQuery | None = None,
        sort: str | None = None,
        offset: int = 0,
    ) -> list[IncidentRecord]:
        """Incidents opened in [since, until), optionally of one camera or kind, by opened_at.

        `query` carries every other filter (its fields win over the keyword ones); `sort` one of
        SORTS (default newest, or oldest with newest_first=False). `offset` is for the CLI's
        small pages; deep pages go through `page()` and its cursor.
        """
        query = _merge(query, camera=camera, since=since, until=until, kind=kind)
        sort = sort or ("newest" if newest_first else "oldest")
        stmt = _select_records().where(*_filters(query)).order_by(*_order(sort)).limit(limit).offset(offset or None)
        with self.engine.connect() as conn:
            return [IncidentRecord(**row._mapping) for row in conn.execute(stmt)]

    def page(
        self, query: IncidentQuery | None = None, *, sort: str = "newest", limit: int = 50, cursor: str | None = None
    ) -> Page:
        """One page of matching incidents and the cursor of the next (None on the last page).

        Keyset pagination: the cursor holds the last row's sort key and id, and the next page
        starts strictly after it, so page 10,000 costs what page 1 costs (no OFFSET scan) and
        rows inserted meanwhile never shift a page. Raises CursorError for a foreign cursor.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1..{MAX_PAGE}, got {limit}")
        conditions = _filters(query or IncidentQuery())
        if cursor is not None:
            conditions.append(_after(sort, *decode_cursor(cursor, sort)))
        stmt = _select_records().where(*conditions).order_by(*_order(sort)).limit(limit + 1)
        with self.engine.connect() as conn:
            records = [IncidentRecord(**row._mapping) for row in conn.execute(stmt)]
        if len(records) <= limit:
            return Page(records, None)
        last = records[limit - 1]
        return Page(records[:limit], encode_cursor(sort, _sort_key(sort, last), last.id))  # type: ignore[arg-type]

    def iterate(self, query: IncidentQuery | None = None, *, sort: str = "newest", batch: int = MAX_PAGE) -> Iterator[IncidentRecord]:
        """Every matching incident, fetched page by page (exports of any size in bounded memory)."""
        cursor: str | None = None
        while True:
            page = self.page(query, sort=sort, limit=batch, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def count(self, query: IncidentQuery | None = None) -> int:
        """Number of incidents matching `query` (all of them without one)."""
        stmt = select(func.count()).select_from(Incident)
        if query is not None:
            stmt = stmt.where(*_filters(query))
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar_one()

    def review(self, incident_id: int, verdict: str, *, by: str, note: str | None = None) -> IncidentRecord | None:
        """Record a reviewer's verdict (replacing any earlier one), with who and when (UTC).

        The only write of the query side; returns the updated incident, None if the id is unknown.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        values = {"verdict": verdict, "review_note": note or None, "reviewed_by": by, "reviewed_at": datetime.now(timezone.utc)}
        with self.engine.begin() as conn:
            if conn.execute(update(Incident).where(Incident.id == incident_id).values(**values)).rowcount == 0:
                return None
        return self.get(incident_id)

    def cameras(self) -> list[CameraRecord]:
        """Every camera or replayed file with incidents, most recently seen first."""
        stmt = select(Camera.id, Camera.source, Camera.kind, Camera.first_seen, Camera.last_seen)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(Camera.last_seen.desc(), Camera.id)).all()
        return [CameraRecord(**row._mapping) for row in rows]

    def stats(self, query: IncidentQuery | None = None) -> list[DayCount]:
        """Incidents per camera per UTC day (opened_at), by camera then day."""
        day = _utc_day(self.engine.dialect.name).label("day")
        stmt = (
            select(Incident.camera_id.label("camera"), day, func.count().label("incidents"))
            .where(*_filters(query or IncidentQuery()))
            .group_by(Incident.camera_id, day)
            .order_by(Incident.camera_id, day)
        )
        with self.engine.connect() as conn:
            return [DayCount(row.camera, str(row.day), row.incidents) for row in conn.execute(stmt)]

    def set_keep(self, incident_id: int, keep: bool) -> bool:
        """Protect an incident and its snapshots from retention (or lift that); False if no such id."""
        with self.engine.begin() as conn:
            result = conn.execute(update(Incident).where(Incident.id == incident_id).values(keep=keep))
        return result.rowcount == 1

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


@dataclass(frozen=True)
class Page:
    """A page of `IncidentRepository.page`: its rows and the cursor of the next page (None: last)."""

    items: list[IncidentRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class CameraRecord:
    """A camera row: where incidents came from and when it was last seen producing one."""

    id: str
    source: str
    kind: str
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class DayCount:
    """`incidents stats`: incidents of one camera opened on one UTC day (YYYY-MM-DD)."""

    camera: str
    day: str
    incidents: int


def _merge(query: IncidentQuery | None, **fields: Any) -> IncidentQuery:
    """`query` with the legacy keyword filters of `list()` filled in where it has none."""
    given = {k: v for k, v in fields.items() if v is not None}
    if query is None:
        return IncidentQuery(**given)
    return query.model_copy(update={k: v for k, v in given.items() if getattr(query, k) is None})


_SORT_COLUMNS: dict[str, tuple[Any, bool]] = {
    "newest": (Incident.opened_at, True),
    "oldest": (Incident.opened_at, False),
    "score": (Incident.best_score, True),
}
assert set(_SORT_COLUMNS) == set(SORTS)


def _order(sort: str) -> tuple[Any, Any]:
    """ORDER BY of a sort: its key, then id as the tiebreak (the same direction, so an index serves both)."""
    column, descending = _SORT_COLUMNS[sort]
    return (column.desc(), Incident.id.desc()) if descending else (column.asc(), Incident.id.asc())


def _after(sort: str, key: Any, incident_id: int) -> ColumnElement[bool]:
    """Rows strictly after (key, id) in the sort's order: a row-value comparison the index can seek."""
    column, descending = _SORT_COLUMNS[sort]
    row = tuple_(column, Incident.id)
    return row < tuple_(key, incident_id) if descending else row > tuple_(key, incident_id)


def _sort_key(sort: str, record: IncidentRecord) -> Any:
    return record.best_score if sort == "score" else record.opened_at


def _utc_day(dialect: str) -> ColumnElement[Any]:
    """The UTC date of opened_at: SQLite stores UTC text, PostgreSQL a timestamptz."""
    if dialect == "sqlite":
        return func.date(Incident.opened_at)
    return func.date(func.timezone("UTC", Incident.opened_at))


_REVIEW_FILTERS: dict[str, Callable[[], ColumnElement[bool]]] = {
    "reviewed": lambda: Incident.verdict.is_not(None),
    "unreviewed": lambda: Incident.verdict.is_(None),
    "confirmed": lambda: Incident.verdict == "confirmed",
    "false-alarm": lambda: Incident.verdict == "false-alarm",
}


def _filters(query: IncidentQuery) -> list[ColumnElement[bool]]:
    """WHERE conditions of a query; every field that is None adds nothing."""
    conditions: list[ColumnElement[bool]] = []
    if query.camera is not None:
        conditions.append(Incident.camera_id == query.camera)
    if query.since is not None:
        conditions.append(Incident.opened_at >= query.since)
    if query.until is not None:
        conditions.append(Incident.opened_at < query.until)
    if query.min_score is not None:
        conditions.append(Incident.best_score >= query.min_score)
    if query.max_score is not None:
        conditions.append(Incident.best_score <= query.max_score)
    if query.kind is not None:
        conditions.append(Incident.kind == query.kind)
    if query.video is not None:
        conditions.append(_video_filter(query.video))
    if query.state is not None:
        conditions.append(Incident.closed_at.is_(None) if query.state == "open" else Incident.closed_at.is_not(None))
    if query.review is not None:
        conditions.append(_REVIEW_FILTERS[query.review]())
    return conditions


def _video_filter(video: str) -> ColumnElement[bool]:
    """The source exactly, or, for a bare file name, that file in any folder."""
    if "/" in video:
        return Incident.source == video
    return (Incident.source == video) | Incident.source.endswith("/" + video, autoescape=True)
