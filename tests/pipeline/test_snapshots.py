"""Snapshot files: where they go, what they contain, written atomically."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import SnapshotsConfig
from pipeline.snapshots import annotate, crop, snapshot_paths, write_jpeg, write_snapshots

WHEN = datetime(2025, 6, 1, 23, 59, tzinfo=timezone.utc)


def test_paths_follow_camera_date_uid(tmp_path: Path) -> None:
    paths = snapshot_paths(tmp_path, "replay:lot 1/..", WHEN, "abc")
    assert paths.frame == tmp_path / "replay_lot_1_" / "2025-06-01" / "abc_frame.jpg"
    assert paths.crop.name == "abc_crop.jpg" and paths.crop.parent == paths.frame.parent


def test_crop_is_full_resolution_with_margin_and_clipped() -> None:
    image = np.arange(100 * 200 * 3, dtype=np.uint8).reshape(100, 200, 3)
    out = crop(image, np.array([50, 20, 90, 40]), margin=0.25)
    assert out.shape == (30, 60, 3)
    np.testing.assert_array_equal(out, image[15:45, 40:100])
    assert crop(image, np.array([0, 0, 40, 20]), margin=0.5).shape == (30, 60, 3)  # clipped at the corner


def test_annotate_draws_on_a_copy() -> None:
    image = np.zeros((120, 160, 3), np.uint8)
    image.flags.writeable = False  # frames arrive as read-only zmq views
    out = annotate(image, np.array([40, 50, 100, 80]), "scratch 0.91")
    assert image.max() == 0
    assert (out[50, 40:100] == (0, 255, 255)).all()  # the box's top edge
    assert out[30:50, 40:100].any()  # the label above it


def test_write_snapshots_produces_decodable_jpegs(tmp_path: Path) -> None:
    image = np.full((240, 320, 3), 90, np.uint8)
    paths = write_snapshots(image, np.array([10, 10, 50, 30]), "scratch", snapshot_paths(tmp_path, "cam", WHEN, "u"), SnapshotsConfig())
    assert cv2.imread(str(paths.frame)).shape == (240, 320, 3)
    assert cv2.imread(str(paths.crop)).shape == (30, 60, 3)
    assert sorted(p.name for p in paths.frame.parent.iterdir()) == ["u_crop.jpg", "u_frame.jpg"]


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a" / "x.jpg"
    write_jpeg(target, np.zeros((8, 8, 3), np.uint8), 90)
    before = target.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("pipeline.snapshots.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_jpeg(target, np.full((8, 8, 3), 255, np.uint8), 90)
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["x.jpg"]


def test_snapshots_are_group_readable_and_folders_group_traversable(tmp_path: Path) -> None:
    """0640 / 0750: a web server in the service's group can serve them, other users cannot."""
    paths = write_snapshots(np.full((40, 60, 3), 90, np.uint8), np.array([5, 5, 20, 20]), "s",
                            snapshot_paths(tmp_path / "snapshots", "cam", WHEN, "u"), SnapshotsConfig())
    assert {oct(p.stat().st_mode & 0o777) for p in (paths.frame, paths.crop)} == {"0o640"}
    folders = [paths.frame.parent, paths.frame.parent.parent, tmp_path / "snapshots"]
    assert {oct(p.stat().st_mode & 0o777) for p in folders} == {"0o750"}
