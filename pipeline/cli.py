"""The ``scratchwatch`` command: run, replay, incidents, and the training extra's commands."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

from pipeline.config import ConfigError, Settings, load_settings
from pipeline.logs import setup_logging

log = logging.getLogger("scratchwatch")
EXIT_FAILED = 1
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from storage.db import DatabaseUnavailableError  # light: SQLAlchemy only, no engine made

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"scratchwatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DatabaseUnavailableError as exc:
        print(f"scratchwatch: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _positive_float(text: str) -> float:
    """argparse type: settings are validated by pydantic, but --fps bypasses it via model_copy."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scratchwatch", description="Scratch detection on parking-lot camera video.")
    parser.add_argument("--config", type=Path, help="config file (default: $SCRATCHWATCH_CONFIG, ./config.yaml, packaged default)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="analyse the configured cameras until SIGTERM/SIGINT")
    run.set_defaults(func=cmd_run)

    replay = sub.add_parser("replay", help="push video files through the pipeline, every incident with file and media time")
    replay.add_argument("files", nargs="+", type=Path, metavar="FILE")
    replay.add_argument("--realtime", action="store_true", help="pace each file at its own frame rate")
    replay.add_argument("--fps", type=_positive_float, help="analysed frames per second of media time (default: replay.fps, null = every frame)")
    replay.add_argument("--no-progress", action="store_true", help="no progress bars (logs and summary only)")
    replay.set_defaults(func=cmd_replay)

    from app.detect import register as register_detect

    register_detect(sub)
    _add_incidents(sub)
    _add_training(sub)
    return parser


def _add_incidents(sub: argparse._SubParsersAction) -> None:
    from storage.format import FORMATS

    incidents = sub.add_parser("incidents", help="query stored incidents")
    isub = incidents.add_subparsers(dest="incidents_command", required=True, metavar="ACTION")
    listing = isub.add_parser("list", help="incidents, newest first")
    listing.add_argument("--format", choices=FORMATS, default="table")
    listing.add_argument("--camera", help="only this camera id (replays: replay:<file stem>)")
    listing.add_argument("--since", type=parse_time, help="opened at or after this ISO-8601 time (naive = UTC)")
    listing.add_argument("--limit", type=int, default=50, help="at most N rows (default 50)")
    listing.set_defaults(func=cmd_incidents_list)
    show = isub.add_parser("show", help="every field of one incident")
    show.add_argument("id", type=int)
    show.set_defaults(func=cmd_incidents_show)


def _add_training(sub: argparse._SubParsersAction) -> None:
    """dataset/train/export/evaluate live in export.cli, which imports torch only when run."""
    try:
        from export.cli import register as register_export
    except ImportError as exc:
        print(
            f"scratchwatch: training commands unavailable, export.cli does not import ({exc}); "
            "this is a packaging bug, please report it",
            file=sys.stderr,
        )
        return
    register_export(sub)


def parse_time(text: str) -> datetime:
    """ISO-8601 for --since; a time without offset is taken as UTC, like every stored time."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r} (e.g. 2025-06-01T08:00)") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    setup_logging("DEBUG" if args.verbose else settings.logging.level)
    return settings


def stop_on_signals() -> threading.Event:
    """SIGTERM/SIGINT request a clean stop (drain, close incidents, flush); they never kill."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("%s again: already stopping, draining frames in flight", signal.Signals(signum).name)
        else:
            log.info("%s: stopping capture, draining, closing open incidents", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runner import PipelineError, run_cameras

    settings = _settings(args)
    try:
        report = run_cameras(settings, stop_on_signals())
    except PipelineError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    for source in report.files:
        log.info("camera %s: %d frames analysed, %d incidents%s", source.camera, source.frames, source.incidents,
                 f", error: {source.error}" if source.error else "")
    return 0 if report.ok else EXIT_FAILED


def cmd_replay(args: argparse.Namespace) -> int:
    from pipeline.runner import PipelineError, replay_files

    settings = _settings(args)
    if args.fps is not None:
        settings = settings.model_copy(update={"replay": settings.replay.model_copy(update={"fps": args.fps})})
    try:
        report = replay_files(settings, args.files, realtime=args.realtime, progress=not args.no_progress, stop=stop_on_signals())
    except PipelineError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    if args.no_progress:
        for source in report.files:
            print(f"{source.path}: {source.frames} frames, {source.incidents} incidents, {source.error or 'ok'}")
    return 0 if report.ok else EXIT_FAILED


def _repository(args: argparse.Namespace):  # -> IncidentRepository
    from storage.db import connect
    from storage.repository import IncidentRepository

    return IncidentRepository(connect(_settings(args).database_url))


def cmd_incidents_list(args: argparse.Namespace) -> int:
    from storage.format import format_incidents

    records = _repository(args).list(camera=args.camera, since=args.since, limit=args.limit)
    print(format_incidents(records, args.format))
    return 0


def cmd_incidents_show(args: argparse.Namespace) -> int:
    from storage.format import format_incident

    record = _repository(args).get(args.id)
    if record is None:
        print(f"scratchwatch: no incident with id {args.id}", file=sys.stderr)
        return EXIT_FAILED
    print(format_incident(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
