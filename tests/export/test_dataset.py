from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("imagehash", reason="dataset tools are in the [train] extra")

from export.dataset import (  # noqa: E402
    DatasetError,
    build_dataset,
    detect_format,
    load_split,
    roboflow_source,
    tile_boxes,
)
from pipeline.geometry import tile_grid  # noqa: E402


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _split_of_each_image(out: Path) -> dict[str, set[str]]:
    """content hash -> the splits holding an image with that content."""
    seen: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        for p in (out / "images" / split).iterdir():
            seen.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), set()).add(split)
    return seen


def test_build_collapses_copies_and_never_leaks(yolo_dataset: Path, coco_dataset: Path, tmp_path: Path) -> None:
    before = _tree_digest(yolo_dataset) | _tree_digest(coco_dataset)
    out = tmp_path / "clean"
    result = build_dataset([yolo_dataset, coco_dataset], out, fractions={"train": 0.5, "val": 0.25, "test": 0.25},
                           progress=False)

    assert _tree_digest(yolo_dataset) | _tree_digest(coco_dataset) == before, "inputs must not be modified"
    # exact copy collapsed, and the copy with more boxes won
    kept = {s.path.name: s for members in result.splits.values() for s in members}
    assert "photo0.jpg" not in kept and "val-photo0.jpg" in kept
    assert len(kept["val-photo0.jpg"].boxes) == 2
    # near copy collapsed (one of photo1 / photo1_small survives)
    assert ("photo1.jpg" in kept) != ("photo1_small.jpg" in kept)
    # bad samples skipped and named
    reasons = {Path(p.path).name: p.reason for p in result.problems}
    assert "broken.jpg" in reasons and "decode" in reasons["broken.jpg"]
    assert "badlabel.txt" in reasons and "out of range" in reasons["badlabel.txt"]
    # no content in two splits, every Roboflow source in one split
    assert all(len(splits) == 1 for splits in _split_of_each_image(out).values())
    source_splits: dict[str, set[str]] = {}
    for split, members in result.splits.items():
        for s in members:
            source_splits.setdefault(s.source, set()).add(split)
    assert all(len(v) == 1 for v in source_splits.values())
    assert sum(1 for k in source_splits if k.startswith("lensorlike:")) == 6
    # every COCO class maps to the one class, boxes converted to normalised centre form
    train_label = next((out / "labels").rglob("lensorlike__car0_jpg.rf.00abc.txt"), None) or next(
        (out / "labels").rglob("lensorlike__car0_*.txt")
    )
    cls, xc, yc, w, h = map(float, train_label.read_text().split())
    assert cls == 0 and np.allclose([xc, yc, w, h], [25 / 128, 40 / 128, 30 / 128, 40 / 128], atol=1e-5)
    # data.yaml and the report
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "scratch"} and data["nc"] == 1
    report = json.loads((out / "report.json").read_text())
    assert report["exact_groups"] >= 1 and report["near_groups"] >= 1 and report["conflicting_groups"] >= 1
    assert (out / "box_sizes.png").stat().st_size > 1000
    assert sum(report["photos_per_split"].values()) == len(kept)


def test_split_is_stable_across_runs(yolo_dataset: Path, tmp_path: Path) -> None:
    a = build_dataset([yolo_dataset], tmp_path / "a", progress=False)
    b = build_dataset([yolo_dataset], tmp_path / "b", progress=False)
    assert a.data_hash == b.data_hash
    assert {k: sorted(s.path.name for s in v) for k, v in a.splits.items()} == {
        k: sorted(s.path.name for s in v) for k, v in b.splits.items()
    }


def test_load_split_reads_back_what_was_written(yolo_dataset: Path, tmp_path: Path) -> None:
    result = build_dataset([yolo_dataset], tmp_path / "c", progress=False)
    rows = load_split(tmp_path / "c" / "data.yaml", "train")
    assert len(rows) == len(result.splits["train"])
    assert all(boxes.shape[1] == 4 for _, boxes in rows)
    with pytest.raises(DatasetError, match="no 'nope' split"):
        load_split(tmp_path / "c", "nope")


def test_folder_in_neither_format_is_named(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match="junk is neither a YOLO dataset"):
        detect_format(tmp_path / "junk")
    with pytest.raises(DatasetError, match="does not exist"):
        detect_format(tmp_path / "missing")


def test_cli_reports_a_bad_folder_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    assert main(["dataset", "build", str(tmp_path / "junk"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("scratchwatch dataset: ") and "junk is neither a YOLO dataset" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_roboflow_source_names() -> None:
    assert roboflow_source("0003_JPEG_jpg.rf.3ce3509fa.jpg") == "0003_JPEG_jpg"
    assert roboflow_source("plain.jpg") == "plain"


def test_tile_grid_covers_image_with_overlap() -> None:
    tiles = tile_grid(300, 200, 3, 0.2)
    assert len(tiles) == 9
    assert min(t[0] for t in tiles) == 0 and max(t[2] for t in tiles) == 300
    assert min(t[1] for t in tiles) == 0 and max(t[3] for t in tiles) == 200
    first, second = tiles[0], tiles[1]
    assert second[0] < first[2], "neighbouring tiles overlap"


def test_tile_boxes_cuts_at_edges_and_drops_slivers() -> None:
    boxes = np.array([[90.0, 10, 130, 30], [98, 50, 140, 70], [10, 10, 20, 20]])
    kept = tile_boxes(boxes, (0, 0, 100, 100), min_visible=0.4, min_side=3.0)
    # first box: 10 of 40 px wide inside -> 25% visible -> dropped; second: 2 px wide -> sliver;
    # third: fully inside, kept in tile coordinates
    assert kept.tolist() == [[10, 10, 20, 20]]
    cut = tile_boxes(np.array([[80.0, 0, 120, 20]]), (0, 0, 100, 100), 0.4, 3.0)
    assert cut.tolist() == [[80, 0, 100, 20]]
    shifted = tile_boxes(np.array([[110.0, 110, 130, 130]]), (100, 100, 200, 200), 0.4, 3.0)
    assert shifted.tolist() == [[10, 10, 30, 30]]


def test_tiled_build_writes_tiles_for_train_only(yolo_dataset: Path, tmp_path: Path) -> None:
    result = build_dataset([yolo_dataset], tmp_path / "t", tile=2, tile_overlap=0.2, progress=False)
    stats = result.stats
    assert stats["images_per_split"]["train"] == 5 * stats["photos_per_split"]["train"]
    assert stats["images_per_split"]["test"] == stats["photos_per_split"]["test"]


def test_same_file_name_in_two_subfolders_keeps_both(tmp_path: Path) -> None:
    from tests.export.conftest import photo, write_label
    import cv2

    root = tmp_path / "nested"
    for sub, seed in (("a", 1), ("b", 2)):
        (root / "images" / sub).mkdir(parents=True)
        (root / "labels" / sub).mkdir(parents=True)
        cv2.imwrite(str(root / "images" / sub / "x.jpg"), photo(seed))
        write_label(root / "labels" / sub / "x.txt", [(0.5, 0.5, 0.2, 0.1)])
    result = build_dataset([root], tmp_path / "out", fractions={"train": 1.0}, progress=False)
    written = sorted(p.name for p in (tmp_path / "out" / "images" / "train").iterdir())
    assert len(written) == 2 and len(set(written)) == 2
    assert result.stats["images_per_split"]["train"] == 2
