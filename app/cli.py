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


def cmd_install_service(args: argparse.Namespace) -> int:
    from app.service import InstallPlan, install
    from pipeline.cli import _settings

    plan = InstallPlan(user=args.user, prefix=args.prefix.resolve() if args.prefix else None)
    for line in install(plan, _settings(args)):
        print(line)
    print("next: systemctl daemon-reload && systemctl enable --now scratchwatch; logs: journalctl -u scratchwatch -f")
    return 0
