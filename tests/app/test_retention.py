"""Retention on a real SQLite database of 100,000 incidents and real snapshot files: what is due
goes, kept incidents stay with their files, each write transaction stays short."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, insert, select, update

from app.retention import RetentionCleaner, RetentionJob, retention_engine
from pipeline.cli import main
from pipeline.config import RetentionConfig
from pipeline.snapshots import safe_name
from storage.db import connect
from storage.models import Camera, Incident
from storage.repository import IncidentRecord, IncidentRepository

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
INCIDENTS = 100_000
SPAN_DAYS = 730
MAX_LOCK_MS = 100.0


def _row(camera: str, opened: datetime, **extra: object) -> dict[str, object]:
    return dict(uid=str(uuid.uuid4()), camera_id=camera, kind="live", source="rtsp://cam", opened_at=opened,
                captured_at=opened, best_score=0.9, x1=1, y1=2, x2=30, y2=40, frame_width=640, frame_height=480,
                model_name="m", model_sha256="0" * 64, detection_count=3, recorded_at=opened, **extra)


def _fill(engine: Engine, cameras: list[str], count: int, span_days: float) -> None:
    """``count`` incidents spread evenly over ``span_days`` before NOW, round-robin over cameras."""
    step = timedelta(days=span_days) / count
    with engine.begin() as conn:
        conn.execute(insert(Camera), [dict(id=c, source="rtsp://cam", kind="live", first_seen=NOW, last_seen=NOW) for c in cameras])
        for start in range(0, count, 10_000):
            conn.execute(insert(Incident), [_row(cameras[i % len(cameras)], NOW - (i + 1) * step) for i in range(start, min(count, start + 10_000))])


def _with_snapshots(engine: Engine, root: Path, camera: str, ids: list[int], *, size: int = 1000, relative: bool = True) -> dict[int, list[Path]]:
    """Real JPEG-sized files for these incidents, stored relative to ``root`` or absolute (old rows)."""
    files = {}
    with engine.begin() as conn:
        for incident_id in ids:
            opened = conn.execute(select(Incident.opened_at).where(Incident.id == incident_id)).scalar_one()
            folder = root / safe_name(camera) / opened.strftime("%Y-%m-%d")
            folder.mkdir(parents=True, exist_ok=True)
            paths = [folder / f"{incident_id}_{kind}.jpg" for kind in ("frame", "crop")]
            for path in paths:
                path.write_bytes(b"\xff" * size)
            stored = [str(p.relative_to(root)) if relative else str(p) for p in paths]
            conn.execute(update(Incident).where(Incident.id == incident_id).values(snapshot_path=stored[0], crop_path=stored[1]))
            files[incident_id] = paths
    return files


def _ids(engine: Engine, camera: str, *, oldest: bool, limit: int) -> list[int]:
    order = Incident.opened_at.asc() if oldest else Incident.opened_at.desc()
    with engine.connect() as conn:
        return list(conn.execute(select(Incident.id).where(Incident.camera_id == camera).order_by(order).limit(limit)).scalars())


WRITER = """
import sys, time, uuid
from datetime import datetime, timezone
from pathlib import Path
from storage.db import connect
from storage.repository import IncidentRecord, IncidentRepository
repo, stop = IncidentRepository(connect(sys.argv[1])), Path(sys.argv[2])
now = datetime.now(timezone.utc)
while not stop.exists():
    started = time.perf_counter()
    repo.save(IncidentRecord(uid=str(uuid.uuid4()), camera_id="lot-a", kind="live", source="rtsp://cam", opened_at=now,
                             captured_at=now, best_score=0.9, x1=1, y1=2, x2=30, y2=40, frame_width=640, frame_height=480,
                             model_name="m", model_sha256="0" * 64, detection_count=3))
    print(f"{(time.perf_counter() - started) * 1000:.1f}", flush=True)
    time.sleep(0.02)
"""


def _writer_process(engine: Engine, stop: Path) -> subprocess.Popen:
    """A process saving incidents in a loop (each save's ms on stdout) until ``stop`` exists."""
    repo = Path(__file__).resolve().parents[2]
    return subprocess.Popen([sys.executable, "-c", WRITER, str(engine.url), str(stop)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(repo)})


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = connect(f"sqlite:///{tmp_path / 'db' / 'sw.db'}")
    yield engine
    engine.dispose()


def test_a_pass_over_100k_incidents_keeps_write_locks_short(engine: Engine, tmp_path: Path) -> None:
    """The incidents writer saves on its own engine (full sync) while the cleanup runs on its own."""
    root = tmp_path / "snapshots"
    _fill(engine, ["lot-a", "lot-b"], INCIDENTS, SPAN_DAYS)
    oldest = _ids(engine, "lot-a", oldest=True, limit=40)
    kept, expired = oldest[:5], oldest[5:]
    kept_files = _with_snapshots(engine, root, "lot-a", kept, relative=False)
    expired_files = _with_snapshots(engine, root, "lot-a", expired)
    repo = IncidentRepository(engine)
    for incident_id in kept:
        assert repo.set_keep(incident_id, True)

    writer = _writer_process(engine, tmp_path / "stop")  # the incidents stage writes from its own process
    config = RetentionConfig(max_age_days=365, snapshot_max_age_days=None)  # the default batch size
    cleaner = RetentionCleaner(retention_engine(str(engine.url)), root, config)
    try:
        cleaner.run_pass(NOW)
    finally:
        (tmp_path / "stop").touch()
        writes = [float(ms) for ms in writer.communicate(timeout=30)[0].split()]
        cleaner.engine.dispose()

    cutoff = NOW - timedelta(days=365)
    with engine.connect() as conn:
        left_old = conn.execute(select(Incident.id).where(Incident.opened_at < cutoff)).scalars().all()
        total = conn.execute(select(func.count()).select_from(Incident)).scalar_one()
    assert sorted(left_old) == sorted(kept), "everything past max_age is gone except the kept incidents"
    expected_deleted = INCIDENTS * (SPAN_DAYS - 365) // SPAN_DAYS - len(kept)
    assert abs(cleaner.stats.incidents_deleted - expected_deleted) <= 2
    assert total == INCIDENTS - cleaner.stats.incidents_deleted + len(writes)
    assert all(p.exists() for paths in kept_files.values() for p in paths), "a kept incident keeps its snapshots"
    assert not any(p.exists() for paths in expired_files.values() for p in paths)
    assert cleaner.stats.snapshots_deleted == 2 * len(expired)
    print(f"\n{cleaner.stats.incidents_deleted} incidents deleted in {len(cleaner.stats.lock_ms)} write transactions, "
          f"longest {cleaner.stats.max_lock_ms:.1f} ms, median {sorted(cleaner.stats.lock_ms)[len(cleaner.stats.lock_ms) // 2]:.1f} ms; concurrent saves: {len(writes)}, slowest {max(writes):.1f} ms")
    locks = sorted(cleaner.stats.lock_ms)
    # The bound is on the work done under the lock; a 2-core machine shared with other jobs can preempt
    # one transaction now and then, so 99 % must hold it and no single one may exceed 3x the bound.
    assert locks[int(0.99 * (len(locks) - 1))] <= MAX_LOCK_MS and locks[-1] <= 3 * MAX_LOCK_MS, locks[-5:]
    assert max(writes) < 1000, "the incidents writer is never held up for long"


def test_snapshot_expiry_and_per_camera_overrides(engine: Engine, tmp_path: Path) -> None:
    root = tmp_path / "snapshots"
    _fill(engine, ["short", "long"], 200, 100)  # one incident every half day
    files = {c: _with_snapshots(engine, root, c, _ids(engine, c, oldest=True, limit=100)) for c in ("short", "long")}
    config = RetentionConfig(max_age_days=None, snapshot_max_age_days=60, cameras={"short": {"snapshot_max_age_days": 10}})
    assert config.limits("short").max_age_days is None and config.limits("long").snapshot_max_age_days == 60
    RetentionCleaner(engine, root, config).run_pass(NOW)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Incident)).scalar_one() == 200, "rows stay"
        for camera, days in (("short", 10), ("long", 60)):
            opened = dict(conn.execute(select(Incident.id, Incident.opened_at).where(Incident.camera_id == camera)).all())
            for incident_id, paths in files[camera].items():
                due = opened[incident_id] < NOW - timedelta(days=days)
                assert all(p.exists() != due for p in paths), (camera, incident_id)
            trimmed = conn.execute(select(func.count()).where(Incident.camera_id == camera, Incident.snapshot_path.is_(None))).scalar_one()
            assert trimmed == sum(1 for t in opened.values() if t < NOW - timedelta(days=days))


def test_disk_budget_deletes_the_oldest_snapshots_first(engine: Engine, tmp_path: Path) -> None:
    root = tmp_path / "snapshots"
    _fill(engine, ["cam"], 50, 5)
    ids = _ids(engine, "cam", oldest=True, limit=50)
    files = _with_snapshots(engine, root, "cam", ids, size=10_000)  # 20 kB per incident, 1 MB in all
    budget_mb = 0.3
    config = RetentionConfig(max_age_days=None, snapshot_max_age_days=None, max_snapshot_mb=budget_mb, batch_size=7)
    cleaner = RetentionCleaner(engine, root, config)
    cleaner.run_pass(NOW)
    remaining = sum(p.stat().st_size for paths in files.values() for p in paths if p.exists())
    assert budget_mb * 1024 * 1024 - 20_000 < remaining <= budget_mb * 1024 * 1024
    gone = [i for i in ids if not files[i][0].exists()]
    assert gone == ids[: len(gone)], "oldest first"
    assert cleaner.stats.bytes_freed == 1_000_000 - remaining


def test_files_outside_the_snapshot_folder_are_never_deleted(engine: Engine, tmp_path: Path) -> None:
    _fill(engine, ["cam"], 1, 400)
    outside = tmp_path / "precious.txt"
    outside.write_text("not a snapshot")
    with engine.begin() as conn:
        conn.execute(update(Incident).values(snapshot_path=str(outside), crop_path="../precious.txt"))
    RetentionCleaner(engine, tmp_path / "snapshots", RetentionConfig(max_age_days=30)).run_pass(NOW)
    assert outside.exists()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Incident)).scalar_one() == 0


def test_the_daemon_job_cleans_on_its_thread(make_settings, tmp_path: Path) -> None:
    settings = make_settings(retention={"interval_s": 0.2, "max_age_days": 30})
    engine = connect(settings.database_url)
    _fill(engine, ["cam"], 100, 60)
    job = RetentionJob(settings)
    job.on_ready(None)
    deadline = time.monotonic() + 10
    while job.stats.passes == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    job.on_stop(None)
    cutoff = datetime.now(timezone.utc) - timedelta(days=30)  # the job uses the real clock, _fill a fixed one
    with engine.connect() as conn:
        opened = list(conn.execute(select(Incident.opened_at)).scalars())
    engine.dispose()
    assert job.stats.incidents_deleted + len(opened) == 100 and job.stats.incidents_deleted >= 49
    assert all(t >= cutoff - timedelta(minutes=5) for t in opened)


def test_keep_and_unkeep_commands(make_settings, tmp_path: Path, capsys, monkeypatch) -> None:
    settings = make_settings()
    engine = connect(settings.database_url)
    _fill(engine, ["cam"], 1, 1)
    incident_id = _ids(engine, "cam", oldest=True, limit=1)[0]
    config = ["--config", str(tmp_path / "config.yaml")]
    assert main([*config, "incidents", "keep", str(incident_id)]) == 0
    assert "kept" in capsys.readouterr().out
    assert IncidentRepository(engine).get(incident_id).keep is True
    assert main([*config, "incidents", "unkeep", str(incident_id)]) == 0
    assert IncidentRepository(engine).get(incident_id).keep is False
    assert main([*config, "incidents", "keep", "999999"]) == 1
    assert "no incident with id 999999" in capsys.readouterr().err
    engine.dispose()


def test_a_later_save_of_the_same_incident_does_not_unkeep_it(engine: Engine) -> None:
    repo = IncidentRepository(engine)
    record = IncidentRecord(**{k: v for k, v in _row("cam", NOW).items() if k != "recorded_at"})
    incident_id = repo.save(record)
    repo.set_keep(incident_id, True)
    repo.save(record)  # the incidents stage saves again when the incident closes
    assert repo.get(incident_id).keep is True


def test_expiry_and_keep_on_sqlite_and_postgresql(database_url: str, tmp_path: Path) -> None:
    engine = connect(database_url)
    try:
        _fill(engine, ["cam"], 100, 100)
        kept = _ids(engine, "cam", oldest=True, limit=1)[0]
        IncidentRepository(engine).set_keep(kept, True)
        cleaner = RetentionCleaner(engine, tmp_path / "snapshots", RetentionConfig(max_age_days=50, batch_size=7))
        cleaner.run_pass(NOW)
        with engine.connect() as conn:
            left = set(conn.execute(select(Incident.id).where(Incident.opened_at < NOW - timedelta(days=50))).scalars())
        assert left == {kept} and cleaner.stats.incidents_deleted == 49
    finally:
        engine.dispose()


def test_row_budget_per_camera_deletes_the_oldest_unkept_incidents_with_their_files(engine: Engine, tmp_path: Path) -> None:
    root = tmp_path / "snapshots"
    _fill(engine, ["a", "b"], 200, 100)
    oldest_a = _ids(engine, "a", oldest=True, limit=10)
    files = _with_snapshots(engine, root, "a", oldest_a)
    IncidentRepository(engine).set_keep(oldest_a[0], True)
    config = RetentionConfig(max_age_days=None, snapshot_max_age_days=None, max_incidents=30, batch_size=7,
                             cameras={"b": {"max_incidents": 60}})
    cleaner = RetentionCleaner(engine, root, config)
    cleaner.run_pass(NOW)
    newest_a, newest_b = _ids(engine, "a", oldest=False, limit=29), _ids(engine, "b", oldest=False, limit=60)
    with engine.connect() as conn:
        left = {c: set(conn.execute(select(Incident.id).where(Incident.camera_id == c)).scalars()) for c in ("a", "b")}
    assert left["a"] == {oldest_a[0], *newest_a}, "the kept incident counts and stays; the newest fill the budget"
    assert left["b"] == set(newest_b), "the per-camera override"
    assert cleaner.stats.incidents_deleted == 200 - 30 - 60
    assert all(p.exists() for p in files[oldest_a[0]]) and not any(p.exists() for i in oldest_a[1:] for p in files[i])


def test_orphaned_snapshot_files_are_swept_after_their_grace(engine: Engine, tmp_path: Path) -> None:
    from storage.spool import Spool
    from tests.storage.helpers import make_record

    root = tmp_path / "snapshots"
    _fill(engine, ["cam"], 3, 1)
    ids = _ids(engine, "cam", oldest=True, limit=3)
    folder = root / "cam" / "2026-11-25"
    folder.mkdir(parents=True)
    with engine.begin() as conn:
        uids = dict(conn.execute(select(Incident.id, Incident.uid)).all())
        conn.execute(update(Incident).where(Incident.id == ids[0]).values(snapshot_path=f"cam/2026-11-25/{uids[ids[0]]}_frame.jpg"))
    spooled = make_record(7)  # on its way to the database: its files are not orphans yet
    spool = Spool(tmp_path / "spool.db", str(engine.url), max_bytes=10**9)
    spool.append(spooled)
    spool.close()
    names = {
        "referenced": f"{uids[ids[0]]}_frame.jpg",
        "row_without_this_file": f"{uids[ids[1]]}_crop.jpg",  # e.g. trimmed by retention, the unlink lost to a crash
        "no_row": f"{uuid.uuid4()}_car.jpg",
        "no_row_2": f"{uuid.uuid4()}_frame.jpg",
        "interrupted_write": f".{uuid.uuid4()}_frame.jpg.k3j2h1.tmp",
        "spooled": f"{spooled.uid}_frame.jpg",
        "not_ours": "notes.txt",
    }
    old = NOW - timedelta(hours=30)
    for name in names.values():
        (folder / name).write_bytes(b"\xff" * 100)
        os.utime(folder / name, (old.timestamp(), old.timestamp()))
    young = folder / f"{uuid.uuid4()}_frame.jpg"  # an incident whose row is being written right now
    young.write_bytes(b"\xff" * 100)
    os.utime(young, ((NOW - timedelta(hours=1)).timestamp(),) * 2)
    config = RetentionConfig(max_age_days=None, snapshot_max_age_days=None, orphan_grace_hours=24, batch_size=2)
    cleaner = RetentionCleaner(engine, root, config, spool_path=tmp_path / "spool.db")
    cleaner.run_pass(NOW)
    left = {path.name for path in folder.iterdir()}
    assert left == {names["referenced"], names["spooled"], names["not_ours"], young.name}
    assert cleaner.stats.orphans_deleted == 4 and cleaner.stats.bytes_freed == 400
