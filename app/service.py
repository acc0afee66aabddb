"""``scratchwatch install-service``: the systemd unit, its user, config and directories in one step.

The unit shipped in ``systemd/scratchwatch.service`` is the template; only ``ExecStart`` (the
scratchwatch that runs this command) and the user change. Nothing that exists is overwritten
except the unit itself, so re-running after an upgrade is safe and keeps the operator's config.
With ``--prefix DIR`` every file goes under DIR and no user is created (for packaging and tests).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.config import DATABASE_URL_ENV, Settings

UNIT_TEMPLATE = Path(__file__).resolve().parent.parent / "systemd" / "scratchwatch.service"
UNIT_NAME = "scratchwatch.service"
STAGE_UNIT_TEMPLATE = UNIT_TEMPLATE.with_name("scratchwatch-stage@.service")
"""One stage on its own (`scratchwatch stage %i`), for sites split over units or hosts: installed beside the main unit."""
STATE_DIR = Path("/var/lib/scratchwatch")
LOGS_DIR = Path("/var/log/scratchwatch")
CONFIG_DIR = Path("/etc/scratchwatch")
ENV_FILE_TEXT = """\
# Environment of scratchwatch.service (mode 0640: it may hold secrets).
# Secrets belong here or in files, never on the command line (they would show in `ps`).
# SCRATCHWATCH_DATABASE_URL=postgresql+psycopg://scratchwatch:PASSWORD@db.example/scratchwatch
# SCRATCHWATCH_API_TOKEN=...   (for `scratchwatch serve`)
"""


@dataclass
class InstallPlan:
    """Where things go; ``prefix`` is prepended to every absolute path."""

    user: str = "scratchwatch"
    prefix: Path | None = None
    executable: Path = field(default_factory=lambda: scratchwatch_executable())

    def path(self, absolute: Path) -> Path:
        return self.prefix / absolute.relative_to("/") if self.prefix else absolute

    @property
    def unit_path(self) -> Path:
        return self.path(Path("/etc/systemd/system") / UNIT_NAME)


def scratchwatch_executable() -> Path:
    """The ``scratchwatch`` entry point next to the running interpreter (the venv it lives in)."""
    candidate = Path(sys.executable).parent / "scratchwatch"
    return candidate if candidate.exists() else Path(sys.argv[0]).resolve()


def render_unit(template: str, user: str, executable: Path) -> str:
    """The template with this install's user and ExecStart."""
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={executable}", template, count=1, flags=re.M)
    text = re.sub(r"^User=.*$", f"User={user}", text, count=1, flags=re.M)
    return re.sub(r"^Group=.*$", f"Group={user}", text, count=1, flags=re.M)


def install(plan: InstallPlan, settings: Settings) -> list[str]:
    """Do the install; return one line per action, for the operator to read."""
    actions = [_write_unit(plan), _create_user(plan)]
    actions += [_make_dir(plan, d) for d in (STATE_DIR, LOGS_DIR)]
    actions.append(_write_new(plan, CONFIG_DIR / "config.yaml", _config_text(settings), 0o640))
    actions.append(_write_new(plan, CONFIG_DIR / "scratchwatch.env", ENV_FILE_TEXT, 0o640))
    return actions


def _write_unit(plan: InstallPlan) -> str:
    written = []
    for template in (UNIT_TEMPLATE, STAGE_UNIT_TEMPLATE):
        path = plan.unit_path.with_name(template.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_unit(template.read_text(encoding="utf-8"), plan.user, plan.executable), encoding="utf-8")
        path.chmod(0o644)
        written.append(str(path))
    return f"wrote {' and '.join(written)} (ExecStart={plan.executable}, User={plan.user})"


def _create_user(plan: InstallPlan) -> str:
    command = ["useradd", "--system", "--home-dir", str(STATE_DIR), "--no-create-home", "--shell", "/usr/sbin/nologin", plan.user]
    if _user_exists(plan.user):
        return f"user {plan.user} exists"
    if plan.prefix is not None or os.geteuid() != 0:
        return f"user {plan.user} not created (needs root, no --prefix): run {' '.join(command)}"
    subprocess.run(command, check=True, capture_output=True, text=True)
    return f"created system user {plan.user}"


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def _make_dir(plan: InstallPlan, absolute: Path) -> str:
    """systemd creates these too (StateDirectory/LogsDirectory); made here for a prefix tree."""
    path = plan.path(absolute)
    path.mkdir(parents=True, exist_ok=True, mode=0o750)
    _own(plan, path)
    return f"directory {path} (0750)"


def _write_new(plan: InstallPlan, absolute: Path, text: str, mode: int) -> str:
    path = plan.path(absolute)
    if path.exists():
        return f"kept existing {path}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    _own(plan, path, group_only=True)
    return f"wrote {path} ({mode:04o})"


def _own(plan: InstallPlan, path: Path, *, group_only: bool = False) -> None:
    """As root on the real system: the service user owns its dirs and can read (not write) its config."""
    if plan.prefix is None and os.geteuid() == 0 and _user_exists(plan.user):
        shutil.chown(path, user=None if group_only else plan.user, group=plan.user)


def _config_text(settings: Settings) -> str:
    """The current config with absolute paths (a relative model path would resolve under /etc)."""
    data = settings.model_dump(mode="json", exclude_defaults=False)
    data["data_dir"] = str(STATE_DIR)
    if os.environ.get(DATABASE_URL_ENV):  # a password from the environment stays out of files
        data["database"]["url"] = None
    data["api"]["token"] = None  # pydantic dumps a SecretStr as "**********": the token belongs in the env file
    header = "# Written by `scratchwatch install-service`; see config.yaml in the source for every key.\n"
    return header + yaml.safe_dump(data, sort_keys=False)
