"""Rendering incidents for `scratchwatch incidents list/show`.

Kept next to IncidentRecord so the JSON/CSV field set follows the record automatically;
the CLI only picks a format and prints the returned string.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from datetime import datetime, timezone
from typing import Any, TextIO, get_type_hints

from storage.repository import IncidentRecord

FORMATS = ("table", "json", "csv")
"""Values accepted by format_incidents (use as argparse `choices`)."""

FIELD_NAMES = ["id"] + [f.name for f in fields(IncidentRecord) if f.name != "id"]
"""JSON keys and CSV columns, in order: every IncidentRecord field, id first."""


def record_to_dict(record: IncidentRecord) -> dict[str, Any]:
    """JSON-ready values: datetimes as ISO-8601 with their +00:00 offset, the rest as is."""
    return {name: _jsonable(getattr(record, name)) for name in FIELD_NAMES}


_DATETIME_FIELDS = {name for name, hint in get_type_hints(IncidentRecord).items() if datetime in (hint, *getattr(hint, "__args__", ()))}


def dict_to_record(values: dict[str, Any]) -> IncidentRecord:
    """The inverse of record_to_dict (the spool's format): ISO-8601 strings back to datetimes."""
    parsed = {k: datetime.fromisoformat(v) if k in _DATETIME_FIELDS and isinstance(v, str) else v for k, v in values.items()}
    return IncidentRecord(**parsed)


def format_incidents(records: Sequence[IncidentRecord], fmt: str = "table") -> str:
    """Render a list of incidents as `table` (for people), `json` or `csv` (for tools)."""
    try:
        render = _RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}") from None
    return render(records)


def format_incident(record: IncidentRecord, snapshot_files: dict[str, str] | None = None) -> str:
    """Every field of one incident, one `name: value` line each, for `incidents show`.

    `snapshot_files` (image name -> file on disk) adds where each snapshot is; replays also get
    their media time as a player shows it.
    """
    values = record_to_dict(record)
    values["capture_to_row_s"] = _latency_s(record)
    if record.media_time_s is not None:
        values["media_time"] = _media_time(record.media_time_s)
    for name, path in (snapshot_files or {}).items():
        values[f"{name}_file"] = path
    width = max(len(name) for name in values)
    return "\n".join(f"{name.ljust(width)}  {_text(value)}" for name, value in values.items())


def write_incidents(records: Iterable[IncidentRecord], fmt: str, out: TextIO) -> int:
    """Stream `json` or `csv` to `out` one record at a time (exports of any size); return the count."""
    if fmt not in ("json", "csv"):
        raise ValueError(f"unknown export format {fmt!r}; expected json or csv")
    return (_write_json if fmt == "json" else _write_csv)(records, out)


def _write_json(records: Iterable[IncidentRecord], out: TextIO) -> int:
    count = 0
    out.write("[")
    for count, record in enumerate(records, 1):
        out.write(("," if count > 1 else "") + "\n  " + json.dumps(record_to_dict(record)))
    out.write("\n]\n" if count else "]\n")
    return count


def _write_csv(records: Iterable[IncidentRecord], out: TextIO) -> int:
    writer = csv.DictWriter(out, fieldnames=FIELD_NAMES, lineterminator="\n")
    writer.writeheader()
    count = 0
    for count, record in enumerate(records, 1):
        writer.writerow(record_to_dict(record))
    return count


def _to_json(records: Sequence[IncidentRecord]) -> str:
    return json.dumps([record_to_dict(r) for r in records], indent=2)


def _to_csv(records: Sequence[IncidentRecord]) -> str:
    out = io.StringIO()
    _write_csv(records, out)
    return out.getvalue()


def format_stats(rows: Sequence[Any], fmt: str = "table") -> str:
    """`incidents stats`: (camera, day, incidents) rows as an aligned table, JSON or CSV."""
    dicts = [{"camera": r.camera, "day": r.day, "incidents": r.incidents} for r in rows]
    if fmt == "json":
        return json.dumps(dicts, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["camera", "day", "incidents"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(dicts)
        return out.getvalue()
    if not rows:
        return "no incidents"
    return _aligned([["CAMERA", "DAY (UTC)", "INCIDENTS"]] + [[r.camera, r.day, str(r.incidents)] for r in rows])


_TABLE_COLUMNS: list[tuple[str, Callable[[IncidentRecord], str]]] = [
    ("ID", lambda r: _text(r.id)),
    ("CAMERA", lambda r: r.camera_id),
    ("OPENED (UTC)", lambda r: _short_time(r.opened_at)),
    ("CLOSED (UTC)", lambda r: _short_time(r.closed_at)),
    ("MEDIA T", lambda r: _media_time(r.media_time_s)),
    ("SCORE", lambda r: f"{r.best_score:.2f}"),
    ("BOX", lambda r: ",".join(map(str, r.box))),
    ("DETS", lambda r: str(r.detection_count)),
    ("VERDICT", lambda r: _text(r.verdict)),
    ("SNAPSHOT", lambda r: _text(r.snapshot_path)),
]


def _to_table(records: Sequence[IncidentRecord]) -> str:
    """Plain aligned columns: readable in a terminal, greppable, no colour codes in pipes."""
    if not records:
        return "no incidents"
    rows = [[header for header, _ in _TABLE_COLUMNS]]
    rows += [[cell(r) for _, cell in _TABLE_COLUMNS] for r in records]
    return _aligned(rows)


def _aligned(rows: list[list[str]]) -> str:
    """Rows of cells as left-aligned columns two spaces apart, the first row being the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


_RENDERERS: dict[str, Callable[[Sequence[IncidentRecord]], str]] = {
    "table": _to_table,
    "json": _to_json,
    "csv": _to_csv,
}


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _short_time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _media_time(seconds: float | None) -> str:
    """Seconds into the video as m:ss.s, the way a player shows it."""
    if seconds is None:
        return "-"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}"


def _latency_s(record: IncidentRecord) -> float | None:
    if record.recorded_at is None:
        return None
    return round((record.recorded_at - record.captured_at).total_seconds(), 3)
