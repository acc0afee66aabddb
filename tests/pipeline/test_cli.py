"""The scratchwatch command as an operator uses it: run until SIGTERM, then query incidents."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from tests.pipeline.conftest import REPO
from storage.db import connect
from storage.repository import IncidentRepository


def scratchwatch(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def ran(make_settings, two_mark_clip: Path, tmp_path: Path) -> Path:
    """`scratchwatch run` with a file camera and an unreachable live one, stopped by SIGTERM."""
    settings = make_settings(
        cameras=[
            {"id": "lot", "source": str(two_mark_clip), "fps": None, "realtime": False},
            {"id": "gate", "source": "rtsp://127.0.0.1:9/none", "fps": 5},
        ],
        capture={"reconnect_initial_s": 0.2, "open_timeout_s": 2},
    )
    proc = scratchwatch("--config", "config.yaml", "run", cwd=tmp_path)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    deadline = time.monotonic() + 90
    # the live camera keeps `run` going; its own process may first try to connect after the file ended
    while _closed_rows(settings.database_url) < 2 or not any("unreachable" in line for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    reader.join(10)
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert "camera gate (rtsp://127.0.0.1:9/none): unreachable" in err
    assert "camera lot: 60 frames analysed, 2 incidents" in err
    return tmp_path


def _closed_rows(url: str) -> int:
    try:
        engine = connect(url)
    except Exception:
        return 0
    try:
        return sum(r.closed_at is not None for r in IncidentRepository(engine).list())
    except Exception:
        return 0
    finally:
        engine.dispose()


def test_incidents_list_formats_and_filters(ran: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ran)
    assert main(["incidents", "list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["camera_id"] for r in rows] == ["lot", "lot"]
    assert rows[0]["opened_at"] > rows[1]["opened_at"]  # newest first
    assert all(r["kind"] == "replay" and r["closed_at"] for r in rows)

    assert main(["incidents", "list", "--format", "csv", "--limit", "1"]) == 0
    assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == 1

    assert main(["incidents", "list", "--camera", "gate"]) == 0
    assert capsys.readouterr().out.strip() == "no incidents"
    assert main(["incidents", "list", "--since", "2999-01-01T00:00"]) == 0
    assert capsys.readouterr().out.strip() == "no incidents"

    assert main(["incidents", "show", str(rows[0]["id"])]) == 0
    assert rows[0]["uid"] in capsys.readouterr().out
    assert main(["incidents", "show", "9999"]) == 1
    assert "no incident with id 9999" in capsys.readouterr().err


def test_bad_config_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"cameras": [{"id": "a", "source": "x.mp4", "fps": 0}]}))
    assert main(["--config", str(path), "run"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "cameras.0.fps" in err


def test_run_without_cameras_is_a_clear_error(make_settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_settings()
    assert main(["--config", str(tmp_path / "config.yaml"), "run"]) == 1
    assert "no enabled camera" in capsys.readouterr().err


def test_missing_model_fails_the_replay_with_its_path(make_settings, two_mark_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_settings(detector={"model": "models/absent.onnx"})
    assert main(["--config", str(tmp_path / "config.yaml"), "replay", "--no-progress", str(two_mark_clip)]) == 2
    assert f"detector model {tmp_path / 'models/absent.onnx'}: not found — set detector.model" in capsys.readouterr().err


def test_training_commands_are_registered_and_described_as_export_cli_does() -> None:
    from pipeline.cli import TRAINING_COMMANDS, build_parser

    def helps(parser: argparse.ArgumentParser) -> dict[str, str]:
        [commands] = [a for a in parser._actions if a.dest == "command"]
        return {c.dest: c.help for c in commands._choices_actions}

    light, real = helps(build_parser()), helps(build_parser(training=True))
    assert {"run", "replay", "incidents", *TRAINING_COMMANDS} <= set(light)
    assert light == real


NO_TRAINING_IMPORTS = """
import sys
from pipeline.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("export", "torch", "ultralytics"))
print("heavy:", heavy, "code:", code)
"""


@pytest.mark.parametrize("command", ["--help", "replay", "run"])
def test_runtime_commands_never_import_the_training_package(make_settings, two_mark_clip: Path, tmp_path: Path, command: str) -> None:
    make_settings(cameras=[{"id": "file", "source": str(two_mark_clip), "realtime": False}])
    args = {"--help": ["--help"], "replay": ["replay", "--no-progress", "--fps", "2", str(two_mark_clip)], "run": ["run"]}[command]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", NO_TRAINING_IMPORTS, "--config", "config.yaml", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "heavy: [] code: 0" in done.stdout, (done.stdout, done.stderr)


def test_replay_refuses_a_non_positive_fps(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["replay", "--fps", "-1", "clip.mp4"])
    assert exc.value.code == 2
    assert "--fps: must be a number > 0, got -1" in capsys.readouterr().err


def test_incidents_list_names_an_unreachable_database(tmp_path: Path, monkeypatch, capsys) -> None:
    url = f"postgresql+psycopg://nobody:secret@/nodb?host={tmp_path}/no-server"
    monkeypatch.setenv("SCRATCHWATCH_DATABASE_URL", url)
    assert main(["incidents", "list"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach database" in err and "nodb" in err and "secret" not in err


BAD_INPUTS = {
    "model missing": ({"detector": {"model": "absent.onnx"}}, {}, "replay", "detector model", "not found —"),
    "model not ONNX": ({"detector": {"model": "text.onnx"}}, {}, "replay", "text.onnx: not an ONNX model —", ""),
    "data dir a file": ({"data_dir": "a-file"}, {}, "replay", "data directory", "is a file —"),
    "database URL garbage": ({}, {"SCRATCHWATCH_DATABASE_URL": "garbage://"}, "replay", "unsupported database 'garbage' —", ""),
    "database URL not a URL": ({}, {"SCRATCHWATCH_DATABASE_URL": "not a url"}, "replay", "database URL is not a URL —", ""),
    "database driver missing": ({}, {"SCRATCHWATCH_DATABASE_URL": "postgresql+nodriver://u@h/db"}, "replay", "driver not available", "pip install"),
    "camera file missing": ({"cameras": [{"id": "gate", "source": "absent.mp4"}]}, {}, "run", "camera gate: video file", "fix cameras.0.source"),
    "replay folder without videos": ({}, {}, "replay-empty-dir", "is a directory without video files", "—"),
    "limit below 1": ({}, {}, "list-limit", "--limit: must be at least 1, got -5", ""),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_each_bad_input_is_one_line_with_exit_code_2_and_no_traceback(
    make_settings, two_mark_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, case: str
) -> None:
    sections, env, command, *expected = BAD_INPUTS[case]
    (tmp_path / "text.onnx").write_text("not a model\n")
    (tmp_path / "a-file").write_text("")
    (tmp_path / "empty").mkdir()
    make_settings(**sections)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = {"replay": ["replay", "--no-progress", str(two_mark_clip)], "run": ["run"],
            "replay-empty-dir": ["replay", str(tmp_path / "empty")], "list-limit": ["incidents", "list", "--limit", "-5"]}[command]
    try:
        code = main(["--config", str(tmp_path / "config.yaml"), *args])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert all(text in err for text in expected), err
    lines = [line for line in err.splitlines() if line.startswith("scratchwatch:") or "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err


def test_a_directory_given_to_replay_expands_to_its_videos(tmp_path: Path) -> None:
    from pipeline.preflight import expand_videos

    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("b.mp4", "a.AVI", "notes.txt"):
        (folder / name).write_bytes(b"")
    single = tmp_path / "single.mkv"
    assert expand_videos([single, folder]) == [single, folder / "a.AVI", folder / "b.mp4"]


def test_an_unexpected_error_is_one_line_and_the_traceback_needs_debug(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("SCRATCHWATCH_DATA_DIR", str(tmp_path / "a-file"))  # the SQLite file's folder is a file
    assert main(["incidents", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--debug" in err and "Traceback" not in err
    with pytest.raises(OSError):
        main(["--debug", "incidents", "list"])


def test_output_to_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SCRATCHWATCH_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "incidents", "list", "--format", "csv"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the first line is written, as `| head -0` would be
    err = proc.stderr.read()
    assert proc.wait(60) == 1
    assert err == "", err
