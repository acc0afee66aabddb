"""`scratchwatch incidents export`: every matching incident as CSV/JSON, optionally zipped with its snapshots.

The listing is streamed page by page (keyset), so exporting a year of incidents holds one page
in memory. With a zip, one pass over the rows adds each row's snapshot files to the zip and
writes the listing to a temporary file, which then goes into the zip (as `incidents.<format>`)
and to the output. Files keep the relative paths the rows carry, under `snapshots/`, so the
listing's paths point into the zip.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import logging
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

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
        with _output(output) as out:
            return write_incidents(records, fmt, out), 0
    bundler = _Bundler(zip_path, snapshot_root(data_dir))
    with bundler.bundle, tempfile.TemporaryFile() as listing:
        text = io.TextIOWrapper(listing, encoding="utf-8", newline="")
        count = write_incidents(bundler.with_snapshots(records), fmt, text)
        text.flush()
        _copy(listing, bundler.bundle.open(f"incidents.{fmt}", "w"))
        with _output(output) as out:
            listing.seek(0)
            shutil.copyfileobj(codecs.getreader("utf-8")(listing), out)
        text.detach()
    return count, bundler.missing


class _Bundler:
    """The zip being written, and how many snapshot files could not go into it."""

    def __init__(self, zip_path: Path, root: Path) -> None:
        self.bundle = zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED)  # JPEGs do not compress
        self.root = root
        self.missing = 0

    def with_snapshots(self, records: Iterator[IncidentRecord]) -> Iterator[IncidentRecord]:
        """Pass the rows through, adding the files each names (under the root only) as it goes."""
        for record in records:
            for name, field in SNAPSHOT_FIELDS.items():
                stored: str | None = getattr(record, field)
                if stored:
                    self._add(record, name, stored)
            yield record

    def _add(self, record: IncidentRecord, name: str, stored: str) -> None:
        try:
            path = resolve_snapshot(self.root, stored)
        except SnapshotUnavailable as exc:
            log.warning("incident %s %s: %s", record.id, name, exc)
            self.missing += 1
            return
        self.bundle.write(path, f"snapshots/{path.relative_to(self.root.resolve()).as_posix()}")


def _copy(source: BinaryIO, entry: BinaryIO) -> None:
    with entry:
        source.seek(0)
        shutil.copyfileobj(source, entry)


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    """`path` opened for text, or stdout (left open) when None."""
    if path is None:
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8", newline="") as out:
        yield out
