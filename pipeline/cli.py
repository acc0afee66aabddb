"""The ``scratchwatch`` command: run, replay, incidents, and the training extra's commands."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from app.cli import register as register_operations
from app.cli import register_incident_actions
from pipeline.config import ConfigError, Settings, load_settings
from pipeline.logs import setup_logging
from pipeline.preflight import BadInput, check_database_url, check_run, expand_videos

log = logging.getLogger("scratchwatch")
EXIT_FAILED = 1
EXIT_USAGE = 2
TRAINING_COMMANDS = {
    "dataset": "build a clean YOLO dataset (dedupe, split by photo, tile)",
    "train": "train the detector from COCO weights (resumable)",
    "export": "export a checkpoint to ONNX, check parity, embed metrics",
    "ensemble": "several damage models (and their mirrored view) as one ONNX model, outputs averaged anchor by anchor",
    "evaluate": "score an ONNX model through the pipeline's detector code",
    "car-model": "export the car stage: COCO YOLOv5n with its classic head, all 349 tensors",
    "quantize": "int8 copy of an ONNX model for CPUs (static, calibrated on the val split)",
    "fp16": "half-precision copy of an ONNX model for GPUs (float32 inputs and outputs kept)",
    "u8": "copy of an ONNX model taking the letterboxed bytes (uint8 input, /255 in the graph, on the GPU)",
    "fast-dfl": "rewrite a YOLOv5u/v8 head's box decode (DFL) so ONNX Runtime runs it faster; same outputs, checked",
}
"""The training extra's commands (export/cli.py), listed here so that `run`, `replay` and `--help`
never import the training package: it is loaded only when one of these is the command."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(training=_command(argv) in TRAINING_COMMANDS)
    args = parser.parse_args(argv)
    from storage.db import DatabaseUnavailableError  # light: SQLAlchemy only, no engine made

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"scratchwatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BadInput as exc:
        print(f"scratchwatch: {exc}", file=sys.stderr)
        return exc.exit_code
    except DatabaseUnavailableError as exc:
        print(f"scratchwatch: {exc} — check that it runs and database.url / SCRATCHWATCH_DATABASE_URL", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `scratchwatch incidents list | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return EXIT_FAILED
    except Exception as exc:
        if args.debug:
            raise
        print(f"scratchwatch: {exc or type(exc).__name__} — run again with --debug for the details", file=sys.stderr)
        return EXIT_FAILED


def _positive_float(text: str) -> float:
    """argparse type: settings are validated by pydantic, but --fps bypasses it via model_copy."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _command(argv: list[str]) -> str | None:
    """The subcommand in ``argv``: the first word that is neither an option nor --config's value."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(*, training: bool = False) -> argparse.ArgumentParser:
    """With ``training``, the training extra's commands are the real ones (export.cli imported)."""
    parser = argparse.ArgumentParser(prog="scratchwatch", description="Scratch detection on parking-lot camera video.")
    parser.add_argument("--config", type=Path, help="config file (default: $SCRATCHWATCH_CONFIG, ./config.yaml, packaged default)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="debug logging, and a traceback for unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="analyse the configured cameras until SIGTERM/SIGINT")
    run.set_defaults(func=cmd_run)

    replay = sub.add_parser("replay", help="push video files through the pipeline, every incident with file and media time")
    replay.add_argument("files", nargs="+", type=Path, metavar="FILE", help="video files, or folders of them")
    replay.add_argument("--realtime", action="store_true", help="pace each file at its own frame rate")
    replay.add_argument("--fps", type=_positive_float, help="analysed frames per second of media time (default: replay.fps, null = every frame)")
    replay.add_argument("--no-progress", action="store_true", help="no progress bars (logs and summary only)")
    replay.set_defaults(func=cmd_replay)

    from app.detect import register as register_detect

    register_detect(sub)
    from app.bench import register as register_bench

    register_bench(sub)
    _add_incidents(sub)
    serve = sub.add_parser("serve", help="HTTP API and web page over the incident store (needs an API token)")
    serve.add_argument("--host", help="listen address (default: api.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default: api.port, 8080)")
    serve.set_defaults(func=cmd_serve)
    if training:
        _add_training(sub)
    else:
        for name, text in TRAINING_COMMANDS.items():  # for --help; main() builds the real ones when used
            sub.add_parser(name, help=text)
    register_operations(sub)
    return parser


def _add_incidents(sub: argparse._SubParsersAction) -> None:
    from storage.format import FORMATS

    incidents = sub.add_parser("incidents", help="query, export and review stored incidents")
    isub = incidents.add_subparsers(dest="incidents_command", required=True, metavar="ACTION")
    listing = isub.add_parser("list", help="incidents matching the filters, newest first")
    listing.add_argument("--format", choices=FORMATS, default="table")
    _add_filters(listing)
    listing.add_argument("--limit", default="50", help="at most N rows (default 50)")
    listing.add_argument("--offset", default="0", help="skip the first N rows (default 0)")
    listing.set_defaults(func=cmd_incidents_list)
    show = isub.add_parser("show", help="every field of one incident, its snapshot files and media time")
    show.add_argument("id", type=int)
    show.set_defaults(func=cmd_incidents_show)
    export = isub.add_parser("export", help="every matching incident as CSV or JSON, optionally with its snapshots in a zip")
    export.add_argument("--format", choices=("csv", "json"), required=True)
    _add_filters(export)
    export.add_argument("--output", type=Path, help="write here instead of stdout")
    export.add_argument("--with-snapshots", type=Path, metavar="ZIP", help="also write ZIP: the export plus every snapshot file")
    export.set_defaults(func=cmd_incidents_export)
    stats = isub.add_parser("stats", help="incidents per camera per UTC day")
    stats.add_argument("--format", choices=FORMATS, default="table")
    _add_filters(stats, sort=False)
    stats.set_defaults(func=cmd_incidents_stats)
    review = isub.add_parser("review", help="mark an incident confirmed or a false alarm (replaces an earlier review)")
    review.add_argument("id", type=int)
    review.add_argument("--verdict", choices=("confirmed", "false-alarm"), required=True)
    review.add_argument("--note", help="free text kept with the verdict")
    review.add_argument("--by", help="reviewer name recorded (default: your user name)")
    review.set_defaults(func=cmd_incidents_review)
    register_incident_actions(isub)


_FILTER_HELP = {
    "camera": "only this camera id (replays: replay:<file stem>)",
    "since": "opened at or after this time: ISO-8601, local time unless it has an offset or Z",
    "until": "opened before this time (same format as --since)",
    "min_score": "best score at least this (0..1)",
    "max_score": "best score at most this (0..1)",
    "kind": "live or replay",
    "video": "the incident's source: a path, URL or file name",
    "state": "open or closed",
    "review": "reviewed, unreviewed, confirmed or false-alarm",
}


def _add_filters(parser: argparse.ArgumentParser, *, sort: bool = True) -> None:
    """The filters of IncidentQuery as options; values are checked by IncidentQuery itself (one line, exit 2)."""
    for name, text in _FILTER_HELP.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help=text)
    if sort:
        parser.add_argument("--sort", default="newest", help="newest (default), oldest or score (highest first)")


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


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    setup_logging("DEBUG" if args.verbose or args.debug else settings.logging.level)
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
    from app.daemon import daemon_observers
    from pipeline.runner import PipelineError, run_cameras

    settings = _settings(args)
    check_run(settings)
    try:
        report = run_cameras(settings, stop_on_signals(), daemon_observers(settings))
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
    files = expand_videos(args.files)
    check_run(settings, cameras=False)
    _check_server_reachable(settings.database_url)
    if args.fps is not None:
        settings = settings.model_copy(update={"replay": settings.replay.model_copy(update={"fps": args.fps})})
    try:
        report = replay_files(settings, files, realtime=args.realtime, progress=not args.no_progress, stop=stop_on_signals())
    except PipelineError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    if args.no_progress:
        for source in report.files:
            print(f"{source.path}: {source.frames} frames, {source.incidents} incidents, {source.problem or 'ok'}")
        for problem in report.pipeline_problems:
            print(problem)
    return 0 if report.ok else EXIT_FAILED


def _check_server_reachable(url: str) -> None:
    """A replay is short: a database server that does not answer is reported now, in one line.

    (`run` is a daemon: its incidents stage keeps retrying, and records wait in the spool.)
    """
    from sqlalchemy import make_url

    from storage.db import connect

    if make_url(url).get_backend_name() != "sqlite":
        connect(url).dispose()


def _repository(args: argparse.Namespace):  # -> IncidentRepository
    from storage.db import connect
    from storage.repository import IncidentRepository

    url = _settings(args).database_url
    check_database_url(url)
    return IncidentRepository(connect(url))


class UsageError(Exception):
    """A bad option value: main-style one line naming the option, exit 2."""


def _incident_query(args: argparse.Namespace):  # -> IncidentQuery
    """IncidentQuery from the filter options; a bad value is a UsageError naming its option."""
    from pydantic import ValidationError

    from storage.query import SORTS, IncidentQuery, first_error

    if getattr(args, "sort", "newest") not in SORTS:
        raise UsageError(f"--sort: expected one of {', '.join(SORTS)}, got {args.sort!r}")
    try:
        return IncidentQuery(**{name: getattr(args, name) for name in _FILTER_HELP})
    except ValidationError as exc:
        name, message = first_error(exc)
        raise UsageError(f"--{name.replace('_', '-')}: {message}") from None


def _count_option(args: argparse.Namespace, name: str, minimum: int) -> int:
    text = getattr(args, name)
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--{name}: not a whole number: {text!r}") from None
    if value < minimum:
        raise UsageError(f"--{name}: must be at least {minimum}, got {value}")
    return value


def _usage_errors(command):  # decorator: UsageError -> one line on stderr, exit 2
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except UsageError as exc:
            print(f"scratchwatch: {exc}", file=sys.stderr)
            return EXIT_USAGE

    run.__doc__ = command.__doc__
    return run


@_usage_errors
def cmd_incidents_list(args: argparse.Namespace) -> int:
    from storage.format import format_incidents

    query = _incident_query(args)
    limit, offset = _count_option(args, "limit", 1), _count_option(args, "offset", 0)
    records = _repository(args).list(query=query, sort=args.sort, limit=limit, offset=offset)
    print(format_incidents(records, args.format))
    return 0


def cmd_incidents_show(args: argparse.Namespace) -> int:
    from storage.format import format_incident
    from storage.snapshot_files import SNAPSHOT_FIELDS, snapshot_root

    settings = _settings(args)
    record = _repository(args).get(args.id)
    if record is None:
        print(f"scratchwatch: no incident with id {args.id}", file=sys.stderr)
        return EXIT_FAILED
    root = snapshot_root(settings.data_dir)
    files = {name: str(root / getattr(record, field)) for name, field in SNAPSHOT_FIELDS.items() if getattr(record, field)}
    print(format_incident(record, files))
    return 0


@_usage_errors
def cmd_incidents_export(args: argparse.Namespace) -> int:
    """Streams page by page, so an export of every incident never holds them all in memory."""
    from storage.incident_export import export_incidents

    query = _incident_query(args)
    settings = _settings(args)
    count, missing = export_incidents(_repository(args), query, args.sort, args.format, args.output, args.with_snapshots,
                                      settings.data_dir)
    where = f" and {args.with_snapshots}" if args.with_snapshots else ""
    print(f"exported {count} incident(s) to {args.output or 'stdout'}{where}", file=sys.stderr)
    if missing:
        print(f"scratchwatch: {missing} snapshot file(s) missing or outside the snapshot root, not in the zip (see the log)",
              file=sys.stderr)
    return 0


@_usage_errors
def cmd_incidents_stats(args: argparse.Namespace) -> int:
    from storage.format import format_stats

    print(format_stats(_repository(args).stats(_incident_query(args)), args.format))
    return 0


def cmd_incidents_review(args: argparse.Namespace) -> int:
    import getpass

    record = _repository(args).review(args.id, args.verdict, by=args.by or getpass.getuser(), note=args.note)
    if record is None:
        print(f"scratchwatch: no incident with id {args.id}", file=sys.stderr)
        return EXIT_FAILED
    print(f"incident {record.id}: {record.verdict} by {record.reviewed_by} at {record.reviewed_at.isoformat()}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The HTTP API and web page until SIGTERM/SIGINT (uvicorn handles both)."""
    from app.serve import serve

    settings = _settings(args)
    serve(settings, host=args.host or settings.api.host, port=args.port or settings.api.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
