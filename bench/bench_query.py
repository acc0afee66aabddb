"""Query-side benchmark: the API's list query on 1,000,000 incidents, SQLite and PostgreSQL.

Generates N incidents (default 1,000,000) over 50 cameras and one year, bulk-loaded (SQLite:
executemany in chunks; PostgreSQL: COPY) into a schema made by `storage.db.connect` (so the
indexes are exactly the migrations'), then measures:

- `list`: `GET /api/incidents?camera=..&since=..&until=..&min_score=..&limit=50` through the
  real FastAPI app (in-process ASGI client: routing, validation, auth, the SQL, JSON), over
  random cameras, 30-day windows and score floors: p50/p95/max. `list_sql` is the same without
  HTTP (`IncidentRepository.page`), to show where the time goes.
- `deep_page`: the page after the 500,000th incident of the unfiltered newest-first list,
  reached by a cursor (keyset), against the same page by OFFSET for contrast.

PostgreSQL is a throwaway cluster (Debian's binaries, like the tests), or `--postgres-url`.
Prints one JSON object and writes it to `bench/results/bench_query-<time>.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `tests.conftest.PostgresCluster` for the throwaway server

from sqlalchemy import Engine, select  # noqa: E402

from pipeline.config import Settings  # noqa: E402
from storage.db import connect  # noqa: E402
from storage.models import Incident  # noqa: E402
from storage.query import IncidentQuery, encode_cursor  # noqa: E402
from storage.repository import IncidentRepository  # noqa: E402

START = datetime(2025, 1, 1, tzinfo=timezone.utc)
TOKEN = "bench-token"
COLUMNS = (
    "uid", "camera_id", "kind", "source", "opened_at", "closed_at", "captured_at", "recorded_at", "best_score",
    "x1", "y1", "x2", "y2", "frame_width", "frame_height", "snapshot_path", "crop_path", "model_name",
    "model_sha256", "detection_count", "media_time_s", "verdict",
)


def generate(n: int, cameras: int, days: int, seed: int, chunk: int) -> Iterator[list[tuple[Any, ...]]]:
    """Rows in time order (as the pipeline writes them), in chunks; every 10th reviewed."""
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.uniform(0, days * 86400, n))
    camera_of = rng.integers(0, cameras, n)
    scores = rng.uniform(0.25, 1.0, n).round(4)
    for begin in range(0, n, chunk):
        rows = []
        for i in range(begin, min(n, begin + chunk)):
            opened = START + timedelta(seconds=float(offsets[i]))
            camera = f"cam-{camera_of[i]:02d}"
            uid = str(uuid.UUID(int=i + 1, version=4))
            folder = f"{camera}/{opened:%Y-%m-%d}"
            rows.append((
                uid, camera, "live", f"rtsp://lot/{camera}", opened, opened + timedelta(seconds=30), opened,
                opened + timedelta(seconds=31), float(scores[i]), 100, 120, 180, 160, 1920, 1080,
                f"{folder}/{uid}_frame.jpg", f"{folder}/{uid}_crop.jpg", "scratchwatch-yolov5n-480.onnx", "ab" * 32,
                5, None, "confirmed" if i % 10 == 0 else None,
            ))
        yield rows


def load_sqlite(engine: Engine, chunks: Iterator[list[tuple[Any, ...]]]) -> None:
    """executemany on the raw sqlite3 connection, times as the text SQLAlchemy stores (UTC, no offset)."""
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        sql = f"INSERT INTO incidents ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        for rows in chunks:
            cursor.execute("BEGIN")
            cursor.executemany(sql, [tuple(v.strftime(fmt) if isinstance(v, datetime) else v for v in row) for row in rows])
            cursor.execute("COMMIT")
        cursor.execute("ANALYZE")
    finally:
        raw.close()


def load_postgresql(engine: Engine, chunks: Iterator[list[tuple[Any, ...]]]) -> None:
    """COPY, the fastest way into PostgreSQL; then VACUUM ANALYZE so the planner knows the table."""
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor:
            for rows in chunks:
                with cursor.copy(f"COPY incidents ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                raw.commit()
        raw.driver_connection.autocommit = True  # VACUUM refuses to run in a transaction
        with raw.driver_connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE incidents")
        raw.driver_connection.autocommit = False
    finally:
        raw.close()


def add_cameras(repo: IncidentRepository, cameras: int) -> None:
    """Camera rows first (incidents reference them)."""
    from sqlalchemy import insert

    from storage.models import Camera

    end = START + timedelta(days=365)
    rows = [{"id": f"cam-{i:02d}", "source": f"rtsp://lot/cam-{i:02d}", "kind": "live", "first_seen": START, "last_seen": end}
            for i in range(cameras)]
    with repo.engine.begin() as conn:
        conn.execute(insert(Camera), rows)


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "max_ms": round(max(ms), 2),
        "n": len(ms),
    }


def random_queries(count: int, cameras: int, days: int, seed: int) -> list[dict[str, str]]:
    """camera + a 30-day window + a score floor, like an operator's first search."""
    rng = random.Random(seed)
    queries = []
    for _ in range(count):
        since = START + timedelta(days=rng.uniform(0, days - 30))
        queries.append({
            "camera": f"cam-{rng.randrange(cameras):02d}",
            "since": since.isoformat(),
            "until": (since + timedelta(days=30)).isoformat(),
            "min_score": f"{rng.choice([0.3, 0.5, 0.7, 0.9])}",
        })
    return queries


def measure(engine: Engine, data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from app.api import create_app

    repo = IncidentRepository(engine)
    settings = Settings(data_dir=data_dir)
    queries = random_queries(args.queries, args.cameras, args.days, args.seed + 1)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    result: dict[str, Any] = {}
    with TestClient(create_app(settings, engine, token=TOKEN)) as client:
        for q in queries[:10]:  # warm the cache and the connection pool
            client.get("/api/incidents", params={**q, "limit": 50}, headers=auth).raise_for_status()
        http_ms, sizes = [], []
        for q in queries:
            t0 = time.perf_counter()
            response = client.get("/api/incidents", params={**q, "limit": 50}, headers=auth)
            http_ms.append((time.perf_counter() - t0) * 1000)
            response.raise_for_status()
            sizes.append(len(response.json()["items"]))
        result["list"] = {**summary(http_ms), "mean_items": round(sum(sizes) / len(sizes), 1)}
    sql_ms = []
    for q in queries:
        query = IncidentQuery(**q)
        sql_ms += timed(lambda: repo.page(query, limit=50), 1)
    result["list_sql"] = summary(sql_ms)
    result["list_plan"] = plan(engine, IncidentQuery(**queries[0]))
    result["deep_page"] = deep_page(repo, args.deep_offset, args.deep_repeats)
    return result


def plan(engine: Engine, query: IncidentQuery) -> list[str]:
    """The database's plan for one list query: it must walk the (camera_id, opened_at, id) index, not sort."""
    from sqlalchemy import text

    from storage.repository import _filters, _order, _select_records

    stmt = _select_records().where(*_filters(query)).order_by(*_order("newest")).limit(51)
    sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) "
    with engine.connect() as conn:
        rows = conn.execute(text(explain + sql)).all()
    return [str(row[-1]) for row in rows]


def deep_page(repo: IncidentRepository, offset: int, repeats: int) -> dict[str, Any]:
    """The 50 incidents after the `offset`-th of the whole table, newest first: by cursor vs by OFFSET."""
    with repo.engine.connect() as conn:
        row = conn.execute(
            select(Incident.opened_at, Incident.id).order_by(Incident.opened_at.desc(), Incident.id.desc()).offset(offset - 1).limit(1)
        ).one()
    cursor = encode_cursor("newest", row.opened_at, row.id)
    by_cursor = repo.page(sort="newest", limit=50, cursor=cursor).items
    by_offset = repo.list(limit=50, offset=offset)
    assert [r.id for r in by_cursor] == [r.id for r in by_offset], "cursor and OFFSET disagree"
    return {
        "rows_skipped": offset,
        "cursor": summary(timed(lambda: repo.page(sort="newest", limit=50, cursor=cursor), repeats)),
        "offset": summary(timed(lambda: repo.list(limit=50, offset=offset), max(3, repeats // 10))),
        "first_page": summary(timed(lambda: repo.page(sort="newest", limit=50), repeats)),
    }


def run_backend(name: str, url: str, data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    engine = connect(url)
    try:
        repo = IncidentRepository(engine)
        add_cameras(repo, args.cameras)
        t0 = time.perf_counter()
        chunks = generate(args.incidents, args.cameras, args.days, args.seed, args.chunk)
        (load_sqlite if name == "sqlite" else load_postgresql)(engine, chunks)
        load_s = time.perf_counter() - t0
        assert repo.count() == args.incidents
        print(f"{name}: loaded {args.incidents} incidents in {load_s:.0f} s", file=sys.stderr)
        return {"load_s": round(load_s, 1), **measure(engine, data_dir, args)}
    finally:
        engine.dispose()


def postgres_url(args: argparse.Namespace, stack: list[Callable[[], None]]) -> str:
    if args.postgres_url:
        return args.postgres_url
    from tests.conftest import PostgresCluster, _postgres_bindir

    bindir = _postgres_bindir()
    if bindir is None:
        raise SystemExit("bench_query: no PostgreSQL binaries (install postgresql) and no --postgres-url")
    cluster = PostgresCluster(bindir)
    stack.append(cluster.destroy)
    cluster.start()
    return cluster.url()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--incidents", type=int, default=1_000_000)
    parser.add_argument("--cameras", type=int, default=50)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--queries", type=int, default=300, help="random list queries timed per backend")
    parser.add_argument("--deep-offset", type=int, default=500_000, help="rows before the deep page")
    parser.add_argument("--deep-repeats", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=50_000, help="rows per executemany/COPY transaction")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", help="an empty PostgreSQL database to use instead of a throwaway cluster")
    args = parser.parse_args()
    args.deep_offset = min(args.deep_offset, args.incidents - 50)

    result: dict[str, Any] = {"incidents": args.incidents, "cameras": args.cameras, "days": args.days,
                              "query": "camera + 30-day window + min_score, first page of 50 (GET /api/incidents)"}
    cleanup: list[Callable[[], None]] = []
    tmp = Path(tempfile.mkdtemp(prefix="scratchwatch-bench-query-"))
    cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    try:
        for backend in args.backends.split(","):
            url = f"sqlite:///{tmp / 'bench.db'}" if backend == "sqlite" else postgres_url(args, cleanup)
            result[backend] = run_backend(backend, url, tmp, args)
    finally:
        for undo in reversed(cleanup):
            undo()
    out = REPO / "bench" / "results" / f"bench_query-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
