"""The Alembic revisions build exactly the schema that storage.models declares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, inspect, make_url
from sqlalchemy.pool import NullPool

from storage.db import alembic_config
from storage.models import Base


@pytest.fixture
def raw_engine(database_url: str) -> Iterator[Engine]:
    """An engine on the empty database, without connect(): migrations alone build the schema."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        Path(url.database).parent.mkdir(parents=True)
    engine = create_engine(database_url, poolclass=NullPool)
    yield engine
    engine.dispose()


def _upgrade(conn: Connection, revision: str = "head") -> None:
    command.upgrade(alembic_config(conn), revision)


def _schema_diff(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
    return compare_metadata(context, Base.metadata)


def _constraint_names(conn: Connection) -> dict[str, set[str]]:
    """Names of every constraint and index, reflected: autogenerate skips CHECKs and some names."""
    inspector = inspect(conn)
    names: dict[str, set[str]] = {}
    for table in Base.metadata.tables:
        found = {inspector.get_pk_constraint(table)["name"]}
        for getter in (inspector.get_check_constraints, inspector.get_unique_constraints,
                       inspector.get_foreign_keys, inspector.get_indexes):
            found |= {item["name"] for item in getter(table)}
        names[table] = found
    return names


def _declared_names() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for table in Base.metadata.tables.values():
        names[table.name] = {c.name for c in table.constraints} | {i.name for i in table.indexes}
    return names


def test_migrations_match_models(raw_engine: Engine) -> None:
    with raw_engine.begin() as conn:
        _upgrade(conn)
        assert _schema_diff(conn) == []
        assert _constraint_names(conn) == _declared_names()


def test_declared_names_follow_the_convention() -> None:
    assert _declared_names()["incidents"] == {
        "pk_incidents", "uq_incidents_uid", "fk_incidents_camera_id_cameras", "ck_incidents_kind",
        "ix_incidents_camera_id_opened_at", "ix_incidents_opened_at",
    }


def test_downgrade_to_base_and_back(raw_engine: Engine) -> None:
    with raw_engine.begin() as conn:
        _upgrade(conn)
        command.downgrade(alembic_config(conn), "base")
        assert set(inspect(conn).get_table_names()) == {"alembic_version"}
        _upgrade(conn)
        assert _schema_diff(conn) == []


def test_connect_create_all_path_matches_models(engine: Engine) -> None:
    """connect() builds a fresh database with create_all, not the revisions: same schema."""
    with engine.connect() as conn:
        assert _schema_diff(conn) == []
        assert _constraint_names(conn) == _declared_names()


def test_database_of_the_previous_schema_upgrades_in_place(raw_engine: Engine) -> None:
    """A 0001 database with an incident gains the car columns (NULL) and keeps its row."""
    from sqlalchemy import text

    with raw_engine.begin() as conn:
        _upgrade(conn, "0001")
        now = "2026-01-01 00:00:00+00:00"
        conn.execute(text("INSERT INTO cameras VALUES ('cam', 'x.mp4', 'replay', :t, :t)"), {"t": now})
        conn.execute(text(
            "INSERT INTO incidents (uid, camera_id, kind, source, opened_at, best_score, x1, y1, x2, y2, frame_width,"
            " frame_height, model_name, model_sha256, detection_count, captured_at, recorded_at)"
            " VALUES ('u1', 'cam', 'replay', 'x.mp4', :t, 0.9, 1, 2, 3, 4, 10, 10, 'm', 'h', 3, :t, :t)"), {"t": now})
        _upgrade(conn)
        assert _schema_diff(conn) == []
        row = conn.execute(text("SELECT uid, x2, car_track_id, car_x1, car_path FROM incidents")).one()
        assert tuple(row) == ("u1", 3, None, None, None)
