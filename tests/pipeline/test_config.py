"""Config loading: the packaged default validates, errors name the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from pipeline import config as config_module
from pipeline.config import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_repo_config_yaml_loads_and_resolves_paths_against_its_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCRATCHWATCH_DATA_DIR", raising=False)
    monkeypatch.delenv("SCRATCHWATCH_DATABASE_URL", raising=False)
    settings = load_settings(REPO / "config.yaml")
    assert settings.detector.model == REPO / config_module.DEFAULT_MODEL  # config.yaml states the default
    assert settings.data_dir == REPO / "data"
    assert [c.id for c in settings.cameras] == ["demo"]
    assert settings.cameras[0].source == str(REPO / "demo/intel_car-detection.mp4")
    assert not settings.cameras[0].is_live
    assert settings.database_url == f"sqlite:///{REPO / 'data/scratchwatch.db'}"


def test_every_field_has_a_title_and_description() -> None:
    def check(model: type[BaseModel], path: str) -> None:
        for name, field in model.model_fields.items():
            assert field.title and field.description, f"{path}{name} lacks title/description"
            annotation = field.annotation
            inner = getattr(annotation, "__args__", (annotation,))
            for candidate in inner:
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    check(candidate, f"{path}{name}.")

    check(Settings, "")


def test_bad_value_names_file_and_key_path(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("cameras:\n  - id: a\n    source: x.mp4\n    fps: -1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    assert str(path) in message
    assert "cameras.0.fps" in message and "greater than 0" in message


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("detector:\n  modle: x.onnx\n")
    with pytest.raises(ConfigError, match=r"detector\.modle: Extra inputs are not permitted"):
        load_settings(path)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("data_dir: data\ntracker:\n  min_hits: [3\n")
    with pytest.raises(ConfigError, match=rf"{path} line \d+, column \d+: invalid YAML"):
        load_settings(path)


def test_duplicate_camera_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("cameras:\n  - {id: a, source: 0}\n  - {id: a, source: 1}\n")
    with pytest.raises(ConfigError, match="camera id 'a' is used twice"):
        load_settings(path)


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "conf" / "config.yaml"
    path.parent.mkdir()
    path.write_text("cameras:\n  - {id: lot, source: 'rtsp://u:p@cam/1'}\n  - {id: usb, source: 0}\n")
    monkeypatch.setenv("SCRATCHWATCH_CONFIG", str(path))
    monkeypatch.setenv("SCRATCHWATCH_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SCRATCHWATCH_DATABASE_URL", "postgresql+psycopg://db/sw")
    settings = load_settings()
    assert settings.data_dir == tmp_path / "state"
    assert settings.database_url == "postgresql+psycopg://db/sw"
    assert settings.detector.model == path.parent / config_module.DEFAULT_MODEL
    assert [c.is_live for c in settings.cameras] == [True, True]
    assert settings.cameras[0].source == "rtsp://u:p@cam/1"  # URLs are not paths


def test_default_path_falls_back_to_packaged_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCRATCHWATCH_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert config_module.default_config_path() == REPO / "config.yaml"
    (tmp_path / "config.yaml").write_text("{}\n")
    assert config_module.default_config_path() == Path("config.yaml")
