"""The GPU path, checked on the CPU where it can be: provider options (TensorRT caches and batch
profile), I/O binding (bound on the CPU device, the same calls as on CUDA), parallel letterbox,
batched decode, warm-up of every batch size, the fp16 copy, and the failure policy for GPU errors
(a simulated ONNX Runtime CUDA error). The tests at the end need a real CUDA device and skip
without one."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, RuntimeException

from pipeline.car_gate import build_detector
from pipeline.config import DetectorConfig
from pipeline.detector import (
    CPU,
    CUDA,
    MAX_NMS_CANDIDATES,
    TENSORRT,
    DeviceBinding,
    Detector,
    decode_batch,
    is_device_failure,
    model_variant,
    preprocess_workers,
    provider_options,
)
from pipeline.inference import DetectorFailedError, InferenceStage
from pipeline.messages import Frame, FrameHeader
from tests.pipeline.synthetic import Mark, build_red_model, scene

MARK = Mark(0, 1, (200, 100, 30, 10))
CUDA_AVAILABLE = CUDA in ort.get_available_providers() and Path("/dev/nvidia0").exists()
needs_cuda = pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs an NVIDIA GPU and onnxruntime-gpu's CUDA provider")


# ---- provider options (pure) --------------------------------------------------------------------

def test_tensorrt_options_keep_engines_and_timing_cache_in_the_folder_with_a_batch_profile(tmp_path: Path) -> None:
    options = provider_options("tensorrt", tmp_path / "tensorrt", input_name="images", imgsz=(480, 480), max_batch=16)
    assert [name for name, _ in options] == [TENSORRT, CUDA, CPU]
    trt = options[0][1]
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_timing_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == str(tmp_path / "tensorrt")
    assert trt["trt_profile_min_shapes"] == "images:1x3x480x480"
    assert trt["trt_profile_opt_shapes"] == trt["trt_profile_max_shapes"] == "images:16x3x480x480"
    assert trt["trt_fp16_enable"] == "False"
    assert provider_options("tensorrt", tmp_path, fp16=True)[0][1]["trt_fp16_enable"] == "True"


def test_a_fixed_batch_model_gets_no_profile_and_tensorrt_needs_a_cache_folder(tmp_path: Path) -> None:
    trt = provider_options("tensorrt", tmp_path)[0][1]
    assert not any(key.startswith("trt_profile") for key in trt)
    with pytest.raises(ValueError, match="needs a cache folder"):
        provider_options("tensorrt", None)


def test_tensorrt_only_when_configured() -> None:
    assert [name for name, _ in provider_options("auto")] == [CUDA, CPU]
    assert [name for name, _ in provider_options("cuda")] == [CUDA, CPU]
    assert provider_options("cpu") == [(CPU, {})]


def test_the_detector_logs_the_provider_in_use_and_the_model_file(red_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.detector"):
        Detector(red_model, provider="cpu")
    assert f"detector {red_model} runs on CPUExecutionProvider" in caplog.text


def test_tensorrt_demanded_without_it_is_a_clear_error(red_model: Path, tmp_path: Path) -> None:
    if TENSORRT in Detector(red_model, provider="auto").providers:
        pytest.skip("this host really has TensorRT")
    with pytest.raises(RuntimeError, match="provider 'tensorrt' requested but the session got"):
        Detector(red_model, provider="tensorrt", cache_dir=tmp_path / "tensorrt")


# ---- I/O binding, letterbox, decode ---------------------------------------------------------------

def test_io_binding_gives_the_session_run_outputs_reusing_one_buffer_per_batch_size(red_model: Path) -> None:
    detector = Detector(red_model, provider="cpu")
    assert detector.binding is None, "the CPU path never binds"
    binding = DeviceBinding(detector.session, "cpu")
    frames = [scene(i, [MARK]) for i in range(3)]
    for size in (1, 3, 1):
        batch, _ = detector.preprocess(frames[:size])
        np.testing.assert_array_equal(binding.run(batch), detector.session.run(None, {detector.input_name: batch})[0])
    assert sorted(binding._bound) == [(1, 3, 128, 128), (3, 3, 128, 128)]
    blank = np.zeros((1, 3, 128, 128), np.float32)
    assert not np.array_equal(binding.run(blank), binding.run(detector.preprocess(frames[:1])[0])), "the buffer is refilled"


def test_parallel_letterbox_equals_one_thread(red_model: Path) -> None:
    frames = [scene(i, [MARK], size) for i, size in enumerate([(320, 240), (640, 360), (100, 300), (128, 128), (1920, 1080)])]
    serial, threaded = Detector(red_model, provider="cpu", workers=1), Detector(red_model, provider="cpu", workers=3)
    (a, boxes_a), (b, boxes_b) = serial.preprocess(frames), threaded.preprocess(frames)
    np.testing.assert_array_equal(a, b)
    assert boxes_a == boxes_b
    assert threaded._pool is not None and threaded._pool._max_workers == 3
    assert preprocess_workers(None) == min(8, len(__import__("os").sched_getaffinity(0)))


def test_batched_decode_equals_each_image_decoded_alone() -> None:
    rng = np.random.default_rng(1)
    rows = np.zeros((4, 500, 6), np.float32)
    rows[..., :2] = rng.uniform(0, 480, (4, 500, 2))
    rows[..., 2:4] = rng.uniform(5, 60, (4, 500, 2))
    rows[..., 4:] = rng.uniform(0, 1, (4, 500, 2)) ** 4
    rows[2, :, 4:] = 0  # an image without a candidate
    together = decode_batch(rows, 0.25, 0.45)
    assert len(together) == 4 and together[2].shape == (0, 6)
    for image, dets in zip(rows, together):
        [alone] = decode_batch(image[None], 0.25, 0.45)
        np.testing.assert_array_equal(dets, alone)
        assert (np.diff(dets[:, 4]) <= 0).all(), "best first"
        assert set(dets[:, 5].tolist()) <= {0.0, 1.0}


def test_candidates_are_capped_per_image_not_per_batch() -> None:
    """Two images full of far-apart boxes: each keeps its own MAX_NMS_CANDIDATES best, NMS drops none."""
    n = MAX_NMS_CANDIDATES + 500
    rows = np.zeros((2, n, 5), np.float32)
    rows[..., 0] = np.arange(n) * 10.0
    rows[..., 2:4] = 4.0
    rows[..., 4] = np.linspace(0.3, 0.9, n)
    first, second = decode_batch(rows, 0.25, 0.45)
    assert len(first) == len(second) == 300  # MAX_DETECTIONS of the 3000 best
    assert first[0, 4] == pytest.approx(0.9)


# ---- warm-up before ready ---------------------------------------------------------------------------

def test_build_detector_warms_both_models_on_every_batch_size_before_it_returns(
    red_model: Path, car_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, set[int]] = {}
    original = Detector._run

    def spy(self: Detector, batch: np.ndarray) -> np.ndarray:
        seen.setdefault(self.name, set()).add(len(batch))
        return original(self, batch)

    monkeypatch.setattr(Detector, "_run", spy)
    config = DetectorConfig(model=red_model, provider="cpu", max_batch=5, cars={"model": car_model})
    build_detector(config)
    assert seen == {red_model.name: {1, 2, 3, 4, 5}, car_model.name: {1, 2, 3, 4, 5}}


# ---- fp16 ---------------------------------------------------------------------------------------------

def test_the_fp16_copy_detects_what_fp32_does_with_float32_io(tmp_path: Path) -> None:
    from export.fp16 import PRECISION_KEY, convert_fp16

    fp32 = build_red_model(tmp_path / "red.onnx")
    recipe = convert_fp16(fp32)
    fp16 = model_variant(fp32, "fp16")
    assert recipe["out"] == str(fp16) == str(tmp_path / "red-fp16.onnx")
    half, full = Detector(fp16, provider="cpu"), Detector(fp32, provider="cpu")
    assert half.session.get_inputs()[0].type == half.session.get_outputs()[0].type == "tensor(float)"
    import onnx

    model = onnx.load(str(fp16))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer), "the weights are half"
    meta = half.session.get_modelmeta().custom_metadata_map
    assert meta["names"] == "{0: 'scratch'}" and PRECISION_KEY in meta
    frames = [scene(i, [Mark(0, 4, (40 + 50 * i, 100 + 20 * i, 30, 10))]) for i in range(4)]
    for a, b in zip(full.detect(frames), half.detect(frames)):
        assert a.shape == b.shape and len(a) >= 1
        np.testing.assert_allclose(b[:, :4], a[:, :4], atol=1.0)  # frame pixels
        np.testing.assert_allclose(b[:, 4], a[:, 4], atol=0.01)
    assert recipe["max_score_diff"] < 0.01


def test_precision_fp16_runs_each_models_copy_and_a_missing_one_is_named(
    tmp_path: Path, red_model: Path, car_model: Path
) -> None:
    from export.fp16 import convert_fp16
    from pipeline.config import Settings
    from pipeline.preflight import BadInput, check_precision

    damage = build_red_model(tmp_path / "damage.onnx")
    settings = Settings(detector={"model": damage, "provider": "cpu", "precision": "fp16", "cars": {"model": car_model}})
    with pytest.raises(BadInput, match=r"damage-fp16.onnx: not found — .*scratchwatch fp16 .*damage.onnx"):
        check_precision(settings)
    convert_fp16(damage)
    with pytest.raises(BadInput, match="blue-car-fp16.onnx"):
        check_precision(settings)
    convert_fp16(car_model, tmp_path / "blue-car-fp16.onnx")
    cars = tmp_path / "blue-car.onnx"
    cars.write_bytes(car_model.read_bytes())
    settings = Settings(detector={"model": damage, "provider": "cpu", "precision": "fp16", "cars": {"model": cars}})
    check_precision(settings)
    detector = build_detector(settings.detector)
    assert detector.damage.name == "damage-fp16.onnx" and detector.cars.name == "blue-car-fp16.onnx"


# ---- GPU failures fail the stage at once ---------------------------------------------------------------

def test_gpu_errors_are_told_apart_from_bad_frames(tmp_path: Path) -> None:
    from tests.pipeline.test_failures import build_broken_model

    assert is_device_failure(Fail("CUDA failure 2: out of memory ; GPU=0 ; hostname=x"))
    assert is_device_failure(RuntimeException("Non-zero status code returned while running Conv node. Status Message: "
                                              "BFCArena::AllocateRawInternal Failed to allocate memory for requested buffer"))
    assert is_device_failure(MemoryError())
    assert not is_device_failure(ValueError("cuda"))  # not ONNX Runtime's
    broken = Detector(build_broken_model(tmp_path / "broken.onnx"), provider="cpu")
    with pytest.raises(Exception) as real:  # a real ONNX Runtime error on a frame: the per-frame policy applies
        broken.detect([scene(0, [MARK])])
    assert not is_device_failure(real.value)


class _FailingGpu:
    """A detection path whose device is gone: every call raises what ONNX Runtime raises on a CUDA error."""

    def __init__(self, damage: Detector) -> None:
        self.damage, self.calls = damage, 0

    def detect(self, frames, headers=None):
        self.calls += 1
        raise Fail("CUDA failure 700: an illegal memory access was encountered ; GPU=0")


def test_a_gpu_error_fails_the_inference_stage_at_once_without_per_frame_retries(red_model: Path) -> None:
    detector = _FailingGpu(Detector(red_model, provider="cpu"))
    stage = InferenceStage(detector, receiver=None, out=None, max_batch=4, control=None)  # type: ignore[arg-type]
    frames = []
    for seq in range(4):
        image = scene(seq, [MARK])
        frames.append(Frame(FrameHeader(camera="cam", kind="replay", source="cam", seq=seq, captured_ns=0, shape=image.shape), image))
    with pytest.raises(DetectorFailedError, match=r"the GPU failed on a batch of 4 frame\(s\).*CUDA failure 700"):
        stage.handle(frames)
    assert detector.calls == 1, "no frame-by-frame retry"
    assert stage.errors == 4 and stage.frames == 0


# ---- on a real GPU ---------------------------------------------------------------------------------------

@needs_cuda
def test_cuda_with_and_without_io_binding_matches_the_cpu(red_model: Path) -> None:
    frames = [scene(i, [MARK]) for i in range(6)]
    cpu = Detector(red_model, provider="cpu").detect(frames)
    for binding in (True, False):
        gpu = Detector(red_model, provider="cuda", io_binding=binding)
        assert gpu.providers[0] == CUDA and (gpu.binding is not None) == binding
        for a, b in zip(cpu, gpu.detect(frames)):
            assert a.shape == b.shape
            np.testing.assert_allclose(b[:, :5], a[:, :5], atol=0.5)


def test_the_fp16_command_writes_the_copy_and_names_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    assert main(["fp16", str(tmp_path / "nope.onnx")]) == 1
    assert capsys.readouterr().err.strip() == f"scratchwatch fp16: model {tmp_path / 'nope.onnx'}: not found"
    model = build_red_model(tmp_path / "red.onnx")
    assert main(["fp16", str(model)]) == 0
    assert f"wrote {tmp_path / 'red-fp16.onnx'}" in capsys.readouterr().out
    assert main(["fp16", str(tmp_path / "red-fp16.onnx")]) == 1
    assert "already an fp16 copy" in capsys.readouterr().err
