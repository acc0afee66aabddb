"""IncidentWriter against real databases: locks, outages, bad records, shutdown."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from storage.db import connect
from storage.repository import IncidentRepository
from storage.writer import IncidentWriter, WriterClosedError, is_transient, operator_hint
from tests.storage.helpers import make_record, wait_until

if TYPE_CHECKING:
    from tests.conftest import PostgresCluster

FAST_RETRY = {"retry_initial_s": 0.01, "retry_max_s": 0.05}


@contextmanager
def exclusive_lock(sqlite_url: str) -> Iterator[None]:
    """Hold SQLite's write lock from another connection, as a long transaction elsewhere would."""
    holder = sqlite3.connect(make_url(sqlite_url).database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.fixture
def sqlite_repo(sqlite_url: str) -> Iterator[IncidentRepository]:
    """A repository whose writes give up on a lock after 20 ms, so the writer's retry loop runs."""
    engine = connect(sqlite_url, sqlite_busy_timeout_ms=20)
    yield IncidentRepository(engine)
    engine.dispose()


def test_locked_sqlite_records_wait_then_all_land(sqlite_url: str, sqlite_repo: IncidentRepository) -> None:
    writer = IncidentWriter(sqlite_repo, **FAST_RETRY)
    with exclusive_lock(sqlite_url):
        for n in range(20):
            writer.submit(make_record(n))
        wait_until(lambda: writer.retries >= 3, what="retries while locked")
        assert (writer.saved, writer.pending) == (0, 20)
        assert sqlite_repo.count() == 0
    assert writer.close(timeout=30)
    assert (writer.saved, writer.failed, writer.pending) == (20, 0, 0)
    assert sqlite_repo.count() == 20


def test_full_queue_blocks_submit_until_the_database_is_back(sqlite_url: str, sqlite_repo: IncidentRepository) -> None:
    writer = IncidentWriter(sqlite_repo, max_queue=2, **FAST_RETRY)
    with exclusive_lock(sqlite_url):
        writer.submit(make_record(0))
        wait_until(lambda: writer.retries >= 1, what="first record in flight")
        writer.submit(make_record(1), timeout=0)
        writer.submit(make_record(2), timeout=0)
        with pytest.raises(queue.Full):
            writer.submit(make_record(3), timeout=0.05)
        assert writer.pending == 3
        blocked = threading.Thread(target=writer.submit, args=(make_record(3),), daemon=True)
        blocked.start()
    blocked.join(timeout=30)
    assert not blocked.is_alive()
    assert writer.close(timeout=30)
    assert sqlite_repo.count() == 4


def test_outage_is_logged_once_down_and_once_up(
    sqlite_url: str, sqlite_repo: IncidentRepository, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="storage.writer")
    writer = IncidentWriter(sqlite_repo, **FAST_RETRY)
    with exclusive_lock(sqlite_url):
        writer.submit(make_record(0))
        writer.submit(make_record(1))
        wait_until(lambda: writer.retries >= 5, what="several retries")
    assert writer.close(timeout=30)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("database unavailable" in m for m in messages) == 1
    assert sum("database available again" in m for m in messages) == 1


def test_close_gives_up_after_timeout_and_keeps_unsaved(sqlite_url: str, sqlite_repo: IncidentRepository) -> None:
    writer = IncidentWriter(sqlite_repo, **FAST_RETRY)
    records = [make_record(n) for n in range(3)]
    with exclusive_lock(sqlite_url):
        for record in records:
            writer.submit(record)
        wait_until(lambda: writer.retries >= 1, what="first retry")
        assert writer.close(timeout=0.1) is False
        wait_until(lambda: len(writer.unsaved) == 3, what="records handed back")
    assert writer.unsaved == records
    assert (writer.saved, writer.pending) == (0, 0)
    assert sqlite_repo.count() == 0


def test_read_only_database_is_an_error_for_a_person_and_loses_nothing(
    sqlite_url: str, sqlite_repo: IncidentRepository, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="storage.writer")
    path = make_url(sqlite_url).database
    read_only = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    writer = IncidentWriter(IncidentRepository(read_only), **FAST_RETRY)
    try:
        writer.submit(make_record(0))
        wait_until(lambda: writer.retries >= 3, what="retries against the read-only file")
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "read-only" in errors[0] and "holding 1 incident" in errors[0]
        assert writer.close(timeout=0.1) is False
        wait_until(lambda: len(writer.unsaved) == 1, what="the record handed back")
        assert writer.unsaved[0].uid == make_record(0).uid and writer.failed == 0
    finally:
        read_only.dispose()
    assert sqlite_repo.count() == 0


def test_bad_records_are_skipped_and_the_writer_keeps_going(
    repo: IncidentRepository, caplog: pytest.LogCaptureFixture
) -> None:
    bad_kind = make_record(2, kind="bogus", camera_kind="live")  # CHECK constraint: IntegrityError
    naive = make_record(3, captured_at=datetime(2025, 6, 1, 12, 0))  # refused by UTCDateTime
    writer = IncidentWriter(repo, **FAST_RETRY)
    for record in (make_record(1), bad_kind, naive, make_record(4)):
        writer.submit(record)
    assert writer.close(timeout=30)
    assert (writer.saved, writer.failed, writer.retries) == (2, 2, 0)
    assert [r.uid for r in repo.list(newest_first=False)] == [make_record(1).uid, make_record(4).uid]
    skipped = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert bad_kind.uid in skipped and naive.uid in skipped


def test_close_flushes_everything_accepted(repo: IncidentRepository) -> None:
    writer = IncidentWriter(repo, max_queue=8)
    for n in range(40):
        writer.submit(make_record(n))
    assert writer.close(timeout=60)
    assert (writer.saved, writer.pending) == (40, 0)
    assert repo.count() == 40


def test_flush_waits_for_saves_and_the_writer_stays_usable(repo: IncidentRepository) -> None:
    with IncidentWriter(repo) as writer:
        writer.submit(make_record(1))
        assert writer.flush(timeout=30)
        assert repo.count() == 1
        writer.submit(make_record(2))
        assert writer.flush(timeout=30)
        assert repo.count() == 2


def test_submit_after_close_is_refused(repo: IncidentRepository) -> None:
    writer = IncidentWriter(repo)
    assert writer.close(timeout=10)
    with pytest.raises(WriterClosedError):
        writer.submit(make_record(1))


@pytest.mark.postgres
def test_postgres_outage_records_land_after_restart(postgres_cluster: PostgresCluster) -> None:
    postgres_cluster.start()
    engine = connect(postgres_cluster.url())
    repo = IncidentRepository(engine)
    writer = IncidentWriter(repo, **FAST_RETRY)
    try:
        writer.submit(make_record(0))
        assert writer.flush(timeout=30)  # a pooled connection exists when the server goes away
        postgres_cluster.stop()
        for n in range(1, 6):
            writer.submit(make_record(n))
        wait_until(lambda: writer.retries >= 3, what="retries while the server is down")
        assert (writer.saved, writer.pending) == (1, 5)
        postgres_cluster.start()
        assert writer.close(timeout=60)
        assert (writer.saved, writer.failed) == (6, 0)
        assert repo.count() == 6
    finally:
        engine.dispose()


def test_transient_errors_are_told_apart_from_bad_records() -> None:
    locked = OperationalError("INSERT ...", {}, Exception("database is locked"))
    dropped = DBAPIError("SELECT 1", {}, Exception("server closed the connection"), connection_invalidated=True)
    duplicate = IntegrityError("INSERT ...", {}, Exception("UNIQUE constraint failed"))
    assert is_transient(locked) and is_transient(dropped)
    assert not is_transient(duplicate)
    assert not is_transient(ValueError("naive datetime"))
    assert operator_hint(locked) is None  # a lock clears by itself
    assert "full" in operator_hint(OperationalError("INSERT", {}, Exception("database or disk is full")))


def test_closing_again_returns_at_once(repo: IncidentRepository) -> None:
    writer = IncidentWriter(repo, max_queue=1)
    writer.submit(make_record(1))
    assert writer.close(timeout=30)
    results: list[bool] = []
    again = threading.Thread(target=lambda: results.extend([writer.close(), writer.close()]), daemon=True)
    again.start()
    again.join(timeout=10)  # a second STOP would fill the queue and block a third close forever
    assert results == [True, True]
    assert repo.count() == 1
