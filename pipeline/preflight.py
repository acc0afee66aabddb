"""Checks of every input a run depends on, before any process starts or any frame is read.

A wrong path, URL or file found here costs the operator one line that says what is wrong and
what to do, at once, instead of a traceback from a stage process seconds later. Each failure is
a BadInput carrying its exit code: 2 for usage and configuration, 1 for the runtime (a database
that does not answer).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import Settings, is_live_source

EXIT_USAGE = 2
EXIT_RUNTIME = 1
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")
"""What a directory given to `replay` is expanded to."""
_ONNX_FIRST_BYTE = 0x08
"""An ONNX file is a ModelProto; protobuf writes field 1 (ir_version, a varint) first: tag 0x08."""


class BadInput(Exception):
    """One input is unusable: ``str(exc)`` is ``<what> — <what to do>``."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_run(settings: Settings, *, cameras: bool = True) -> None:
    """Everything `run` and `replay` need: data directory, model, database URL, file cameras."""
    check_data_dir(settings.data_dir)
    check_model(settings.detector.model)
    check_precision(settings)
    check_database_url(settings.database_url)
    if cameras:
        check_cameras(settings)


def check_data_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise BadInput(f"data directory {path} is a file — set data_dir (or SCRATCHWATCH_DATA_DIR) to a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"data directory {path} cannot be created ({exc.strerror}) — create it or choose another data_dir") from None
    probe = path / f".scratchwatch-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise BadInput(f"data directory {path} is not writable ({exc.strerror}) — give this user write access "
                       "or set data_dir (or SCRATCHWATCH_DATA_DIR) to a writable folder") from None


def check_model(path: Path) -> None:
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "not found"
        raise BadInput(f"detector model {path}: {what} — set detector.model to an exported .onnx file")
    try:
        with open(path, "rb") as handle:
            first = handle.read(1)
    except OSError as exc:
        raise BadInput(f"detector model {path}: cannot read it ({exc.strerror}) — check its permissions") from None
    if first != bytes([_ONNX_FIRST_BYTE]):
        raise BadInput(f"detector model {path}: not an ONNX model — export one with `scratchwatch export` "
                       "or point detector.model at the shipped models/*.onnx")


def check_precision(settings: Settings) -> None:
    """detector.precision fp16 runs each model's -fp16 copy, detector.input_type uint8 its -u8 copy: a missing
    one is named with the command(s) that write it."""
    from pipeline.car_gate import _copy_commands
    from pipeline.detector import model_variant

    detector = settings.detector
    models = [detector.model] + ([detector.cars.model] if detector.car_gate != "off" else [])
    for model in models:
        variant = model_variant(model, detector.precision, detector.input_type)
        if not variant.is_file():
            raise BadInput(f"detector model {variant}: not found — detector.precision is {detector.precision}, "
                           f"detector.input_type is {detector.input_type}: write it with "
                           f"{_copy_commands(model, detector.precision, detector.input_type)} "
                           "or set detector.precision: fp32 and detector.input_type: float32")


def check_database_url(url: str) -> None:
    """Syntax and driver: a typo or a missing driver package is found here, not in a stage."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from storage.db import masked

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise BadInput("database URL is not a URL — use e.g. sqlite:////var/lib/scratchwatch/scratchwatch.db "
                       "or postgresql+psycopg://user@host/db (database.url or SCRATCHWATCH_DATABASE_URL)") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise BadInput(f"database URL {masked(parsed)}: unsupported database {parsed.get_backend_name()!r} — "
                       "use sqlite:///PATH or postgresql+psycopg://user@host/db")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # as storage.db does
    try:
        parsed.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError) as exc:
        raise BadInput(f"database URL {masked(parsed)}: driver not available ({exc}) — "
                       "for PostgreSQL: pip install 'scratchwatch[postgres]'") from None


def check_cameras(settings: Settings) -> None:
    for index, camera in enumerate(settings.cameras):
        if camera.enabled and not is_live_source(camera.source) and not Path(str(camera.source)).is_file():
            raise BadInput(f"camera {camera.id}: video file {camera.source} not found — fix cameras.{index}.source "
                           "or set enabled: false")


def expand_videos(paths: list[Path]) -> list[Path]:
    """Files as given; a directory becomes the video files directly inside it, sorted."""
    files: list[Path] = []
    for path in paths:
        if not path.is_dir():
            files.append(path)  # a missing file is reported by the replay, next to the others
            continue
        videos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise BadInput(f"{path} is a directory without video files ({', '.join(VIDEO_SUFFIXES)}) — "
                           "give video files or a folder that holds some")
        files.extend(videos)
    return files
