"""`scratchwatch dataset|train|export|evaluate`: the optional training extra's commands.

This module imports nothing heavy at import time, so the lot-camera CLI (no torch installed) can
register these commands and explain what to install when one is used.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.geometry import TILE_OVERLAP


SHARED = Path("../shared")
DEFAULT_INPUTS = [SHARED / "datasets/seed-scratch", SHARED / "datasets/lensor-damage"]
DEFAULT_DATA = Path("datasets/scratch-v1")
DEFAULT_RUN = Path("runs/train/scratchwatch-yolov5n-320")  # `train`'s default: 320 px from COCO
SHIPPED_RUN = Path("runs/train/scratchwatch-yolov5n-480")  # the 480 px fine-tune the shipped model is
DEFAULT_WEIGHTS = SHARED / "weights/yolov5n-v7.0-coco.pt"
EXPORT_OUT = Path("models/scratchwatch-v2-yolov5n-480.onnx")
"""`export`'s default: the single model that is v4's first member (the shipped ensemble is `ensemble`'s output)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the training-extra commands to the `scratchwatch` parser."""
    p = subparsers.add_parser("dataset", help="build a clean YOLO dataset (dedupe, split by photo, tile)")
    dsub = p.add_subparsers(dest="dataset_command", required=True)
    b = dsub.add_parser("build", help="read YOLO/COCO folders and write one clean single-class dataset")
    b.add_argument("inputs", nargs="*", type=Path, default=DEFAULT_INPUTS, help="YOLO or COCO dataset folders")
    b.add_argument("--out", type=Path, default=DEFAULT_DATA, help="output dataset folder")
    b.add_argument("--near-distance", type=int, default=4, help="perceptual-hash bits for a near copy")
    b.add_argument("--tile", type=int, default=0, help="also cut train images into an N x N grid (0: off)")
    b.add_argument("--tile-overlap", type=float, default=TILE_OVERLAP, help="tile overlap, fraction of a tile")
    b.set_defaults(func=_reported(_cmd_dataset_build))
    r = dsub.add_parser("crops", help="a copy of a dataset plus the car crops the photo gate would show the damage model")
    r.add_argument("src", type=Path, help="a dataset folder built by `dataset build`")
    r.add_argument("--out", type=Path, required=True, help="the new dataset folder (src is linked, not changed)")
    r.add_argument("--split", default="train", help="split whose photos get crops (never test: it scores the model)")
    r.add_argument("--config", type=Path, help="config whose car stage and damage model choose the windows")
    r.set_defaults(func=_reported(_cmd_dataset_crops))

    m = dsub.add_parser("compact", help="a WebP copy of a dataset's train/val splits, small enough to carry to a lent GPU")
    m.add_argument("src", type=Path)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--max-side", type=int, default=960, help="longest side in pixels (training at 640 scales up to 1.5x)")
    m.add_argument("--quality", type=int, default=78, help="WebP quality")
    m.set_defaults(func=_reported(_cmd_dataset_compact))

    f = dsub.add_parser("frames", help="frames of a clean clip's time span as background images (hard negatives)")
    f.add_argument("clip", type=Path)
    f.add_argument("--out", type=Path, required=True, help="YOLO folder to write (images/, empty labels/)")
    f.add_argument("--start", type=float, default=0.0, help="first second taken")
    f.add_argument("--end", type=float, required=True, help="seconds from here on stay unseen (for false-alarm tests)")
    f.add_argument("--every", type=float, default=0.5, help="seconds between frames taken")
    f.set_defaults(func=_reported(_cmd_dataset_frames))
    k = dsub.add_parser("clips", help="the unseen part of a clip as its own file, for evaluate --clips")
    k.add_argument("clip", type=Path)
    k.add_argument("--from", dest="start", type=float, required=True, help="first second kept")
    k.add_argument("--to", dest="end", type=float, help="first second no longer kept (default: the end)")
    k.add_argument("--out", type=Path, required=True, help="folder for the cut clip")
    k.set_defaults(func=_reported(_cmd_dataset_clips))

    t = subparsers.add_parser("train", help="train the detector from COCO weights (resumable)")
    t.add_argument("--data", type=Path, default=DEFAULT_DATA / "data.yaml")
    t.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="yolov5n COCO checkpoint ('' for none)")
    t.add_argument("--run-dir", type=Path, default=DEFAULT_RUN, help="run folder; an unfinished run resumes")
    t.add_argument("--init", type=Path, help="fine-tune this ultralytics checkpoint of ours instead of COCO")
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--imgsz", type=int, default=320)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--device", default="auto", help="auto, cpu, 0 (first CUDA GPU)")
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--patience", type=int, default=15)
    t.add_argument("--optimizer", help="ultralytics optimizer, e.g. AdamW or SGD (default: auto)")
    t.add_argument("--lr0", type=float, help="initial learning rate (default: ultralytics')")
    t.add_argument("--warmup-epochs", type=float, help="warmup length (default: ultralytics' 3)")
    t.add_argument("--cos-lr", action="store_true", help="cosine learning-rate schedule")
    t.add_argument("--close-mosaic", type=int, help="turn mosaic off for the last N epochs (default 10)")
    t.add_argument("--time", type=float, dest="time_h", metavar="HOURS",
                   help="stop after this many hours; ultralytics fits the schedule to it")
    t.add_argument("--teacher", type=Path, metavar="MODEL.onnx",
                   help="distil: also learn this damage model's per-anchor scores and boxes (e.g. the v4 ensemble)")
    t.add_argument("--distill-cls", type=float, default=1.0, help="weight of the teacher's scores (x the cls gain)")
    t.add_argument("--distill-box", type=float, default=0.5, help="weight of the teacher's boxes (x the box gain)")
    t.set_defaults(func=_reported(_cmd_train))

    e = subparsers.add_parser("export", help="export a checkpoint to ONNX, check parity, embed metrics")
    e.add_argument("--checkpoint", type=Path, default=SHIPPED_RUN / "weights/best.pt")
    e.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the dataset the model was trained on")
    e.add_argument("--out", type=Path, default=EXPORT_OUT)
    e.add_argument("--imgsz", type=int, help="input size (default: the one the checkpoint was trained at)")
    e.add_argument("--threshold", type=float,
                   help="operating threshold to embed (default: the F1-best one on the val split)")
    e.set_defaults(func=_reported(_cmd_export))

    c = subparsers.add_parser("car-model", help="export the car stage: COCO YOLOv5n with its classic head, all 349 tensors")
    c.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="yolov5n COCO checkpoint (sha256 checked)")
    c.add_argument("--imgsz", type=int, default=384, help="input size (384: lot frames P 0.977 / R 0.913, street 1.0 / 1.0; 416: R 0.891)")
    c.add_argument("--out", type=Path, default=Path("models/scratchwatch-cars-yolov5n-coco-384.onnx"))
    c.set_defaults(func=_reported(_cmd_car_model))

    q = subparsers.add_parser("quantize", help="int8 copy of an ONNX model for CPUs (static, calibrated on the val split)")
    q.add_argument("model", type=Path, help="the fp32 ONNX model (e.g. the shipped damage model)")
    q.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset whose split calibrates the activation ranges")
    q.add_argument("--split", default="val", help="calibration split (never test: it scores the result)")
    q.add_argument("--limit", type=int, help="calibrate on at most N images, evenly spread (default: all)")
    q.add_argument("--out", type=Path, help="default: MODEL-int8.onnx next to MODEL")
    q.add_argument("--format", dest="fmt", choices=("qdq", "qoperator"), default="qdq",
                   help="qdq (default: ONNX Runtime fuses it into QLinearConv) or qoperator")
    q.add_argument("--per-channel", action="store_true",
                   help="one weight scale per output channel (default: per tensor, which lost less mAP on the shipped model)")
    q.add_argument("--calibration", choices=("minmax", "average", "percentile", "entropy"), default="average",
                   help="activation ranges: average (default: per-image min/max averaged, ignores rare outliers; "
                        "measured best), minmax; "
                        "percentile and entropy keep histograms of every activation (many GB at 480 px)")
    q.add_argument("--keep-float", nargs="+", metavar="PREFIX", default=[],
                   help="node-name prefixes left in float, e.g. /model.8/ /model.9/ (the layers int8 hurts most)")
    q.add_argument("--int8-head", action="store_true",
                   help="quantize the detection head's convs too (default: float; int8 there is faster and loses the most mAP)")
    q.set_defaults(func=_reported(_cmd_quantize))

    h = subparsers.add_parser("fp16", help="half-precision copy of an ONNX model for GPUs (float32 inputs and outputs kept)")
    h.add_argument("model", type=Path, help="the fp32 ONNX model (e.g. the shipped damage or car model)")
    h.add_argument("--out", type=Path, help="default: MODEL-fp16.onnx next to MODEL (what detector.precision: fp16 runs)")
    h.set_defaults(func=_reported(_cmd_fp16))

    u = subparsers.add_parser("u8", help="copy of an ONNX model taking the letterboxed bytes (uint8 input, /255 in the graph, on the GPU)")
    u.add_argument("model", type=Path, help="the float-input ONNX model (fp32, or its -fp16 copy)")
    u.add_argument("--out", type=Path, help="default: MODEL-u8.onnx next to MODEL (what detector.input_type: uint8 runs)")
    u.set_defaults(func=_reported(_cmd_u8))

    d = subparsers.add_parser("fast-dfl", help="rewrite a YOLOv5u/v8 head's box decode (DFL) so ONNX Runtime runs it faster; same outputs, checked")
    d.add_argument("model", type=Path, help="an ONNX model exported by ultralytics (or an ensemble of them)")
    d.add_argument("--out", type=Path, help="default: the model itself, replaced only once the rewritten file's output equals it")
    d.set_defaults(func=_reported(_cmd_fast_dfl))

    n = subparsers.add_parser("ensemble", help="several damage models (and their mirrored view) as one ONNX model, outputs averaged anchor by anchor")
    n.add_argument("out", type=Path, help="the ensemble's ONNX file")
    n.add_argument("models", type=Path, nargs="+", help="float32 models with the same head and classes; the first gives the input size and metadata")
    n.add_argument("--flip", action="store_true", help="also average each model's view of the horizontally mirrored input")
    n.add_argument("--threshold", type=float, help="operating threshold to embed (default: the first model's; with --data, the F1-best on val)")
    n.add_argument("--data", type=Path, help="score the ensemble on this dataset's test split and embed the metrics, as `export` does")
    n.set_defaults(func=_reported(_cmd_ensemble))

    v = subparsers.add_parser("evaluate", help="score an ONNX model through the pipeline's detector code")
    v.add_argument("model", type=Path)
    v.add_argument("data", type=Path, help="a dataset folder built by `scratchwatch dataset build`")
    v.add_argument("--split", default="test")
    v.add_argument("--threshold", type=float, help="operating threshold (default: the model's own)")
    v.add_argument("--clips", type=Path, nargs="*", default=sorted((SHARED / "videos").glob("*.mp4")),
                   help="clean clips to replay: every incident on them is a false alarm")
    v.add_argument("--sweep", type=float, nargs="+", metavar="T",
                   help="P/R and detections on undamaged photos at each of these thresholds, and a replay of the clips at each "
                        "(to choose the shipped one)")
    v.add_argument("--choose", type=float, metavar="P",
                   help="choose the operating threshold by the model card's rule: the lowest (0.01 grid) whose precision on "
                        "--split reaches P, with at most --max-per-50 detections per 50 photos without damage and no incident "
                        "on the clips (use --split val)")
    v.add_argument("--max-per-50", type=float, default=1.0, help="--choose: detections allowed per 50 photos without damage (default 1)")
    v.add_argument("--embed", action="store_true",
                   help="store the threshold (--threshold or --choose) and the test metrics in the model file, as `export` does")
    v.add_argument("--out", type=Path, help="report folder (default: runs/eval/<model stem>)")
    v.add_argument("--provider", default="auto")
    v.set_defaults(func=_reported(_cmd_evaluate))


def _reported(command):
    """Bad input (a folder in neither format, a weights file with another sha256, a missing file)
    ends the command with its one-line message, which names the file, instead of a traceback."""
    def run(args: argparse.Namespace) -> int:
        from export.dataset import DatasetError
        from export.dfl import FastDflError
        from export.distill import DistillError
        from export.ensemble import EnsembleError
        from export.fp16 import Fp16Error
        from export.quantize import QuantizeError
        from export.uint8_input import Uint8InputError
        from export.weights import WeightsError

        try:
            return command(args)
        except (DatasetError, DistillError, FastDflError, EnsembleError, WeightsError, QuantizeError, Fp16Error, Uint8InputError,
                FileNotFoundError) as exc:
            print(f"scratchwatch {args.command}: {exc}", file=sys.stderr)
            return 1

    return run


def _require_train_extra() -> None:
    """Fail with the install hint when torch/ultralytics are absent; otherwise go offline first."""
    try:
        from export.train import offline_env

        offline_env()
        import torch  # noqa: F401
        import ultralytics  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"this command needs the training extra ({exc.name} is missing): pip install -e '.[train]'"
        ) from exc


def _cmd_dataset_build(args: argparse.Namespace) -> int:
    from export.dataset import build_dataset

    result = build_dataset(
        args.inputs, args.out, near_distance=args.near_distance, tile=args.tile, tile_overlap=args.tile_overlap
    )
    stats = result.stats
    print(
        f"wrote {args.out}: {stats['kept']} photos kept of {stats['samples_read']} "
        f"({stats['removed']} copies removed, {len(result.problems)} bad samples skipped); "
        f"split {stats['photos_per_split']}; report: {args.out / 'report.md'}"
    )
    return 0


def _cmd_dataset_crops(args: argparse.Namespace) -> int:
    from export.car_crops import add_car_crops
    from pipeline.car_gate import build_detector
    from pipeline.config import load_settings

    gated = build_detector(load_settings(args.config).detector, gate="photo")
    counts = add_car_crops(args.src, args.out, gated, args.split)
    print(
        f"wrote {args.out}: {counts['crops']} car crops ({counts['crop_boxes']} boxes) from {counts['photos_cropped']} "
        f"of {counts['photos']} {args.split} photos; the other photos are looked at whole by the photo gate"
    )
    return 0


def _cmd_dataset_compact(args: argparse.Namespace) -> int:
    from export.car_crops import compact_copy

    written = compact_copy(args.src, args.out, args.max_side, args.quality)
    print(f"wrote {args.out}: {written['images']} WebP images, {written['bytes'] / 2**20:.1f} MiB")
    return 0


def _cmd_dataset_frames(args: argparse.Namespace) -> int:
    from export.video_frames import extract_frames

    written = extract_frames(args.clip, args.out, args.start, args.end, args.every)
    print(f"{len(written)} frames of {args.clip} [{args.start:g}s, {args.end:g}s) -> {args.out}")
    return 0


def _cmd_dataset_clips(args: argparse.Namespace) -> int:
    from export.video_frames import cut_clip

    print(f"wrote {cut_clip(args.clip, args.out, args.start, args.end)}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    _require_train_extra()
    from export.distill import DistillOptions
    from export.train import TrainOptions, train
    from pipeline.logs import setup_logging

    setup_logging("INFO")  # a resumed run and the teacher's per-epoch terms are logged, next to ultralytics' lines

    distill = DistillOptions(args.teacher, args.distill_cls, args.distill_box) if args.teacher else None
    weights = args.weights if str(args.weights) else None
    opts = TrainOptions(
        data=args.data, weights=weights, run_dir=args.run_dir, epochs=args.epochs, imgsz=args.imgsz,
        batch=args.batch, device=args.device, workers=args.workers, patience=args.patience, init=args.init,
        optimizer=args.optimizer, lr0=args.lr0, warmup_epochs=args.warmup_epochs, cos_lr=args.cos_lr,
        close_mosaic=args.close_mosaic, time_h=args.time_h, distill=distill,
    )
    summary = train(opts)
    print(f"training done: {summary['best']} ({summary['transfer']})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    _require_train_extra()
    from export.onnx_export import export_model, trained_imgsz

    imgsz = args.imgsz or trained_imgsz(args.checkpoint)
    result = export_model(args.checkpoint, args.data, args.out, imgsz, threshold=args.threshold)
    p, m = result["parity"], result["metrics"]
    print(
        f"wrote {result['model']}: test mAP@0.5 {m['mAP50']:.3f}, mAP@0.5:0.95 {m['mAP50-95']:.3f}, "
        f"threshold {result['threshold']}; parity: max raw diff {p['max_abs_diff']:.2e}, "
        f"mAP diff {p['map_diff']:.4f} over {p['images']} images"
    )
    return 0


def _cmd_car_model(args: argparse.Namespace) -> int:
    _require_train_extra()
    from export.car_model import export_car_model
    from export.train import offline_env
    from export.weights import YOLOV5N_COCO_SHA256

    offline_env()
    report = export_car_model(args.weights, args.out, args.imgsz, YOLOV5N_COCO_SHA256)
    p = report["parity"]
    print(f"wrote {args.out}: {report['tensors_loaded']} tensors loaded, parity max diff {p['max_abs_diff_px']:.1e} px, "
          f"{p['max_score_diff']:.1e} score")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from export.quantize import quantize_model

    out = args.out or args.model.with_name(f"{args.model.stem}-int8.onnx")
    recipe = quantize_model(args.model, args.data, out, split=args.split, limit=args.limit, fmt=args.fmt,
                            per_channel=args.per_channel, method=args.calibration,
                            keep_float=args.keep_float, float_head=not args.int8_head)
    print(f"wrote {out}: {recipe['format']}, {'per-channel' if recipe['per_channel'] else 'per-tensor'} int8 weights, "
          f"calibrated ({recipe['calibration']}) on {recipe['calibration_images']} images of {recipe['calibration_data']}; "
          f"use it with detector.model: {out}")
    return 0


def _cmd_u8(args: argparse.Namespace) -> int:
    from export.uint8_input import convert_uint8_input

    recipe = convert_uint8_input(args.model, args.out)
    print(f"wrote {recipe['out']}: uint8 input (RGB bytes, divided by 255 in the graph); raw output vs {args.model} on the "
          f"CPU within {recipe['max_raw_diff']:.3g}; use it with detector.input_type: uint8")
    return 0


def _cmd_fp16(args: argparse.Namespace) -> int:
    from export.fp16 import convert_fp16

    recipe = convert_fp16(args.model, args.out)
    print(f"wrote {recipe['out']}: float16 weights and activations, float32 input and output; raw output vs {args.model} "
          f"on the CPU: boxes within {recipe['max_box_diff_px']:.3g} px, scores within {recipe['max_score_diff']:.3g}; "
          f"use it with detector.precision: fp16 (for GPUs)")
    return 0


def _cmd_fast_dfl(args: argparse.Namespace) -> int:
    from export.dfl import fast_dfl

    recipe = fast_dfl(args.model, args.out)
    print(f"wrote {recipe['out']}: {recipe['rewritten']} DFL decode(s) as a last-axis softmax and a MatMul; raw output "
          f"within {recipe['max_raw_diff']:.3g} of {args.model}")
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from export.ensemble import build_ensemble

    recipe = build_ensemble(args.models, args.out, flip=args.flip, threshold=args.threshold)
    if args.data is not None:
        from export.onnx_export import embed_evaluation

        scored = embed_evaluation(args.out, args.data, args.threshold)
        shipped = scored["metrics"]["shipped"]
        print(f"test split of {args.data}: mAP@0.5 {scored['metrics']['mAP50']:.3f}; at threshold {scored['threshold']}: "
              f"P {shipped['precision']:.3f} R {shipped['recall']:.3f}")
    print(f"wrote {recipe['out']}: {recipe['views']} views of {len(args.models)} models at {recipe['imgsz'][1]}x{recipe['imgsz'][0]}, "
          f"raw output within {recipe['max_raw_diff']:.3g} of the members' mean; score it with `scratchwatch evaluate {recipe['out']} DATA`")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from export.evaluate import ThresholdRule, run_evaluation
    from pipeline.config import load_settings

    if args.embed and args.threshold is None and args.choose is None:
        print("scratchwatch evaluate: --embed stores the operating threshold: give --threshold or --choose", file=sys.stderr)
        return 2
    if args.threshold is not None and args.choose is not None:
        print("scratchwatch evaluate: --threshold and --choose both set the threshold: give one", file=sys.stderr)
        return 2
    report = run_evaluation(
        args.model, args.data, split=args.split, threshold=args.threshold, clips=args.clips,
        out_dir=args.out or Path("runs/eval") / args.model.stem, provider=args.provider,
        sweep=args.sweep, rule=ThresholdRule(args.choose, args.max_per_50) if args.choose is not None else None,
        base=load_settings(args.config).detector,  # `scratchwatch --config C evaluate`: C's car stage, tiles and gate settings
    )
    m = report.metrics
    print(
        f"{args.model} on {args.data} [{args.split}]: P {m['precision']:.3f} R {m['recall']:.3f} "
        f"mAP@0.5 {m['mAP50']:.3f} mAP@0.5:0.95 {m['mAP50-95']:.3f}, F1-best threshold {m['threshold']:.3f}; "
        f"at {m['shipped']['threshold']}: P {m['shipped']['precision']:.3f} R {m['shipped']['recall']:.3f}"
    )
    failed = False
    if report.chosen is not None:
        tried = ", ".join(f"{t['threshold']:g} ({t['false_alarms']} incidents)" if t["false_alarms"] is not None else f"{t['threshold']:g}"
                          for t in report.chosen["tried"])
        if report.chosen["threshold"] is None:
            failed = True
            print(f"scratchwatch evaluate: no threshold meets the rule (precision >= {args.choose:g} on {args.split}, <= "
                  f"{args.max_per_50:g} per 50 photos without damage, no clip incident); tried: {tried or 'none'}", file=sys.stderr)
        else:
            print(f"  chosen threshold {report.chosen['threshold']:g} (precision >= {args.choose:g} on {args.split}, <= "
                  f"{args.max_per_50:g} per 50 photos without damage, no clip incident); tried: {tried}")
    for clip, result in report.clips.items():
        if result["error"]:
            failed = True
            print(f"  {clip}: error: {result['error']} (false alarms not counted)")
        else:
            print(f"  {clip}: {result['incidents']} incidents (false alarms) over {result['frames']} frames")
    for row in report.sweep:
        errors = row.get("errors") or {}
        failed = failed or bool(errors)
        alarms = (f"error: {'; '.join(f'{clip}: {why}' for clip, why in errors.items())} (false alarms not counted)" if errors
                  else "no clip replayed" if row["total_false_alarms"] is None
                  else f"{row['total_false_alarms']} false alarms {row['false_alarms']}")
        background = ", ".join(f"{name} {b['per_50_photos']:g}/50" for name, b in row["background"].items())
        print(f"  threshold {row['threshold']}: P {row['precision']:.3f} R {row['recall']:.3f}, {alarms}"
              f"{f'; on photos without damage: {background}' if background else ''}")
    print(f"report: {report.outputs['report']}")
    if args.embed and failed:
        print(f"scratchwatch evaluate: nothing embedded in {args.model}: a clip was not analysed to its end, or no "
              f"threshold met the rule", file=sys.stderr)
    elif args.embed:
        from export.onnx_export import embed_evaluation

        scored = embed_evaluation(args.model, args.data, m["shipped"]["threshold"])
        print(f"embedded in {args.model}: threshold {scored['threshold']}, test mAP@0.5 {scored['metrics']['mAP50']:.3f}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m export`), the same commands as `scratchwatch`."""
    parser = argparse.ArgumentParser(prog="python -m export")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
