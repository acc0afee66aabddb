"""COCO weights for transfer learning, read without the original yolov5 repository's code.

The shipped COCO checkpoint is a pickle of `models.yolo.Model` from the yolov5 repository, which
ultralytics refuses to load. Unpickling runs code, so the file's sha256 is checked first, and the
unpickler maps the `models.*` classes onto empty ``nn.Module`` shells: a module's parameters and
buffers live in its ``__dict__``, so a shell is enough to call ``state_dict()``.
"""

from __future__ import annotations

import hashlib
import pickle
import types
from dataclasses import dataclass, field
from pathlib import Path

YOLOV5N_COCO_SHA256 = "4f180cf23ba0717ada0badd6c685026d73d48f184d00fc159c2641284b2ac0a3"


class WeightsError(ValueError):
    """The weights file is not the one we trust, or not a checkpoint we can read."""


@dataclass
class TransferReport:
    """What moved from the COCO checkpoint into the new model, for the log and the model card."""

    source: str
    matched: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    missing_in_target: list[str] = field(default_factory=list)
    fresh_in_target: list[str] = field(default_factory=list)
    parameters_transferred: int = 0

    def summary(self) -> str:
        total = len(self.matched) + len(self.shape_mismatch) + len(self.missing_in_target)
        return (
            f"transferred {len(self.matched)}/{total} tensors ({self.parameters_transferred:,} values) from "
            f"{Path(self.source).name}; {len(self.shape_mismatch)} shape mismatches, "
            f"{len(self.missing_in_target)} not in the new model, {len(self.fresh_in_target)} new tensors start fresh"
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _shell_pickle_module() -> types.ModuleType:
    """A pickle module whose Unpickler turns yolov5 `models.*` classes into empty nn.Module shells."""
    import torch

    shells: dict[tuple[str, str], type] = {}

    class ShellUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if module == "models" or module.startswith("models."):
                return shells.setdefault((module, name), type(name, (torch.nn.Module,), {"__module__": module}))
            if module.split(".")[0] not in {"torch", "collections", "builtins", "__builtin__", "numpy", "_codecs", "copyreg"}:
                raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")
            return super().find_class(module, name)

    module = types.ModuleType("shell_pickle")
    module.Unpickler = ShellUnpickler  # type: ignore[attr-defined]
    module.load = pickle.load  # type: ignore[attr-defined]
    module.__name__ = "shell_pickle"
    return module


def load_yolov5_state_dict(path: Path, expected_sha256: str | None = YOLOV5N_COCO_SHA256) -> dict:
    """The float32 state_dict of an original-yolov5 checkpoint, after checking the file's hash."""
    import torch

    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    actual = sha256_file(path)
    if expected_sha256 and actual != expected_sha256:
        raise WeightsError(
            f"weights file {path} has sha256 {actual}, expected {expected_sha256}: refusing to unpickle it"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", pickle_module=_shell_pickle_module(), weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise WeightsError(f"weights file {path} is not a readable yolov5 checkpoint: {exc}") from exc
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if model is None or not hasattr(model, "state_dict"):
        raise WeightsError(f"weights file {path} holds no model")
    return {k: v.float() for k, v in model.state_dict().items()}


def transfer(state_dict: dict, model, source: str) -> TransferReport:
    """Copy every tensor whose name and shape match; the rest of ``model`` keeps its fresh init."""
    import torch

    report = TransferReport(source=source)
    target = model.state_dict()
    update = {}
    for name, tensor in state_dict.items():
        if name not in target:
            report.missing_in_target.append(name)
        elif target[name].shape != tensor.shape:
            report.shape_mismatch.append(name)
        else:
            update[name] = tensor
            report.matched.append(name)
            report.parameters_transferred += tensor.numel()
    report.fresh_in_target = [k for k in target if k not in update]
    with torch.no_grad():
        model.load_state_dict(update, strict=False)
    return report
