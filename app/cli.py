"""Operator commands of the application shell, registered into ``scratchwatch``'s parser.

They live here rather than in ``pipeline/cli.py`` so the pipeline's own commands stay small;
``pipeline.cli.build_parser`` calls ``register``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    service = sub.add_parser("install-service", help="install the systemd unit, its user, config and directories")
    service.add_argument("--user", default="scratchwatch", help="system user the service runs as (default scratchwatch)")
    service.add_argument("--prefix", type=Path, help="write everything under this folder instead of / (no user is created)")
    service.set_defaults(func=cmd_install_service)

    status = sub.add_parser("status", help="health of the running daemon: cameras, frames, reconnects, heartbeats")
    status.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    status.set_defaults(func=cmd_status)

    stage = sub.add_parser("stage", help="run one stage on its own (separate units or hosts) on the config's fixed endpoints")
    stage.add_argument("stage", type=_stage_name, metavar="STAGE",
                       help="capture, incidents, inference or inference-N (worker N binds transport.frames_port + N)")
    stage.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="config file (same as the global --config)")
    stage.set_defaults(func=_cmd_stage)

    keys = sub.add_parser("keys", help="CurveZMQ keys for tcp links between hosts")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = ksub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret (0600)")
    generate.add_argument("--dir", type=Path, default=Path("keys"), help="folder for the key files (default ./keys)")
    generate.add_argument("--name", default="scratchwatch", help="file name stem (default scratchwatch)")
    generate.set_defaults(func=cmd_keys_generate)


def _stage_name(text: str) -> tuple[str, int]:
    from app.stages import parse_stage

    try:
        return parse_stage(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_stage(args: argparse.Namespace) -> int:
    from app.stages import cmd_stage

    return cmd_stage(args)


def register_incident_actions(isub: argparse._SubParsersAction) -> None:
    """``incidents keep ID`` / ``unkeep ID``: protect an incident from retention, or lift it."""
    for name, keep, text in (("keep", True, "protect an incident and its snapshots from retention"),
                             ("unkeep", False, "let retention delete the incident again when it is due")):
        action = isub.add_parser(name, help=text)
        action.add_argument("id", type=int)
        action.set_defaults(func=cmd_incidents_keep, keep=keep)


def cmd_incidents_keep(args: argparse.Namespace) -> int:
    import sys

    from pipeline.cli import _repository

    if not _repository(args).set_keep(args.id, args.keep):
        print(f"scratchwatch: no incident with id {args.id}", file=sys.stderr)
        return 1
    print(f"incident {args.id}: {'kept (retention will not delete it)' if args.keep else 'no longer kept'}")
    return 0


def cmd_install_service(args: argparse.Namespace) -> int:
    from app.service import InstallPlan, install
    from pipeline.cli import _settings

    plan = InstallPlan(user=args.user, prefix=args.prefix.resolve() if args.prefix else None)
    for line in install(plan, _settings(args)):
        print(line)
    print("next: systemctl daemon-reload && systemctl enable --now scratchwatch; logs: journalctl -u scratchwatch -f")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json
    import sys

    from app.status import DaemonUnreachableError, format_status, read_status
    from pipeline.config import load_settings

    try:
        status = read_status(load_settings(args.config).metrics)
    except DaemonUnreachableError as exc:
        print(f"scratchwatch: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    import sys

    from app.keys import KeyExistsError, generate

    try:
        public_file, secret_file, public = generate(args.dir, args.name)
    except KeyExistsError as exc:
        print(f"scratchwatch: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {public_file} (public) and {secret_file} (secret, 0600: keep it on this host only)")
    print(f"public key: {public}")
    print(f"this node: transport.curve.key_file: {secret_file.resolve()}")
    print("its peers: add the public key to transport.curve.allowed_keys (receivers) or server_key (senders)")
    return 0
