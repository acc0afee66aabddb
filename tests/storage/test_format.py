"""format_incidents / format_incident: what `scratchwatch incidents list|show` prints."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from storage.format import FIELD_NAMES, FORMATS, format_incident, format_incidents
from tests.storage.helpers import T0, make_record

RECORDS = [
    replace(make_record(1, closed_at=T0 + timedelta(minutes=2), snapshot_path="/data/snap, 1.jpg"), id=7,
            recorded_at=T0 + timedelta(minutes=1, seconds=0.25)),
    replace(make_record(2, kind="replay", camera_id="replay:clip", source="/v/clip.mp4", media_time_s=75.25), id=8),
]


def test_json_parses_back_with_iso_offsets() -> None:
    parsed = json.loads(format_incidents(RECORDS, "json"))
    assert [item["id"] for item in parsed] == [7, 8]
    assert list(parsed[0]) == FIELD_NAMES
    assert datetime.fromisoformat(parsed[0]["opened_at"]) == RECORDS[0].opened_at
    assert parsed[0]["opened_at"].endswith("+00:00")
    assert parsed[0]["closed_at"] == "2025-06-01T12:02:00+00:00"
    assert parsed[1]["closed_at"] is None and parsed[1]["media_time_s"] == 75.25


def test_json_of_nothing_is_an_empty_array() -> None:
    assert json.loads(format_incidents([], "json")) == []


def test_csv_parses_back() -> None:
    rows = list(csv.DictReader(io.StringIO(format_incidents(RECORDS, "csv"))))
    assert len(rows) == 2
    assert rows[0]["uid"] == RECORDS[0].uid
    assert rows[0]["snapshot_path"] == "/data/snap, 1.jpg"  # quoted, not split
    assert datetime.fromisoformat(rows[1]["opened_at"]) == RECORDS[1].opened_at
    assert (rows[1]["closed_at"], float(rows[1]["best_score"]), int(rows[1]["x2"])) == ("", 0.5, 110)


def test_table_has_a_header_and_one_aligned_line_per_incident() -> None:
    lines = format_incidents(RECORDS, "table").splitlines()
    assert lines[0].split()[:3] == ["ID", "CAMERA", "OPENED"]
    assert len(lines) == 3
    assert lines[1].split()[:4] == ["7", "lot-east", "2025-06-01", "12:01:00"]
    assert "1:15.2" in lines[2]  # media time 75.25 s as m:ss.s
    assert lines[1].index("lot-east") == lines[2].index("replay:clip")


def test_table_of_nothing_says_so() -> None:
    assert format_incidents([], "table") == "no incidents"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="table, json, csv"):
        format_incidents(RECORDS, "xml")
    assert FORMATS == ("table", "json", "csv")


def test_show_lists_every_field_and_the_latency() -> None:
    text = format_incident(RECORDS[0])
    values = dict(line.split(None, 1) for line in text.splitlines())
    assert set(FIELD_NAMES) <= set(values)
    assert values["uid"] == RECORDS[0].uid
    assert values["crop_path"] == "-"
    assert values["capture_to_row_s"] == "0.25"
