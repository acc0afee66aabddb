"""Engine creation and schema migration.

One call, `connect(url)`, gives a ready engine: the SQLite file and its directory exist,
WAL is on, and the schema is at the newest Alembic revision. SQLite is the embedded
default; PostgreSQL is used by URL (`postgresql+psycopg://...`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine, create_engine, event, func, inspect, make_url, select
from sqlalchemy.exc import DBAPIError

from storage.models import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
DEFAULT_DB_FILENAME = "scratchwatch.db"
DEFAULT_SQLITE_BUSY_TIMEOUT_MS = 5000
PG_CONNECT_TIMEOUT_S = 10.0
"""A PostgreSQL server that accepts TCP but never answers must not hang a connect forever."""

# Any constant works; it only has to be the same in every ScratchWatch process.
_PG_MIGRATION_LOCK_KEY = 0x5C2A7C4
_SQLITE_BEGIN_OPTION = "scratchwatch_sqlite_begin"


class DatabaseUnavailableError(RuntimeError):
    """The database could not be reached; the message names the URL with its password masked."""


class UnmanagedSchemaError(RuntimeError):
    """ScratchWatch tables exist without Alembic's version table, so their revision is unknown."""


def default_sqlite_url(data_dir: Path) -> str:
    """The embedded database: `scratchwatch.db` under the data directory, as an absolute URL."""
    return f"sqlite:///{(Path(data_dir) / DEFAULT_DB_FILENAME).resolve()}"


def connect(
    url: str,
    *,
    echo: bool = False,
    sqlite_busy_timeout_ms: int = DEFAULT_SQLITE_BUSY_TIMEOUT_MS,
    statement_timeout_ms: int | None = None,
    connect_timeout_s: float = PG_CONNECT_TIMEOUT_S,
) -> Engine:
    """Open the database at `url` and bring its schema to the newest revision.

    Raises DatabaseUnavailableError when the server or file cannot be reached, so a daemon
    can say which database it tried without leaking a password into the logs.
    `sqlite_busy_timeout_ms` is how long a SQLite write waits for another writer's lock
    before failing with "database is locked" (which IncidentWriter then retries).
    `statement_timeout_ms` bounds each PostgreSQL statement (the writer's saves), so a hung
    server costs a retry, not a stuck writer; a PostgreSQL connect gives up after `connect_timeout_s`.
    """
    sa_url = _normalise(make_url(url))
    engine = _create_engine(sa_url, echo=echo, busy_timeout_ms=sqlite_busy_timeout_ms,
                            statement_timeout_ms=statement_timeout_ms, connect_timeout_s=connect_timeout_s)
    try:
        _check_reachable(engine)
        migrate(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def migrate(engine: Engine) -> None:
    """Create and stamp a fresh database, or upgrade an existing one to head.

    A fresh database gets `create_all` (one step instead of replaying every revision),
    then is stamped so later revisions apply on top. Runs under a lock so two processes
    starting together (daemon and CLI) do not both create the schema. A database already
    at head is only read: `incidents list` must not wait for the daemon's write lock.
    """
    if _at_head(engine):
        return
    with engine.connect() as conn:
        conn.execution_options(**{_SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            _take_migration_lock(conn)
            _migrate_locked(conn)


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that takes SQLite's write lock at BEGIN (IMMEDIATE) rather than at its first write.

    Waiting for another writer then happens before any work, so the time inside the block is
    the time the lock is held, and a read-then-write never fails on a snapshot gone stale.
    """
    with engine.connect() as conn:
        conn.execution_options(**{_SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            yield conn


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for `storage/migrations`, independent of the working directory.

    With a connection, env.py migrates through it (inside the caller's transaction).
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def masked(url: str | URL) -> str:
    """The URL as text with any password replaced by ***, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def _normalise(url: URL) -> URL:
    """Plain `postgresql://` would pick psycopg2, which we do not ship: use psycopg 3."""
    if url.drivername == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    return url


def _create_engine(
    url: URL, *, echo: bool, busy_timeout_ms: int, statement_timeout_ms: int | None, connect_timeout_s: float
) -> Engine:
    if url.get_backend_name() != "sqlite":
        args: dict[str, Any] = {"connect_timeout": max(1, round(connect_timeout_s))}
        if statement_timeout_ms:
            args["options"] = f"-c statement_timeout={int(statement_timeout_ms)}"
        # pre_ping: after a server restart, pooled connections are dead; find out on checkout.
        return create_engine(url, echo=echo, pool_pre_ping=True, connect_args=args)
    _make_parent_dir(url)
    engine = create_engine(url, echo=echo)
    _install_sqlite_hooks(engine, busy_timeout_ms)
    return engine


def _make_parent_dir(url: URL) -> None:
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _install_sqlite_hooks(engine: Engine, busy_timeout_ms: int) -> None:
    """Per-connection pragmas, and SQLAlchemy-controlled BEGIN for transactional DDL.

    WAL lets the CLI read while the daemon writes. busy_timeout makes a writer wait for
    a lock instead of failing at once. pysqlite's own transaction handling would run
    DDL outside any transaction, so a crash mid-migration could leave half a schema;
    the documented SQLAlchemy recipe is to switch it off and emit BEGIN ourselves.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            _enable_wal(cursor, busy_timeout_ms / 1000)
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_SQLITE_BEGIN_OPTION, "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


def _enable_wal(cursor: Any, timeout_s: float) -> None:
    """Switch to WAL, waiting out a concurrent opener.

    Switching a fresh file to WAL needs an exclusive lock, and SQLite reports a conflict there
    as "database is locked" at once, without its busy handler: two processes starting together
    (daemon and CLI) would otherwise fail for nothing.
    """
    import sqlite3

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _check_reachable(engine: Engine) -> None:
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        raise DatabaseUnavailableError(f"cannot reach database {masked(engine.url)}: {exc.orig}") from exc


def head_revisions() -> set[str]:
    """The newest migration(s) this code ships: what ``connect`` brings every database to."""
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def _at_head(engine: Engine) -> bool:
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    return current == head_revisions()


def _take_migration_lock(conn: Connection) -> None:
    """SQLite is already locked by BEGIN IMMEDIATE; PostgreSQL takes a transaction-scoped advisory lock."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK_KEY)))


def _migrate_locked(conn: Connection) -> None:
    cfg = alembic_config(conn)
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" in tables:
        command.upgrade(cfg, "head")
    elif tables & set(Base.metadata.tables):
        raise UnmanagedSchemaError(
            f"database {masked(conn.engine.url)} has ScratchWatch tables but no alembic_version: "
            "stamp it by hand (alembic stamp <revision>) or use an empty database"
        )
    else:
        Base.metadata.create_all(conn)
        command.stamp(cfg, "head")
