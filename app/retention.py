"""Retention: delete old incidents and trim snapshots, a little at a time, inside the daemon.

Every pass walks each camera's incidents along the ``(camera_id, opened_at)`` index in keyset
batches of ``retention.batch_size``: a read picks the batch, then one short write transaction
deletes (or trims) it and returns the ids it really touched, so an incident kept between the two
(``incidents keep ID``) is never touched. Snapshot files are removed after that commit: a crash
in between leaves a few orphan files, never a row pointing at evidence that was deleted while
the row was kept. Files outside the snapshot folder are never deleted, whatever a row says.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Row, and_, delete, event, false, func, or_, select, true, update

from pipeline.config import RetentionConfig, Settings
from pipeline.runner import Observer
from pipeline.snapshots import safe_name
from storage.db import write_transaction
from storage.models import Camera, Incident
from storage.spool import SPOOL_FILENAME
from storage.snapshot_files import SnapshotUnavailable, resolve_snapshot, snapshot_root

log = logging.getLogger(__name__)
SNAPSHOT_COLUMNS = ("snapshot_path", "crop_path", "car_path")
PAUSE_S = 0.01
"""Between two write transactions: the incidents writer gets the lock in between."""


@dataclass
class RetentionStats:
    """Counters for metrics and the tests; ``lock_ms`` are the write transactions' durations."""

    passes: int = 0
    incidents_deleted: int = 0
    snapshots_deleted: int = 0
    orphans_deleted: int = 0
    """Snapshot files no row referenced (``sweep_orphans``)."""
    bytes_freed: int = 0
    max_lock_ms: float = 0.0
    lock_ms: list[float] = field(default_factory=list, repr=False)

    def locked(self, seconds: float) -> None:
        ms = seconds * 1000
        self.max_lock_ms = max(self.max_lock_ms, ms)
        if len(self.lock_ms) < 100_000:
            self.lock_ms.append(ms)


class RetentionCleaner:
    """One engine, one snapshot folder, the retention config; ``run_pass`` does one full pass."""

    def __init__(
        self, engine: Engine, root: Path, config: RetentionConfig, stop: threading.Event | None = None, spool_path: Path | None = None
    ) -> None:
        self.engine = engine
        self.spool_path = spool_path
        """The incidents stage's spool: files of records not yet in the database are never orphans."""
        self.root = Path(root).resolve()
        self.config = config
        self.stop = stop or threading.Event()
        self.stats = RetentionStats()

    def run_pass(self, now: datetime | None = None) -> None:
        now = now or datetime.now(timezone.utc)
        for camera in self._cameras():
            limits = self.config.limits(camera)
            if limits.max_age_days is not None:
                self._expire_incidents(camera, now - timedelta(days=limits.max_age_days))
            if limits.snapshot_max_age_days is not None:
                self._expire_snapshots(camera, now - timedelta(days=limits.snapshot_max_age_days))
            if limits.max_snapshot_mb is not None:
                self._trim_to_budget(camera, int(limits.max_snapshot_mb * 1024 * 1024))
            if limits.max_incidents is not None:
                self._trim_rows(camera, limits.max_incidents)
        if self.config.orphan_grace_hours is not None:
            self.sweep_orphans(now - timedelta(hours=self.config.orphan_grace_hours))
        self._checkpoint()
        self.stats.passes += 1

    def _checkpoint(self) -> None:
        """SQLite: fold the pass's WAL into the database now (PASSIVE: it never blocks a writer)."""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _cameras(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(Camera.id)).scalars())

    def _expire_incidents(self, camera: str, cutoff: datetime) -> None:
        for rows in self._batches(camera, Incident.opened_at < cutoff):
            self._delete(rows)

    def _trim_rows(self, camera: str, limit: int) -> None:
        """The row budget: the camera's oldest unkept incidents go until it holds ``limit`` (kept ones count too)."""
        with self.engine.connect() as conn:  # an index-only count on (camera_id, opened_at, id): a read, no lock
            excess = conn.execute(select(func.count()).select_from(Incident).where(Incident.camera_id == camera)).scalar_one() - limit
        for rows in self._batches(camera, true()):
            if excess <= 0:
                return
            excess -= self._delete(rows[:excess])

    def _delete(self, rows: list[Row[Any]]) -> int:
        """Delete these incidents unless kept meanwhile, then their files; how many went."""
        ids = self._write(delete(Incident).where(Incident.id.in_([r.id for r in rows]), Incident.keep == false()))
        self.stats.incidents_deleted += len(ids)
        self._remove_files([r for r in rows if r.id in ids])
        return len(ids)

    def sweep_orphans(self, older_than: datetime) -> None:
        """Delete snapshot files that no row references, written before ``older_than``, a batch at a time.

        Only names the incidents stage writes are considered: ``<uid>_{frame,crop,car}.jpg`` (checked
        against the incident with that uid, an indexed lookup per batch, never a scan of the table)
        and the temporary files of an interrupted write. A uid still in the spool (the database is
        behind) keeps its files whatever the database says.
        """
        cutoff = older_than.timestamp()
        batch: list[tuple[Path, str | None]] = []
        for folder in self._day_folders():
            if self.stop.is_set():
                return
            for entry in _scandir(folder):
                match = ORPHAN_CANDIDATE.match(entry.name)
                if match and entry.is_file(follow_symlinks=False) and _mtime(entry) < cutoff:
                    batch.append((Path(entry.path), match.group("uid")))
                    if len(batch) >= self.config.batch_size:
                        self._sweep(batch)
                        batch = []
                        time.sleep(PAUSE_S)
            if batch:
                self._sweep(batch)
                batch = []
            try:
                folder.rmdir()  # a day folder the sweep emptied
            except OSError:
                pass

    def _day_folders(self) -> Iterator[Path]:
        for camera in sorted(_scandir(self.root), key=lambda e: e.name):
            if camera.is_dir(follow_symlinks=False):
                yield from (Path(d.path) for d in sorted(_scandir(Path(camera.path)), key=lambda e: e.name) if d.is_dir(follow_symlinks=False))

    def _sweep(self, batch: list[tuple[Path, str | None]]) -> None:
        uids = sorted({uid for _, uid in batch if uid})
        referenced: set[str] = set()
        with self.engine.connect() as conn:
            for row in conn.execute(select(*(getattr(Incident, c) for c in SNAPSHOT_COLUMNS)).where(Incident.uid.in_(uids))):
                referenced.update(p for p in row if p)
        spooled = _spooled_uids(self.spool_path, uids)
        for path, uid in batch:
            if uid in spooled or path.relative_to(self.root).as_posix() in referenced:
                continue
            try:
                size = path.stat().st_size
                path.unlink()
            except OSError:
                continue
            self.stats.orphans_deleted += 1
            self.stats.bytes_freed += size

    def _expire_snapshots(self, camera: str, cutoff: datetime) -> None:
        for rows in self._batches(camera, and_(Incident.opened_at < cutoff, _has_snapshot())):
            self._remove_files(self._trim([r.id for r in rows], rows))

    def _trim_to_budget(self, camera: str, budget: int) -> None:
        excess = _folder_bytes(self.root / safe_name(camera)) - budget
        for rows in self._batches(camera, _has_snapshot()):
            if excess <= 0:
                return
            chosen = []
            for row in rows:
                chosen.append(row)
                excess -= sum(self._size(p) for p in _paths(row))
                if excess <= 0:
                    break
            self._remove_files(self._trim([r.id for r in chosen], chosen))

    def _trim(self, ids: list[int], rows: list[Row[Any]]) -> list[Row[Any]]:
        """Forget the snapshot paths of ``ids`` (rows stay); the rows really trimmed."""
        trimmed = self._write(
            update(Incident).where(Incident.id.in_(ids), Incident.keep == false()).values(dict.fromkeys(SNAPSHOT_COLUMNS))
        )
        return [r for r in rows if r.id in trimmed]

    def _batches(self, camera: str, condition: Any) -> Iterator[list[Row[Any]]]:
        """Keyset walk over ``(opened_at, id)`` of one camera's unkept incidents, oldest first."""
        cursor: Row[Any] | None = None
        columns = [getattr(Incident, c) for c in ("id", "opened_at", *SNAPSHOT_COLUMNS)]
        while not self.stop.is_set():
            stmt = select(*columns).where(Incident.camera_id == camera, Incident.keep == false(), condition)
            if cursor is not None:
                stmt = stmt.where(or_(Incident.opened_at > cursor.opened_at, and_(Incident.opened_at == cursor.opened_at, Incident.id > cursor.id)))
            with self.engine.connect() as conn:
                rows = list(conn.execute(stmt.order_by(Incident.opened_at, Incident.id).limit(self.config.batch_size)))
            if not rows:
                return
            yield rows
            cursor = rows[-1]
            time.sleep(PAUSE_S)

    def _write(self, stmt: Any) -> set[int]:
        """One short write transaction; returns the ids it touched."""
        with write_transaction(self.engine) as conn:
            started = time.perf_counter()  # the lock is held from here (BEGIN IMMEDIATE) to the commit
            ids = set(conn.execute(stmt.returning(Incident.id)).scalars())
        self.stats.locked(time.perf_counter() - started)
        return ids

    def _remove_files(self, rows: list[Row[Any]]) -> None:
        for row in rows:
            for path in _paths(row):
                self._unlink(path)

    def _unlink(self, stored: str) -> None:
        try:
            target = resolve_snapshot(self.root, stored)
        except SnapshotUnavailable as exc:
            if (self.root / stored).exists():  # a file, but outside the snapshot folder
                log.warning("retention: %s; not deleted", exc)
            return
        size = target.stat().st_size
        try:
            target.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("retention: cannot delete %s: %s", target, exc)
            return
        self.stats.snapshots_deleted += 1
        self.stats.bytes_freed += size
        try:
            target.parent.rmdir()  # the day's folder, once its last snapshot is gone
        except OSError:
            pass

    def _size(self, stored: str) -> int:
        try:
            return resolve_snapshot(self.root, stored).stat().st_size
        except (SnapshotUnavailable, OSError):
            return 0


ORPHAN_CANDIDATE = re.compile(
    r"^(?:(?P<uid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})_(?:frame|crop|car)\.jpg"
    r"|\.[^/]+\.jpg\.[^/]+\.tmp)$"
)
"""What the incidents stage writes under the snapshot root (pipeline.snapshots): a snapshot, or a temporary file."""


def _scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError:
        return []


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return float("inf")


def _spooled_uids(spool_path: Path | None, uids: list[str]) -> set[str]:
    """Which of ``uids`` the spool still holds (pending or quarantined), read-only."""
    if spool_path is None or not uids or not spool_path.exists():
        return set()
    marks = ",".join("?" * len(uids))
    try:
        conn = sqlite3.connect(f"file:{spool_path}?mode=ro", uri=True, timeout=5)
        try:
            return {uid for (uid,) in conn.execute(f"SELECT uid FROM records WHERE uid IN ({marks})", uids)}
        finally:
            conn.close()
    except sqlite3.Error:
        return set(uids)  # the spool cannot be read: keep every candidate this time


def _has_snapshot() -> Any:
    return or_(*(getattr(Incident, c).is_not(None) for c in SNAPSHOT_COLUMNS))


def _paths(row: Row[Any]) -> list[str]:
    return [getattr(row, c) for c in SNAPSHOT_COLUMNS if getattr(row, c)]


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def retention_engine(url: str) -> Engine:
    """An engine of its own for the cleanup; on SQLite its commits skip the fsync (synchronous=NORMAL)
    and never checkpoint the WAL.

    A cleanup transaction's work takes ~2 ms; the fsync of its commit takes ~10 ms and, on a busy
    disk, over 100 ms, all of it with the write lock held. Losing a cleanup commit to a power cut
    only means the next pass deletes those rows again (their files may be gone already: the API
    shows a placeholder), so this connection trades that durability for short locks. WAL keeps the
    database consistent either way, and the incidents writer's connections keep full sync. They
    also run the WAL checkpoints (wal_autocheckpoint=0 here), so none lands inside a cleanup commit.
    """
    from storage.db import connect

    engine = connect(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _relaxed_sync)
        engine.dispose()  # the pooled connections predate the listener
    return engine


def _relaxed_sync(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA wal_autocheckpoint=0")
    finally:
        cursor.close()


class RetentionJob(Observer):
    """A supervisor observer: runs ``RetentionCleaner`` passes on a thread while the daemon runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.cleaner: RetentionCleaner | None = None
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)

    @property
    def stats(self) -> RetentionStats:
        return self.cleaner.stats if self.cleaner else RetentionStats()

    def on_ready(self, supervisor: Any) -> None:
        self._thread.start()

    def on_stop(self, supervisor: Any) -> None:
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                if self.cleaner is None:
                    engine = retention_engine(self.settings.database_url)
                    self.cleaner = RetentionCleaner(engine, snapshot_root(self.settings.data_dir), self.settings.retention, self.stop,
                                                    spool_path=self.settings.data_dir / SPOOL_FILENAME)
                self._pass()
            except Exception as exc:  # the database may be down: try again next interval
                log.warning("retention pass failed, retrying in %.0fs: %s", self.settings.retention.interval_s, exc)
            self.stop.wait(self.settings.retention.interval_s)
        if self.cleaner is not None:
            self.cleaner.engine.dispose()

    def _pass(self) -> None:
        assert self.cleaner is not None
        stats = self.cleaner.stats
        before = (stats.incidents_deleted, stats.snapshots_deleted, stats.orphans_deleted)
        self.cleaner.run_pass()
        after = (stats.incidents_deleted, stats.snapshots_deleted, stats.orphans_deleted)
        if after != before:
            log.info("retention: deleted %d incidents, %d snapshot files and %d orphaned files (longest write lock %.0f ms)",
                     after[0] - before[0], after[1] - before[1], after[2] - before[2], stats.max_lock_ms)
