"""The car stage and the car gate with real ONNX models: crops, mapping back, gate, scheduler, batching."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from pipeline.car_gate import CarGatedDetector, InspectionScheduler
from pipeline.cars import CarDetector, CarModelError, centres_inside, crop_to_frame
from pipeline.config import CarStageConfig, MotionConfig
from pipeline.detector import Detector
from pipeline.geometry import grow_window, margin_window, tile_grid
from pipeline.messages import FrameHeader
from pipeline.motion import changed_share, thumbnail
from tests.pipeline.synthetic import RED_BGR, Mark, build_grid_car_model, scene

CAR_BLUE = (180, 90, 40)  # BGR, the synthetic scene's car body
ON_CAR = Mark(0, 100, (200, 100, 30, 10))  # the scene's car spans x 40-288, y 45-170
OFF_CAR = Mark(0, 100, (20, 200, 40, 10))  # on the asphalt below the car


def _gated(red_model: Path, car_model: Path, gate: str = "strict", **kwargs) -> CarGatedDetector:
    cars = CarDetector(CarStageConfig(model=car_model), provider="cpu")
    return CarGatedDetector(Detector(red_model, provider="cpu"), cars, gate, **kwargs)


def _header(seq: int, t: float, camera: str = "cam") -> FrameHeader:
    return FrameHeader(camera=camera, kind="replay", source="x.mp4", seq=seq, captured_ns=0, media_time_s=t, shape=(240, 320, 3))


def test_crop_window_and_mapping_back_are_exact() -> None:
    car = np.array([100.5, 50.2, 200.0, 120.0, 0.9], np.float32)
    window = margin_window(car, 0.1, 640, 360)
    assert window == (90, 43, 210, 127)  # floor/ceil of the box grown by 10 % of 99.5 x 69.8 on each side
    assert margin_window(np.array([5, 5, 630, 350]), 0.5, 640, 360) == (0, 0, 640, 360)  # clipped to the frame
    assert grow_window((700, 400, 768, 432), 240, 240, 768, 432) == (528, 192, 768, 432)  # grown, kept inside
    assert grow_window((100, 100, 150, 130), 240, 1000, 768, 432) == (5, 0, 245, 432)  # at most the frame
    in_crop = np.array([[10, 20, 30, 40, 0.8, 0]], np.float32)
    np.testing.assert_array_equal(crop_to_frame(in_crop, window), np.array([[100, 63, 120, 83, 0.8, 0]], np.float32))
    inside = centres_inside(np.array([[100, 60, 120, 80], [0, 0, 20, 20]], np.float32), car)
    assert inside.tolist() == [True, False]


def test_damage_is_found_on_the_car_at_full_resolution(red_model: Path, car_model: Path) -> None:
    frame = scene(0, [ON_CAR], size=(640, 480))  # a wide frame: the crop gives the mark more pixels
    [result] = _gated(red_model, car_model).detect([frame])
    assert len(result.cars) == 1 and result.inferences == 1
    car = result.cars[0]
    assert car[0] < 45 and car[2] > 280 and car[1] < 75 and car[3] > 165  # the blue body
    [row] = result.rows
    x, y, w, h = ON_CAR.box
    assert abs(row[0] - x) < 3 and abs(row[1] - y) < 3 and abs(row[2] - (x + w)) < 3 and abs(row[3] - (y + h)) < 3
    np.testing.assert_array_equal(row[6:11], car[:5])  # the damage row carries its car
    assert row[11] == -1  # no tracking without the scheduler


def test_strict_gate_drops_damage_off_any_car_and_photo_gate_keeps_carless_close_ups(red_model: Path, car_model: Path) -> None:
    off_car = scene(0, [OFF_CAR])
    assert len(_gated(red_model, car_model, "off").detect([off_car])[0].rows) == 1  # whole frame: the old behaviour
    assert len(_gated(red_model, car_model, "strict").detect([off_car])[0].rows) == 0  # asphalt is not a car
    close_up = np.full((240, 320, 3), (90, 95, 100), np.uint8)  # no car in view: a photo of a door, say
    cv2.rectangle(close_up, (100, 100), (140, 110), RED_BGR, -1)
    assert len(_gated(red_model, car_model, "strict").detect([close_up])[0].rows) == 0
    [photo] = _gated(red_model, car_model, "photo").detect([close_up])
    assert len(photo.rows) == 1 and len(photo.cars) == 0 and (photo.rows[0, 6:] == -1).all()  # no car reported


def test_a_frame_with_fifty_cars_runs_its_crops_in_chunks_of_max_batch(red_model: Path, tmp_path: Path) -> None:
    frame = np.full((320, 320, 3), (90, 95, 100), np.uint8)
    for r in range(10):
        for c in range(10):
            if (r + c) % 2 == 0:
                cv2.rectangle(frame, (c * 32 + 2, r * 32 + 2), (c * 32 + 29, r * 32 + 29), CAR_BLUE, -1)
    cv2.rectangle(frame, (8, 14), (24, 18), RED_BGR, -1)  # damage on the first car only
    cars = CarDetector(CarStageConfig(model=build_grid_car_model(tmp_path / "grid.onnx"), min_side=0.0, margin=0.0), "cpu")
    damage = Detector(red_model, provider="cpu")
    calls: list[int] = []
    crops: list[tuple[int, ...]] = []
    run, detect = damage.run, damage.detect
    damage.run = lambda batch: calls.append(len(batch)) or run(batch)  # count model calls, run the real model
    damage.detect = lambda images: crops.extend(i.shape for i in images) or detect(images)
    [result] = CarGatedDetector(damage, cars, "strict", margin=0.0, max_batch=4).detect([frame])
    assert len(result.cars) == 50 and result.inferences == 50
    assert calls == [4] * 12 + [2] and set(crops) == {(32, 32, 3)}  # max_zoom 0: each car alone fills the input
    [row] = result.rows
    assert row[0] < 10 and row[2] > 22 and tuple(row[6:10]) == (0, 0, 32, 32)
    crops.clear()
    [zoom1] = CarGatedDetector(damage, cars, "strict", margin=0.0, max_batch=4, max_zoom=1.0).detect([frame])
    assert set(crops) == {(128, 128, 3)}  # grown to the model's 128 px input: never enlarged
    [row] = zoom1.rows  # neighbours' crops see the mark too, but it lies on the first car only
    assert tuple(row[6:10]) == (0, 0, 32, 32)


def test_scheduler_inspects_new_and_moved_cars_at_once_and_every_car_within_the_interval(red_model: Path, car_model: Path) -> None:
    gated = _gated(red_model, car_model, inspect_every_s=1.0)
    inspected_at: list[float] = []
    rows_seen = []
    for seq in range(35):  # 3.5 s at 10 fps; the car drifts a few pixels (parked: not 'moved')
        t = seq / 10
        [result] = gated.detect([scene(seq, [ON_CAR])], [_header(seq, t)])
        if result.inferences:
            inspected_at.append(t)
        rows_seen.append(len(result.rows))
        assert result.cars[0, 5] == 0  # one car, one track all along
    assert inspected_at == pytest.approx([0.0, 1.0, 2.0, 3.0])
    assert rows_seen == [1] * 35  # between inspections the car's last damage stands for it
    moved = np.roll(scene(0, []), 60, axis=0)  # the car drives 60 px down: IoU with its inspected box < 0.8
    [result] = gated.detect([moved], [_header(35, 3.6)])
    assert result.inferences == 1 and len(result.rows) == 0  # re-inspected at once, nothing held


def test_scheduler_due_rule() -> None:
    scheduler = InspectionScheduler(every_s=2.0)
    box = np.array([10, 10, 110, 60, 0.9], np.float32)
    plan = scheduler.plan(_header(0, 0.0), box[None])
    assert plan.inspect == [0]
    assert scheduler.plan(_header(1, 1.9), box[None]).inspect == []
    shifted = box + np.array([30, 0, 30, 0, 0], np.float32)  # IoU 0.54: moved
    assert scheduler.plan(_header(2, 1.95), shifted[None]).inspect == [0]
    assert scheduler.plan(_header(3, 3.9), shifted[None]).inspect == []
    assert scheduler.plan(_header(4, 3.95), shifted[None]).inspect == [0]  # 2.0 s after the last inspection
    other = scheduler.plan(_header(0, 0.5, camera="cam2"), box[None])
    assert other.inspect == [0] and other.cars[0, 5] == 0  # cameras are tracked apart


def test_car_models_that_cannot_score_vehicles_fail_at_start_with_the_file_named(red_model: Path, tmp_path: Path) -> None:
    with pytest.raises(CarModelError, match=r"red-ultralytics\.onnx: scoring 'objectness' needs the classic head"):
        CarDetector(CarStageConfig(model=red_model), provider="cpu")
    with pytest.raises(CarModelError, match="no class named car"):
        CarDetector(CarStageConfig(model=red_model, scoring="class"), provider="cpu")
    proto = onnx.load(str(red_model))
    for prop in proto.metadata_props:
        if prop.key == "names":
            prop.value = "{0: 'car', 1: 'truck', 2: 'bus'}"  # three classes, but the output has channels for one
    bad = tmp_path / "mislabelled.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(CarModelError, match=r"mislabelled\.onnx: output \[1, 5, 256\] matches neither YOLO head"):
        CarDetector(CarStageConfig(model=bad, scoring="class"), provider="cpu")


def test_photo_gate_crops_small_cars_and_looks_at_close_ups_whole(red_model: Path, car_model: Path) -> None:
    gated = _gated(red_model, car_model, "photo", photo_whole_share=0.3)
    [wide] = gated.detect([scene(0, [OFF_CAR], size=(640, 480))])  # the car covers 10 % of the photo: cropped
    assert len(wide.cars) == 1 and len(wide.rows) == 0  # the asphalt mark is off the car
    [close] = gated.detect([scene(0, [OFF_CAR])])  # 40 %: a crop would not magnify it, the photo is looked at whole
    assert len(close.cars) == 1 and close.inferences == 1 and len(close.rows) == 1
    assert (close.rows[0, 6:] == -1).all()  # kept, on no car (the red model sees one mark per image)
    [named] = gated.detect([scene(0, [ON_CAR])])
    np.testing.assert_array_equal(named.rows[0, 6:11], named.cars[0, :5])  # a box on the found car names it


def test_damage_models_the_pipeline_cannot_read_fail_at_start_with_the_file_named(red_model: Path, tmp_path: Path) -> None:
    from pipeline.car_gate import build_detector
    from pipeline.config import DetectorConfig
    from pipeline.detector import ModelMismatchError

    proto = onnx.load(str(red_model))
    names = next(p for p in proto.metadata_props if p.key == "names")
    names.value = "{0: 'scratch', 1: 'dent'}"  # two classes named, one in the output
    two = tmp_path / "two-names.onnx"
    onnx.save(proto, str(two))
    with pytest.raises(ModelMismatchError, match=r"two-names\.onnx: output \[1, 5, 256\] matches neither YOLO head for 2 classes"):
        build_detector(DetectorConfig(model=two, provider="cpu"), "off")
    del proto.metadata_props[:]  # dynamic input and no imgsz: the input size would be a guess
    for axis in (2, 3):
        proto.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = f"side{axis}"
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ModelMismatchError, match=r"bare\.onnx: dynamic input size and no 'imgsz' metadata"):
        build_detector(DetectorConfig(model=bare, provider="cpu"), "off")


def test_inspections_per_frame_caps_a_burst_and_every_due_car_gets_its_turn() -> None:
    """Six cars appear at once with a cap of two: two per frame, new first, every car within three frames,
    and after that the longest uninspected go first, so each is re-checked within the interval plus three frames."""
    scheduler = InspectionScheduler(every_s=1.0, per_frame=2)
    cars = np.array([[10 + 60 * i, 10, 60 + 60 * i, 50, 0.9] for i in range(6)], np.float32)
    last: dict[int, float] = {}
    for seq in range(60):  # 6 s at 10 fps
        t = seq / 10
        plan = scheduler.plan(_header(seq, t), cars)
        assert len(plan.inspect) <= 2
        for index in plan.inspect:
            track = int(plan.cars[index, 5])
            assert t - last.get(track, 0.0) <= 1.0 + 0.3 + 1e-9  # the interval, plus at most ceil(6 / 2) frames waiting
            last[track] = t
        if seq == 2:
            assert sorted(last) == [0, 1, 2, 3, 4, 5]  # every new car checked within ceil(6 / 2) = 3 frames
    assert len(last) == 6 and min(last.values()) >= 6.0 - 1.3
    uncapped = InspectionScheduler(every_s=1.0)
    assert len(uncapped.plan(_header(0, 0.0), cars).inspect) == 6


def test_a_car_that_moved_while_waiting_for_its_turn_holds_no_stale_boxes() -> None:
    scheduler = InspectionScheduler(every_s=10.0, per_frame=1)
    cars = np.array([[10, 10, 110, 60, 0.9], [200, 10, 300, 60, 0.9]], np.float32)
    damage = np.ones((1, 12), np.float32)
    plan = scheduler.plan(_header(0, 0.0), cars)
    assert plan.inspect == [0]  # both new: the first found goes first
    car_a, car_b = plan.tracks
    InspectionScheduler.remember(car_a, damage)
    plan = scheduler.plan(_header(1, 0.1), cars)
    assert plan.inspect == [1] and car_a in [t for t, _ in plan.held] and car_a.state["held"] is damage  # parked: its boxes stand for it
    InspectionScheduler.remember(car_b, damage)
    moved = cars + np.array([40, 0, 40, 0, 0], np.float32)  # both drive on: IoU with the inspected boxes < 0.8
    plan = scheduler.plan(_header(2, 0.2), moved)
    assert plan.inspect == [0]  # both due; car A was inspected longest ago
    assert car_b in [t for t, _ in plan.held] and car_b.state["held"] is None  # waiting, and its old boxes are off the car now
    assert scheduler.plan(_header(3, 0.3), moved).inspect == [1]  # its turn comes next frame


def test_still_frames_reuse_their_cameras_cars_and_any_change_runs_the_car_stage(red_model: Path, car_model: Path) -> None:
    gated = _gated(red_model, car_model, motion=MotionConfig(enabled=True, refresh_s=10.0))
    parked = scene(0, [])
    noisy = np.clip(parked.astype(np.int16) + np.random.default_rng(0).integers(-8, 9, parked.shape), 0, 255).astype(np.uint8)
    runs, cars = [], []
    for seq, frame in enumerate([parked, parked, noisy, parked]):  # sensor noise is not change
        [result] = gated.detect([frame], [_header(seq, seq / 5)])
        runs.append(result.car_inferences)
        cars.append(result.cars[:, :5].copy())
    assert runs == [1, 0, 0, 0]
    assert all(np.array_equal(c, cars[0]) for c in cars) and len(cars[0]) == 1
    moved = np.roll(parked, 60, axis=0)  # the car drives 60 px down
    [result] = gated.detect([moved], [_header(4, 0.8)])
    assert result.car_inferences == 1 and result.cars[0, 1] > cars[0][0, 1] + 50  # found where it is now
    dented = moved.copy()
    cv2.rectangle(dented, (150, 195), (179, 206), (230, 230, 230), -1)  # a 30 x 12 px change on the 320 x 240 frame
    assert gated.detect([dented], [_header(5, 1.0)])[0].car_inferences == 1


def test_still_frames_refresh_after_refresh_s_and_when_the_clock_goes_back(red_model: Path, car_model: Path) -> None:
    gated = _gated(red_model, car_model, motion=MotionConfig(enabled=True, refresh_s=2.0))
    frame = scene(0, [])
    ran = [gated.detect([frame], [_header(seq, t)])[0].car_inferences for seq, t in enumerate([0.0, 1.0, 1.99, 2.0, 3.0, 0.5])]
    assert ran == [1, 0, 0, 1, 0, 1]  # refreshed at 2.0 s; a looped file starting over (0.5 s) runs it again


def test_still_frames_in_one_batch_stand_on_their_own_cameras_cars(red_model: Path, car_model: Path) -> None:
    gated = _gated(red_model, car_model, motion=MotionConfig(enabled=True))
    parked, moved = scene(0, []), np.roll(scene(0, []), 60, axis=0)
    first = gated.detect([parked, moved], [_header(0, 0.0, "a"), _header(0, 0.0, "b")])
    assert [r.car_inferences for r in first] == [1, 1]
    batch = [moved, moved, parked]  # camera a changed, then stood still; camera b still
    headers = [_header(1, 0.2, "a"), _header(2, 0.4, "a"), _header(1, 0.2, "b")]
    results = gated.detect(batch, headers)
    assert [r.car_inferences for r in results] == [1, 0, 1]  # b's parked frame differs from b's reference (moved)
    np.testing.assert_array_equal(results[1].cars[:, :5], results[0].cars[:, :5])  # a's still frame: a's new cars
    np.testing.assert_array_equal(results[2].cars[:, :5], first[0].cars[:, :5])
    still_then_moved = gated.detect([parked, moved], [_header(3, 0.6, "b"), _header(4, 0.8, "b")])  # b's reference: parked
    assert [r.car_inferences for r in still_then_moved] == [0, 1]
    np.testing.assert_array_equal(still_then_moved[0].cars[:, :5], first[0].cars[:, :5])  # the cars it had, not the new ones
    np.testing.assert_array_equal(still_then_moved[1].cars[:, :5], results[0].cars[:, :5])
    photos = _gated(red_model, car_model, motion=MotionConfig(enabled=True)).detect([parked, parked])
    assert [r.car_inferences for r in photos] == [1, 1]  # without headers (photos) the car stage always runs


def test_changed_share_counts_pixels_past_the_threshold_and_a_new_size_is_all_change() -> None:
    a = np.zeros((90, 160), np.uint8)
    b = a.copy()
    b[:9, :16] = 26  # 144 of 14,400 pixels moved by 26 grey levels
    assert changed_share(a, b, 25) == pytest.approx(0.01) and changed_share(a, b, 26) == 0.0
    assert changed_share(a, np.zeros((80, 160), np.uint8), 25) == 1.0
    assert thumbnail(np.zeros((720, 1280, 3), np.uint8)).shape == (90, 160, 3)
    car = np.full((90, 160, 3), CAR_BLUE, np.uint8)
    marked = car.copy()
    marked[40:52, 60:72] = RED_BGR  # about as bright as the blue body: a grey difference would not see it
    grey = [cv2.cvtColor(x, cv2.COLOR_BGR2GRAY) for x in (car, marked)]
    assert changed_share(grey[0], grey[1], 25) == 0.0 and changed_share(car, marked, 25) == pytest.approx(144 / 14_400)


def test_a_parked_car_whose_pixels_did_not_change_is_reinspected_only_every_refresh_s(red_model: Path, car_model: Path) -> None:
    gated = _gated(red_model, car_model, inspect_every_s=1.0, motion=MotionConfig(enabled=True, refresh_s=3.0))
    parked = scene(0, [ON_CAR])
    elsewhere = parked.copy()
    cv2.rectangle(elsewhere, (10, 190), (40, 215), (230, 230, 230), -1)  # something moves on the asphalt, off the car
    touched = elsewhere.copy()
    cv2.rectangle(touched, (60, 120), (90, 140), (230, 230, 230), -1)  # something changes on the car itself
    inspected, rows = [], []
    for seq in range(50):  # 5 s at 10 fps
        t = seq / 10
        frame = parked if t < 3.5 else elsewhere if t < 4.2 else touched
        [result] = gated.detect([frame], [_header(seq, t)])
        if result.inferences:
            inspected.append(t)
        rows.append(len(result.rows))
    # 0.0: new; 3.0: refresh_s; the change off the car at 3.5 runs the car stage but not the inspection;
    # the change on the car at 4.2 is inspected once the last inspection is inspect_every_s old (4.2 >= 3.0 + 1.0)
    assert inspected == pytest.approx([0.0, 3.0, 4.2])
    assert rows == [1] * 50  # the held damage stands for the car all along


def test_at_rest_inspects_a_moving_car_when_it_stops_and_every_interval_while_it_drives() -> None:
    scheduler = InspectionScheduler(every_s=2.0, moving="at_rest")
    every_frame = InspectionScheduler(every_s=2.0)
    inspected, inspected_every_frame = [], []
    for seq in range(30):  # 10 fps: drives 12 px per frame (IoU with its last frame ~0.8) for 2.5 s, then parks
        t = seq / 10
        x = 10 + 12 * min(seq, 25)
        car = np.array([[x, 50, x + 100, 100, 0.9]], np.float32)
        if scheduler.plan(_header(seq, t), car).inspect:
            inspected.append(t)
        if every_frame.plan(_header(seq, t), car).inspect:
            inspected_every_frame.append(t)
    # first sight; every 2 s while it drives; the frame after it stopped (its box then matches the previous one)
    assert inspected == pytest.approx([0.0, 2.0, 2.6])
    assert len(inspected_every_frame) > 10  # every_frame: each frame it moved past IoU 0.8 from its last inspection
    held = scheduler.plan(_header(30, 3.0), np.array([[310, 50, 410, 100, 0.9]], np.float32))
    assert held.inspect == [] and len(held.held) == 1  # parked now: held until the next interval


def test_in_one_batch_an_inspection_stands_for_the_later_frames_only(red_model: Path, car_model: Path) -> None:
    gated = _gated(red_model, car_model, inspect_every_s=1.0)
    assert len(gated.detect([scene(0, [])], [_header(0, 0.0)])[0].rows) == 0  # inspected: no damage
    marked = scene(0, [Mark(0, 100, (200, 100, 30, 10))])  # damage appears; the next inspection is due at 1.0 s
    results = gated.detect([marked] * 4, [_header(seq, t) for seq, t in zip(range(8, 12), (0.8, 0.9, 1.0, 1.1))])
    assert [r.inferences for r in results] == [0, 0, 1, 0]
    assert [len(r.rows) for r in results] == [0, 0, 1, 1]  # 0.8 and 0.9 come before the inspection that found it


def test_tiles_are_the_window_and_its_overlapping_grid_in_frame_pixels(red_model: Path, car_model: Path) -> None:
    assert tile_grid(360, 360, 2) == [(0, 0, 200, 200), (160, 0, 360, 200), (0, 160, 200, 360), (160, 160, 360, 360)]  # 360 / 1.8
    tiled = _gated(red_model, car_model, "photo", tiles=2)
    assert tiled._views((100, 50, 460, 410)) == [
        (100, 50, 460, 410), (100, 50, 300, 250), (260, 50, 460, 250), (100, 210, 300, 410), (260, 210, 460, 410),
    ]
    assert _gated(red_model, car_model, "photo", tiles=1)._views((100, 50, 460, 410)) == [(100, 50, 460, 410)]  # 1: off
    windows = tiled.windows(scene(0, [ON_CAR], size=(640, 480)))  # what training crops are cut from: the same views
    assert len(windows) == 5 and windows == tiled._views(windows[0])


def test_tiles_find_damage_too_small_for_the_whole_view_and_report_it_once(red_model: Path, car_model: Path) -> None:
    photo = np.full((480, 640, 3), (90, 95, 100), np.uint8)  # a close-up: no car, looked at whole
    cv2.rectangle(photo, (500, 380), (505, 385), RED_BGR, -1)  # 6 x 6 px: under 2 px at the model's 128 px input
    [whole] = _gated(red_model, car_model, "photo").detect([photo])
    assert whole.inferences == 1 and len(whole.rows) == 0
    [tiled] = _gated(red_model, car_model, "photo", tiles=2).detect([photo])
    assert tiled.inferences == 5  # the photo and its 2 x 2 tiles
    [row] = tiled.rows  # the tiles on the right and at the bottom overlap there: one box after the merge
    assert np.abs(row[:4] - np.array([500, 380, 506, 386])).max() < 4  # mapped back from tile to photo pixels
    cv2.rectangle(photo, (500, 380), (511, 391), RED_BGR, -1)  # 12 px: every view that holds it finds it
    [both] = _gated(red_model, car_model, "photo", tiles=2).detect([photo])
    assert len(both.rows) == 1
