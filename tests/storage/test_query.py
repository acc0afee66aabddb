"""Keyset pages, filtered counts, stats and reviews of IncidentRepository on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from storage.query import CursorError, IncidentQuery, decode_cursor, encode_cursor, first_error
from storage.repository import IncidentRepository
from tests.storage.helpers import T0, make_record


def test_keyset_pages_match_offset_order_with_ties(repo: IncidentRepository) -> None:
    """Many incidents share an opened_at and a score: the id tiebreak keeps pages exact."""
    for n in range(23):
        same_time = T0 + timedelta(minutes=n // 4)
        repo.save(make_record(n, opened_at=same_time, captured_at=same_time, best_score=0.5 + 0.1 * (n % 3)))
    for sort in ("newest", "oldest", "score"):
        walked = [r.id for r in repo.iterate(sort=sort, batch=4)]
        assert walked == [r.id for r in repo.list(sort=sort)], sort
        assert len(walked) == len(set(walked)) == 23


def test_count_and_stats_follow_the_filters(repo: IncidentRepository) -> None:
    late = T0 + timedelta(hours=13)  # 01:00 UTC the next day
    for n in range(6):
        repo.save(make_record(n, camera_id="a" if n < 4 else "b", best_score=0.2 * n))
    repo.save(make_record(9, camera_id="a", opened_at=late, captured_at=late))
    assert repo.count() == 7
    assert repo.count(IncidentQuery(camera="a", min_score=0.3)) == 3
    assert [(s.camera, s.day, s.incidents) for s in repo.stats()] == [("a", "2025-06-01", 4), ("a", "2025-06-02", 1), ("b", "2025-06-01", 2)]
    assert [(s.day, s.incidents) for s in repo.stats(IncidentQuery(max_score=0.5))] == [("2025-06-01", 3), ("2025-06-02", 1)]


def test_review_replaces_and_survives_a_resave(repo: IncidentRepository) -> None:
    record = make_record(1)
    incident_id = repo.save(record)
    assert repo.review(incident_id, "confirmed", by="dan", note="dent").verdict == "confirmed"
    second = repo.review(incident_id, "false-alarm", by="eve")
    assert (second.verdict, second.review_note, second.reviewed_by) == ("false-alarm", None, "eve")
    repo.save(record)
    assert repo.get(incident_id).reviewed_by == "eve"
    assert repo.review(424242, "confirmed", by="x") is None
    with pytest.raises(ValueError, match="verdict"):
        repo.review(incident_id, "perhaps", by="x")


def test_foreign_cursors_are_refused() -> None:
    cursor = encode_cursor("newest", T0, 5)
    assert decode_cursor(cursor, "newest") == (T0, 5)
    for bad, sort in ((cursor, "score"), ("%%%", "newest"), ("WyJuZXdlc3QiLCJ4Iiw1XQ", "newest"), (encode_cursor("score", 0.5, True), "score")):
        with pytest.raises(CursorError):
            decode_cursor(bad, sort)


def test_query_errors_name_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        IncidentQuery(since="2025-06-02T00:00Z", until="2025-06-01")
    assert first_error(caught.value) == ("until", "must be later than since")
    assert IncidentQuery(since="2025-06-01T08:00:00Z").since == T0 - timedelta(hours=4)
    assert IncidentQuery(since="2025-06-01T08:00").since.tzinfo is not None, "naive text is local time"
