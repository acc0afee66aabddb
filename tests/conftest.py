"""Shared fixtures: real databases for every test package.

- `sqlite_url`: a SQLite file under the test's tmp dir (its parent directory not yet created).
- `postgresql_url`: a fresh, empty PostgreSQL database per test (CREATE DATABASE), so tests
  never see each other's rows. The server is `SCRATCHWATCH_TEST_POSTGRES_URL` when set,
  else a throwaway cluster started once per session from Debian's PostgreSQL binaries,
  listening on a unix socket only.
- `database_url`: both of the above, as two parametrised cases (`[sqlite]`, `[postgresql]`).
- `postgres_cluster`: a private, stopped cluster a test may start and stop (outage tests).
- every test starts and ends with the root logger's own handlers: a CLI test's `setup_logging`
  binds a handler to pytest's captured stderr, which is closed once that test ends.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url
from sqlalchemy.pool import NullPool

POSTGRES_URL_ENV = "SCRATCHWATCH_TEST_POSTGRES_URL"


@pytest.fixture(autouse=True)
def _root_logging() -> Iterator[None]:
    """Put the root logger back after each test (handlers and level), so a later test never logs
    through a handler whose stream was an earlier test's captured, now closed, stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
_PG_SYSTEM_USER = "postgres"


class PostgresCluster:
    """A PostgreSQL cluster in a temp directory, reachable only through a unix socket.

    PostgreSQL refuses to run as root, so as root every command runs as the `postgres`
    system user, which owns the directory.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="scratchwatch-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            user = pwd.getpwnam(_PG_SYSTEM_USER)
            for path in (self.root, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")

    def url(self, database: str = "postgres") -> str:
        """psycopg URL for a database of this cluster, through the socket directory."""
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}"

    def start(self) -> None:
        options = f"-c listen_addresses='' -k {self.socket_dir} -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-o", options, "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        """Stop the server if it runs and delete everything."""
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", _PG_SYSTEM_USER, "--", *command]
        result = subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr or result.stdout}")


def _postgres_bindir() -> Path | None:
    """The newest Debian-installed PostgreSQL, else initdb on PATH."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if found:
        newest = max(found, key=lambda p: int(re.search(r"/(\d+)/bin/", p).group(1)))  # type: ignore[union-attr]
        return Path(newest).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _new_cluster() -> PostgresCluster:
    """A fresh cluster, or a skip that says why none can be made."""
    bindir = _postgres_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip(f"no PostgreSQL binaries (initdb, pg_ctl) found; install postgresql or set {POSTGRES_URL_ENV}")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_PG_SYSTEM_USER)
        except KeyError:
            pytest.skip(f"running as root and no {_PG_SYSTEM_USER!r} system user to run PostgreSQL as")
    return PostgresCluster(bindir)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a PostgreSQL maintenance database on a server shared by the whole session."""
    external = os.environ.get(POSTGRES_URL_ENV)
    if external:
        url = make_url(external)
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        yield url.render_as_string(hide_password=False)
        return
    cluster = _new_cluster()
    try:
        cluster.start()
        yield cluster.url()
    finally:
        cluster.destroy()


@pytest.fixture
def postgresql_url(postgres_server_url: str) -> Iterator[str]:
    """A new empty database on the session's server, dropped after the test."""
    name = f"scratchwatch_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file in a directory that does not exist yet (connect() must create it)."""
    return f"sqlite:///{tmp_path / 'data' / 'scratchwatch.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Run the test once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A private cluster, initialised but not started, for tests that take the server down."""
    cluster = _new_cluster()
    try:
        yield cluster
    finally:
        cluster.destroy()
