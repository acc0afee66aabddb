"""IncidentRepository on real SQLite and PostgreSQL: upsert, UTC timestamps, list queries."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, Row, select
from sqlalchemy.exc import IntegrityError, StatementError

from storage.models import Camera
from storage.repository import IncidentRecord, IncidentRepository
from tests.storage.helpers import T0, make_record

CEST = timezone(timedelta(hours=2))


def _camera(engine: Engine, camera_id: str) -> Row[Any]:
    with engine.connect() as conn:
        return conn.execute(select(Camera.__table__).where(Camera.id == camera_id)).one()


def test_save_twice_updates_one_row(repo: IncidentRepository) -> None:
    first = make_record(1)
    first_id = repo.save(first)
    stored = repo.get(first_id)
    assert stored is not None

    closed = first.opened_at + timedelta(seconds=30)
    second_id = repo.save(replace(first, best_score=0.9, detection_count=7, x2=300, closed_at=closed, snapshot_path="s.jpg"))

    assert second_id == first_id
    assert repo.count() == 1
    updated = repo.get(first_id)
    assert updated is not None
    assert (updated.best_score, updated.detection_count, updated.x2) == (0.9, 7, 300)
    assert (updated.closed_at, updated.snapshot_path) == (closed, "s.jpg")
    assert updated.recorded_at == stored.recorded_at  # first write time is kept


def test_read_back_equals_saved_record(repo: IncidentRepository) -> None:
    record = make_record(2, closed_at=T0 + timedelta(minutes=3), media_time_s=12.5, first_media_time_s=11.0,
                         snapshot_path="snap.jpg", crop_path="crop.jpg", kind="replay", camera_id="replay:lot")
    incident_id = repo.save(record)
    stored = repo.get(incident_id)
    assert stored is not None and stored.recorded_at is not None
    assert replace(stored, id=None, recorded_at=None, camera_source=None, camera_kind=None) == record
    assert (stored.camera_source, stored.camera_kind) == (record.source, "replay")


def test_recorded_at_is_the_time_of_the_first_write(repo: IncidentRepository) -> None:
    before = datetime.now(timezone.utc)
    stored = repo.get(repo.save(make_record(3)))
    after = datetime.now(timezone.utc)
    assert stored is not None and stored.recorded_at is not None
    assert before <= stored.recorded_at <= after


def test_naive_datetime_is_refused(repo: IncidentRepository) -> None:
    naive = make_record(4, opened_at=datetime(2025, 6, 1, 12, 0))
    with pytest.raises(StatementError, match="naive datetime"):
        repo.save(naive)
    assert repo.count() == 0


def test_naive_filter_is_refused(repo: IncidentRepository) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        repo.list(since=datetime(2025, 6, 1))


def test_aware_datetimes_come_back_as_utc(repo: IncidentRepository) -> None:
    local = datetime(2025, 6, 1, 14, 30, 15, 123456, tzinfo=CEST)
    stored = repo.get(repo.save(make_record(5, opened_at=local, captured_at=local)))
    assert stored is not None
    assert stored.opened_at == local
    assert stored.opened_at.tzinfo == timezone.utc
    assert stored.opened_at.hour == 12 and stored.opened_at.microsecond == 123456
    assert stored.recorded_at is not None and stored.recorded_at.tzinfo == timezone.utc


def test_invalid_kind_is_an_integrity_error(repo: IncidentRepository) -> None:
    with pytest.raises(IntegrityError):
        repo.save(make_record(6, kind="bogus", camera_kind="live"))


def test_camera_row_tracks_first_and_last_seen(repo: IncidentRepository) -> None:
    repo.save(make_record(10, closed_at=T0 + timedelta(minutes=11)))
    repo.save(make_record(5))  # older incident arriving late (e.g. after a retry)
    repo.save(make_record(20, source="rtsp://cam/east-new"))

    camera = _camera(repo.engine, "lot-east")
    assert camera.first_seen == T0 + timedelta(minutes=5)
    assert camera.last_seen == T0 + timedelta(minutes=20)
    assert camera.source == "rtsp://cam/east-new"


def _uids(records: list[IncidentRecord]) -> list[str]:
    return [r.uid for r in records]


@pytest.fixture
def stored(repo: IncidentRepository) -> IncidentRepository:
    """Incidents opened at T0 + 1..4 min: 1 and 3 on lot-east, 2 on lot-west, 4 a replay."""
    repo.save(make_record(1))
    repo.save(make_record(2, camera_id="lot-west", source="rtsp://cam/west"))
    repo.save(make_record(3))
    repo.save(make_record(4, camera_id="replay:clip", kind="replay", source="/videos/clip.mp4", media_time_s=3.0))
    return repo


def test_list_is_newest_first_by_default(stored: IncidentRepository) -> None:
    assert _uids(stored.list()) == [make_record(n).uid for n in (4, 3, 2, 1)]
    assert _uids(stored.list(newest_first=False)) == [make_record(n).uid for n in (1, 2, 3, 4)]


def test_list_filters(stored: IncidentRepository) -> None:
    def uids_of(*ns: int) -> list[str]:
        return [make_record(n).uid for n in ns]

    assert _uids(stored.list(camera="lot-east")) == uids_of(3, 1)
    assert _uids(stored.list(kind="replay")) == uids_of(4)
    assert _uids(stored.list(since=T0 + timedelta(minutes=2))) == uids_of(4, 3, 2)
    assert _uids(stored.list(until=T0 + timedelta(minutes=2))) == uids_of(1)
    assert _uids(stored.list(since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=4))) == uids_of(3, 2)
    assert _uids(stored.list(camera="lot-east", since=T0 + timedelta(minutes=2))) == uids_of(3)
    assert _uids(stored.list(limit=2)) == uids_of(4, 3)
    assert stored.list(camera="nowhere") == []


def test_list_since_compares_instants_not_wall_clock(stored: IncidentRepository) -> None:
    since = (T0 + timedelta(minutes=3)).astimezone(CEST)  # 14:03+02:00 == 12:03Z
    assert _uids(stored.list(since=since)) == [make_record(n).uid for n in (4, 3)]


def test_get_and_count(stored: IncidentRepository) -> None:
    assert stored.count() == 4
    newest = stored.list(limit=1)[0]
    assert newest.id is not None
    assert stored.get(newest.id) == newest
    assert stored.get(10_000) is None
