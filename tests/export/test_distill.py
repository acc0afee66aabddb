"""Distillation: the loss terms, the teacher's shape check, and a run that learns the teacher's scores."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("ultralytics", reason="training is in the [train] extra")
import torch  # noqa: E402

from export.distill import BOX_MIN_SCORE, DistillError, DistillOptions, Teacher, distill_terms, teacher_targets  # noqa: E402
from export.train import TrainOptions, offline_env, train  # noqa: E402

IMGSZ = 64
ANCHORS = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))  # 84: the student's grid at 64 px


def constant_teacher(path: Path, score: float, anchors: int = ANCHORS) -> Path:
    """An ONNX 'damage model' that answers the same boxes and ``score`` for every anchor of any image."""
    rows = np.zeros((1, 5, anchors), np.float32)
    rows[0, :4] = np.array([[32.0], [32.0], [12.0], [12.0]])
    rows[0, 4] = score
    nodes = [
        helper.make_node("ReduceMean", ["images", "axes"], ["mean"], keepdims=1),  # [B, 1, 1, 1]
        helper.make_node("Reshape", ["mean", "b11"], ["mean3"]),
        helper.make_node("Mul", ["mean3", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "rows"], ["output0"]),  # [B, 5, A]
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([0, 1, 1], np.int64), "b11"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(rows, "rows"),
    ]
    graph = helper.make_graph(
        nodes, "constant-teacher",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, IMGSZ, IMGSZ])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 5, anchors])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_terms_vanish_where_the_student_already_agrees_and_grow_with_disagreement() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.05, 0.2]])
    boxes = torch.tensor([[[0.0, 0.0, 10, 10], [5, 5, 20, 20], [0, 0, 4, 4], [30, 30, 40, 40]]])
    logits = torch.logit(scores).requires_grad_(True)
    box, cls = distill_terms(logits, boxes, boxes, scores)
    cls.backward()
    assert float(box) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(logits.grad, torch.zeros_like(logits), atol=1e-7), "BCE to soft targets is minimal at them"

    shifted = boxes + torch.tensor([3.0, 0.0, 3.0, 0.0])
    wrong = torch.zeros_like(scores)  # logits 0: scores 0.5 everywhere
    box2, cls2 = distill_terms(wrong, shifted, boxes, scores)
    assert float(box2) > 0.05 and float(cls2) > float(cls)


def test_boxes_of_anchors_the_teacher_barely_scores_are_not_learnt() -> None:
    scores = torch.tensor([[BOX_MIN_SCORE / 2, 0.8]])
    teacher = torch.tensor([[[0.0, 0.0, 10, 10], [0, 0, 10, 10]]])
    student = teacher.clone()
    student[0, 0] += 50  # far off, on an anchor under BOX_MIN_SCORE: ignored
    box, _ = distill_terms(torch.zeros_like(scores), student, teacher, scores)
    assert float(box) == pytest.approx(0.0, abs=1e-6)
    box_none, _ = distill_terms(torch.zeros_like(scores), student, teacher, torch.full_like(scores, 0.01))
    assert float(box_none) == 0.0


def test_a_teacher_with_another_grid_is_refused_naming_the_shapes(tmp_path: Path) -> None:
    teacher = Teacher(constant_teacher(tmp_path / "t.onnx", 0.5, anchors=ANCHORS + 5))
    raw = teacher(torch.zeros(2, 3, IMGSZ, IMGSZ))
    assert tuple(raw.shape) == (2, 5, ANCHORS + 5)
    with pytest.raises(DistillError, match=r"\(2, 5, 89\).*84 anchors"):
        teacher_targets(raw, ANCHORS)
    boxes, scores = teacher_targets(teacher(torch.zeros(1, 3, IMGSZ, IMGSZ))[:, :, :ANCHORS], ANCHORS)
    assert boxes.shape == (1, ANCHORS, 4) and torch.allclose(boxes[0, 0], torch.tensor([26.0, 26, 38, 38]))
    assert torch.allclose(scores, torch.full((1, ANCHORS), 0.5))


def _student(teacher: Path | None):
    """A fresh one-class yolov5n (ultralytics) with its training hyper-parameters, taught by ``teacher``."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from export.distill import distill_criterion
    from export.train import MODEL_YAML

    torch.manual_seed(0)
    model = DetectionModel(MODEL_YAML, nc=1, verbose=False)
    model.args = get_cfg()
    if teacher is not None:
        model.criterion = distill_criterion(model, DistillOptions(teacher, cls_weight=1.0, box_weight=1.0))
    return model


def _mean_score(model, images) -> float:
    model.eval()
    with torch.no_grad():
        out = model(images)
    model.train()
    out = out[0] if isinstance(out, (tuple, list)) else out
    return float(out[:, 4].mean())


@pytest.mark.parametrize("taught", [True, False])
def test_a_student_moves_to_the_teachers_scores_only_when_taught(tmp_path: Path, taught: bool) -> None:
    """Photos without labels: alone the loss pushes every score to 0; the teacher's 0.9 pulls them up."""
    model = _student(constant_teacher(tmp_path / "t.onnx", 0.9) if taught else None)
    images = torch.rand(4, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    batch = {"img": images, "batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4)}
    before = _mean_score(model, images)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        optimizer.zero_grad()
        loss, _ = model.loss(batch)
        loss.sum().backward()
        optimizer.step()
    after = _mean_score(model, images)
    assert before < 0.01
    if taught:
        assert after > 0.5, (before, after)
    else:
        assert after < before, (before, after)


def test_a_distilled_run_logs_the_teacher_and_saves_checkpoints_without_it(
    tiny_dataset: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    """The checkpoint must not try to pickle the teacher's ONNX Runtime session (the EMA copy has none)."""
    monkeypatch.chdir(tmp_path)
    offline_env()
    teacher = constant_teacher(tmp_path / "teacher.onnx", 0.9)
    opts = TrainOptions(data=tiny_dataset / "data.yaml", weights=None, run_dir=tmp_path / "runs" / "taught", epochs=2,
                        imgsz=IMGSZ, batch=4, device="cpu", workers=0, distill=DistillOptions(teacher))
    with caplog.at_level(logging.INFO, logger="export.distill"):
        summary = train(opts)
    assert "distilling from" in caplog.text
    assert caplog.text.count("distillation (teacher.onnx): box") == 2, "one line per epoch"
    assert "teacher.onnx" in summary["options"]["distill"]
    saved = torch.load(tmp_path / "runs/taught/weights/last.pt", weights_only=False)
    assert getattr(saved["model"], "criterion", None) is None
