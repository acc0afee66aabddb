"""A background thread that moves incident records from the durable spool into the database.

The incidents stage must never stall on SQL and must never lose an incident: `submit` appends
the record to the spool (on disk when it returns, see storage/spool.py) and wakes one thread
that saves the spooled records in order, removing each only after the database committed it.
Failures are classified by what fixes them: transient ones (locked, down, a dropped
connection) are retried with backoff and logged once; ones that need a person (permissions, a
read-only database, a full disk, bad credentials) are retried too, logged as an ERROR that says
what to fix and raise the `needs_operator` health flag; a record the database refuses for good
is quarantined in the spool with its reason, never silently dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from storage.db import DatabaseUnavailableError, connect, masked
from storage.repository import IncidentRecord, IncidentRepository
from storage.spool import Spool, SpoolError

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.5
"""With nothing spooled, the thread still looks this often (records adopted by another run)."""
_BATCH = 100
TRANSIENT, NEEDS_OPERATOR, BAD_RECORD = "transient", "needs an operator", "bad record"


class IncidentSink(Protocol):
    """Where the writer saves to: an IncidentRepository, or later a spool in front of one."""

    def save(self, record: IncidentRecord) -> object: ...


class LazyRepository:
    """An IncidentRepository made on the first save, and again after a failed connect.

    So the incidents stage starts, and spools, while the database is down or refuses us; the
    writer's retry loop then does the connecting, with its backoff and its error classes.
    """

    def __init__(self, url: str, **connect_options: object) -> None:
        self.url = url
        self._options = connect_options
        self._repo: IncidentRepository | None = None

    def save(self, record: IncidentRecord) -> int:
        if self._repo is None:
            try:
                engine = connect(self.url, **self._options)  # type: ignore[arg-type]
            except DatabaseUnavailableError:
                raise
            except Exception as exc:  # never the record's fault: keep its text for operator_hint
                raise DatabaseUnavailableError(f"cannot open database {masked(self.url)}: {exc}") from exc
            self._repo = IncidentRepository(engine)
        return self._repo.save(record)

    def dispose(self) -> None:
        if self._repo is not None:
            self._repo.engine.dispose()


class WriterClosedError(RuntimeError):
    """submit() after close(): the record would never be saved."""


def is_transient(exc: BaseException) -> bool:
    """True when retrying later can succeed: the database is locked, down or unreachable.

    SQLite reports "database is locked" and PostgreSQL "connection refused" as
    OperationalError; a dropped connection shows as connection_invalidated. Anything else
    (IntegrityError, a naive datetime, ...) is a problem with the record, which no retry fixes.
    """
    if isinstance(exc, (OperationalError, PoolTimeoutError, DatabaseUnavailableError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


# Failures that retrying rides out only once somebody acts: said loudly, still retried, because
# dropping accepted records is worse than holding them (close() hands them back as unsaved).
_NEEDS_OPERATOR = {
    "readonly database": "the database file or its folder is read-only",
    "read-only": "the database is read-only",
    "disk is full": "the disk holding the database is full",
    "no space left": "the disk holding the database is full",
    "unable to open database file": "the database file's folder is missing or not writable",
    "no such table": "the schema is missing: was the database replaced after start?",
    "permission denied": "the database user lacks a permission",
    "password authentication failed": "the database credentials are wrong",
}


def operator_hint(exc: BaseException) -> str | None:
    """What a person must fix when the failure will not clear by itself, else None."""
    text = str(exc).lower()
    return next((hint for needle, hint in _NEEDS_OPERATOR.items() if needle in text), None)


def classify(exc: BaseException) -> tuple[str, str | None]:
    """(TRANSIENT | NEEDS_OPERATOR | BAD_RECORD, what a person must fix or None).

    Operator problems are checked first: PostgreSQL's "permission denied" or a read-only hot
    standby are not OperationalErrors, yet no record is at fault and retrying once fixed works.
    """
    hint = operator_hint(exc)
    if hint:
        return NEEDS_OPERATOR, hint
    return (TRANSIENT if is_transient(exc) else BAD_RECORD), None


class IncidentWriter:
    """Saves spooled records on a background thread, in order, per the failure classes above.

    Counters: `saved`, `quarantined`, `retries`; `pending` is what the spool still holds for
    this writer; `needs_operator` says what to fix while the database refuses writes.
    """

    def __init__(
        self,
        repo: IncidentSink,
        spool: Spool,
        *,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        name: str = "incident-writer",
    ) -> None:
        self._repo = repo
        self.spool = spool
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._delay = retry_initial_s
        self._state = threading.Condition()
        self._saved = self._quarantined = self._retries = 0
        self._held: list[IncidentRecord] = []
        self._down_since: float | None = None
        self.needs_operator: str | None = None
        self.on_write: Callable[[float], None] | None = None
        """Called with the seconds of each successful database write (the incidents stage's histogram)."""
        self._closed = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- producer side ------------------------------------------------------------------

    def submit(self, record: IncidentRecord) -> None:
        """Spool the record (durable when this returns) and wake the thread; never waits on SQL.

        If the spool itself cannot be written (its disk is full), the record is held in memory
        and the thread keeps trying the spool and the database for it.
        """
        if not isinstance(record, IncidentRecord):
            raise TypeError(f"expected IncidentRecord, got {type(record).__name__}")
        if self._closed:
            raise WriterClosedError(f"writer closed; incident {record.uid} not accepted")
        try:
            self.spool.append(record)
        except SpoolError as exc:
            log.error("incident %s held in memory, the spool refuses it: %s", record.uid, exc)
            with self._state:
                self._held.append(record)
        self._wake.set()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted so far is committed or quarantined; False on timeout."""
        with self._state:
            return self._state.wait_for(lambda: self.pending == 0, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush for up to ``timeout`` seconds, then stop. True when nothing is left to write.

        What is not written stays in the spool (logged, with where), for the next start.
        Calling it again is harmless.
        """
        self._closed = True
        flushed = self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(_GIVE_UP_JOIN_S)
        if not flushed:
            log.error("%d incident record(s) not yet in the database stay in the spool %s; they are written "
                      "at the next start", self.spool.pending(), self.spool.path)
        with self._state:
            if self._held:
                log.error("%d incident record(s) lost: neither the spool nor the database took them", len(self._held))
        return flushed

    def __enter__(self) -> IncidentWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- counters -----------------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        """The counters as the incidents stage reports them in its heartbeats and final event."""
        return {"saved": self.saved, "db_retries": self.retries, "spooled": self.pending,
                "quarantined": self.quarantined, "needs_operator": self.needs_operator,
                "spool_bytes": self.spool.size_bytes(), "spool_oldest_age_s": self.spool.oldest_age_s()}

    @property
    def saved(self) -> int:
        """Records committed to the database."""
        return self._saved

    @property
    def quarantined(self) -> int:
        """Records the database refused for good, kept in the spool with their reason."""
        return self._quarantined

    @property
    def retries(self) -> int:
        """Save attempts repeated after a failure: a health signal for monitoring."""
        return self._retries

    @property
    def pending(self) -> int:
        """Records submitted but neither committed nor quarantined."""
        return self.spool.pending() + len(self._held)

    # -- worker side --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self._respool_held()
                batch = self.spool.batch(_BATCH)
                if not batch:
                    self._wake.wait(IDLE_POLL_S)
                    continue
                for seq, record in batch:
                    if self._stop.is_set() or not self._save(seq, record):
                        break
            except Exception:  # noqa: BLE001 - e.g. the spool's disk is full: records stay where they are
                log.exception("incident writer: unexpected failure, retrying")
                self._stop.wait(self._retry_max_s)

    def _respool_held(self) -> None:
        with self._state:
            held, self._held = self._held, []
        for index, record in enumerate(held):
            try:
                self.spool.append(record)
            except SpoolError:
                with self._state:
                    self._held[:0] = held[index:]
                raise

    def _save(self, seq: int, record: IncidentRecord) -> bool:
        """One save; False when the database is unavailable (the caller starts the batch over)."""
        started = time.perf_counter()
        try:
            self._repo.save(record)
        except Exception as exc:  # noqa: BLE001 - classified below, the thread must survive
            kind, hint = classify(exc)
            if kind == BAD_RECORD:
                self._quarantine(seq, record, exc)
                return True
            self._note_down(exc, hint)
            if not self._stop.wait(self._delay):
                self._bump(retries=1)
            self._delay = min(self._delay * 2, self._retry_max_s)
            return False
        if self.on_write is not None:
            self.on_write(time.perf_counter() - started)
        self.spool.remove(seq)
        self._note_up()
        self._bump(saved=1)
        return True

    def _quarantine(self, seq: int, record: IncidentRecord, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        self.spool.quarantine(seq, reason)
        log.error("incident %s refused by the database, quarantined in the spool %s: %s", record.uid, self.spool.path, reason)
        self._bump(quarantined=1)

    def _note_down(self, exc: Exception, hint: str | None) -> None:
        """Log the first failure of an outage only, not every retry."""
        self.needs_operator = hint
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        if hint:
            log.error("database refuses writes and will until fixed (%s); holding %d incident(s) in the spool "
                      "and retrying: %s", hint, self.pending, exc)
        else:
            log.warning("database unavailable, holding %d incident(s) in the spool and retrying: %s", self.pending, exc)

    def _note_up(self) -> None:
        self._delay = self._retry_initial_s
        if self._down_since is not None:
            log.warning("database available again after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
            self.needs_operator = None

    def _bump(self, *, saved: int = 0, quarantined: int = 0, retries: int = 0) -> None:
        with self._state:
            self._saved += saved
            self._quarantined += quarantined
            self._retries += retries
            self._state.notify_all()


_GIVE_UP_JOIN_S = 5.0
"""close() waits this long for a save in flight (bounded by the statement timeout) to return."""
