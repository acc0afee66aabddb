"""`scratchwatch incidents list/show/export/stats/review` on a real SQLite store with snapshot files."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from storage.db import connect
from storage.format import FIELD_NAMES, record_to_dict
from storage.repository import IncidentRecord, IncidentRepository
from storage.snapshot_files import snapshot_root
from tests.app.conftest import fill


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run `scratchwatch --config <tmp>/config.yaml ARGS...` in-process: (exit code, stdout, stderr)."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": "data"}))
    monkeypatch.delenv("SCRATCHWATCH_DATABASE_URL", raising=False)
    monkeypatch.delenv("SCRATCHWATCH_DATA_DIR", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--config", str(config), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def stored(tmp_path: Path) -> list[IncidentRecord]:
    engine = connect(f"sqlite:///{tmp_path / 'data' / 'scratchwatch.db'}")
    try:
        return fill(IncidentRepository(engine), snapshot_root(tmp_path / "data"))
    finally:
        engine.dispose()


def _as_text(record: IncidentRecord) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in record_to_dict(record).items()}


def test_list_round_trips_as_json_csv_and_table(cli, stored: list[IncidentRecord]) -> None:
    newest_first = sorted(stored, key=lambda r: r.opened_at, reverse=True)
    code, out, _ = cli("incidents", "list", "--format", "json", "--limit", "100")
    assert code == 0 and json.loads(out) == [record_to_dict(r) for r in newest_first]
    code, out, _ = cli("incidents", "list", "--format", "csv", "--limit", "100")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and list(rows[0]) == FIELD_NAMES and rows == [_as_text(r) for r in newest_first]
    code, out, _ = cli("incidents", "list", "--camera", "lot-east", "--min-score", "0.5", "--sort", "oldest", "--limit", "2")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["ID", "CAMERA", "OPENED"] and len(lines) == 3
    expected = [r for r in stored if r.camera_id == "lot-east" and r.best_score >= 0.5][:2]
    assert [line.split()[0] for line in lines[1:]] == [str(r.id) for r in expected]
    code, out, _ = cli("incidents", "list", "--format", "json", "--sort", "score", "--offset", "1", "--limit", "1")
    assert [i["id"] for i in json.loads(out)] == [sorted(stored, key=lambda r: r.best_score)[-2].id]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--since", "last tuesday"], "--since"),
        (["--since", "2025-06-02", "--until", "2025-06-01T08:00"], "--until"),
        (["--min-score", "1.2"], "--min-score"),
        (["--kind", "drone"], "--kind"),
        (["--review", "later"], "--review"),
        (["--sort", "random"], "--sort"),
        (["--limit", "-5"], "--limit"),
        (["--offset", "x"], "--offset"),
    ],
)
def test_bad_filter_values_are_one_line_naming_the_option(cli, args: list[str], option: str) -> None:
    code, out, err = cli("incidents", "list", *args)
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"scratchwatch: {option}: ")


def test_show_names_the_snapshot_files_and_media_time(cli, stored: list[IncidentRecord], tmp_path: Path) -> None:
    replay = stored[0]
    code, out, _ = cli("incidents", "show", str(replay.id))
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert code == 0 and fields["media_time"] == "0:12.5"
    assert Path(fields["snapshot_file"]) == tmp_path / "data" / "snapshots" / replay.snapshot_path
    assert Path(fields["car_file"]).is_file()
    assert cli("incidents", "show", "424242")[0] == 1


def test_export_with_snapshots_zips_the_listing_and_the_files(cli, stored: list[IncidentRecord], tmp_path: Path) -> None:
    (tmp_path / "data" / "snapshots" / stored[1].crop_path).unlink()
    bundle = tmp_path / "out.zip"
    code, out, err = cli("incidents", "export", "--format", "csv", "--camera", "lot-west", "--with-snapshots", str(bundle))
    west = [r for r in stored if r.camera_id == "lot-west"]
    assert code == 0 and [row["id"] for row in csv.DictReader(io.StringIO(out))] == [str(r.id) for r in reversed(west)]
    assert "1 snapshot file(s) missing" in err
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        assert archive.read("incidents.csv").decode() == out
        assert archive.read(f"snapshots/{west[0].snapshot_path}") == (tmp_path / "data" / "snapshots" / west[0].snapshot_path).read_bytes()
    expected = {f"snapshots/{r.snapshot_path}" for r in west} | {f"snapshots/{r.crop_path}" for r in west[1:]}
    assert names == expected | {"incidents.csv"}
    listing = tmp_path / "open.json"
    code, out, err = cli("incidents", "export", "--format", "json", "--state", "open", "--output", str(listing))
    assert code == 0 and out == "" and f"exported 3 incident(s) to {listing}" in err
    assert [i["id"] for i in json.loads(listing.read_text())] == [r.id for r in reversed(stored) if r.closed_at is None]


def test_stats_count_per_camera_per_day_and_review(cli, stored: list[IncidentRecord]) -> None:
    code, out, _ = cli("incidents", "stats", "--format", "json")
    assert code == 0 and json.loads(out) == [
        {"camera": "lot-east", "day": "2025-06-01", "incidents": 6},
        {"camera": "lot-west", "day": "2025-06-01", "incidents": 6},
    ]
    assert cli("incidents", "stats")[1].splitlines()[0].split() == ["CAMERA", "DAY", "(UTC)", "INCIDENTS"]
    code, out, _ = cli("incidents", "review", str(stored[4].id), "--verdict", "false-alarm", "--note", "bay line", "--by", "carol")
    assert code == 0 and out.startswith(f"incident {stored[4].id}: false-alarm by carol at ")
    code, out, _ = cli("incidents", "list", "--review", "reviewed", "--format", "json")
    [reviewed] = json.loads(out)
    assert (reviewed["id"], reviewed["review_note"], reviewed["reviewed_by"]) == (stored[4].id, "bay line", "carol")
    assert cli("incidents", "review", "424242", "--verdict", "confirmed")[0] == 1


def test_serve_without_a_token_is_one_line_exit_2(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCRATCHWATCH_API_TOKEN", raising=False)
    code, _, err = cli("serve", "--port", "1")
    assert code == 2 and err.strip() == (
        "scratchwatch: no API token: set SCRATCHWATCH_API_TOKEN (or api.token in the config) before `scratchwatch serve`")


def test_serve_answers_on_the_given_port_and_stops_on_sigterm(tmp_path: Path, stored: list[IncidentRecord]) -> None:
    """`scratchwatch serve --host --port` as an operator starts it: a real process on loopback."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data_dir": "data"}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "SCRATCHWATCH_API_TOKEN": "cli-token"}
    env.pop("SCRATCHWATCH_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--config", "config.yaml", "serve", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/health", timeout=2) as response:
                    assert json.load(response) == {"status": "ok", "database": "ok"}
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.1)
        request = urllib.request.Request(f"{base}/api/incidents?limit=100", headers={"Authorization": "Bearer cli-token"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert len(json.load(response)["items"]) == len(stored)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "cli-token" not in err
