"""A background thread that saves incidents, riding out a locked or unreachable database.

The incidents stage must never stall on SQL and must never lose an incident because the
database blinked: it hands records to `IncidentWriter.submit`, which queues them (blocking
only when the bounded queue is full) while one thread saves them with retry and backoff.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Protocol, cast

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from storage.repository import IncidentRecord

log = logging.getLogger(__name__)

_STOP = object()
_GIVE_UP_DRAIN_S = 5.0


class IncidentSink(Protocol):
    """Where the writer saves to: an IncidentRepository, or later a spool in front of one."""

    def save(self, record: IncidentRecord) -> object: ...


class WriterClosedError(RuntimeError):
    """submit() after close(): the record would never be saved."""


def is_transient(exc: BaseException) -> bool:
    """True when retrying later can succeed: the database is locked, down or unreachable.

    SQLite reports "database is locked" and PostgreSQL "connection refused" as
    OperationalError; a dropped connection shows as connection_invalidated. Anything else
    (IntegrityError, a naive datetime, ...) is a problem with the record, which no retry fixes.
    """
    if isinstance(exc, (OperationalError, PoolTimeoutError)):
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


class IncidentWriter:
    """Saves submitted records on a background thread, in order, retrying transient failures.

    Counters: `saved`, `failed` (skipped as bad records), `pending` (accepted, not yet
    saved or skipped), `retries`. Stop submitting before calling `close`.
    """

    def __init__(
        self,
        repo: IncidentSink,
        *,
        max_queue: int = 1000,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        name: str = "incident-writer",
    ) -> None:
        self._repo = repo
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._state = threading.Condition()
        self._accepted = self._saved = self._failed = self._retries = 0
        self._unsaved: list[IncidentRecord] = []
        self._down_since: float | None = None
        self._closed = False
        self._give_up = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- producer side ------------------------------------------------------------------

    def submit(self, record: IncidentRecord, timeout: float | None = None) -> None:
        """Queue a record for saving; blocks while the queue is full (backpressure, never drop).

        With a timeout, raises queue.Full instead of waiting longer, so a caller can log
        that the database is holding it up and then submit again.
        """
        if not isinstance(record, IncidentRecord):
            raise TypeError(f"expected IncidentRecord, got {type(record).__name__}")
        if self._closed:
            raise WriterClosedError(f"writer closed; incident {record.uid} not accepted")
        with self._state:
            self._accepted += 1
        try:
            self._queue.put(record, timeout=timeout)
        except queue.Full:
            self._bump(accepted=-1)
            raise

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record accepted so far is saved or skipped; False on timeout."""
        with self._state:
            return self._state.wait_for(lambda: self._pending() == 0, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Save everything accepted, then stop the thread. True when all was handled in time.

        On timeout the writer stops retrying and keeps what it could not save in
        `unsaved` (logged), so shutdown is bounded even while the database is down.
        Without a timeout it waits as long as the database takes. Calling it again is harmless.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._closed = True
        if not self._thread.is_alive():
            return self._all_handled()
        try:
            self._queue.put(_STOP, timeout=_remaining(deadline))
        except queue.Full:
            pass  # the worker is stuck retrying; _give_up below makes it drain and exit
        self._thread.join(_remaining(deadline))
        if self._thread.is_alive():
            self._give_up.set()
            # the worker now only moves what is queued into `unsaved`: let it finish, so the
            # caller reads the complete list
            self._thread.join(_GIVE_UP_DRAIN_S)
            return False
        return self._all_handled()

    def __enter__(self) -> IncidentWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- counters -----------------------------------------------------------------------

    @property
    def saved(self) -> int:
        """Records written to the database."""
        return self._saved

    @property
    def failed(self) -> int:
        """Records skipped because the database refused them for good (logged with their uid)."""
        return self._failed

    @property
    def retries(self) -> int:
        """Save attempts repeated after a transient failure: a health signal for monitoring."""
        return self._retries

    @property
    def pending(self) -> int:
        """Records accepted but not yet saved, skipped or given up on."""
        with self._state:
            return self._pending()

    @property
    def unsaved(self) -> list[IncidentRecord]:
        """Records given up on when close() timed out: what a future on-disk spool would keep."""
        with self._state:
            return list(self._unsaved)

    # -- worker side --------------------------------------------------------------------

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            self._handle(item)
            if self._give_up.is_set():
                break
        self._drain()

    def _drain(self) -> None:
        """After STOP: records that raced close() past its closed check. After giving up: the rest."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                self._handle(item)

    def _handle(self, item: object) -> None:
        record = cast(IncidentRecord, item)  # submit() let only records in
        if self._give_up.is_set():
            self._keep_unsaved(record)
        else:
            self._save_with_retry(record)

    def _save_with_retry(self, record: IncidentRecord) -> None:
        delay = self._retry_initial_s
        while True:
            try:
                self._repo.save(record)
            except Exception as exc:  # noqa: BLE001 - one bad record must not kill the writer
                if not is_transient(exc):
                    self._skip(record, exc)
                    return
                self._note_down(exc)
                if self._give_up.wait(delay):
                    self._keep_unsaved(record)
                    return
                self._bump(retries=1)
                delay = min(delay * 2, self._retry_max_s)
            else:
                self._note_up()
                self._bump(saved=1)
                return

    def _skip(self, record: IncidentRecord, exc: Exception) -> None:
        log.error("incident %s skipped, it cannot be saved: %s", record.uid, exc)
        self._bump(failed=1)

    def _keep_unsaved(self, record: IncidentRecord) -> None:
        # The seam for an on-disk spool: write the record there instead of only keeping it.
        log.error("incident %s not saved: writer closed while the database was unavailable", record.uid)
        with self._state:
            self._unsaved.append(record)
            self._state.notify_all()

    def _note_down(self, exc: Exception) -> None:
        """Log the first failure of an outage only, not every retry."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            hint = operator_hint(exc)
            if hint:
                log.error("database refuses writes and will until fixed (%s); holding %d incident(s) "
                          "and retrying: %s", hint, self.pending, exc)
            else:
                log.warning("database unavailable, holding %d incident(s) and retrying: %s", self.pending, exc)

    def _note_up(self) -> None:
        if self._down_since is not None:
            log.warning("database available again after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None

    def _bump(self, *, accepted: int = 0, saved: int = 0, failed: int = 0, retries: int = 0) -> None:
        with self._state:
            self._accepted += accepted
            self._saved += saved
            self._failed += failed
            self._retries += retries
            self._state.notify_all()

    def _all_handled(self) -> bool:
        with self._state:
            return self._pending() == 0 and not self._unsaved

    def _pending(self) -> int:
        return self._accepted - self._saved - self._failed - len(self._unsaved)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
