"""connect(): file creation, SQLite pragmas, create+stamp on a fresh database, upgrade after."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect, make_url, text

from storage.db import (
    DatabaseUnavailableError,
    UnmanagedSchemaError,
    connect,
    default_sqlite_url,
)
from storage.models import Base
from storage.repository import IncidentRepository
from tests.storage.helpers import make_record
from storage.db import head_revisions


def _version(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def test_fresh_database_is_created_and_stamped_then_reconnect_keeps_data(database_url: str) -> None:
    engine = connect(database_url)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    assert _version(engine) == sorted(head_revisions())
    IncidentRepository(engine).save(make_record(1))
    engine.dispose()

    again = connect(database_url)  # existing database: the upgrade path, at head already
    try:
        assert _version(again) == sorted(head_revisions())
        assert [r.uid for r in IncidentRepository(again).list()] == [make_record(1).uid]
    finally:
        again.dispose()


def test_processes_starting_together_create_the_schema_once(database_url: str) -> None:
    """Daemon and CLI may both meet a fresh database; the migration lock serialises them."""
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            connect(database_url).dispose()
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=start, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    engine = connect(database_url)
    assert _version(engine) == sorted(head_revisions())
    engine.dispose()


def test_sqlite_connection_settings(sqlite_url: str) -> None:
    path = Path(make_url(sqlite_url).database)
    assert not path.parent.exists()
    engine = connect(sqlite_url, sqlite_busy_timeout_ms=1234)
    try:
        assert path.is_file()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_reconnect_at_head_does_not_need_the_write_lock(sqlite_url: str) -> None:
    """The CLI must open the database while the daemon holds SQLite's write lock."""
    connect(sqlite_url).dispose()
    holder = sqlite3.connect(make_url(sqlite_url).database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        engine = connect(sqlite_url, sqlite_busy_timeout_ms=50)
        assert _version(engine) == sorted(head_revisions())
        engine.dispose()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_sqlite_enforces_foreign_keys(sqlite_url: str) -> None:
    engine = connect(sqlite_url)
    try:
        with pytest.raises(Exception, match="FOREIGN KEY"), engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO incidents (uid, camera_id, kind, source, opened_at, best_score, x1, y1, x2, y2,"
                " frame_width, frame_height, model_name, model_sha256, detection_count, captured_at, recorded_at)"
                " VALUES ('u', 'no-such-camera', 'live', 's', '2025-01-01', 0.5, 0, 0, 1, 1, 2, 2, 'm', 'h', 1,"
                " '2025-01-01', '2025-01-01')"
            )
    finally:
        engine.dispose()


def test_default_sqlite_url_points_into_data_dir(tmp_path: Path) -> None:
    url = make_url(default_sqlite_url(tmp_path / "data"))
    assert url.get_backend_name() == "sqlite"
    assert Path(url.database) == (tmp_path / "data" / "scratchwatch.db").resolve()


def test_unreachable_postgres_names_url_and_masks_password(tmp_path: Path) -> None:
    url = f"postgresql://scratch:s3cret-pw@/incidents?host={tmp_path}"  # no server on that socket dir
    with pytest.raises(DatabaseUnavailableError) as caught:
        connect(url)
    message = str(caught.value)
    assert "s3cret-pw" not in message
    assert "database postgresql+psycopg://scratch:***@/incidents?host=" in message


def test_unopenable_sqlite_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "scratchwatch.db").mkdir()  # a directory where the file should be
    with pytest.raises(DatabaseUnavailableError, match="scratchwatch.db"):
        connect(f"sqlite:///{tmp_path / 'scratchwatch.db'}")


def test_tables_without_alembic_version_are_refused(database_url: str) -> None:
    engine = connect(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")
    engine.dispose()
    with pytest.raises(UnmanagedSchemaError, match="alembic_version"):
        connect(database_url)
