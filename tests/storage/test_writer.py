"""IncidentWriter against real databases and a real spool: locks, outages, refusals, shutdown."""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool

from storage.db import connect
from storage.repository import IncidentRepository
from storage.spool import Spool
from storage.writer import BAD_RECORD, NEEDS_OPERATOR, TRANSIENT, IncidentWriter, LazyRepository, WriterClosedError, classify, is_transient, operator_hint
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


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "spool.db"


def make_spool(path: Path, url: str = "sqlite:///test.db") -> Spool:
    return Spool(path, url, max_bytes=10_000_000)


@pytest.fixture
def spool(spool_path: Path) -> Iterator[Spool]:
    spool = make_spool(spool_path)
    yield spool
    spool.close()


def test_locked_sqlite_records_wait_then_all_land(sqlite_url: str, sqlite_repo: IncidentRepository, spool: Spool) -> None:
    writer = IncidentWriter(sqlite_repo, spool, **FAST_RETRY)
    with exclusive_lock(sqlite_url):
        for n in range(20):
            writer.submit(make_record(n))
        wait_until(lambda: writer.retries >= 3, what="retries while locked")
        assert (writer.saved, writer.pending) == (0, 20)
        assert sqlite_repo.count() == 0
    assert writer.close(timeout=30)
    assert (writer.saved, writer.quarantined, writer.pending) == (20, 0, 0)
    assert sqlite_repo.count() == 20



def test_outage_is_logged_once_down_and_once_up(
    sqlite_url: str, sqlite_repo: IncidentRepository, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="storage.writer")
    writer = IncidentWriter(sqlite_repo, spool, **FAST_RETRY)
    with exclusive_lock(sqlite_url):
        writer.submit(make_record(0))
        writer.submit(make_record(1))
        wait_until(lambda: writer.retries >= 5, what="several retries")
    assert writer.close(timeout=30)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("database unavailable" in m for m in messages) == 1
    assert sum("database available again" in m for m in messages) == 1




def test_bad_records_are_quarantined_with_their_reason_and_the_writer_keeps_going(
    repo: IncidentRepository, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    bad_kind = make_record(2, kind="bogus", camera_kind="live")  # CHECK constraint: IntegrityError
    naive = make_record(3, captured_at=datetime(2025, 6, 1, 12, 0))  # refused by UTCDateTime
    writer = IncidentWriter(repo, spool, **FAST_RETRY)
    for record in (make_record(1), bad_kind, naive, make_record(4)):
        writer.submit(record)
    assert writer.close(timeout=30)
    assert (writer.saved, writer.quarantined, writer.retries) == (2, 2, 0)
    assert [r.uid for r in repo.list(newest_first=False)] == [make_record(1).uid, make_record(4).uid]
    skipped = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert bad_kind.uid in skipped and naive.uid in skipped and "quarantined" in skipped
    with sqlite3.connect(spool.path) as conn:
        kept = dict(conn.execute("SELECT uid, error FROM records").fetchall())
    assert set(kept) == {bad_kind.uid, naive.uid}, "refused records stay in the spool, nothing else"
    assert "CHECK constraint" in kept[bad_kind.uid] or "IntegrityError" in kept[bad_kind.uid]


def test_close_flushes_everything_accepted(repo: IncidentRepository, spool: Spool) -> None:
    writer = IncidentWriter(repo, spool)
    for n in range(40):
        writer.submit(make_record(n))
    assert writer.close(timeout=60)
    assert (writer.saved, writer.pending) == (40, 0)
    assert repo.count() == 40


def test_flush_waits_for_saves_and_the_writer_stays_usable(repo: IncidentRepository, spool: Spool) -> None:
    with IncidentWriter(repo, spool) as writer:
        writer.submit(make_record(1))
        assert writer.flush(timeout=30)
        assert repo.count() == 1
        writer.submit(make_record(2))
        assert writer.flush(timeout=30)
        assert repo.count() == 2


def test_submit_after_close_is_refused(repo: IncidentRepository, spool: Spool) -> None:
    writer = IncidentWriter(repo, spool)
    assert writer.close(timeout=10)
    with pytest.raises(WriterClosedError):
        writer.submit(make_record(1))


@pytest.mark.postgres
def test_postgres_outage_records_land_after_restart(postgres_cluster: PostgresCluster, spool: Spool) -> None:
    postgres_cluster.start()
    engine = connect(postgres_cluster.url())
    repo = IncidentRepository(engine)
    writer = IncidentWriter(repo, spool, **FAST_RETRY)
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
        assert (writer.saved, writer.quarantined) == (6, 0)
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
    denied = ProgrammingError("INSERT ...", {}, Exception("permission denied for table incidents"))
    standby = DBAPIError("INSERT ...", {}, Exception("cannot execute INSERT in a read-only transaction"))
    assert [classify(e)[0] for e in (locked, dropped, denied, standby, duplicate)] == [
        TRANSIENT, TRANSIENT, NEEDS_OPERATOR, NEEDS_OPERATOR, BAD_RECORD
    ]


def test_closing_again_returns_at_once(repo: IncidentRepository, spool: Spool) -> None:
    writer = IncidentWriter(repo, spool)
    writer.submit(make_record(1))
    assert writer.close(timeout=30)
    results: list[bool] = []
    again = threading.Thread(target=lambda: results.extend([writer.close(), writer.close()]), daemon=True)
    again.start()
    again.join(timeout=10)  # a second STOP would fill the queue and block a third close forever
    assert results == [True, True]
    assert repo.count() == 1


def test_close_during_an_outage_leaves_the_records_spooled_and_the_next_writer_saves_each_once(
    sqlite_url: str, sqlite_repo: IncidentRepository, spool_path: Path
) -> None:
    first = make_spool(spool_path)
    writer = IncidentWriter(sqlite_repo, first, **FAST_RETRY)
    with exclusive_lock(sqlite_url):
        for n in range(3):
            writer.submit(make_record(n))
        writer.submit(make_record(1, detection_count=9))  # a newer state of incident 1 replaces the older
        wait_until(lambda: writer.retries >= 1, what="first retry")
        assert writer.close(timeout=0.1) is False
    assert (writer.saved, writer.pending) == (0, 3)
    first.close()

    again = make_spool(spool_path)  # same process: its own rows are still its own
    with IncidentWriter(sqlite_repo, again, **FAST_RETRY) as second:
        assert second.flush(timeout=30)
    rows = sqlite_repo.list(newest_first=False)
    assert [r.uid for r in rows] == [make_record(n).uid for n in range(3)]
    assert rows[1].detection_count == 9
    assert again.pending() == 0


def test_read_only_sqlite_keeps_records_spooled_says_what_to_fix_and_writes_them_once_writable(
    sqlite_url: str, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    """Opened read-only (as a file without write permission is, for a user other than root)."""
    caplog.set_level(logging.WARNING, logger="storage.writer")
    path = make_url(sqlite_url).database
    repo = IncidentRepository(connect(sqlite_url))
    read_only = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    writer = IncidentWriter(IncidentRepository(read_only), spool, **FAST_RETRY)
    try:
        writer.submit(make_record(0))
        writer.submit(make_record(1))
        wait_until(lambda: writer.retries >= 3, what="retries against the read-only file")
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "read-only" in errors[0] and "spool" in errors[0]
        assert writer.needs_operator and "read-only" in writer.needs_operator
        assert writer.close(timeout=0.2) is False
        assert (spool.pending(), writer.quarantined, repo.count()) == (2, 0, 0)
    finally:
        read_only.dispose()
    with IncidentWriter(repo, spool, **FAST_RETRY) as fixed:  # the operator fixed it; the daemon restarts
        assert fixed.flush(timeout=30)
    assert [r.uid for r in repo.list(newest_first=False)] == [make_record(0).uid, make_record(1).uid]
    repo.engine.dispose()


@pytest.mark.postgres
def test_postgres_role_without_insert_is_an_operator_error_and_records_land_once_granted(
    postgresql_url: str, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="storage.writer")
    connect(postgresql_url).dispose()  # schema made by the owner
    role = f"sw_reader_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgresql_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    engine = connect(make_url(postgresql_url).set(username=role).render_as_string(hide_password=False))
    writer = IncidentWriter(IncidentRepository(engine), spool, **FAST_RETRY)
    try:
        writer.submit(make_record(0))
        wait_until(lambda: writer.retries >= 2, what="retries while INSERT is denied")
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "lacks a permission" in errors[0]
        assert (writer.quarantined, spool.pending()) == (0, 1), "a refusal a person can fix is no bad record"
        with admin.connect() as conn:
            conn.exec_driver_sql(f"GRANT INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}")
            conn.exec_driver_sql(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
        assert writer.close(timeout=30)
    finally:
        engine.dispose()
        admin.dispose()
    assert IncidentRepository(connect(postgresql_url)).count() == 1


@pytest.mark.postgres
def test_a_database_down_at_start_delays_nothing_and_gets_the_records_when_it_comes_up(
    postgres_cluster: PostgresCluster, spool: Spool
) -> None:
    database = LazyRepository(postgres_cluster.url(), connect_timeout_s=2)
    writer = IncidentWriter(database, spool, **FAST_RETRY)
    try:
        for n in range(3):
            writer.submit(make_record(n))  # returns at once: the records are in the spool
        wait_until(lambda: writer.retries >= 2, what="connect retries while the server is down")
        assert (writer.saved, writer.quarantined, spool.pending()) == (0, 0, 3)
        postgres_cluster.start()
        assert writer.close(timeout=60)
    finally:
        database.dispose()
    engine = connect(postgres_cluster.url())
    assert IncidentRepository(engine).count() == 3
    engine.dispose()
