"""COCO weight transfer on a yolov5-format checkpoint the test builds itself."""

from __future__ import annotations

import io
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="weights transfer is in the [train] extra")
nn = torch.nn

from export.weights import (  # noqa: E402
    WeightsError,
    _shell_pickle_module,
    load_yolov5_state_dict,
    sha256_file,
    transfer,
)


def _fake_yolov5_modules() -> dict[str, types.ModuleType]:
    """Stand-ins for the yolov5 repository's `models.common` / `models.yolo` classes."""
    common, yolo, pkg = (types.ModuleType(n) for n in ("models.common", "models.yolo", "models"))

    class Conv(nn.Module):
        def __init__(self, c1: int, c2: int, k: int, s: int, p: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, p, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.SiLU()

    class Detect(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = nn.ModuleList([nn.Conv2d(64, 255, 1)])  # 80 COCO classes: never fits 1 class

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Sequential(OrderedDict([
                ("0", Conv(3, 16, 6, 2, 2)),   # same as ultralytics yolov5n layer 0
                ("1", Conv(16, 99, 3, 2, 1)),  # layer 1 has 32 channels: deliberately the wrong shape
                ("24", Detect()),
            ]))

    for cls, mod in ((Conv, common), (Detect, yolo), (Model, yolo)):
        cls.__module__ = mod.__name__
        cls.__qualname__ = cls.__name__
        setattr(mod, cls.__name__, cls)
    return {"models": pkg, "models.common": common, "models.yolo": yolo}


@pytest.fixture
def yolov5_checkpoint(tmp_path: Path) -> Path:
    fakes = _fake_yolov5_modules()
    sys.modules.update(fakes)
    try:
        model = fakes["models.yolo"].Model()
        path = tmp_path / "yolov5-fake.pt"
        torch.save({"model": model.half(), "epoch": -1}, path)
    finally:
        for name in fakes:
            sys.modules.pop(name, None)  # loading must not rely on these classes
    return path


def test_transfer_matches_by_name_and_shape(yolov5_checkpoint: Path) -> None:
    from ultralytics.nn.tasks import DetectionModel

    state = load_yolov5_state_dict(yolov5_checkpoint, expected_sha256=sha256_file(yolov5_checkpoint))
    assert "models.yolo" not in sys.modules
    assert all(v.dtype == torch.float32 for v in state.values())

    model = DetectionModel("yolov5n.yaml", nc=1, verbose=False)
    report = transfer(state, model, str(yolov5_checkpoint))
    assert "model.0.conv.weight" in report.matched and "model.0.bn.running_mean" in report.matched
    assert "model.1.conv.weight" in report.shape_mismatch
    assert "model.24.m.0.weight" in report.missing_in_target
    assert torch.equal(model.state_dict()["model.0.conv.weight"], state["model.0.conv.weight"])
    assert "transferred" in report.summary() and report.parameters_transferred > 0


def test_sha256_mismatch_refuses_before_unpickling(yolov5_checkpoint: Path) -> None:
    with pytest.raises(WeightsError, match=r"yolov5-fake.pt has sha256 .* refusing"):
        load_yolov5_state_dict(yolov5_checkpoint, expected_sha256="0" * 64)


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="nope.pt does not exist"):
        load_yolov5_state_dict(tmp_path / "nope.pt")


def test_shell_unpickler_refuses_arbitrary_globals() -> None:
    payload = pickle.dumps(os.getcwd)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        _shell_pickle_module().Unpickler(io.BytesIO(payload)).load()
