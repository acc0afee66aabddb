"""Train the scratch detector with ultralytics, fully offline, starting from COCO weights.

ultralytics reaches for the network in several places (update checks, font download, pip
auto-installs, asset downloads). ``offline_env`` closes all of them before ultralytics is imported:
YOLO_OFFLINE=1 and a private YOLO_CONFIG_DIR that already holds the font it would fetch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from export.distill import DistillOptions, distill_callbacks
from export.weights import YOLOV5N_COCO_SHA256, load_yolov5_state_dict, transfer

log = logging.getLogger(__name__)

ULTRALYTICS_DIR = Path("runs/.ultralytics")  # ultralytics' settings + the font it would download
MODEL_YAML = "yolov5n.yaml"  # ultralytics' YOLOv5u: yolov5 backbone + neck, anchor-free head


@dataclass
class TrainOptions:
    data: Path
    weights: Path | None
    run_dir: Path
    epochs: int = 40
    imgsz: int = 320
    batch: int = 32
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    patience: int = 15
    weights_sha256: str | None = YOLOV5N_COCO_SHA256
    init: Path | None = None  # an ultralytics checkpoint of ours to fine-tune instead of COCO
    # Schedule overrides; None keeps ultralytics' default. A fine-tune needs them: the defaults
    # ("auto" AdamW at 0.002 with a 3-epoch warmup at bias lr 0.1) undo what the start model knew.
    optimizer: str | None = None
    lr0: float | None = None
    warmup_epochs: float | None = None
    cos_lr: bool = False
    close_mosaic: int | None = None
    time_h: float | None = None  # ultralytics' `time`: stop after this many hours (the schedule fits it)
    distill: DistillOptions | None = None  # also learn a teacher model's scores (export/distill.py)
    # ultralytics callbacks by event name (progress hooks, and tests that interrupt a run)
    callbacks: dict[str, Callable] = field(default_factory=dict)


def offline_env(config_dir: Path = ULTRALYTICS_DIR) -> None:
    """Make ultralytics run with no network at all; must run before ultralytics is imported."""
    font_dir = config_dir / "Ultralytics"
    font_dir.mkdir(parents=True, exist_ok=True)
    font = font_dir / "Arial.ttf"
    if not font.exists():
        import matplotlib

        shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf", font)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def start_checkpoint(weights: Path | None, out: Path, expected_sha256: str | None) -> dict:
    """An ultralytics checkpoint of yolov5n (1 class) with the COCO backbone and neck copied in."""
    import torch
    import ultralytics
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(MODEL_YAML, nc=1, verbose=False)
    report: dict = {"source": None, "summary": "no COCO weights: training from scratch"}
    if weights is not None:
        result = transfer(load_yolov5_state_dict(weights, expected_sha256), model, str(weights))
        report = asdict(result) | {"summary": result.summary()}
        log.info("%s", result.summary())
    model.names = {0: "scratch"}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "train_args": {}, "version": ultralytics.__version__, "date": time.ctime()}, out)
    return report


def _finished(run_dir: Path) -> bool:
    return (run_dir / "train_summary.json").exists()


def train(opts: TrainOptions) -> dict:
    """Train (or resume an interrupted run in ``opts.run_dir``); returns the run summary."""
    offline_env()
    from ultralytics import YOLO

    last = opts.run_dir / "weights" / "last.pt"
    if _finished(opts.run_dir):
        log.info("run %s already finished; delete it to train again", opts.run_dir)
        return json.loads((opts.run_dir / "train_summary.json").read_text())
    started = time.monotonic()
    if last.exists():
        log.info("resuming %s", last)
        transfer_report = json.loads((opts.run_dir / "transfer.json").read_text())
        _with_callbacks(YOLO(str(last)), opts).train(resume=True)
    else:
        transfer_report = _fresh_start(opts)
        _with_callbacks(YOLO(str(opts.run_dir / "start.pt")), opts).train(**_train_args(opts))
    summary = {
        "options": {k: str(v) for k, v in asdict(opts).items() if k != "callbacks"},
        "transfer": transfer_report["summary"],
        "wall_time_s_this_session": round(time.monotonic() - started, 1),
        "best": str(opts.run_dir / "weights" / "best.pt"),
        "data_hash": _data_hash(opts.data),
    }
    (opts.run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _with_callbacks(model, opts: TrainOptions):
    callbacks = list(opts.callbacks.items())
    if opts.distill is not None:
        callbacks += distill_callbacks(opts.distill).items()
    for event, fn in callbacks:
        model.add_callback(event, fn)
    return model


def _fresh_start(opts: TrainOptions) -> dict:
    opts.run_dir.mkdir(parents=True, exist_ok=True)
    if opts.init is not None and opts.init.suffix == ".onnx":  # the shipped model: the only copy every session has
        from export.from_onnx import checkpoint_from_onnx

        report = checkpoint_from_onnx(opts.init, opts.run_dir / "start.pt", _train_images(opts.data))
    elif opts.init is not None:  # e.g. a higher-resolution fine-tune of an earlier run
        shutil.copyfile(opts.init, opts.run_dir / "start.pt")
        report = {"source": str(opts.init), "summary": f"fine-tuning {opts.init}"}
    else:
        report = start_checkpoint(opts.weights, opts.run_dir / "start.pt", opts.weights_sha256)
    (opts.run_dir / "transfer.json").write_text(json.dumps(report, indent=2))
    return report


def _train_images(data_yaml: Path) -> Path:
    """The train split's image folder of a dataset built by `scratchwatch dataset build`."""
    return data_yaml.parent / "images" / "train"


def _train_args(opts: TrainOptions) -> dict:
    device = resolve_device(opts.device)
    return {
        "data": str(opts.data.resolve()),
        "epochs": opts.epochs,
        "imgsz": opts.imgsz,
        "batch": opts.batch,
        "device": device,
        "workers": opts.workers,
        "seed": opts.seed,
        "patience": opts.patience,
        "amp": False,  # ultralytics' AMP check downloads a model; on CPU AMP does nothing anyway
        "project": str(opts.run_dir.parent.resolve()),
        "name": opts.run_dir.name,
        "exist_ok": True,
        "cache": "ram",
        "plots": True,  # results.png: the training curves
        "verbose": True,
        "cos_lr": opts.cos_lr,
    } | _schedule_overrides(opts)


def _schedule_overrides(opts: TrainOptions) -> dict:
    chosen = {"optimizer": opts.optimizer, "lr0": opts.lr0, "warmup_epochs": opts.warmup_epochs,
              "close_mosaic": opts.close_mosaic, "time": opts.time_h}
    return {key: value for key, value in chosen.items() if value is not None}


def _data_hash(data_yaml: Path) -> str:
    report = data_yaml.parent / "report.json"
    if report.exists():
        return json.loads(report.read_text()).get("data_hash", "")
    from export.dataset import dataset_hash

    return dataset_hash(data_yaml.parent)
