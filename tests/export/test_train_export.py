"""One short, interrupted and resumed training run, then ONNX export and parity, on a tiny set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ultralytics", reason="training is in the [train] extra")

from export.onnx_export import MAX_MAP_DIFF, OPSET, export_model, read_metadata, trained_imgsz  # noqa: E402
from export.train import TrainOptions, offline_env, train  # noqa: E402

pytestmark = pytest.mark.train


class Interrupted(Exception):
    """Stands in for a killed process: raised after the first epoch was saved."""


def test_train_interrupt_resume_export_parity(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # ultralytics settings + font dir go under ./runs
    offline_env()
    run_dir = tmp_path / "runs" / "tiny"

    def stop_after_first_epoch(trainer) -> None:
        if trainer.epoch == 0:
            raise Interrupted

    opts = TrainOptions(
        data=tiny_dataset / "data.yaml", weights=None, run_dir=run_dir, epochs=2, imgsz=64, batch=4,
        device="cpu", workers=0, callbacks={"on_fit_epoch_end": stop_after_first_epoch},
    )
    with pytest.raises(Interrupted):
        train(opts)
    assert (run_dir / "weights" / "last.pt").exists() and not (run_dir / "train_summary.json").exists()

    summary = train(TrainOptions(**{**opts.__dict__, "callbacks": {}}))  # resumes the interrupted run
    results = (run_dir / "results.csv").read_text().strip().splitlines()
    assert len(results) == 3, "header + one row per epoch: epoch 1 from the first run, epoch 2 resumed"
    assert summary["data_hash"] == json.loads((tiny_dataset / "report.json").read_text())["data_hash"]
    assert (run_dir / "results.png").exists(), "training curves are drawn"

    out = tmp_path / "model.onnx"
    assert trained_imgsz(run_dir / "weights" / "best.pt") == 64  # `scratchwatch export`'s default size
    result = export_model(run_dir / "weights" / "best.pt", tiny_dataset, out, imgsz=64)
    parity = result["parity"]
    assert parity["ok"] and parity["map_diff"] <= MAX_MAP_DIFF
    assert parity["max_abs_diff"] < 0.05  # raw box pixels/scores of fp32 torch vs ONNX Runtime
    meta = read_metadata(out)
    assert meta["opset"] == str(OPSET)
    assert json.loads(meta["scratchwatch_metrics"])["split"] == "test"
    assert meta["scratchwatch_data_hash"] == summary["data_hash"]

    from pipeline.detector import Detector

    detector = Detector(out, provider="cpu")
    assert detector.imgsz == (64, 64) and detector.names == {0: "scratch"} and detector.batch_dynamic

    # the exported file back to a trainable checkpoint (BatchNorm re-inflated): the same function as the ONNX
    import torch

    from export.from_onnx import calibration_batch, checkpoint_from_onnx

    report = checkpoint_from_onnx(out, tmp_path / "from_onnx.pt", tiny_dataset / "images" / "train")
    assert report["imgsz"] == 64 and "BatchNorms re-inflated" in report["summary"]
    rebuilt = torch.load(tmp_path / "from_onnx.pt", weights_only=False)["model"].eval()
    batch = np.stack(calibration_batch(tiny_dataset / "images" / "test", 64))
    with torch.no_grad():
        again = rebuilt(torch.from_numpy(batch))[0].numpy()
    np.testing.assert_allclose(again, detector.run(batch), atol=1e-2)

    # a fine-tune of that model at another size, on its own schedule: the overrides reach ultralytics
    fine = tmp_path / "runs" / "fine"
    train(TrainOptions(
        data=tiny_dataset / "data.yaml", weights=None, run_dir=fine, epochs=1, imgsz=96, batch=4,
        device="cpu", workers=0, init=run_dir / "weights" / "best.pt", optimizer="AdamW", lr0=0.0005,
        warmup_epochs=0.0, cos_lr=True, close_mosaic=0,
    ))
    import yaml

    args = yaml.safe_load((fine / "args.yaml").read_text())
    assert (args["optimizer"], args["lr0"], args["warmup_epochs"], args["cos_lr"], args["close_mosaic"]) == (
        "AdamW", 0.0005, 0.0, True, 0)
    assert args["imgsz"] == 96 and trained_imgsz(fine / "weights" / "best.pt") == 96 and json.loads((fine / "transfer.json").read_text())["source"].endswith("best.pt")
