"""API fixtures: a real database (SQLite and PostgreSQL) with incidents and real JPEG snapshots on disk."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from pipeline.config import Settings
from storage.db import connect
from storage.repository import IncidentRecord, IncidentRepository
from storage.snapshot_files import snapshot_root
from tests.storage.helpers import T0, make_record
from tests.pipeline.conftest import car_model, make_settings, red_model, two_mark_clip  # noqa: F401  (daemon tests)

TOKEN = "test-token-5f2a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Store:
    """What the API serves: its settings, repository, snapshot root and the records saved."""

    settings: Settings
    repo: IncidentRepository
    root: Path
    records: list[IncidentRecord]


def write_jpeg(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((height, width, 3), 90, np.uint8)
    cv2.rectangle(image, (2, 2), (width - 3, height - 3), (0, 255, 255), 2)
    assert cv2.imwrite(str(path), image)


def fill(repo: IncidentRepository, root: Path, n: int = 12) -> list[IncidentRecord]:
    """`n` incidents on two cameras, scores 0.30..0.85, every third a replay, the first with a car and snapshots."""
    ids = []
    for i in range(n):
        camera = "lot-east" if i % 2 == 0 else "lot-west"
        folder = f"{camera}/2025-06-01"
        record = make_record(
            i, camera_id=camera, best_score=round(0.30 + 0.05 * i, 2),
            kind="replay" if i % 3 == 0 else "live",
            source=f"/videos/clip{i % 3}.mp4" if i % 3 == 0 else f"rtsp://cam/{camera}",
            media_time_s=12.5 + i if i % 3 == 0 else None,
            closed_at=T0 + timedelta(minutes=i, seconds=30) if i % 4 else None,
            snapshot_path=f"{folder}/{i}_frame.jpg", crop_path=f"{folder}/{i}_crop.jpg",
            car_path=f"{folder}/{i}_car.jpg" if i == 0 else None, car_track_id=7 if i == 0 else None,
        )
        write_jpeg(root / record.snapshot_path, 320, 240)
        write_jpeg(root / record.crop_path, 64, 40)
        if record.car_path:
            write_jpeg(root / record.car_path, 200, 120)
        ids.append(repo.save(record))
    return [repo.get(incident_id) for incident_id in ids]  # read back at the end: the camera rows changed meanwhile


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Store]:
    settings = Settings(data_dir=tmp_path / "data", database={"url": database_url}, api={"user": "alice"})
    engine = connect(database_url)
    repo = IncidentRepository(engine)
    root = snapshot_root(settings.data_dir)
    yield Store(settings, repo, root, fill(repo, root))
    engine.dispose()


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store.settings, store.repo.engine, token=TOKEN)) as test_client:
        yield test_client
