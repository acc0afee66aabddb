"""Tiny generated datasets: CI has no ../shared, so the data tools are tested on data made here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.pipeline.synthetic import RED_BGR


def photo(seed: int, size: tuple[int, int] = (160, 200)) -> np.ndarray:
    """A distinct, textured 'photo': perceptual hashes of different seeds differ widely."""
    rng = np.random.default_rng(seed)
    h, w = size
    coarse = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
    return cv2.add(img, noise)


def write_label(path: Path, rows: list[tuple[float, float, float, float]]) -> None:
    path.write_text("".join(f"0 {xc} {yc} {w} {h}\n" for xc, yc, w, h in rows))


@pytest.fixture
def yolo_dataset(tmp_path: Path) -> Path:
    """12 photos + an exact copy with other boxes + a near copy + a corrupt image + a bad label."""
    root = tmp_path / "seedlike"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(12):
        cv2.imwrite(str(root / "images" / f"photo{i}.jpg"), photo(i))
        write_label(root / "labels" / f"photo{i}.txt", [(0.5, 0.5, 0.2, 0.1)])
    # exact copy (byte-identical), annotated separately with two boxes: the rule keeps this one
    shutil.copyfile(root / "images/photo0.jpg", root / "images/val-photo0.jpg")
    write_label(root / "labels/val-photo0.txt", [(0.5, 0.5, 0.2, 0.1), (0.2, 0.3, 0.1, 0.1)])
    # near copy: resized and re-encoded at another quality
    near = cv2.resize(photo(1), (180, 144))
    cv2.imwrite(str(root / "images/photo1_small.jpg"), near, [cv2.IMWRITE_JPEG_QUALITY, 70])
    write_label(root / "labels/photo1_small.txt", [(0.5, 0.5, 0.2, 0.1)])
    (root / "images/broken.jpg").write_bytes(b"this is not a jpeg")
    write_label(root / "labels/broken.txt", [(0.5, 0.5, 0.2, 0.1)])
    cv2.imwrite(str(root / "images/badlabel.jpg"), photo(99))
    (root / "labels/badlabel.txt").write_text("0 0.5 1.5 0.2 0.1\n")
    return root


@pytest.fixture
def coco_dataset(tmp_path: Path) -> Path:
    """Roboflow-style COCO: 6 source photos, 3 augmentations each (NAME.rf.HASH.jpg), 3 classes."""
    root = tmp_path / "lensorlike"
    (root / "images/train").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for src in range(6):
        base = photo(100 + src, (128, 128))
        for aug in range(3):
            img = cv2.flip(base, 1) if aug == 1 else cv2.convertScaleAbs(base, alpha=1.0, beta=40 * aug)
            name = f"car{src}_jpg.rf.{src}{aug}abc.jpg"
            cv2.imwrite(str(root / "images/train" / name), img)
            image_id = len(images)
            images.append({"id": image_id, "file_name": name, "width": 128, "height": 128})
            annotations.append(
                {"id": len(annotations), "image_id": image_id, "category_id": 1 + src % 3,
                 "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0}
            )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for i, n in enumerate(["damage", "minor-dent", "minor-scratch", "severe-broken"])],
    }
    (root / "annotations/instances_train.json").write_text(json.dumps(coco))
    return root


MARKED_SIZE = (200, 160)  # w, h


def marked_photo(seed: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A grey textured photo with a red mark somewhere that depends on the seed."""
    image = cv2.cvtColor(cv2.cvtColor(photo(seed, MARKED_SIZE[::-1]), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    x, y = 20 + (seed * 37) % 120, 20 + (seed * 23) % 100
    cv2.rectangle(image, (x, y), (x + 39, y + 11), RED_BGR, -1)
    return image, (x, y, 40, 12)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """images/{val,test} and labels in the layout `scratchwatch dataset build` writes."""
    root = tmp_path / "data"
    for split, seeds in (("val", range(6)), ("test", range(20, 23))):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for seed in seeds:
            image, (x, y, w, h) = marked_photo(seed)
            cv2.imwrite(str(root / "images" / split / f"p{seed}.png"), image)
            write_label(root / "labels" / split / f"p{seed}.txt",
                        [((x + w / 2) / MARKED_SIZE[0], (y + h / 2) / MARKED_SIZE[1], w / MARKED_SIZE[0], h / MARKED_SIZE[1])])
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    src = tmp_path / "marks"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        img = photo(i, (96, 96))
        x, y = int(rng.integers(10, 50)), int(rng.integers(10, 50))
        cv2.rectangle(img, (x, y), (x + 30, y + 8), (0, 0, 255), -1)
        cv2.imwrite(str(src / "images" / f"m{i}.jpg"), img)
        write_label(src / "labels" / f"m{i}.txt", [((x + 15) / 96, (y + 4) / 96, 30 / 96, 8 / 96)])
    from export.dataset import build_dataset

    out = tmp_path / "data"
    build_dataset([src], out, fractions={"train": 0.5, "val": 0.25, "test": 0.25}, progress=False)
    return out
