"""Build one clean, single-class YOLO dataset from YOLO and COCO inputs.

Why this exists: the seed set holds ~200 groups of byte-identical photos annotated separately, its
upstream val split leaked into train, and the Roboflow set holds several augmented copies of each
source photo. Training on that as-is inflates validation scores. Here every photo is fingerprinted
(content hash + perceptual hash), copies are collapsed to one sample, and the split is made over
*groups* (a photo with all its copies, near copies and Roboflow augmentations), so no split ever
sees a photo another split has.

Duplicate rule (documented in the report): within a group of exact or near copies, keep the copy
whose annotation has the most boxes; ties go to the larger image, then to the first name in sort
order. Annotators who boxed more of the damage are the better guide; merging disagreeing boxes
would teach the model two extents for one scratch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from export.boxes import SIZE_BINS, size_class, xywhn_to_xyxy, xyxy_to_xywhn
from pipeline.geometry import TILE_OVERLAP, tile_grid

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CLASS_NAME = "scratch"
DEFAULT_SPLITS = {"train": 0.75, "val": 0.10, "test": 0.15}


class DatasetError(ValueError):
    """An input folder cannot be read as a dataset at all (as opposed to one bad sample)."""


SOURCE_SEP = "__"  # output names are <input dataset>__<file stem>[__<hash>]


@dataclass
class Sample:
    """One annotated image as found in an input dataset."""

    dataset: str
    path: Path
    boxes: np.ndarray  # (N, 4) YOLO xywhn, class 0
    source: str  # the photo this file derives from (Roboflow augmentations share one)
    width: int = 0
    height: int = 0
    sha256: str = ""
    phash: int = 0
    disambiguate: bool = False  # another kept file has the same name (e.g. train/x.jpg, valid/x.jpg)

    @property
    def out_stem(self) -> str:
        stem = f"{self.dataset}{SOURCE_SEP}{self.path.stem}"
        return f"{stem}{SOURCE_SEP}{self.sha256[:8]}" if self.disambiguate else stem


def source_of(image: Path) -> str:
    """The input dataset an output image came from (its name starts with it), for per-source metrics."""
    return image.name.split(SOURCE_SEP, 1)[0] if SOURCE_SEP in image.name else ""


@dataclass
class Problem:
    """A sample skipped because it cannot be used; listed in the report."""

    path: str
    reason: str


@dataclass
class BuildResult:
    out_dir: Path
    splits: dict[str, list[Sample]]
    problems: list[Problem]
    stats: dict = field(default_factory=dict)
    data_hash: str = ""


# --------------------------------------------------------------------------------------- reading


def detect_format(folder: Path) -> str:
    """'yolo' (images/ + labels/) or 'coco' (annotations/*.json + images/)."""
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist")
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        return "yolo"
    if (folder / "images").is_dir() and any((folder / "annotations").glob("*.json")):
        return "coco"
    raise DatasetError(
        f"{folder} is neither a YOLO dataset (images/ and labels/) nor a COCO dataset "
        "(images/ and annotations/*.json)"
    )


def roboflow_source(name: str) -> str:
    """Roboflow exports name augmentations NAME.rf.HASH.jpg: the part before .rf. is the photo."""
    stem = Path(name).stem
    return stem.split(".rf.")[0] if ".rf." in stem else stem


def _parse_yolo_label(path: Path) -> np.ndarray:
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise ValueError(f"line {lineno}: expected 'cls xc yc w h', got {line!r}")
        try:
            cls = int(float(parts[0]))
            xc, yc, w, h = (float(v) for v in parts[1:])
        except ValueError as exc:
            raise ValueError(f"line {lineno}: not numeric: {line!r}") from exc
        if cls < 0 or not all(0.0 <= v <= 1.0 for v in (xc, yc, w, h)) or w <= 0 or h <= 0:
            raise ValueError(f"line {lineno}: values out of range: {line!r}")
        rows.append((xc, yc, w, h))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def read_yolo(folder: Path, problems: list[Problem]) -> Iterator[Sample]:
    name = folder.name
    for image in sorted(p for p in (folder / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        rel = image.relative_to(folder / "images").with_suffix(".txt")
        label = folder / "labels" / rel
        try:
            boxes = _parse_yolo_label(label) if label.exists() else np.zeros((0, 4))
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(label), f"bad label: {exc}"))
            continue
        yield Sample(name, image, boxes, source=f"{name}:{roboflow_source(image.name)}")


def read_coco(folder: Path, problems: list[Problem]) -> Iterator[Sample]:
    """Every category maps to the one class: the lensor set grades severity, we only detect damage."""
    name = folder.name
    for ann_file in sorted((folder / "annotations").glob("*.json")):
        try:
            coco = json.loads(ann_file.read_text())
            images = {im["id"]: im for im in coco["images"]}
            annotations = coco["annotations"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{ann_file}: not a COCO annotation file ({exc})") from exc
        per_image: dict[int, list] = defaultdict(list)
        for ann in annotations:
            per_image[ann["image_id"]].append(ann["bbox"])
        split_dir = ann_file.stem.removeprefix("instances_")
        for image_id, im in sorted(images.items()):
            path = _coco_image_path(folder, split_dir, im["file_name"])
            if path is None:
                problems.append(Problem(str(folder / "images" / im["file_name"]), "image file missing"))
                continue
            try:
                boxes = _coco_boxes(per_image[image_id], im["width"], im["height"])
            except ValueError as exc:
                problems.append(Problem(str(path), f"bad annotation: {exc}"))
                continue
            yield Sample(name, path, boxes, source=f"{name}:{roboflow_source(path.name)}")


def _coco_image_path(folder: Path, split_dir: str, file_name: str) -> Path | None:
    for candidate in (folder / "images" / split_dir / file_name, folder / "images" / file_name):
        if candidate.exists():
            return candidate
    return None


def _coco_boxes(bboxes: list, width: int, height: int) -> np.ndarray:
    xyxy = []
    for bbox in bboxes:
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0 or x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise ValueError(f"box {bbox} outside the {width}x{height} image")
        xyxy.append((max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)))
    return xyxy_to_xywhn(np.asarray(xyxy).reshape(-1, 4), width, height)


def read_dataset(folder: Path, problems: list[Problem]) -> list[Sample]:
    reader = read_yolo if detect_format(folder) == "yolo" else read_coco
    return list(reader(folder, problems))


# --------------------------------------------------------------------------------- fingerprints


def fingerprint(sample: Sample) -> bool:
    """Fill hashes and size; False when the image does not decode."""
    from PIL import Image
    import imagehash

    data = sample.path.read_bytes()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return False
    sample.height, sample.width = image.shape[:2]
    sample.sha256 = hashlib.sha256(data).hexdigest()
    rgb = Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    sample.phash = int(str(imagehash.phash(rgb)), 16)
    return True


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            out[self.find(i)].append(i)
        return out


def near_pairs(hashes: Iterable[int], max_distance: int) -> list[tuple[int, int]]:
    """Index pairs whose 64-bit perceptual hashes differ in at most ``max_distance`` bits."""
    h = np.fromiter(hashes, dtype=np.uint64)
    pairs: list[tuple[int, int]] = []
    for i in range(len(h) - 1):
        dist = np.bitwise_count(h[i + 1 :] ^ h[i])
        pairs.extend((i, i + 1 + int(j)) for j in np.nonzero(dist <= max_distance)[0])
    return pairs


def copy_groups(samples: list[Sample], max_distance: int) -> _UnionFind:
    """Groups of exact or near copies: these collapse to one sample."""
    uf = _UnionFind(len(samples))
    first_by_hash: dict[str, int] = {}
    for i, s in enumerate(samples):
        uf.union(first_by_hash.setdefault(s.sha256, i), i)
    for a, b in near_pairs((s.phash for s in samples), max_distance):
        uf.union(a, b)
    return uf


def pick_representative(members: list[Sample]) -> Sample:
    """The documented duplicate rule: most boxes, then larger image, then first name."""
    return sorted(members, key=lambda s: (-len(s.boxes), -(s.width * s.height), str(s.path)))[0]


# ----------------------------------------------------------------------------------- splitting


def split_groups(
    samples: list[Sample], copies: _UnionFind, fractions: dict[str, float]
) -> dict[str, int]:
    """Map each sample index to a split; every copy and augmentation of a photo shares one.

    Groups are ordered by a hash of their content (stable across runs and machines), then filled
    into splits by image count, per input dataset, so each split gets its share of both sources.
    """
    uf = _UnionFind(len(samples))
    for members in copies.groups().values():
        for m in members[1:]:
            uf.union(members[0], m)
    first_by_source: dict[str, int] = {}
    for i, s in enumerate(samples):
        uf.union(first_by_source.setdefault(s.source, i), i)

    by_dataset: dict[str, list[list[int]]] = defaultdict(list)
    for members in uf.groups().values():
        by_dataset[samples[members[0]].dataset].append(members)

    assignment: dict[str, int] = {}
    names = list(fractions)
    for groups in by_dataset.values():
        groups.sort(key=lambda g: hashlib.sha256(min(samples[i].sha256 for i in g).encode()).hexdigest())
        total = sum(len(g) for g in groups)
        bounds = np.cumsum([fractions[n] for n in names]) * total
        done = 0
        for g in groups:
            split = names[min(int(np.searchsorted(bounds, done, side="right")), len(names) - 1)]
            for i in g:
                assignment[str(samples[i].path)] = names.index(split)
            done += len(g)
    return assignment


# ------------------------------------------------------------------------------------- tiling


def tile_boxes(
    boxes_xyxy: np.ndarray, tile: tuple[int, int, int, int], min_visible: float, min_side: float
) -> np.ndarray:
    """Boxes cut to one tile, in tile pixels; slivers (too little of the box, or too thin) dropped."""
    x0, y0, x1, y1 = tile
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    clipped = np.stack(
        [b[:, 0].clip(x0, x1), b[:, 1].clip(y0, y1), b[:, 2].clip(x0, x1), b[:, 3].clip(y0, y1)], axis=1
    )
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (w >= min_side) & (h >= min_side) & (w * h >= min_visible * np.maximum(area, 1e-9))
    return clipped[keep] - np.array([x0, y0, x0, y0], dtype=np.float64)


# -------------------------------------------------------------------------------------- writing


def write_label(path: Path, boxes_xywhn: np.ndarray) -> None:
    path.write_text("".join(f"0 {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}\n" for xc, yc, w, h in boxes_xywhn))


def write_sample(sample: Sample, out_dir: Path, split: str) -> list[str]:
    """Copy one image and its labels; returns the written image names."""
    suffix = sample.path.suffix.lower()
    image_path = out_dir / "images" / split / f"{sample.out_stem}{suffix}"
    shutil.copyfile(sample.path, image_path)
    write_label(out_dir / "labels" / split / f"{sample.out_stem}.txt", sample.boxes)
    return [image_path.name]


def write_tiles(sample: Sample, out_dir: Path, split: str, grid: int, overlap: float) -> list[str]:
    image = cv2.imread(str(sample.path))
    boxes = xywhn_to_xyxy(sample.boxes, sample.width, sample.height)
    names = []
    for k, tile in enumerate(tile_grid(sample.width, sample.height, grid, overlap)):
        x0, y0, x1, y1 = tile
        kept = tile_boxes(boxes, tile, min_visible=0.4, min_side=3.0)
        name = f"{sample.out_stem}__t{k}"
        cv2.imwrite(str(out_dir / "images" / split / f"{name}.jpg"), image[y0:y1, x0:x1])
        write_label(out_dir / "labels" / split / f"{name}.txt", xyxy_to_xywhn(kept, x1 - x0, y1 - y0))
        names.append(f"{name}.jpg")
    return names


def write_data_yaml(out_dir: Path, splits: Iterable[str]) -> None:
    lines = [f"path: {out_dir.resolve()}"] + [f"{s}: images/{s}" for s in splits]
    lines += ["nc: 1", "names:", f"  0: {CLASS_NAME}"]
    (out_dir / "data.yaml").write_text("\n".join(lines) + "\n")


def dataset_hash(out_dir: Path) -> str:
    """Hash of every label file with its split path: changes when boxes, names or splits do.

    Image bytes are not hashed (they are fixed by the names and the source data's own hashes,
    which the report lists); hashing them would cost a full read of the dataset.
    """
    digest = hashlib.sha256()
    for label in sorted((out_dir / "labels").rglob("*.txt")):
        digest.update(str(label.relative_to(out_dir)).encode())
        digest.update(label.read_bytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------- building


def build_dataset(
    inputs: list[Path],
    out_dir: Path,
    *,
    fractions: dict[str, float] | None = None,
    near_distance: int = 4,
    tile: int = 0,
    tile_overlap: float = TILE_OVERLAP,
    tile_splits: tuple[str, ...] = ("train",),
    progress: bool = True,
) -> BuildResult:
    """Read, fingerprint, de-duplicate, split, (optionally) tile and write a YOLO dataset."""
    fractions = fractions or DEFAULT_SPLITS
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "data.yaml").exists():
        raise DatasetError(f"output folder {out_dir} is not empty and is not a dataset we built")
    problems: list[Problem] = []
    samples = [s for folder in inputs for s in read_dataset(folder, problems)]
    samples = _fingerprint_all(samples, problems, progress)
    copies = copy_groups(samples, near_distance)
    assignment = split_groups(samples, copies, fractions)

    kept, merged = _dedupe(samples, copies)
    names = Counter(s.out_stem for s in kept)
    for s in kept:
        s.disambiguate = names[s.out_stem] > 1
    splits: dict[str, list[Sample]] = {name: [] for name in fractions}
    names = list(fractions)
    for s in kept:
        splits[names[assignment[str(s.path)]]].append(s)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    for split in splits:
        (out_dir / "images" / split).mkdir(parents=True)
        (out_dir / "labels" / split).mkdir(parents=True)
    written: dict[str, int] = {}
    for split, members in splits.items():
        count = 0
        for s in members:
            count += len(write_sample(s, out_dir, split))
            if tile and split in tile_splits:
                count += len(write_tiles(s, out_dir, split, tile, tile_overlap))
        written[split] = count
    write_data_yaml(out_dir, splits)

    result = BuildResult(out_dir, splits, problems)
    result.data_hash = dataset_hash(out_dir)
    result.stats = _stats(inputs, samples, kept, merged, splits, written, near_distance, tile)
    from export.report import write_dataset_report

    write_dataset_report(result)
    return result


def _fingerprint_all(samples: list[Sample], problems: list[Problem], progress: bool) -> list[Sample]:
    from rich.progress import track

    good = []
    for s in track(samples, description="fingerprinting", disable=not progress):
        if fingerprint(s):
            good.append(s)
        else:
            problems.append(Problem(str(s.path), "image does not decode"))
    return good


def _dedupe(samples: list[Sample], copies: _UnionFind) -> tuple[list[Sample], list[dict]]:
    kept, merged = [], []
    for members in copies.groups().values():
        group = [samples[i] for i in members]
        best = pick_representative(group)
        kept.append(best)
        if len(group) > 1:
            exact = len({s.sha256 for s in group}) == 1
            distinct_labels = len({s.boxes.round(4).tobytes() for s in group})
            merged.append(
                {
                    "kept": str(best.path),
                    "dropped": sorted(str(s.path) for s in group if s is not best),
                    "kind": "exact" if exact else "near",
                    "conflicting_boxes": distinct_labels > 1,
                }
            )
    kept.sort(key=lambda s: str(s.path))
    return kept, merged


def _stats(inputs, samples, kept, merged, splits, written, near_distance, tile) -> dict:
    box_sizes: dict[str, Counter] = {}
    for split, members in splits.items():
        counter: Counter = Counter()
        for s in members:
            counter.update(size_class(float(w * h)) for _, _, w, h in s.boxes)
        box_sizes[split] = counter
    return {
        "inputs": [str(p) for p in inputs],
        "samples_read": len(samples),
        "kept": len(kept),
        "duplicate_groups": len(merged),
        "exact_groups": sum(m["kind"] == "exact" for m in merged),
        "near_groups": sum(m["kind"] == "near" for m in merged),
        "conflicting_groups": sum(m["conflicting_boxes"] for m in merged),
        "removed": sum(len(m["dropped"]) for m in merged),
        "near_distance": near_distance,
        "tile": tile,
        "photos_per_split": {k: len(v) for k, v in splits.items()},
        "images_per_split": written,
        "boxes_per_split": {k: int(sum(len(s.boxes) for s in v)) for k, v in splits.items()},
        "per_dataset_split": {
            k: dict(Counter(s.dataset for s in v)) for k, v in splits.items()
        },
        "box_sizes": {k: {name: v.get(name, 0) for name, _, _ in SIZE_BINS} for k, v in box_sizes.items()},
        "merged": merged,
    }


# ------------------------------------------------------------------------------------ reading back


def load_split(data_dir: Path, split: str) -> list[tuple[Path, np.ndarray]]:
    """(image, ground-truth YOLO xywhn boxes) for one split of a dataset this module wrote."""
    if data_dir.suffix in (".yaml", ".yml"):
        data_dir = data_dir.parent
    images_dir = data_dir / "images" / split
    if not images_dir.is_dir():
        raise DatasetError(f"{data_dir} has no '{split}' split ({images_dir} missing)")
    out = []
    for image in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        label = data_dir / "labels" / split / f"{image.stem}.txt"
        out.append((image, _parse_yolo_label(label) if label.exists() else np.zeros((0, 4))))
    return out
