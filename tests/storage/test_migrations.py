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
        "ck_incidents_verdict", "ix_incidents_camera_id_opened_at_id", "ix_incidents_opened_at_id",
        "ix_incidents_best_score_id",
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


def test_a_0002_database_gets_relative_snapshot_paths_and_no_reviews(raw_engine: Engine) -> None:
    """Absolute paths written by 0002-era pipelines become relative to the snapshot root."""
    from sqlalchemy import text

    with raw_engine.begin() as conn:
        _upgrade(conn, "0002")
        now = "2026-01-01 00:00:00+00:00"
        root = "/srv/scratchwatch/data/snapshots"
        conn.execute(text("INSERT INTO cameras VALUES ('cam', 'x.mp4', 'replay', :t, :t)"), {"t": now})
        insert = text(
            "INSERT INTO incidents (uid, camera_id, kind, source, opened_at, best_score, x1, y1, x2, y2, frame_width,"
            " frame_height, model_name, model_sha256, detection_count, captured_at, recorded_at,"
            " snapshot_path, crop_path, car_path)"
            " VALUES (:uid, 'cam', 'replay', 'x.mp4', :t, 0.9, 1, 2, 3, 4, 10, 10, 'm', 'h', 3, :t, :t, :s, :c, :car)")
        conn.execute(insert, {"uid": "abs", "t": now, "s": f"{root}/cam/2026-01-01/abs_frame.jpg",
                              "c": f"{root}/cam/2026-01-01/abs_crop.jpg", "car": f"{root}/cam/2026-01-01/abs_car.jpg"})
        conn.execute(insert, {"uid": "rel", "t": now, "s": "cam/2026-01-01/rel_frame.jpg", "c": None, "car": None})
        _upgrade(conn)
        assert _schema_diff(conn) == []
        rows = conn.execute(text(
            "SELECT uid, snapshot_path, crop_path, car_path, verdict, reviewed_at FROM incidents ORDER BY uid")).all()
        assert [tuple(r) for r in rows] == [
            ("abs", "cam/2026-01-01/abs_frame.jpg", "cam/2026-01-01/abs_crop.jpg", "cam/2026-01-01/abs_car.jpg", None, None),
            ("rel", "cam/2026-01-01/rel_frame.jpg", None, None, None, None),
        ]
