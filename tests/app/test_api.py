"""The HTTP API against real SQLite and PostgreSQL databases and real snapshot files."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api import TOKEN_ENV, api_token, create_app
from pipeline.config import ConfigError, Settings
from tests.app.conftest import AUTH, TOKEN, Store
from tests.storage.helpers import T0, make_record


def test_health_needs_no_token_and_everything_else_does(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert client.get("/api/health").json() == {"status": "ok", "database": "ok"}
    for path in ("/api/incidents", "/api/incidents/1", "/api/incidents/1/snapshot", "/api/cameras"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
        assert client.get(path, headers={"Authorization": TOKEN}).status_code == 401, "no Bearer scheme"
        assert client.get(path, headers=AUTH).status_code == 200, path
    assert client.post("/api/incidents/1/review", json={"verdict": "confirmed"}).status_code == 401
    assert client.get("/api/incidents?since=bad").status_code == 401, "no validation details before the token"
    assert client.get("/api/incidents/1").headers["www-authenticate"] == "Bearer"
    assert TOKEN not in caplog.text


def test_serve_refuses_to_start_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError, match=TOKEN_ENV):
        api_token(Settings())
    assert api_token(Settings(api={"token": "from-config"})) == "from-config"
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert api_token(Settings(api={"token": "from-config"})) == "from-env"
    assert "from-config" not in repr(Settings(api={"token": "from-config"}))


def test_pages_follow_the_cursor_without_gaps_or_repeats(client: TestClient, store: Store) -> None:
    for sort, key in (("newest", lambda r: (r.opened_at, r.id)), ("score", lambda r: (r.best_score, r.id))):
        expected = [r.id for r in sorted(store.records, key=key, reverse=True)]
        seen, cursor = [], None
        while True:
            params = {"limit": 5, "sort": sort, **({"cursor": cursor} if cursor else {})}
            page = client.get("/api/incidents", params=params, headers=AUTH).json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == expected, sort
    oldest = client.get("/api/incidents", params={"sort": "oldest", "limit": 3}, headers=AUTH).json()
    assert [i["id"] for i in oldest["items"]] == [r.id for r in store.records[:3]]


def test_filters_and_filtered_count(client: TestClient, store: Store) -> None:
    def ids(**params: object) -> list[int]:
        page = client.get("/api/incidents", params={**params, "count": "true", "sort": "oldest"}, headers=AUTH).json()
        assert page["total"] == len(page["items"])
        return [item["id"] for item in page["items"]]

    by_index = {i: r.id for i, r in enumerate(store.records)}
    pick = lambda *indexes: [by_index[i] for i in indexes]  # noqa: E731
    since = (T0 + timedelta(minutes=4)).isoformat()
    until = (T0 + timedelta(minutes=9)).isoformat().replace("+00:00", "Z")
    assert ids(camera="lot-east", since=since, until=until, min_score=0.5) == pick(4, 6, 8)
    assert ids(max_score=0.4) == pick(0, 1, 2)
    assert ids(kind="replay") == pick(0, 3, 6, 9)
    assert ids(video="clip0.mp4") == pick(0, 3, 6, 9)
    assert ids(video="/videos/clip0.mp4") == pick(0, 3, 6, 9)
    assert ids(video="ip0.mp4") == []
    assert ids(state="open") == pick(0, 4, 8)
    store.repo.review(store.records[5].id, "false-alarm", by="bob")
    assert ids(review="reviewed") == ids(review="false-alarm") == pick(5)
    assert len(ids(review="unreviewed")) == len(store.records) - 1


BAD_FILTERS = [
    ({"since": "yesterday-ish"}, "since"),
    ({"until": "2025-13-01"}, "until"),
    ({"since": "2025-06-02", "until": "2025-06-01"}, "until"),
    ({"min_score": "high"}, "min_score"),
    ({"max_score": "1.5"}, "max_score"),
    ({"min_score": "0.8", "max_score": "0.2"}, "max_score"),
    ({"kind": "satellite"}, "kind"),
    ({"state": "ajar"}, "state"),
    ({"review": "maybe"}, "review"),
    ({"sort": "random"}, "sort"),
    ({"limit": "0"}, "limit"),
    ({"limit": "100000"}, "limit"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": "WyJzY29yZSIsMC41LDFd"}, "cursor"),  # a cursor of sort=score used with sort=newest
    ({"camara": "typo"}, "camara"),
]


def test_invalid_filters_are_422_naming_the_parameter(client: TestClient) -> None:
    for params, name in BAD_FILTERS:
        response = client.get("/api/incidents", params=params, headers=AUTH)
        assert response.status_code == 422, response.text
        assert [error["loc"] for error in response.json()["detail"]] == [["query", name]], params


def test_unknown_or_malformed_ids(client: TestClient) -> None:
    for path in ("/api/incidents/999999", "/api/incidents/999999/snapshot", "/api/incidents/999999/crop"):
        response = client.get(path, headers=AUTH)
        assert response.status_code == 404 and "999999" in response.json()["detail"], path
    assert client.post("/api/incidents/999999/review", json={"verdict": "confirmed"}, headers=AUTH).status_code == 404
    assert client.get("/api/incidents/abc", headers=AUTH).status_code == 422
    assert client.get("/api/incidents/1/thumbnail", headers=AUTH).status_code == 404


def test_one_incident_and_its_images(client: TestClient, store: Store) -> None:
    with_car, without_car = store.records[0], store.records[1]
    body = client.get(f"/api/incidents/{with_car.id}", headers=AUTH).json()
    assert (body["id"], body["car_track_id"], body["car_path"], body["media_time_s"]) == (with_car.id, 7, with_car.car_path, 12.5)
    for image, stored in (("snapshot", with_car.snapshot_path), ("crop", with_car.crop_path), ("car", with_car.car_path)):
        response = client.get(f"/api/incidents/{with_car.id}/{image}", headers=AUTH)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        assert response.content == (store.root / stored).read_bytes()
    response = client.get(f"/api/incidents/{without_car.id}/car", headers=AUTH)
    assert response.status_code == 404 and "no car image" in response.json()["detail"]


def test_a_missing_file_is_a_placeholder_and_a_warning(client: TestClient, store: Store, caplog) -> None:
    record = store.records[2]
    (store.root / record.crop_path).unlink()
    response = client.get(f"/api/incidents/{record.id}/crop", headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"
    assert b"snapshot missing" in response.content
    assert f"incident {record.id} crop" in caplog.text and "missing" in caplog.text


def test_snapshot_paths_that_leave_the_root_are_never_served(client: TestClient, store: Store, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    (store.root / "lot-east" / "escape.jpg").symlink_to(secret)
    hostile = ["../../secret.txt", str(secret), "lot-east/../../../secret.txt", "lot-east/escape.jpg", "/etc/passwd"]
    for n, stored in enumerate(hostile, 100):
        incident_id = store.repo.save(make_record(n, snapshot_path=stored))
        response = client.get(f"/api/incidents/{incident_id}/snapshot", headers=AUTH)
        assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml", stored
        assert b"do not serve" not in response.content and b"root:" not in response.content
    for path in ("/api/incidents/..%2F..%2Fsecret.txt/snapshot", "/api/incidents/1/..%2F..%2Fsecret.txt",
                 "/api/incidents/1/snapshot/../../../secret.txt", "/..%2F..%2Fsecret.txt", "/%2e%2e/%2e%2e/secret.txt",
                 "/api/incidents/1%2F..%2F..%2Fsecret.txt"):
        response = client.get(path, headers=AUTH)
        assert b"do not serve" not in response.content, path
        assert response.status_code in (404, 422) or response.headers["content-type"].startswith("text/html"), path


def test_review_records_verdict_who_and_when(client: TestClient, store: Store) -> None:
    record = store.records[3]
    before = datetime.now(timezone.utc)
    response = client.post(f"/api/incidents/{record.id}/review", json={"verdict": "confirmed", "note": "door dent"}, headers=AUTH)
    assert response.status_code == 200
    stored = store.repo.get(record.id)
    assert (stored.verdict, stored.review_note, stored.reviewed_by) == ("confirmed", "door dent", "alice")
    assert before <= stored.reviewed_at <= datetime.now(timezone.utc)
    assert response.json()["reviewed_by"] == "alice"
    store.repo.save(record)  # the pipeline saving the same incident again keeps the review
    assert store.repo.get(record.id).verdict == "confirmed"
    bad = client.post(f"/api/incidents/{record.id}/review", json={"verdict": "maybe"}, headers=AUTH)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "verdict"]


def test_cameras_with_last_seen_and_the_openapi_schema(client: TestClient, store: Store) -> None:
    cameras = client.get("/api/cameras", headers=AUTH).json()
    assert [c["id"] for c in cameras] == ["lot-west", "lot-east"]
    last_west = max(r.closed_at or r.opened_at for r in store.records if r.camera_id == "lot-west")
    assert datetime.fromisoformat(cameras[0]["last_seen"].replace("Z", "+00:00")) == last_west
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/health", "/api/incidents", "/api/incidents/{incident_id}", "/api/incidents/{incident_id}/snapshot",
            "/api/incidents/{incident_id}/crop", "/api/incidents/{incident_id}/car", "/api/incidents/{incident_id}/review",
            "/api/cameras"} <= set(paths)
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html") and "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_env_token_is_used_by_create_app(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "env-secret")
    with TestClient(create_app(store.settings, store.repo.engine)) as client:
        assert client.get("/api/cameras", headers={"Authorization": "Bearer env-secret"}).status_code == 200
        assert client.get("/api/cameras", headers=AUTH).status_code == 401
    assert os.environ[TOKEN_ENV] == "env-secret"


@pytest.mark.postgres
def test_a_database_that_goes_away_is_503_not_500(postgres_cluster, tmp_path: Path, caplog) -> None:
    from storage.db import connect

    postgres_cluster.start()
    engine = connect(postgres_cluster.url())
    settings = Settings(data_dir=tmp_path / "data")
    try:
        with TestClient(create_app(settings, engine, token=TOKEN)) as client:
            assert client.get("/api/incidents", headers=AUTH).status_code == 200
            postgres_cluster.stop()
            for path in ("/api/incidents", "/api/incidents/1", "/api/cameras", "/api/health"):
                response = client.get(path, headers=AUTH)
                assert response.status_code == 503, (path, response.text)
            assert "database" in caplog.text
    finally:
        engine.dispose()
