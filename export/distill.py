"""Knowledge distillation: train one nano model to give the scores of an ensemble.

Why: the shipped damage model v4 is two nano models, each run on the crop and on its mirror image,
averaged anchor by anchor: four model runs per crop. Averaging is what lifted recall at precision
0.60 (v2 alone ~0.08, v4 0.20), and it costs four times v2's compute, which is what caps the cameras
a CPU holds. A student trained to reproduce the ensemble's per-anchor scores (soft targets, next to
the usual loss on the labelled boxes) may keep part of that gain at a quarter of the cost.

The teacher is an ONNX file run by ONNX Runtime on each training batch exactly as the student sees
it (after mosaic and every other augmentation), so the student learns the teacher's answer on the
same pixels. Its output must be the damage model's ``[batch, 4 + 1, anchors]`` in the student's
anchor order (same input size and strides), which any of this project's damage models is.
Training package only: the runtime never imports this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Teacher anchors below this score carry no box target: their boxes are noise.
BOX_MIN_SCORE = 0.1


class DistillError(ValueError):
    """A teacher that cannot teach this student; `scratchwatch train` prints it as one line."""


@dataclass(frozen=True)
class DistillOptions:
    teacher: Path
    cls_weight: float = 1.0  # x the cls gain: BCE of the student's logits against the teacher's scores
    box_weight: float = 0.5  # x the box gain: 1 - CIoU to the teacher's boxes, weighted by its score


class Teacher:
    """An ONNX damage model run on training batches; never pickled (checkpoints strip the criterion)."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        self.path = path
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images):
        """``images``: the trainer's float batch (RGB, 0-1, NCHW); returns ``[B, 5, A]`` as a tensor."""
        import torch

        out = self.session.run(None, {self.input: images.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out).to(images.device)


def teacher_targets(raw, n_anchors: int):
    """Split the teacher's ``[B, 5, A]`` into xyxy boxes ``[B, A, 4]`` and scores ``[B, A]``."""
    if raw.shape[1] != 5 or raw.shape[2] != n_anchors:
        raise DistillError(f"teacher output {tuple(raw.shape)} does not match the student's {n_anchors} anchors "
                           "and one class: teach with a damage model of the same input size")
    from ultralytics.utils.ops import xywh2xyxy

    return xywh2xyxy(raw[:, :4].transpose(1, 2)), raw[:, 4]


def distill_terms(student_logits, student_boxes, teacher_boxes, teacher_scores):
    """The two distillation terms, before gains: (box, cls).

    cls: BCE of every anchor's logit against the teacher's score, normalised like the detection
    loss's cls term (by the sum of the targets). box: 1 - CIoU between the student's and the
    teacher's boxes on anchors the teacher scores >= BOX_MIN_SCORE, weighted by that score.
    """
    import torch.nn.functional as F
    from ultralytics.utils.metrics import bbox_iou

    cls = F.binary_cross_entropy_with_logits(student_logits, teacher_scores, reduction="sum")
    cls = cls / teacher_scores.sum().clamp(min=1.0)
    keep = teacher_scores >= BOX_MIN_SCORE
    if not bool(keep.any()):
        return student_boxes.sum() * 0.0, cls
    weight = teacher_scores[keep]
    iou = bbox_iou(student_boxes[keep], teacher_boxes[keep], xywh=False, CIoU=True).squeeze(-1)
    box = (weight * (1.0 - iou)).sum() / weight.sum()
    return box, cls


def distill_criterion(model, opts: DistillOptions):
    """ultralytics' detection loss plus the teacher's terms; set as ``model.criterion``."""
    import torch
    from ultralytics.utils.loss import v8DetectionLoss
    from ultralytics.utils.tal import make_anchors

    class DistillLoss(v8DetectionLoss):
        def __init__(self):
            super().__init__(model)
            self.teacher = Teacher(opts.teacher)
            self.totals = np.zeros(3)  # box, cls, batches: shown once per epoch

        def loss(self, preds, batch):
            loss, items = super().loss(preds, batch)
            anchor_points, stride_tensor = make_anchors(preds["feats"], self.stride, 0.5)
            boxes = self.bbox_decode(anchor_points, preds["boxes"].permute(0, 2, 1)) * stride_tensor
            t_boxes, t_scores = teacher_targets(self.teacher(batch["img"]), boxes.shape[1])
            box, cls = distill_terms(preds["scores"][:, 0, :], boxes, t_boxes, t_scores)
            box = box * self.hyp.box * opts.box_weight
            cls = cls * self.hyp.cls * opts.cls_weight
            self.totals += (float(box.detach()), float(cls.detach()), 1)
            extra = torch.stack((box, cls, torch.zeros_like(cls)))  # added to box and cls; dfl as it was
            return loss + extra * preds["scores"].shape[0], items

        def epoch_summary(self) -> str:
            box, cls, n = self.totals
            self.totals = np.zeros(3)
            return f"distillation ({self.teacher.path.name}): box {box / max(n, 1):.4f}, cls {cls / max(n, 1):.4f} per batch"

    return DistillLoss()


def distill_callbacks(opts: DistillOptions) -> dict:
    """ultralytics callbacks that put the teacher in after the EMA copy is made (it must not be copied)."""
    from ultralytics.utils.torch_utils import unwrap_model

    def attach(trainer):
        net = unwrap_model(trainer.model)
        net.criterion = distill_criterion(net, opts)
        log.info("distilling from %s (cls x%.2f, box x%.2f)", opts.teacher, opts.cls_weight, opts.box_weight)

    def report(trainer):
        net = unwrap_model(trainer.model)
        if hasattr(net.criterion, "epoch_summary"):
            log.info("epoch %d: %s", trainer.epoch + 1, net.criterion.epoch_summary())

    return {"on_train_start": attach, "on_train_epoch_end": report}
