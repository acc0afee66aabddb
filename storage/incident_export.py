"""`scratchwatch incidents export`: every matching incident as CSV/JSON, optionally zipped with its snapshots.

The listing is streamed page by page (keyset), so exporting a year of incidents holds one page
in memory (with a zip, the rows are also kept to add their files). The zip holds `incidents.<format>` and `snapshots/<camera>/<date>/<file>`, the same
relative paths the rows carry, so the listing's paths point into the zip.
"""

from __future__ import annotations

import io
import logging
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

from storage.format import write_incidents
from storage.query import IncidentQuery
from storage.repository import IncidentRecord, IncidentRepository
from storage.snapshot_files import SNAPSHOT_FIELDS, SnapshotUnavailable, resolve_snapshot, snapshot_root

log = logging.getLogger("scratchwatch.export")


def export_incidents(
    repo: IncidentRepository,
    query: IncidentQuery,
    sort: str,
    fmt: str,
    output: Path | None,
    zip_path: Path | None,
    data_dir: Path,
) -> tuple[int, int]:
    """Write the listing to `output` (stdout when None) and, with `zip_path`, a zip; return (incidents, missing files)."""
    records = repo.iterate(query, sort=sort)
    if zip_path is None:
        return _write_listing(records, fmt, output), 0
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as bundle:  # JPEGs do not compress
        exported: list[IncidentRecord] = []
        count = _write_listing(_kept(records, exported), fmt, output)
        with bundle.open(f"incidents.{fmt}", "w") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
            write_incidents(exported, fmt, text)
        missing = _add_snapshots(bundle, exported, snapshot_root(data_dir))
    return count, missing


def _write_listing(records: Iterator[IncidentRecord], fmt: str, output: Path | None) -> int:
    if output is None:
        return write_incidents(records, fmt, sys.stdout)
    with open(output, "w", encoding="utf-8", newline="") as out:
        return write_incidents(records, fmt, out)


def _kept(records: Iterator[IncidentRecord], into: list[IncidentRecord]) -> Iterator[IncidentRecord]:
    """Pass records through while keeping them for the zip (ids and paths are small next to the JPEGs)."""
    for record in records:
        into.append(record)
        yield record


def _add_snapshots(bundle: zipfile.ZipFile, records: list[IncidentRecord], root: Path) -> int:
    """Copy every snapshot file the rows name (under the root only) into the zip; return how many were unavailable."""
    missing = 0
    for record in records:
        for name, field in SNAPSHOT_FIELDS.items():
            stored: str | None = getattr(record, field)
            if not stored:
                continue
            try:
                path = resolve_snapshot(root, stored)
            except SnapshotUnavailable as exc:
                log.warning("incident %s %s: %s", record.id, name, exc)
                missing += 1
                continue
            bundle.write(path, f"snapshots/{path.relative_to(root.resolve()).as_posix()}")
    return missing

