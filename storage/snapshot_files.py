"""Where an incident's snapshot files are: paths stored relative to the snapshot root, resolved under it only.

The database stores `<camera>/<date>/<file>` relative to `<data_dir>/snapshots`. Whoever reads
the files (the API, `incidents export --with-snapshots`) goes through `resolve_snapshot`, so a
path that leaves the root (`..`, an absolute path elsewhere, a symlink pointing away) is never
opened, whether it came from a hostile request or a hostile row.
"""

from __future__ import annotations

from pathlib import Path

SNAPSHOT_FIELDS = {"snapshot": "snapshot_path", "crop": "crop_path", "car": "car_path"}
"""Name of each image of an incident -> the IncidentRecord field holding its path."""


class SnapshotUnavailable(Exception):
    """The stored path cannot be served: it leaves the root, or its file is gone. The message says which."""


def snapshot_root(data_dir: Path) -> Path:
    """`<data_dir>/snapshots`, where the incidents stage writes (pipeline.snapshots.snapshot_paths)."""
    return Path(data_dir) / "snapshots"


def resolve_snapshot(root: Path, stored: str) -> Path:
    """The existing file `stored` names under `root`; SnapshotUnavailable otherwise."""
    base = root.resolve()
    candidate = (base / stored).resolve()
    if not candidate.is_relative_to(base):
        raise SnapshotUnavailable(f"path {stored!r} lies outside the snapshot root {base}; refused")
    if not candidate.is_file():
        raise SnapshotUnavailable(f"file {candidate} is missing")
    return candidate
