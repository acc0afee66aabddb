"""Tracker: detections over frames become incidents with the right boundaries."""

from __future__ import annotations

import numpy as np

from pipeline.config import TrackerConfig
from pipeline.messages import FrameHeader
from pipeline.tracker import CameraTracker, Track

BOX = (100.0, 50.0, 130.0, 60.0)
CONFIG = TrackerConfig(iou_threshold=0.3, min_hits=3, max_missed=5)


def header(seq: int) -> FrameHeader:
    return FrameHeader(camera="cam", kind="replay", source="v.mp4", seq=seq, captured_ns=seq * 10**8,
                       media_time_s=seq / 10, shape=(240, 320, 3))


def dets(*boxes: tuple[float, float, float, float], score: float = 0.8) -> np.ndarray:
    return np.array([[*b, score, 0] for b in boxes], np.float32).reshape(-1, 6)


def feed(visible: list[bool], box: tuple = BOX, config: TrackerConfig = CONFIG) -> tuple[list[Track], list[Track], CameraTracker]:
    """Run frames with the box where ``visible``; return (opened, closed, tracker)."""
    tracker = CameraTracker(config)
    opened: list[Track] = []
    closed: list[Track] = []
    for seq, seen in enumerate(visible):
        update = tracker.update(dets(box) if seen else dets(), header(seq), np.zeros((240, 320, 3), np.uint8))
        opened += update.opened
        closed += update.closed
    return opened, closed, tracker


def test_one_mark_over_thirty_frames_is_one_incident() -> None:
    opened, closed, tracker = feed([True] * 30 + [False] * 10)
    assert len(opened) == 1 and closed == opened
    track = closed[0]
    assert track.hits == 30
    assert track.opened.header.seq == 2  # the third detection opens it (min_hits=3)
    assert track.first.header.seq == 0 and track.last.header.seq == 29
    assert tracker.tracks == []


def test_incident_closes_exactly_after_max_missed_frames() -> None:
    _, closed, _ = feed([True] * 5 + [False] * 4)
    assert closed == []
    _, closed, _ = feed([True] * 5 + [False] * 5)
    assert len(closed) == 1


def test_two_marks_apart_in_time_are_two_incidents() -> None:
    opened, closed, _ = feed([True] * 10 + [False] * 8 + [True] * 10 + [False] * 6)
    assert len(opened) == 2 and len(closed) == 2
    assert [t.first.header.seq for t in closed] == [0, 18]


def test_flicker_shorter_than_max_missed_stays_one_incident() -> None:
    opened, closed, _ = feed([True] * 6 + [False] * 4 + [True] * 6 + [False] * 3 + [True] * 4 + [False] * 5)
    assert len(opened) == 1 and len(closed) == 1
    assert closed[0].hits == 16


def test_fewer_than_min_hits_never_becomes_an_incident() -> None:
    opened, closed, tracker = feed([True, True, False, False, False, False, False, True, True])
    assert opened == [] and closed == []
    assert tracker.close_all() == []


def test_two_marks_apart_in_space_are_two_tracks_in_the_same_frames() -> None:
    tracker = CameraTracker(CONFIG)
    opened: list[Track] = []
    for seq in range(5):
        opened += tracker.update(dets(BOX, (10, 10, 40, 40)), header(seq), None).opened
    assert len(opened) == 2
    assert {tuple(t.first.box.astype(int)) for t in opened} == {(100, 50, 130, 60), (10, 10, 40, 40)}


def test_best_detection_and_its_frame_are_kept() -> None:
    tracker = CameraTracker(CONFIG)
    frames = [np.full((240, 320, 3), seq, np.uint8) for seq in range(6)]
    for seq, score in enumerate([0.5, 0.6, 0.9, 0.7, 0.8, 0.4]):
        tracker.update(dets(BOX, score=score), header(seq), frames[seq])
    [track] = tracker.close_all()
    assert track.best.score == np.float32(0.9) and track.best.header.seq == 2
    assert track.best_image is frames[2]


def test_a_moving_box_keeps_its_track_while_it_overlaps() -> None:
    tracker = CameraTracker(CONFIG)
    for seq in range(10):
        x = 100 + 3 * seq
        tracker.update(dets((x, 50, x + 30, 60)), header(seq), None)
    assert len(tracker.tracks) == 1 and tracker.tracks[0].hits == 10
