"""Hard negatives from clean footage, and the unseen rest of the clip for the false-alarm test."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from export.video_frames import cut_clip, extract_frames
from tests.pipeline.synthetic import write_clip


def test_frames_of_a_span_become_background_images_and_the_rest_a_clip(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "lot.avi", 40, [], fps=10.0)  # 4 s
    written = extract_frames(clip, tmp_path / "negatives", 0.0, 2.0, 0.5)
    assert [p.name for p in written] == [f"lot-{t:07.2f}s.jpg" for t in (0.0, 0.5, 1.0, 1.5)]
    labels = sorted((tmp_path / "negatives" / "labels").iterdir())
    assert len(labels) == 4 and all(label.read_text() == "" for label in labels)  # no damage: empty labels
    rest = cut_clip(clip, tmp_path / "heldout", 2.0)
    capture = cv2.VideoCapture(str(rest))
    assert rest.name == "lot_from2s.mp4" and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 20  # frames 20-39, never trained on
    capture.release()
    with pytest.raises(ValueError, match="has no frame from 9s on"):
        cut_clip(clip, tmp_path / "heldout", 9.0)
