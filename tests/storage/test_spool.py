"""The durable spool: what a killed process appended survives, dead owners' rows are adopted,
incidents a crash left open are closed, old ``unsaved/*.jsonl`` files are imported once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

from storage.format import record_to_dict
from storage.spool import Spool
from tests.storage.helpers import make_record

URL = "sqlite:////tmp/db-a.db"
REPO = Path(__file__).resolve().parents[2]


def spool_at(path: Path, url: str = URL, **kwargs) -> Spool:
    return Spool(path, url, max_bytes=10_000_000, **kwargs)


def append_then_get_killed(path: Path, records: int) -> int:
    """A real process appends ``records`` (the first stays open), says so, and is SIGKILLed; its pid."""
    code = textwrap.dedent(f"""
        import dataclasses, sys, time
        from storage.spool import Spool
        from tests.storage.helpers import make_record
        spool = Spool({str(path)!r}, {URL!r}, max_bytes=10_000_000)
        for n in range({records}):
            record = make_record(n)
            spool.append(record if n == 0 else dataclasses.replace(record, closed_at=record.opened_at))
        print("appended", flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "appended"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return proc.pid


def test_what_a_killed_process_appended_is_adopted_in_order_and_its_open_incident_closed(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    append_then_get_killed(path, records=3)
    spool = spool_at(path)
    assert spool.pending() == 0, "rows of another owner are not drained before adoption"
    assert spool.adopt() == 1
    batch = spool.batch()
    assert [r.uid for _, r in batch] == [make_record(n).uid for n in (1, 2, 0)], "the closed state of incident 0 comes last"
    closed = batch[-1][1]
    assert closed.closed_at == make_record(0).captured_at
    assert spool.adopt() == 0, "closed once"
    for seq, _ in batch:
        spool.remove(seq)
    assert spool.pending() == 0


def test_a_live_owners_rows_and_another_databases_rows_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    alive = spool_at(path, owner=os.getppid())  # a process that runs (pytest's parent)
    alive.append(make_record(0))
    other_db = spool_at(path, "sqlite:////tmp/db-b.db", owner=2**22 + 12345)  # a pid that does not run
    other_db.append(make_record(1))
    mine = spool_at(path)
    assert mine.adopt() == 0 and mine.pending() == 0
    assert (alive.pending(), other_db.pending()) == (1, 1)


def test_a_newer_state_replaces_the_pending_one_and_removal_of_the_old_seq_is_harmless(tmp_path: Path) -> None:
    spool = spool_at(tmp_path / "spool.db")
    old_seq = spool.append(make_record(0))
    [(seq, _)] = spool.batch()
    spool.append(replace(make_record(0), detection_count=7))
    spool.remove(old_seq)  # the writer committed the old state meanwhile
    assert [r.detection_count for _, r in spool.batch()] == [7]


def test_quarantined_records_stay_but_are_not_pending(tmp_path: Path) -> None:
    spool = spool_at(tmp_path / "spool.db")
    seq = spool.append(make_record(0))
    spool.quarantine(seq, "IntegrityError: CHECK constraint failed")
    assert (spool.pending(), spool.quarantined(), spool.batch()) == (0, 1, [])


def test_old_unsaved_jsonl_files_are_imported_once(tmp_path: Path) -> None:
    folder = tmp_path / "unsaved"
    folder.mkdir()
    records = [make_record(0), replace(make_record(1), closed_at=make_record(1).opened_at)]
    (folder / "incidents-1.jsonl").write_text("".join(json.dumps(record_to_dict(r)) + "\n" for r in records))
    spool = spool_at(tmp_path / "spool.db")
    assert spool.import_jsonl(folder) == 2
    assert spool.import_jsonl(folder) == 0
    assert [r for _, r in spool.batch()] == records
    assert (folder / "incidents-1.jsonl.imported").exists()


def test_size_limit_is_reported(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", URL, max_bytes=1)
    assert spool.over_limit()
    assert not spool_at(tmp_path / "other.db").over_limit()


def test_the_oldest_records_age_survives_newer_states_and_old_spools_gain_the_column(tmp_path: Path) -> None:
    import sqlite3
    import time

    path = tmp_path / "spool.db"
    old = sqlite3.connect(path)  # a spool written before records had an `added` column
    old.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL, target TEXT NOT NULL, "
                "owner INTEGER NOT NULL, body TEXT NOT NULL, error TEXT)")
    old.commit()
    old.close()
    spool = spool_at(path)
    assert spool.oldest_age_s() == 0.0
    record = make_record(1)
    spool.append(record)
    time.sleep(0.3)
    spool.append(replace(record, detection_count=9))  # a newer state of the same incident keeps its wait
    spool.append(make_record(2))
    assert spool.pending() == 2 and spool.oldest_age_s() >= 0.3
    for seq, _ in spool.batch():
        spool.remove(seq)
    assert spool.oldest_age_s() == 0.0
    spool.close()
