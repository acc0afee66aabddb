"""The durable spool between the incidents stage and the database.

Every incident record is appended here (SQLite in WAL mode with ``synchronous=FULL``: on disk
when ``append`` returns, whatever happens to the process next) before the writer tries the
database, and removed only after the database committed it. So SIGTERM, SIGKILL, a crash of
either stage, a hung connection or a database that is down for hours cost no record: the next
writer drains what is left, in order, and the uid upsert makes a repeated save harmless.

The spool is its own file in the data directory, not a table of the main database: it must be
writable exactly when the database is not. Rows belong to the process that appended them
(``owner``) and to one database (``target``, a hash of its URL), so two pipelines sharing a
data directory never drain each other's rows into the wrong database; rows of a dead owner are
adopted by the next writer of the same database.

Only the newest state of an incident matters (a save is an upsert of every column), so an
append replaces the incident's older pending rows: the spool holds at most one row per
incident, however long the database is down. The spool also remembers which incidents are
still open, so incidents left open by a crash are closed at the next start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from storage.format import dict_to_record, record_to_dict
from storage.repository import IncidentRecord
from storage.snapshot_files import SNAPSHOT_FIELDS

log = logging.getLogger(__name__)
SPOOL_FILENAME = "spool.db"
_SNAPSHOT_FIELDS = tuple(SNAPSHOT_FIELDS.values())
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL,
    target TEXT NOT NULL,
    owner INTEGER NOT NULL,
    body TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS records_pending ON records (target, owner, seq) WHERE error IS NULL;
CREATE TABLE IF NOT EXISTS open_incidents (
    uid TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    owner INTEGER NOT NULL,
    body TEXT NOT NULL
);
"""


class SpoolError(RuntimeError):
    """The spool file cannot be opened or written; the message says which file and what to do."""


def target_id(database_url: str) -> str:
    """Which database a row is for, without storing its URL (and password) in the spool."""
    return hashlib.sha256(database_url.encode()).hexdigest()[:16]


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (killed, not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


class Spool:
    """Append-before-write, remove-after-commit store of incident records for one database.

    Thread-safe: the incidents loop appends while the writer thread reads and removes.
    """

    def __init__(self, path: Path, database_url: str, *, max_bytes: int, owner: int | None = None) -> None:
        self.path = Path(path)
        self.target = target_id(database_url)
        self.max_bytes = max_bytes
        self.owner = os.getpid() if owner is None else owner
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            if "added" not in {row[1] for row in self._conn.execute("PRAGMA table_info(records)")}:
                self._conn.execute("ALTER TABLE records ADD COLUMN added REAL")  # spools of earlier versions
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"spool {self.path}: cannot open it ({exc}); make its folder writable") from exc

    # -- producer side ------------------------------------------------------------------

    def append(self, record: IncidentRecord) -> int:
        """Store the record durably; older pending states of the same incident are replaced."""
        body = json.dumps(record_to_dict(record))
        with self._transaction() as conn:
            pending = (record.uid, self.target, self.owner)
            # a newer state replaces the pending one but keeps its time: the age says how long the incident waits
            (added,) = conn.execute(
                "SELECT min(added) FROM records WHERE uid = ? AND target = ? AND owner = ? AND error IS NULL", pending
            ).fetchone()
            conn.execute("DELETE FROM records WHERE uid = ? AND target = ? AND owner = ? AND error IS NULL", pending)
            seq = conn.execute(
                "INSERT INTO records (uid, target, owner, body, added) VALUES (?, ?, ?, ?, ?)",
                (*pending, body, added if added is not None else time.time()),
            ).lastrowid
            if record.closed_at is None:
                conn.execute(
                    "INSERT OR REPLACE INTO open_incidents (uid, target, owner, body) VALUES (?, ?, ?, ?)",
                    (record.uid, self.target, self.owner, body),
                )
            else:
                conn.execute("DELETE FROM open_incidents WHERE uid = ?", (record.uid,))
        return int(seq or 0)

    def over_limit(self) -> bool:
        """True when the spool files use more than ``max_bytes``: snapshots give way first."""
        return self.size_bytes() > self.max_bytes

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def queued_snapshots(self) -> list[tuple[int, str, list[str]]]:
        """(seq, uid, snapshot paths) of the pending records that reference snapshots, oldest first.

        Their JPEGs are part of what a database outage piles up: the spool's limit counts them.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, uid, " + ", ".join(f"json_extract(body, '$.{f}')" for f in _SNAPSHOT_FIELDS) +
                " FROM records WHERE target = ? AND owner = ? AND error IS NULL"
                " AND json_extract(body, '$.snapshot_path') IS NOT NULL ORDER BY seq",
                (self.target, self.owner),
            ).fetchall()
        return [(seq, uid, [p for p in paths if p]) for seq, uid, *paths in rows]

    def drop_snapshots(self, seq: int, uid: str) -> bool:
        """Forget the snapshots of a pending record (its files are the caller's to delete).

        False when the record is no longer pending (committed meanwhile): its files are then in use.
        """
        unset = "json_set(body, " + ", ".join(f"'$.{f}', NULL" for f in _SNAPSHOT_FIELDS) + ")"
        with self._transaction() as conn:
            changed = conn.execute(f"UPDATE records SET body = {unset} WHERE seq = ? AND error IS NULL", (seq,)).rowcount
            conn.execute(f"UPDATE open_incidents SET body = {unset} WHERE uid = ?", (uid,))
        return changed == 1

    # -- writer side --------------------------------------------------------------------

    def batch(self, limit: int = 100) -> list[tuple[int, IncidentRecord]]:
        """The oldest pending records of this owner and database, in append order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, body FROM records WHERE target = ? AND owner = ? AND error IS NULL ORDER BY seq LIMIT ?",
                (self.target, self.owner, limit),
            ).fetchall()
        return [(seq, dict_to_record(json.loads(body))) for seq, body in rows]

    def remove(self, seq: int) -> None:
        """The database committed this row (a newer state of the incident may still be pending)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM records WHERE seq = ?", (seq,))

    def quarantine(self, seq: int, reason: str) -> None:
        """Keep a record the database refuses for good, with why, for a person to look at."""
        with self._transaction() as conn:
            conn.execute("UPDATE records SET error = ? WHERE seq = ?", (reason[:2000], seq))

    def pending(self) -> int:
        """Records of this owner and database not yet committed (quarantined ones excluded)."""
        return self._count("SELECT count(*) FROM records WHERE target = ? AND owner = ? AND error IS NULL")

    def oldest_age_s(self) -> float:
        """Seconds the oldest pending record of this owner has waited for the database (0 when none)."""
        with self._lock:
            (added,) = self._conn.execute(
                "SELECT min(added) FROM records WHERE target = ? AND owner = ? AND error IS NULL", (self.target, self.owner)
            ).fetchone()
        return max(0.0, time.time() - added) if added is not None else 0.0

    def quarantined(self) -> int:
        return self._count("SELECT count(*) FROM records WHERE target = ? AND owner = ? AND error IS NOT NULL")

    # -- start-up -----------------------------------------------------------------------

    def adopt(self) -> int:
        """Take over the rows of dead owners of this database; close the incidents they left open.

        An incident left open by a crash is closed at the last time the spool knows of it (its
        newest record's capture time). Returns the number of incidents closed that way.
        """
        with self._lock:
            owners = {o for (o,) in self._conn.execute(
                "SELECT owner FROM records WHERE target = ? UNION SELECT owner FROM open_incidents WHERE target = ?",
                (self.target, self.target),
            )}
        dead = [o for o in owners if o != self.owner and not process_alive(o)]
        with self._transaction() as conn:
            for owner in dead:
                conn.execute("UPDATE records SET owner = ? WHERE target = ? AND owner = ?", (self.owner, self.target, owner))
                conn.execute("UPDATE open_incidents SET owner = ? WHERE target = ? AND owner = ?", (self.owner, self.target, owner))
            orphans = conn.execute(
                "SELECT body FROM open_incidents WHERE target = ? AND owner = ?", (self.target, self.owner)
            ).fetchall() if dead else []
        for (body,) in orphans:
            record = dict_to_record(json.loads(body))
            self.append(dataclasses.replace(record, closed_at=max(record.captured_at, record.opened_at)))
        if orphans:
            log.warning("closed %d incident(s) left open by a process that stopped without closing them", len(orphans))
        return len(orphans)

    def import_jsonl(self, folder: Path) -> int:
        """Records kept as JSON lines by older versions (``unsaved/*.jsonl``), imported once."""
        imported = 0
        for path in sorted(Path(folder).glob("*.jsonl")) if Path(folder).is_dir() else []:
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self.append(dict_to_record(json.loads(line)))
                    imported += 1
            path.rename(path.with_suffix(".jsonl.imported"))
        if imported:
            log.warning("imported %d unsaved incident record(s) from %s into the spool", imported, folder)
        return imported

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- helpers ------------------------------------------------------------------------

    def _count(self, sql: str) -> int:
        with self._lock:
            return int(self._conn.execute(sql, (self.target, self.owner)).fetchone()[0])

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn, self._lock, self.path)


class _Transaction:
    """BEGIN IMMEDIATE .. COMMIT under the spool's thread lock; errors name the file."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock, path: Path) -> None:
        self.conn, self.lock, self.path = conn, lock, path

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self.lock.release()
            raise SpoolError(f"spool {self.path}: {exc}") from exc
        return self.conn

    def __exit__(self, exc_type: object, exc: BaseException | None, _tb: object) -> None:
        try:
            if exc is None:
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error as error:
            if exc is None:
                raise SpoolError(f"spool {self.path}: {error}") from error
        finally:
            self.lock.release()
        if isinstance(exc, sqlite3.Error):
            raise SpoolError(f"spool {self.path}: {exc}") from exc
